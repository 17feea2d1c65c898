"""hare-mini's layout (diffusion on codes or GPT latents, HiFi-GAN mels and vocoder, its own silence codes) on toy
networks, the models-folder conventions it uses, and the bundled model itself when it is in the checkout."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import soundfile
import torch

import hare
from hare import audio, checkpoints
from hare.errors import CheckpointError, ModelNotFoundError, SettingsError
from hare.pipeline import TextToSpeech, calm_cut
from hare.voices import VoiceLibrary

from tiny_models import save_models_dir, tiny_mini_models, write_voice

SHRINK = dict(num_candidates=2, diffusion_steps=3, max_codes=20)


pytestmark = pytest.mark.usefixtures("isolated_home")


@pytest.fixture(scope="module")
def mini_models():
    return tiny_mini_models()


def _tts(models, voices=None):
    return TextToSpeech(gpt=models["autoregressive"], clvp=models["clvp2"], diffusion=models["diffusion_decoder"],
                        vocoder=models["vocoder"], voices=VoiceLibrary([voices] if voices else []),
                        model_id="mini-test", device="cpu")


def test_codes_conditioned_hifigan_pipeline(tmp_path, mini_models, monkeypatch):
    import hare.pipeline as P

    write_voice(tmp_path / "v" / "ann")
    tts = _tts(mini_models, tmp_path / "v")
    assert tts.sample_rate == 22050 and tts.mel_format.name == "hifigan"
    seen = {}

    def spy(codes, *a, **k):  # the GPT's own calm code reaches the cut
        seen["calm"] = k.get("calm_code")
        seen["keep"] = calm_cut(codes, *a, **k)
        return seen["keep"]

    monkeypatch.setattr(P, "calm_cut", spy)
    out = tts.tts("A small test.", voice="ann", preset="ultra_fast", seed=1, **SHRINK)
    assert out.sample_rate == 22050 and torch.isfinite(out.audio).all()
    assert seen["calm"] == 3
    assert out.audio.numel() == seen["keep"] * 4 * 256  # 4 HiFi-GAN frames per code, 256 samples per frame
    assert "latents" not in out.timings  # a codes-conditioned decoder needs no GPT latents


def test_latent_conditioned_hifigan_pipeline(tmp_path, mini_models, monkeypatch):
    """Today's hare-mini: the decoder reads the GPT's latents of the picked codes, cut at the calm code."""
    import dataclasses

    diff = mini_models["diffusion_decoder"]
    on_latents = checkpoints.build("diffusion_decoder", dataclasses.replace(diff.config, conditioning_input="latents"))
    on_latents.load_state_dict(diff.state_dict())
    write_voice(tmp_path / "v" / "ann")
    tts = _tts({**mini_models, "diffusion_decoder": on_latents.eval()}, tmp_path / "v")
    seen = {}
    real_aligned = on_latents.aligned_conditioning

    def spy(aligned, *a, **k):
        seen["aligned"] = aligned
        return real_aligned(aligned, *a, **k)

    monkeypatch.setattr(on_latents, "aligned_conditioning", spy)
    out = tts.tts("A small test.", voice="ann", preset="ultra_fast", seed=1, **SHRINK)
    assert "latents" in out.timings and torch.isfinite(out.audio).all()
    lat = seen["aligned"]
    assert lat.is_floating_point() and lat.shape[-1] == mini_models["autoregressive"].config.dim
    assert out.audio.numel() == lat.shape[1] * 4 * 256  # one latent per kept code


def test_gpt_likelihood_of_candidates_matches_a_row_by_row_teacher_forced_pass(mini_models):
    """`GPT.code_log_likelihood`: mean log-prob of each row's codes and its first stop; stop padding and
    batching change nothing; a row without a stop counts all its codes."""
    import torch.nn.functional as F

    gpt = mini_models["autoregressive"].eval()
    stop = gpt.config.stop_mel_token
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(1, gpt.config.dim, generator=g)
    text = torch.tensor([[20, 21, 22, 0]])
    lengths = [5, 9, 12, 3]
    codes = torch.full((4, 12), stop)
    for i, n in enumerate(lengths):
        codes[i, :n] = torch.randint(0, 60, (n,), generator=g)

    def by_hand(row: torch.Tensor, n: int, with_stop: bool) -> float:
        x = row[:n][None]
        out = gpt(cond, text, torch.tensor([text.shape[1]]), x, torch.tensor([n * gpt.config.mel_length_compression]),
                  clip_inputs=False)
        logp = F.log_softmax(out.mel_logits.float(), dim=1)[0]
        targets = torch.cat([row[:n], torch.tensor([stop])])[: n + int(with_stop)]
        return float(logp[targets, torch.arange(len(targets))].mean())

    with torch.no_grad():
        got = gpt.code_log_likelihood(cond, text, codes, batch_size=3)
        want = [by_hand(codes[i], n, with_stop=n < 12) for i, n in enumerate(lengths)]
        assert got.shape == (4,) and torch.allclose(got, torch.tensor(want), atol=1e-5)
        wider = torch.cat([codes, torch.full((4, 5), stop)], dim=1)  # more stop padding: same scores
        again = gpt.code_log_likelihood(cond, text, wider, batch_size=16)
        assert torch.allclose(again[[0, 1, 3]], got[[0, 1, 3]], atol=1e-5)
        # the full-length row now has its stop token, which counts too
        assert abs(float(again[2]) - by_hand(codes[2], 12, with_stop=True)) < 1e-5 and float(again[2]) != float(got[2])


def test_gpt_alignment_score_of_candidates_matches_a_row_by_row_pass(mini_models):
    """`GPT.score_candidates(alignment=True)`: minus the mean off-diagonal attention mass of the config's alignment
    heads from each row's speech positions (start, codes, stop) to the text; padding and batching change nothing."""
    from hare.models.gpt import diagonal_attention_cost

    gpt = mini_models["autoregressive"].eval()
    c = gpt.config
    assert c.alignment_heads == ((0, 1),)
    stop = c.stop_mel_token
    g = torch.Generator().manual_seed(1)
    cond = torch.randn(1, c.dim, generator=g)
    text = torch.tensor([[20, 21, 22, 23, 0]])
    lengths = [5, 9, 12]
    codes = torch.full((3, 12), stop)
    for i, n in enumerate(lengths):
        codes[i, :n] = torch.randint(0, 60, (n,), generator=g)

    def by_hand(row: torch.Tensor, n: int) -> float:
        block = gpt.blocks[0]
        block.record_qk = True
        try:
            gpt(cond, text, torch.tensor([text.shape[1]]), row[:n][None],
                torch.tensor([n * c.mel_length_compression]), clip_inputs=False)
        finally:
            block.record_qk = False
        q, k = block.recorded
        t = text.shape[1] + 2  # start, text (its stop included), the stop the GPT appends
        cost, valid = diagonal_attention_cost(q[:, 1:2, 1 + t:], k[:, 1:2, 1:1 + t], torch.tensor([t]),
                                              torch.tensor([n + 2]), 0.2)
        assert valid.all()  # one row: every speech position is real
        return -float(cost.mean())

    with torch.no_grad():
        got = gpt.score_candidates(cond, text, codes, batch_size=2, alignment=True)
        want = [by_hand(codes[i], n) for i, n in enumerate(lengths)]
        assert got.alignment.shape == (3,) and torch.allclose(got.alignment, torch.tensor(want), atol=1e-5)
        assert (got.alignment <= 0).all() and (got.alignment > -1).all()
        assert torch.allclose(got.log_likelihood, gpt.code_log_likelihood(cond, text, codes), atol=1e-6)
        wider = torch.cat([codes, torch.full((3, 4), stop)], dim=1)
        again = gpt.score_candidates(cond, text, wider, batch_size=16, alignment=True)
        assert torch.allclose(again.alignment[:2], got.alignment[:2], atol=1e-5)
        assert gpt.score_candidates(cond, text, codes).alignment is None  # not asked: not computed
        assert gpt.blocks[0].recorded is None and not gpt.blocks[0].record_qk  # nothing left behind
        plain = checkpoints.build("autoregressive", dataclasses.replace(c, alignment_heads=())).eval()
        with pytest.raises(ValueError, match="alignment_heads"):
            plain.score_candidates(cond, text, codes, alignment=True)
    with pytest.raises(ValueError, match="alignment_heads"):
        checkpoints.build("autoregressive", dataclasses.replace(c, alignment_heads=((1, 0),)))  # one block only


def test_clvp_letter_score_is_the_ctc_likelihood_per_letter():
    from hare import checkpoints
    from hare.models.configs import CLVPConfig
    from hare.text import CTC_ALPHABET

    torch.manual_seed(0)
    c = CLVPConfig(text_dim=32, speech_dim=32, latent_dim=32, speech_vocab=64, text_depth=1, speech_depth=1,
                   text_heads=2, speech_heads=2, ctc_classes=len(CTC_ALPHABET) + 1, ctc_upsample=2)
    clvp = checkpoints.build("clvp2", c).eval()
    codes = torch.randint(0, 64, (3, 12))
    letters = torch.tensor([8, 5, 12, 12, 15])
    with torch.no_grad():
        score = clvp.ctc_score(letters, codes)
        logp = clvp.ctc_log_probs(clvp.speech_states(codes))
        assert logp.shape == (3, 24, len(CTC_ALPHABET) + 1)  # two outputs per code
        for i in range(3):
            nll = torch.nn.functional.ctc_loss(logp[i:i + 1].transpose(0, 1), letters[None], torch.tensor([24]),
                                               torch.tensor([5]), reduction="sum")
            assert float(score[i]) == pytest.approx(-float(nll) / 5, abs=1e-5)
        assert torch.allclose(clvp.ctc_score(letters, codes, states=clvp.speech_states(codes)), score)
        # the similarity is unchanged by handing it the same speech states
        text = torch.tensor([[3, 4, 5, 0]])
        assert torch.allclose(clvp.similarity(text, codes, states=clvp.speech_states(codes)),
                              clvp.similarity(text, codes))
        # a candidate too short to spell the letters (2 codes, 4 outputs, 5 letters) is impossible, not best
        short = clvp.ctc_score(letters, codes[:, :2])
        assert torch.isneginf(short).all()
    headless = checkpoints.build("clvp2", dataclasses.replace(c, ctc_classes=0))
    assert not any(k.startswith("ctc_head") for k in headless.state_dict())  # the official layout
    with pytest.raises(ValueError, match="no CTC head"):
        headless.ctc_score(letters, codes)


def test_mismatched_vocoder_is_refused(mini_models):
    from tiny_models import tiny_models

    univnet = tiny_models()["vocoder"]
    with pytest.raises(CheckpointError, match="vocoder reads 100-band"):
        TextToSpeech(gpt=mini_models["autoregressive"], clvp=mini_models["clvp2"],
                     diffusion=mini_models["diffusion_decoder"], vocoder=univnet, device="cpu")


def test_calm_code_outside_the_vocabulary_is_refused(mini_models):
    import dataclasses

    gpt = checkpoints.build("autoregressive", dataclasses.replace(mini_models["autoregressive"].config, calm_code=83))
    with pytest.raises(CheckpointError, match="calm/tail codes"):
        TextToSpeech(gpt=gpt, clvp=mini_models["clvp2"], diffusion=mini_models["diffusion_decoder"],
                     vocoder=mini_models["vocoder"], device="cpu")


def test_models_folder_with_a_default_voice(tmp_path, mini_models):
    folder = save_models_dir(mini_models, tmp_path / "m")
    write_voice(folder / "voices" / "default")
    tts = hare.load_model(folder)
    assert tts.default_voice == "default"
    out = tts.tts("Who is speaking?", preset="ultra_fast", seed=0, **SHRINK)  # no voice given
    assert out.settings["voice"] == "default" and out.audio.numel() > 0
    # fp16 storage loads as float32
    checkpoints.save(mini_models["vocoder"], "hifigan", mini_models["vocoder"].config, folder / "vocoder",
                     dtype=torch.float16)
    voc = checkpoints.load_kind_from_dir(folder, "vocoder")
    assert all(p.dtype == torch.float32 for p in voc.parameters())


def test_silence_codes_come_from_the_vqvae():
    from hare.mini import silence_codes
    from hare.models.configs import VQVAEConfig

    torch.manual_seed(0)
    vq = checkpoints.build("vqvae", VQVAEConfig(num_codes=32, hidden=16, codebook_dim=8, resblocks=1))
    calm, tail = silence_codes(vq)
    assert 0 <= calm < 32 and len(tail) == 3 and all(0 <= c < 32 for c in tail)
    with torch.no_grad():
        codes = vq.encode(audio.ar_mel(torch.zeros(1, 44100)))[0]
    assert calm == int(codes.mode().values)


# -- the bundled model ---------------------------------------------------------------------------------

MINI = checkpoints.package_path("weights/hare-mini")
shipped = pytest.mark.skipif(not (MINI / "autoregressive.safetensors").is_file(),
                             reason="hare-mini is not in this checkout")


@shipped
def test_hare_mini_is_the_default_and_small():
    assert checkpoints.DEFAULT_MODEL == "hare-mini" and "hare-mini" in checkpoints.REGISTRY
    weights = sum(p.stat().st_size for p in MINI.glob("*.safetensors"))
    assert weights < 60_000_000, f"hare-mini's weights are {weights / 1e6:.2f} MB"  # the budget, decimal MB
    for kind in ("autoregressive", "clvp2", "diffusion_decoder", "vocoder", "vqvae", "speller"):
        assert (MINI / f"{kind}.safetensors").is_file() and (MINI / f"{kind}.json").is_file()
    assert (MINI / "MODEL_CARD.md").is_file()
    assert list((MINI / "voices" / "default").glob("*.wav"))


@shipped
def test_hare_mini_speaks_with_its_default_voice():
    tts = hare.load_model()
    assert tts.default_voice == "default" and tts.sample_rate == 22050
    out = tts.tts("Hello there.", preset="ultra_fast", seed=0, num_candidates=4)
    seconds = out.audio.numel() / out.sample_rate
    assert 0.3 < seconds < 6 and torch.isfinite(out.audio).all() and out.audio.abs().max() > 0.01


@shipped
def test_hare_mini_warps_a_higher_voice_and_not_its_own():
    """hare-mini's model.json turns voice_warp on: its default voice warps by 1.0 (untouched), the same voice
    shifted up a vocal tract's worth (its clips' mels warped by 1.2) by about 1.2."""
    from hare import audio

    tts = hare.load_model()
    assert tts.default_settings["voice_warp"] == 1.0
    own = tts.voice_latents().mel_mean
    assert tts.voice_warp_factor(own) == 1.0
    clips = [audio.load_audio(p, 22050) for p in sorted((MINI / "voices" / "default").glob("*.wav"))]
    higher = audio.mel_band_means([audio.warp_mel_frequencies(tts.mel_format.mel(c), 1.2, tts.mel_format)
                                   for c in clips])
    assert 1.12 <= tts.voice_warp_factor(higher) <= 1.28


@shipped
def test_hare_speak_uses_hare_mini_without_options(tmp_path):
    wav = tmp_path / "out.wav"
    proc = subprocess.run([sys.executable, "-m", "hare.cli", "speak", "Good morning.", "-o", str(wav),
                           "--preset", "ultra_fast", "--candidates", "4", "--seed", "1", "-q",
                           "--report", str(tmp_path / "r.json")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    data, sr = soundfile.read(wav)
    assert sr == 22050 and len(data) > 0.3 * sr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["settings"]["voice"] == "default"
    if not torch.cuda.is_available():  # on a CPU, hare-mini's cpu_defaults
        assert report["load"]["quantize"] == "int8" and report["load"]["dtype"] == "bf16"


def test_unknown_bundled_files_are_reported(tmp_path):
    spec = checkpoints.ModelSpec(name="ghost", description="", package_dir="weights/no-such-model")
    with pytest.raises(ModelNotFoundError, match="ships no autoregressive weights"):
        checkpoints.fetch("autoregressive", spec, models_root=tmp_path)


def test_model_json_sets_defaults(tmp_path, mini_models):
    folder = save_models_dir(mini_models, tmp_path / "m")
    write_voice(tmp_path / "v" / "zoe")
    (folder / "model.json").write_text(json.dumps({"settings": {"repetition_penalty": 1.3, "num_candidates": 2}}))
    tts = hare.load_model(folder, voices_dirs=[tmp_path / "v"])
    out = tts.tts("Defaults.", voice="zoe", preset="ultra_fast", seed=0, diffusion_steps=2, max_codes=10)
    assert out.settings["repetition_penalty"] == 1.3 and out.settings["num_candidates"] == 2
    out = tts.tts("Defaults.", voice="zoe", preset="ultra_fast", seed=0, diffusion_steps=2, max_codes=10,
                  repetition_penalty=1.0)  # an explicit value wins
    assert out.settings["repetition_penalty"] == 1.0
    (folder / "model.json").write_text(json.dumps({"settings": {"no_such_setting": 1}}))
    with pytest.raises(Exception, match="no_such_setting"):
        hare.load_model(folder)


def test_model_json_cpu_defaults_choose_the_load_options_the_caller_leaves_open(tmp_path, mini_models, monkeypatch):
    """cpu_defaults: on a CPU, where neither quantize nor dtype is named, the model's choice; any named option
    (dtype="fp32", quantize="none") turns them off; a bad entry is a CheckpointError; the HiFi-GAN vocoder goes
    to bfloat16 under dtype="bf16" only where the CPU has bf16 matrix hardware."""
    from hare import kernels, loading

    folder = save_models_dir(mini_models, tmp_path / "m")
    (folder / "model.json").write_text(json.dumps({"cpu_defaults": {"quantize": "int8", "dtype": "bf16"}}))
    source = loading.resolve_model(folder)
    assert source.cpu_defaults == {"quantize": "int8", "dtype": "bf16"}
    assert loading.load_options(source, "cpu", None, None) == ("int8", "bf16")
    assert loading.load_options(source, "cpu", None, "fp32") == (None, "fp32")
    assert loading.load_options(source, "cpu", "none", None) == (None, "fp32")
    assert loading.load_options(source, "cpu", "int8", None) == ("int8", "fp32")
    with pytest.raises(SettingsError, match="quantize must be"):
        loading.load_options(source, "cpu", "int4", None)
    with pytest.raises(SettingsError, match="dtype must be"):
        loading.load_options(source, "cpu", None, "fp8")
    plain = loading.resolve_model(save_models_dir(mini_models, tmp_path / "plain"))
    assert loading.load_options(plain, "cpu", None, None) == (None, "fp32")
    for hardware in (False, True):
        monkeypatch.setattr(kernels, "bf16_matmul", lambda: hardware)
        tts = hare.load_model(folder)
        assert (tts.quantize, tts.dtype, tts.vocoder_bf16) == ("int8", "bf16", hardware)
        assert tts.vocoder.inp.weight.dtype == (torch.bfloat16 if hardware else torch.float32)
        assert tts.vocoder.time_major == hardware  # matrix products in bf16, no per-shape warm-up
        exact = hare.load_model(folder, dtype="fp32")
        assert (exact.quantize, exact.dtype, exact.vocoder_bf16, exact.vocoder.time_major) == (None, "fp32",
                                                                                                False, False)
    mel = torch.randn(1, 80, 300) - 4
    wav = tts.vocoder.vocode(mel)
    want = exact.vocoder.vocode(mel)
    assert wav.dtype == torch.float32 and wav.shape == want.shape
    torch.testing.assert_close(wav, want, atol=0.05, rtol=0)  # bf16 rounding is all that separates them
    for bad in ({"quantize": "int4"}, {"dtype": "fp8"}, {"threads": 2}):
        (folder / "model.json").write_text(json.dumps({"cpu_defaults": bad}))
        with pytest.raises(CheckpointError, match="cpu_defaults"):
            loading.resolve_model(folder)


def test_grow_gpt_keeps_the_function_and_adds_blocks(tmp_path):
    from hare.mini import grow_gpt, main as mini_main
    from hare.models.configs import GPTConfig

    torch.manual_seed(3)
    cfg = GPTConfig(layers=2, dim=32, heads=2, max_mel_tokens=40, max_text_tokens=40, mel_vocab=66,
                    start_mel_token=64, stop_mel_token=65, cond_attn_blocks=1, alignment_heads=((1, 0), (1, 1)))
    gpt = checkpoints.build("autoregressive", cfg).eval()
    src = checkpoints.save(gpt, "autoregressive", cfg, tmp_path / "src" / "autoregressive.safetensors")
    assert mini_main(["grow-gpt", str(src), str(tmp_path / "big"), "--insert-after", "0",
                      "--insert-after", "1"]) == 0
    big, kind, big_cfg = checkpoints.load(tmp_path / "big" / "autoregressive.safetensors")
    assert kind == "autoregressive" and big_cfg.layers == 4 and len(big.blocks) == 4
    assert big_cfg.alignment_heads == ((2, 0), (2, 1))  # they move with their block
    torch.testing.assert_close(big.blocks[2].qkv.weight, gpt.blocks[1].qkv.weight)  # 0 new 1 new
    assert big.blocks[1].attn_out.weight.abs().sum() == 0 and big.blocks[3].proj.bias.abs().sum() == 0
    assert big.blocks[1].qkv.weight.abs().sum() > 0  # the rest of a new block is initialised normally
    args = (torch.randn(2, 32), torch.randint(1, 50, (2, 7)), torch.tensor([7, 5]), torch.randint(0, 64, (2, 6)),
            torch.tensor([6 * 1024, 4 * 1024]))
    with torch.no_grad():
        a, b = gpt(*args), big.eval()(*args)
    torch.testing.assert_close(b.mel_logits, a.mel_logits, atol=1e-5, rtol=1e-5)
    assert not torch.equal(gpt.blocks[0].qkv.weight, big.blocks[1].qkv.weight)
    with pytest.raises(ValueError, match="block numbers"):
        grow_gpt(src, tmp_path / "bad", [2])


@shipped
def test_prior_mels_writes_the_decoder_priors_mel_of_each_clips_true_codes(tmp_path):
    """`python -m hare.train.prior_mels`: one float16 HiFi-GAN log mel per utterance, the decoder's prior from the
    GPT's latents of the clip's VQ-VAE codes (4 frames per code), named by the feature cache's key, kept on a
    second run."""
    from hare.train import prior_mels
    from hare.train.data import cache_key

    rows = []
    for i, text in enumerate(["A short test.", "Another one here."]):
        t = torch.arange(int(22050 * (1.2 + 0.4 * i))) / 22050
        wav = 0.3 * torch.sin(2 * torch.pi * (150 + 30 * i) * t) * torch.sin(2 * torch.pi * 3 * t).abs()
        soundfile.write(tmp_path / f"{i}.wav", wav.numpy(), 22050)
        rows.append(f"{i}.wav|{text}|s")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "prior"
    assert prior_mels.main([str(tmp_path / "m.csv"), "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    from hare.train.data import CachedCorpus

    corpus, _ = CachedCorpus.build(tmp_path / "m.csv", tmp_path / "cache", ("codes",),
                                   vqvae=str(MINI / "vqvae.safetensors"))
    for i, u in enumerate(corpus.utterances):
        mel = torch.load(out / f"{cache_key(u.path)}.pt")
        codes = corpus.features(i, ("codes",))["codes"]
        assert mel.dtype == torch.float16 and mel.shape == (80, 4 * len(codes))
        assert torch.isfinite(mel.float()).all() and -12 < float(mel.float().mean()) < 2
    stamp = (out / f"{cache_key(corpus.utterances[0].path)}.pt").stat().st_mtime_ns
    assert prior_mels.main([str(tmp_path / "m.csv"), "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    assert (out / f"{cache_key(corpus.utterances[0].path)}.pt").stat().st_mtime_ns == stamp


def test_assemble_only_copies_the_named_networks_in_float16(tmp_path):
    from hare.mini import assemble
    from hare.models.configs import ListenerConfig

    listener = checkpoints.build("listener", ListenerConfig(dim=32, depth=1, heads=1, ff_mult=2))
    (tmp_path / "runs" / "listener" / "final").mkdir(parents=True)
    checkpoints.save(listener, "listener", listener.config, tmp_path / "runs" / "listener" / "final" / "listener")
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "autoregressive.safetensors").write_bytes(b"untouched")
    written = assemble(tmp_path / "runs", out, only=["listener"])
    assert written == [out / "listener.safetensors"]
    assert (out / "autoregressive.safetensors").read_bytes() == b"untouched"
    model, kind, config = checkpoints.load(out / "listener.safetensors")
    assert kind == "listener" and config == listener.config
    from safetensors import safe_open

    with safe_open(str(out / "listener.safetensors"), "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
    with pytest.raises(ValueError, match="unknown networks"):
        assemble(tmp_path / "runs", out, only=["tacotron"])
