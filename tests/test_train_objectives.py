"""Each training objective: a tiny model's loss falls clearly on a tiny synthetic batch."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from hare.train import TrainingError
from hare.train.objectives import make_objective
from hare.train.objectives.diffusion import DIFFUSION_FRAMES_PER_CODE

CODES = 64  # tiny VQ-VAE codebook used by the code-based objectives

TINY = {
    "vqvae": dict(num_codes=CODES, hidden=32, codebook_dim=16, resblocks=1, layers=2),
    "gpt": dict(layers=2, dim=64, heads=2, max_mel_tokens=64, max_text_tokens=64, mel_vocab=CODES + 2,
                start_mel_token=CODES, stop_mel_token=CODES + 1, cond_attn_blocks=1, dropout=0.0),
    "clvp": dict(text_dim=64, speech_dim=64, latent_dim=64, speech_vocab=CODES, text_depth=1, speech_depth=1,
                 text_heads=2, speech_heads=2, text_seq_len=64, speech_seq_len=64),
    "diffusion": dict(channels=32, layers=1, latent_channels=32, num_codes=CODES + 1, heads=2,
                      unconditioned_percentage=0.1),
    "vocoder": dict(channels=8, kpnet_hidden=16, noise_dim=16),
    "speller": dict(speech_vocab=CODES, dim=64, depth=1, heads=1, ff_mult=2),
    "listener": dict(dim=64, depth=1, heads=1, ff_mult=2),
}
OPTIONS = {
    "vqvae": dict(crop_frames=32),
    "gpt": dict(cond_frames=32),
    "clvp": {},
    "diffusion": dict(max_codes=8, cond_frames=32),
    "vocoder": dict(segment_frames=16, discriminator=dict(periods=[2, 3], period_channels=[8, 16, 16],
                                                           resolutions=[[256, 64, 256], [128, 32, 128]],
                                                           resolution_channels=8)),
    "speller": {},
    "listener": dict(time_masks=0, band_masks=0, blur_probability=0.0, level_shift=0.0),
}


def _examples(name: str, objective, n: int, g: torch.Generator) -> list[dict]:
    out = []
    for i in range(n):
        if name == "vqvae":
            out.append({"mel": (torch.randn(80, 32, generator=g).cumsum(-1) * 0.1)})
        elif name == "gpt":
            text = torch.randint(1, 255, (5 + i,), generator=g)
            codes = torch.randint(0, CODES, (8 + i,), generator=g)
            out.append({"text": text, "codes": codes, "samples22": (8 + i) * 1024 + 500,
                        "cond": torch.randn(2, 80, 32, generator=g)})
        elif name == "clvp":
            out.append({"text": torch.randint(1, 255, (6 + i,), generator=g),
                        "codes": torch.randint(0, CODES, (10 + i,), generator=g)})
        elif name == "diffusion":
            frames = int(8 * DIFFUSION_FRAMES_PER_CODE)
            codes = torch.randint(0, CODES, (8,), generator=g)
            # a target mel that follows the codes, so the conditioning is informative
            table = torch.linspace(-0.8, 0.8, CODES)
            aligned = codes[(torch.arange(frames) * 8) // frames]  # nearest-neighbour, as the model stretches codes
            mel = table[aligned].expand(100, frames).clone()
            out.append({"codes": codes, "mel": mel, "frames": frames, "cond": torch.randn(100, 32, generator=g)})
        elif name == "speller":
            letters = torch.randint(1, 29, (4 + i,), generator=g)
            out.append({"codes": (letters + 20).repeat_interleave(2), "letters": letters})
        elif name == "listener":  # each letter a band lit for two frames
            letters = torch.randint(1, 29, (4 + i,), generator=g)
            mel = torch.full((80, 2 * len(letters) + 2), -11.5)
            mel[letters.repeat_interleave(2) * 2, torch.arange(2 * len(letters)) + 1] = 0.0
            out.append(objective.example(_MelCorpus([mel], ["x"]), 0, random.Random(i)) | {"letters": letters})
        elif name == "vocoder":
            t = torch.arange(16 * 256) / 24000
            f = 200 + 100 * i
            out.append({"wav": 0.5 * torch.sin(2 * torch.pi * f * t)})
    return out


class _MelCorpus:
    """What a listener example reads: each utterance's path and text, its cached HiFi-GAN mel."""

    def __init__(self, mels, texts, paths=None):
        self.mels = mels
        self.utterances = [type("U", (), {"text": t, "path": p})
                           for t, p in zip(texts, paths or [f"/nowhere/{i}.wav" for i in range(len(texts))])]

    def features(self, index, names):
        assert tuple(names) == ("hifi_mel",)
        return {"hifi_mel": self.mels[index].half()}


def _measure(objective, models, batch, key: str) -> float:
    """The loss in eval mode at fixed randomness (diffusion: over 8 copies of the batch, for more timesteps)."""
    if objective.name == "diffusion":
        batch = {k: v.repeat(8, *([1] * (v.dim() - 1))) for k, v in batch.items()}
    for m in models.values():
        m.eval()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(123)
        losses = objective.eval_loss(models, batch)
    for m in models.values():
        m.train()
    return float(losses[key])


@pytest.mark.parametrize("name,steps,lr,key,factor", [
    ("vqvae", 60, 2e-3, "loss", 0.5),
    ("gpt", 40, 3e-3, "loss", 0.5),
    ("clvp", 30, 1e-3, "loss", 0.5),
    ("diffusion", 80, 3e-3, "mse", 0.85),  # eps-MSE falls slowly at first (a 32-channel net)
    ("vocoder", 40, 2e-3, "stft_mag", 0.8),
    ("speller", 40, 3e-3, "loss", 0.5),
    ("listener", 40, 3e-3, "loss", 0.5),
])
def test_loss_falls_on_tiny_batch(name, steps, lr, key, factor):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    objective = make_objective(name, TINY[name], OPTIONS[name])
    models = objective.build_models()
    objective.prepare_for_training(models)
    batch = objective.collate(_examples(name, objective, 4, g))
    opts = {k: torch.optim.Adam(m.parameters(), lr=lr) for k, m in models.items()}
    before = _measure(objective, models, batch, key)
    for step in range(steps):
        scratch: dict = {}
        for phase in objective.phases:
            losses = objective.loss(phase.name, models, batch, step, scratch)
            assert torch.isfinite(losses["loss"])
            for k in phase.trains:
                opts[k].zero_grad()
            losses["loss"].backward()
            for k in phase.trains:
                opts[k].step()
    after = _measure(objective, models, batch, key)
    assert after < factor * before, (name, before, after)


def test_vqvae_reports_codebook_usage():
    objective = make_objective("vqvae", TINY["vqvae"], OPTIONS["vqvae"])
    models = objective.build_models()
    batch = objective.collate(_examples("vqvae", objective, 2, torch.Generator().manual_seed(1)))
    losses = objective.loss("main", models, batch, 0, {})
    assert 0 < float(losses["codes_used"]) <= 1 and float(losses["perplexity"]) >= 1


def test_vocoder_export_folds_weight_norm():
    objective = make_objective("vocoder", TINY["vocoder"], OPTIONS["vocoder"])
    models = objective.build_models()
    objective.prepare_for_training(models)
    module, kind, config = objective.export(models)
    assert kind == "vocoder" and not any(k.endswith(("original0", "original1")) for k in module.state_dict())
    mel, noise = torch.randn(1, 100, 4), torch.randn(1, 16, 4)
    torch.testing.assert_close(module(mel, noise), models["generator"](mel, noise))


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_objective_exports_its_network(name):
    objective = make_objective(name, TINY[name], OPTIONS.get(name))
    module, kind, config = objective.export(objective.build_models())
    assert kind == objective.kind and type(config) is objective.config_class and module.state_dict()


def test_unknown_settings_are_refused():
    with pytest.raises(TrainingError, match="unknown model settings: widht"):
        make_objective("gpt", {"widht": 3})
    with pytest.raises(TrainingError, match="unknown objective"):
        make_objective("tacotron")


def test_guided_attention_loss_prefers_the_diagonal():
    from hare.train.objectives.gpt import guided_attention_loss

    t_len, m_len, d = 10, 20, 8
    # one-hot keys; queries that pick the diagonal key (or the anti-diagonal one) very sharply
    k = torch.eye(t_len, d if d >= t_len else t_len)[None, None] * 50
    diag = torch.stack([k[0, 0, (j * t_len) // m_len] for j in range(m_len)])[None, None]
    anti = torch.stack([k[0, 0, t_len - 1 - (j * t_len) // m_len] for j in range(m_len)])[None, None]
    lens_t, lens_m = torch.tensor([t_len]), torch.tensor([m_len])
    good = guided_attention_loss(diag, k, lens_t, lens_m, 0.2)
    bad = guided_attention_loss(anti, k, lens_t, lens_m, 0.2)
    assert float(good) < 0.05 < 0.5 < float(bad)
    # padding beyond the real lengths is ignored: extra keys and queries change nothing
    k_pad = torch.cat([k, torch.randn(1, 1, 5, k.shape[-1]) * 50], dim=2)
    q_pad = torch.cat([diag, torch.randn(1, 1, 7, k.shape[-1])], dim=2)
    torch.testing.assert_close(guided_attention_loss(q_pad, k_pad, lens_t, lens_m, 0.2), good)


def test_gpt_guided_attention_trains_and_is_checked():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    options = dict(OPTIONS["gpt"], guided_weight=1.0, guided_layers=[1], guided_heads=1)
    objective = make_objective("gpt", TINY["gpt"], options)
    models = objective.build_models()
    batch = objective.collate(_examples("gpt", objective, 3, g))
    opt = torch.optim.Adam(models["model"].parameters(), lr=3e-3)
    first = None
    for step in range(30):
        losses = objective.loss("main", models, batch, step, {})
        first = float(losses["guided"]) if first is None else first
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    assert float(losses["guided"]) < 0.5 * first
    assert all(not b.record_qk for b in models["model"].blocks)  # recording is switched off again
    # the exported config records the guided heads for the reranker's alignment score
    assert objective.export(models)[2].alignment_heads == ((1, 0),)
    assert make_objective("gpt", TINY["gpt"], OPTIONS["gpt"]).export(models)[2].alignment_heads == ()
    named = make_objective("gpt", dict(TINY["gpt"], alignment_heads=[[0, 1]]), options)
    assert named.export(named.build_models())[2].alignment_heads == ((0, 1),)  # a config's own pairs win
    with pytest.raises(TrainingError, match="guided_layers"):
        make_objective("gpt", TINY["gpt"], dict(options, guided_layers=[2]))
    with pytest.raises(TrainingError, match="guided_heads"):
        make_objective("gpt", TINY["gpt"], dict(options, guided_heads=3))


def test_diffusion_prior_blocks_and_shallow_training(monkeypatch):
    config = dict(TINY["diffusion"], prior_layers=2)
    objective = make_objective("diffusion", config, dict(OPTIONS["diffusion"], aux_mel_weight=1.0,
                                                         max_t_fraction=0.1))
    models = objective.build_models()
    model = models["model"]
    assert len(model.prior_blocks) == 2 and any(k.startswith("prior_blocks.1.") for k in model.state_dict())
    assert not any(k.startswith("prior_blocks") for k in
                   make_objective("diffusion", TINY["diffusion"]).build_models()["model"].state_dict())
    batch = objective.collate(_examples("diffusion", objective, 2, torch.Generator().manual_seed(0)))
    seen = []
    real_randint = torch.randint

    def spy(low, high, *args, **kwargs):
        seen.append(high)
        return real_randint(low, high, *args, **kwargs)

    monkeypatch.setattr(torch, "randint", spy)
    losses = objective.loss("main", models, batch, 0, {})
    monkeypatch.undo()
    assert seen == [400] and torch.isfinite(losses["loss"]) and "aux_mel" in losses
    with pytest.raises(TrainingError, match="max_t_fraction"):
        make_objective("diffusion", config, dict(OPTIONS["diffusion"], max_t_fraction=0))


def test_diffusion_prior_blocks_survive_save_and_load(tmp_path):
    from hare import checkpoints

    objective = make_objective("diffusion", dict(TINY["diffusion"], prior_layers=1), OPTIONS["diffusion"])
    module, kind, config = objective.export(objective.build_models())
    loaded, kind2, config2 = checkpoints.load(checkpoints.save(module, kind, config, tmp_path / "d"))
    assert kind2 == "diffusion_decoder" and config2.prior_layers == 1
    aligned = torch.randn(1, TINY["diffusion"]["channels"], 12)
    torch.testing.assert_close(loaded.predict_mel(aligned), module.eval().predict_mel(aligned))


def _tiny_gpt_file(tmp_path, **overrides):
    from hare import checkpoints
    from hare.models.configs import GPTConfig

    torch.manual_seed(3)
    gpt = checkpoints.build("autoregressive", GPTConfig(**dict(TINY["gpt"], **overrides)))
    return checkpoints.save(gpt, "autoregressive", gpt.config, tmp_path / "gpt"), gpt.eval()


def test_diffusion_on_gpt_latents_sees_the_pipelines_latents(tmp_path):
    """Each row's conditioning = the frozen GPT's teacher-forced latents of the whole utterance (text + stop
    token, as the pipeline passes them), cut to the row's window; zeros past the utterance's end."""
    gpt_path, gpt = _tiny_gpt_file(tmp_path)
    config = dict(TINY["diffusion"], conditioning_input="latents", latent_channels=64)
    objective = make_objective("diffusion", config, dict(OPTIONS["diffusion"], gpt=str(gpt_path)))
    assert objective.features == ("diff_mel", "codes", "ar_mel")
    assert objective.limits()["needs_text"] and objective.limits()["max_text_tokens"] == 64
    g = torch.Generator().manual_seed(0)
    examples = _examples("diffusion", objective, 2, g)
    lengths, starts = (20, 5), (9, 0)  # row 0: a window inside a longer utterance; row 1: shorter than a window
    for e, n, start in zip(examples, lengths, starts):
        e.update(text=torch.randint(1, 255, (7,), generator=g), prefix=torch.randint(0, CODES, (n,), generator=g)[
            :start + 8], start=start, ar_cond=torch.randn(2, 80, 32, generator=g))
    batch = objective.collate(examples)
    latents = objective.gpt_latents(batch)
    assert latents.shape == (2, 8, 64)
    with torch.no_grad():
        for i, n in enumerate(lengths):
            voice = gpt.conditioning_latent(batch["ar_cond"][i:i + 1])
            full = torch.randint(0, CODES, (n,), generator=torch.Generator().manual_seed(9))
            full[: len(batch["prefix"][i])] = batch["prefix"][i]  # the codes after the window do not matter
            want = gpt.speech_latents(voice, batch["text"][i][None], full[None])[0, starts[i]:starts[i] + 8]
            torch.testing.assert_close(latents[i, :want.shape[0]], want)
            assert not latents[i, want.shape[0]:].any()
    models = objective.build_models()
    opt = torch.optim.Adam(models["model"].parameters(), lr=1e-3)
    losses = objective.loss("main", models, batch, 0, {})
    losses["loss"].backward()
    model = models["model"]
    assert model.latent_in.weight.grad is not None and model.code_embedding.weight.grad is None
    opt.step()
    assert all(not p.requires_grad for p in objective.gpt().parameters())  # the GPT stays frozen


def test_diffusion_on_gpt_latents_checks_its_gpt(tmp_path):
    from hare import checkpoints

    config = dict(TINY["diffusion"], conditioning_input="latents", latent_channels=64)
    on_codes = make_objective("diffusion", config, OPTIONS["diffusion"])  # Tortoise's first stage
    assert not on_codes.on_latents and on_codes.features == ("diff_mel", "codes")
    gpt_path, _ = _tiny_gpt_file(tmp_path)
    options = dict(OPTIONS["diffusion"], gpt=str(gpt_path))
    with pytest.raises(TrainingError, match="conditioning_input must be 'latents'"):
        make_objective("diffusion", dict(config, conditioning_input="codes"), options)
    narrow = make_objective("diffusion", dict(config, latent_channels=32), options)
    with pytest.raises(TrainingError, match="latent_channels must be the GPT's width 64"):
        narrow.limits()
    other = checkpoints.save(make_objective("clvp", TINY["clvp"]).build_models()["model"], "clvp2",
                             make_objective("clvp", TINY["clvp"]).config, tmp_path / "clvp")
    with pytest.raises(TrainingError, match="holds a clvp2 model, not a GPT"):
        make_objective("diffusion", config, dict(OPTIONS["diffusion"], gpt=str(other))).gpt()
    with pytest.raises(TrainingError, match="options.gpt: checkpoint file not found"):
        make_objective("diffusion", config, dict(OPTIONS["diffusion"], gpt=str(tmp_path / "missing"))).gpt()


class _TwoClipCorpus:
    """Two utterances of one speaker: codes and a 100-band diffusion mel each (no disk, no cache)."""

    def __init__(self):
        g = torch.Generator().manual_seed(3)
        self.items = [{"codes": torch.randint(0, CODES, (8,), generator=g),
                       "diff_mel": torch.randn(100, 40, generator=g) - 5} for _ in range(2)]

    def features(self, index, names):
        return {n: self.items[index][n] for n in names}

    def same_speaker(self, index):
        return [1 - index]


def test_diffusion_speaker_warp_moves_target_and_voice_clip_together():
    import random

    from hare import audio

    corpus, fmt = _TwoClipCorpus(), audio.mel_format("univnet")
    options = dict(OPTIONS["diffusion"], cond_frames=40)
    plain = make_objective("diffusion", TINY["diffusion"], options).example(corpus, 0, random.Random(5))
    frames = plain["frames"]
    torch.testing.assert_close(plain["mel"][:, :frames], audio.normalize_mel(corpus.items[0]["diff_mel"][:, :frames]))
    torch.testing.assert_close(plain["cond"], corpus.items[1]["diff_mel"])
    warped = make_objective("diffusion", TINY["diffusion"], dict(options, speaker_warp=[1.25, 1.25],
                                                                 speaker_warp_prob=1.0))
    assert warped.options.speaker_warp == (1.25, 1.25)
    ex = warped.example(corpus, 0, random.Random(5))
    want = audio.warp_mel_frequencies(corpus.items[0]["diff_mel"][:, :frames], 1.25, fmt)
    torch.testing.assert_close(ex["mel"][:, :frames], audio.normalize_mel(want))
    torch.testing.assert_close(ex["cond"], audio.warp_mel_frequencies(corpus.items[1]["diff_mel"], 1.25, fmt))
    assert not torch.allclose(ex["cond"], plain["cond"])
    never = make_objective("diffusion", TINY["diffusion"], dict(options, speaker_warp=[0.8, 1.3],
                                                                speaker_warp_prob=0.0))
    torch.testing.assert_close(never.example(corpus, 0, random.Random(5))["cond"], plain["cond"])
    for bad in ([1.3, 0.8], [0, 1.2], [1.1], "1.2"):
        with pytest.raises(TrainingError, match="speaker_warp"):
            make_objective("diffusion", TINY["diffusion"], dict(options, speaker_warp=bad))
    with pytest.raises(TrainingError, match="speaker_warp_prob"):
        make_objective("diffusion", TINY["diffusion"], dict(options, speaker_warp=[0.9, 1.1], speaker_warp_prob=2))
    # separate pitch and formant factors: the source-filter warp of both, with the same two factors
    sf = make_objective("diffusion", TINY["diffusion"], dict(options, speaker_warp=[1.1, 1.1], speaker_pitch=[1.6, 1.6],
                                                             speaker_warp_prob=1.0))
    ex = sf.example(corpus, 0, random.Random(5))
    want = audio.warp_mel_source_filter(corpus.items[0]["diff_mel"][:, :frames], 1.6, 1.1, fmt)
    torch.testing.assert_close(ex["mel"][:, :frames], audio.normalize_mel(want))
    torch.testing.assert_close(ex["cond"], audio.warp_mel_source_filter(corpus.items[1]["diff_mel"], 1.6, 1.1, fmt))
    with pytest.raises(TrainingError, match="needs options.speaker_warp"):
        make_objective("diffusion", TINY["diffusion"], dict(options, speaker_pitch=[0.8, 1.8]))
    with pytest.raises(TrainingError, match="speaker_pitch"):
        make_objective("diffusion", TINY["diffusion"], dict(options, speaker_warp=[1, 1], speaker_pitch=[2, 1]))


class _SpeakersCorpus:
    """Four utterances, two speakers (a, a, b, b), with the features a decoder on GPT latents reads."""

    def __init__(self):
        from types import SimpleNamespace

        g = torch.Generator().manual_seed(4)
        self.utterances = [SimpleNamespace(speaker=s, text="a short test") for s in "aabb"]
        self.items = [{"codes": torch.randint(0, CODES, (12,), generator=g), "diff_mel": torch.randn(100, 60, generator=g),
                       "ar_mel": torch.full((80, 40), float(i))} for i in range(4)]  # ar_mel tells the utterance

    def features(self, index, names):
        return {n: self.items[index][n] for n in names}

    def utterances_of(self, speaker):
        return [j for j, u in enumerate(self.utterances) if u.speaker == speaker]

    def same_speaker(self, index):
        return [j for j in self.utterances_of(self.utterances[index].speaker) if j != index]

    @property
    def speakers(self):
        return sorted({u.speaker for u in self.utterances})


def test_diffusion_gpt_voice_from_another_speaker(tmp_path):
    """`gpt_cond_other_speaker`: the GPT's voice clips come from another speaker's utterances at that rate."""
    import random

    from hare.train.objectives.gpt import other_speaker_utterance

    corpus = _SpeakersCorpus()
    rng = random.Random(0)
    assert {other_speaker_utterance(corpus, 0, rng) for _ in range(40)} == {2, 3}
    assert {other_speaker_utterance(corpus, 3, rng) for _ in range(40)} == {0, 1}
    gpt_path, _ = _tiny_gpt_file(tmp_path)
    config = dict(TINY["diffusion"], conditioning_input="latents", latent_channels=64)

    def voices(rate):  # the utterances the GPT's voice clips of utterance 0 come from, over many draws
        obj = make_objective("diffusion", config, dict(OPTIONS["diffusion"], gpt=str(gpt_path), gpt_cond_clips=1,
                                                       gpt_cond_frames=40, gpt_cond_other_speaker=rate))
        return [int(obj.example(corpus, 0, random.Random(i))["ar_cond"][0, 0, 0]) for i in range(60)]

    assert set(voices(0.0)) == {1}  # the speaker's other utterance
    assert set(voices(1.0)) == {2, 3}
    mixed = voices(0.5)
    assert set(mixed) == {1, 2, 3} and 15 < mixed.count(1) < 45
    with pytest.raises(TrainingError, match="gpt_cond_other_speaker"):
        make_objective("diffusion", config, dict(OPTIONS["diffusion"], gpt_cond_other_speaker=1.5))


def test_damage_codes_drops_repeats_or_replaces_a_span():
    import random

    from hare.train.objectives.candidates import damage_codes

    codes, other = torch.arange(40), torch.arange(100, 160)
    rng = random.Random(3)
    seen = set()
    for _ in range(60):
        bad = damage_codes(codes, other, rng, span=(0.2, 0.3))
        assert not torch.equal(bad, codes)
        if len(bad) < len(codes):  # dropped: an in-order subsequence missing one contiguous span of 8-12
            seen.add("drop")
            assert 8 <= len(codes) - len(bad) <= 12 and bool((bad.diff() >= 1).all())
        elif len(bad) > len(codes):  # said twice: one span of 8-12 repeated
            seen.add("repeat")
            assert 8 <= len(bad) - len(codes) <= 12 and set(bad.tolist()) == set(codes.tolist())
        else:  # babble: a span replaced by the other utterance's codes
            seen.add("replace")
            foreign = bad >= 100
            idx = foreign.nonzero()[:, 0]
            assert 8 <= len(idx) <= 12 and int(idx[-1] - idx[0]) == len(idx) - 1  # one contiguous span
            assert torch.equal(bad[~foreign], codes[~foreign])  # the rest untouched
    assert seen == {"drop", "repeat", "replace"}


def _fit(objective, models, batch, steps: int, lr: float = 3e-3) -> None:
    """`steps` Adam steps of the main model on one batch."""
    opt = torch.optim.Adam(models["model"].parameters(), lr=lr)
    for _ in range(steps):
        loss = objective.loss("main", models, batch, 0, {})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_clvp_trains_on_candidates_as_the_pipeline_hands_them_over():
    """calm_code/tail_codes: the codes end in a silence run and the tail codes, unmasked, as after
    `fix_candidates`; hard negatives add damaged copies that the loss ranks below the true codes."""
    import random

    from hare.pipeline import fix_candidates

    opts = dict(calm_code=5, tail_codes=[5, 5, 9], max_calm_pad=6, hard_negatives=1.0)
    obj = make_objective("clvp", TINY["clvp"], opts)
    rng = random.Random(0)
    cand = obj._as_candidate(torch.arange(20, 40), rng)
    pad = len(cand) - 20 - 3
    assert 1 <= pad <= 6 and cand[:20].tolist() == list(range(20, 40)) and cand[20:].tolist() == [5] * pad + [5, 5, 9]
    # the same layout fix_candidates gives a sampled candidate that stopped after 20 codes
    sampled = torch.cat([torch.arange(20, 40), torch.tensor([63] * (pad + 3))])[None]
    assert fix_candidates(sampled, stop_token=63, calm_code=5, tail_codes=(5, 5, 9))[0].tolist() == cand.tolist()
    # never longer than the model's speech_seq_len, and the speech is kept whole when it fits
    long = obj._as_candidate(torch.arange(0, 63), rng)
    assert len(long) == 64 and long[-4:].tolist() == [5, 5, 5, 9]

    g = torch.Generator().manual_seed(0)
    examples = []
    for i in range(6):
        ex = {"text": torch.randint(1, 255, (6 + i,), generator=g), "codes": torch.randint(10, CODES, (12 + i,), generator=g)}
        ex["negative"] = ex["codes"].flip(0)
        examples.append(ex)
    examples[2].pop("negative")
    batch = obj.collate(examples)
    assert batch["negatives"].shape[0] == 5 and batch["negative_of"].tolist() == [0, 1, 3, 4, 5]
    assert batch["negative_mask"].sum(1).tolist() == [len(e["negative"]) for e in examples if "negative" in e]
    model = obj.build_models()
    out = obj.loss("main", model, batch, 0, {})
    assert {"loss", "accuracy", "hard_accuracy"} <= set(out)
    # the damaged copies enter the text-to-speech softmax: with them the loss is higher than without
    plain = {k: v for k, v in batch.items() if not k.startswith("negative")}
    assert float(out["loss"].detach()) > float(obj.loss("main", model, plain, 0, {})["loss"].detach())
    # and training pushes a text's own damaged copy below its true codes
    _fit(obj, model, batch, steps=40)
    assert float(obj.loss("main", model, batch, 0, {})["hard_accuracy"]) == 1.0


def test_clvp_options_are_checked():
    with pytest.raises(ValueError, match="hard_negatives"):
        make_objective("clvp", TINY["clvp"], {"hard_negatives": 1.5})
    with pytest.raises(ValueError, match="damage_span"):
        make_objective("clvp", TINY["clvp"], {"damage_span": [0.5, 0.2]})


def test_clvp_ctc_head_learns_to_read_the_letters_off_the_codes():
    """ctc_weight: the speech encoder's letter head learns the text's letters (codes that spell them here), and
    its score then ranks the true codes above a copy that drops a word; the contrastive loss is still there."""
    from hare.text import CTC_ALPHABET, ctc_targets

    model_cfg = {**TINY["clvp"], "ctc_classes": len(CTC_ALPHABET) + 1}
    obj = make_objective("clvp", model_cfg, {"ctc_weight": 1.0})
    words = ["cat", "dog", "sun", "red", "big", "hat", "run", "top"]
    g = torch.Generator().manual_seed(0)
    examples = []
    for i in range(8):
        text = " ".join(words[(i + j) % 8] for j in range(3))
        letters = torch.tensor(ctc_targets(text))
        codes = (letters + 20).repeat_interleave(1 + (torch.arange(len(letters)) % 2))  # 1-2 codes per letter
        examples.append({"text": torch.randint(1, 255, (6 + i,), generator=g), "codes": codes, "letters": letters})
    batch = obj.collate(examples)
    assert batch["letter_lengths"].tolist() == [len(e["letters"]) for e in examples]
    assert batch["speech_lengths"].tolist() == [len(e["codes"]) for e in examples]
    models = obj.build_models()
    first = obj.loss("main", models, batch, 0, {})
    assert {"loss", "ctc", "contrastive", "accuracy"} <= set(first)
    assert float(first["loss"].detach()) == pytest.approx(float(first["contrastive"] + first["ctc"].detach()), rel=1e-5)
    _fit(obj, models, batch, steps=80)
    models["model"].eval()
    with torch.no_grad():
        last = obj.loss("main", models, batch, 0, {})
    assert float(last["ctc"]) < 0.3 * float(first["ctc"].detach())
    true = examples[0]["codes"]
    dropped = true[: len(true) // 2]  # the candidate stopped half way
    with torch.no_grad():
        codes = torch.nn.utils.rnn.pad_sequence([true, dropped], batch_first=True, padding_value=20)
        score = models["model"].ctc_score(examples[0]["letters"], codes)
    assert float(score[0]) > float(score[1]) + 1.0


def test_clvp_ctc_options_are_checked():
    with pytest.raises(ValueError, match="ctc_weight"):
        make_objective("clvp", TINY["clvp"], {"ctc_weight": -1})
    with pytest.raises(TrainingError, match="ctc_classes"):  # a weight without a head
        make_objective("clvp", TINY["clvp"], {"ctc_weight": 1.0}).limits()
    with pytest.raises(TrainingError, match="ctc_classes must be"):
        make_objective("clvp", {**TINY["clvp"], "ctc_classes": 10}, {"ctc_weight": 1.0}).limits()
    head = make_objective("clvp", {**TINY["clvp"], "ctc_classes": 29}, {})
    headless = make_objective("clvp", TINY["clvp"], {})
    # initial weights without the head (any official or earlier CLVP) may train one: only its keys start fresh
    assert head.fresh_parameters(headless.config) == ("ctc_head.",)
    assert head.fresh_parameters(head.config) == () and headless.fresh_parameters(headless.config) == ()
    # under DDP a head no loss trains must not stall the gradient reduction
    assert head.find_unused_parameters and not headless.find_unused_parameters
    assert not make_objective("clvp", {**TINY["clvp"], "ctc_classes": 29}, {"ctc_weight": 0.5}).find_unused_parameters


def test_speller_learns_to_spell_and_scores_a_dropped_word_lower():
    """The speller objective: CTC over the text's letters; once trained, the true codes outscore a candidate
    that stops half way and one with a word swapped, and the score is the CTC likelihood per letter."""
    from hare.models.speller import letter_score
    from hare.text import ctc_targets

    torch.manual_seed(0)
    obj = make_objective("speller", TINY["speller"], {"calm_code": 3, "tail_codes": [3, 4], "max_calm_pad": 4})
    words = ["cat", "dog", "sun", "red", "big", "hat", "run", "top"]
    rng = random.Random(0)

    class Corpus:  # the two things an example reads: the cached codes and the text
        utterances = [type("U", (), {"text": " ".join(words[(i + j) % 8] for j in range(3))}) for i in range(8)]

        def features(self, index, names):
            letters = torch.tensor(ctc_targets(self.utterances[index].text))
            return {"codes": (letters + 20).repeat_interleave(1 + (torch.arange(len(letters)) % 2))}

    corpus = Corpus()
    examples = [obj.example(corpus, i, rng) for i in range(8)]
    first_codes = corpus.features(0, ["codes"])["codes"]
    got = examples[0]["codes"]
    assert torch.equal(got[: len(first_codes)], first_codes) and got[-2:].tolist() == [3, 4]  # as reranked
    assert set(got[len(first_codes):-2].tolist()) == {3}
    assert examples[0]["letters"].tolist() == ctc_targets("cat dog sun")
    batch = obj.collate(examples)
    assert batch["lengths"].tolist() == [len(e["codes"]) for e in examples]
    models = obj.build_models()
    first = float(obj.loss("main", models, batch, 0, {})["loss"].detach())
    _fit(obj, models, batch, steps=80)
    speller = models["model"].eval()
    with torch.no_grad():
        assert float(obj.loss("main", models, batch, 0, {})["loss"]) < 0.3 * first
        true = examples[0]["codes"]
        swapped = torch.cat([true[:8], true[8:16].flip(0), true[16:]])  # a word garbled in the middle
        half = true[: len(true) // 2]
        codes = torch.nn.utils.rnn.pad_sequence([true, swapped, half], batch_first=True, padding_value=3)
        letters = examples[0]["letters"]
        score = speller.score(letters, codes)
        assert float(score[0]) > float(score[1]) + 0.5 and float(score[0]) > float(score[2]) + 1.0
        logp = speller.log_probs(codes)
        assert logp.shape == (3, codes.shape[1] * 2, 29)
        nll = F.ctc_loss(logp[:1].transpose(0, 1), letters[None], torch.tensor([logp.shape[1]]),
                         torch.tensor([len(letters)]), reduction="sum")
        assert float(score[0]) == pytest.approx(-float(nll) / len(letters), abs=1e-4)
        assert torch.isneginf(letter_score(logp[:, :4], letters)).all()  # 4 outputs cannot spell 11 letters
        # padding after a row's length changes nothing in it (the convolutions and attention are masked)
        lengths = torch.tensor([len(true), len(swapped), len(half)])
        padded = torch.cat([codes, torch.full((3, 5), 7)], dim=1)
        torch.testing.assert_close(speller.log_probs(padded, lengths)[2, : len(half) * 2],
                                   speller.log_probs(half[None])[0], atol=1e-5, rtol=1e-5)
        # a list of candidates: each read to its own end, the same score as alone, whatever the batching
        alone = torch.cat([speller.score(letters, c[None]) for c in (true, swapped, half)])
        for batch_size in (1, 2, 16):
            torch.testing.assert_close(speller.score(letters, [true, swapped, half], batch_size=batch_size), alone,
                                       atol=1e-4, rtol=0)
        with pytest.raises(ValueError, match="no candidates"):
            speller.score(letters, [])


def test_speller_options_are_checked():
    with pytest.raises(ValueError, match="code_noise"):
        make_objective("speller", TINY["speller"], {"code_noise": 1.0})
    with pytest.raises(TrainingError, match="model.classes must be 29"):
        make_objective("speller", {**TINY["speller"], "classes": 27}).limits()
    noisy = make_objective("speller", TINY["speller"], {"code_noise": 0.5})

    class Corpus:
        utterances = [type("U", (), {"text": "a b c d e f g h"})]

        def features(self, index, names):
            return {"codes": torch.full((200,), 5)}

    codes = noisy.example(Corpus(), 0, random.Random(1))["codes"]
    assert 60 < int((codes != 5).sum()) < 140 and int(codes.max()) < CODES  # about half, from the codebook


def test_listener_reads_letters_off_mels_and_scores_a_dropped_word_lower(tmp_path):
    """The listener objective: CTC over the text's letters given a mel; once trained, the true mel outscores one
    with a word cut out; padding changes nothing; the decoder-prior mels of `prior_dir` replace the recording's
    at `prior_fraction`; the augmentation keeps the shape and is seeded."""
    from hare.text import ctc_targets
    from hare.train.data import cache_key
    from hare.train.objectives.listener import FLOOR, augment

    torch.manual_seed(0)
    words = ["cat", "dog", "sun", "red", "big", "hat", "run", "top"]
    texts = [" ".join(words[(i + j) % 8] for j in range(3)) for i in range(8)]

    def mel_of(text):  # each letter a band lit for three frames, a silent frame between words
        cols = []
        for letter in ctc_targets(text):
            col = torch.full((80, 3), FLOOR)
            col[letter * 2] = 0.0
            cols.append(col)
        return torch.cat([torch.full((80, 2), FLOOR)] + cols + [torch.full((80, 2), FLOOR)], dim=1)

    paths = []
    for i in range(8):
        paths.append(str(tmp_path / f"{i}.wav"))
        (tmp_path / f"{i}.wav").write_bytes(b"x" * (i + 1))
    corpus = _MelCorpus([mel_of(t) for t in texts], texts, paths)
    quiet = dict(time_masks=0, band_masks=0, blur_probability=0.0, level_shift=0.0)
    obj = make_objective("listener", TINY["listener"], quiet)
    rng = random.Random(0)
    examples = [obj.example(corpus, i, rng) for i in range(8)]
    torch.testing.assert_close(examples[0]["mel"], mel_of(texts[0]).half().float())
    assert examples[0]["letters"].tolist() == ctc_targets(texts[0])
    batch = obj.collate(examples)
    assert batch["frames"].tolist() == [e["mel"].shape[-1] for e in examples]
    models = obj.build_models()
    first = float(obj.loss("main", models, batch, 0, {})["loss"].detach())
    _fit(obj, models, batch, steps=120)
    listener = models["model"].eval()
    with torch.no_grad():
        assert float(obj.loss("main", models, batch, 0, {})["loss"]) < 0.3 * first
        true = examples[0]["mel"]
        dropped = torch.cat([true[:, :12], true[:, 23:]], dim=1)  # "dog" cut out of "cat dog sun"
        letters = examples[0]["letters"]
        alone = torch.cat([listener.score(letters, [m]) for m in (true, dropped)])
        assert float(alone[0]) > float(alone[1]) + 0.5
        for batch_size in (1, 2):  # the same score whatever the batching (padding is masked)
            torch.testing.assert_close(listener.score(letters, [true, dropped], batch_size=batch_size), alone,
                                       atol=1e-4, rtol=0)
        assert torch.isneginf(listener.score(letters, [true[:, :8]])).all()  # 4 steps cannot spell 11 letters
        with pytest.raises(ValueError, match="no mels"):
            listener.score(letters, [])
        with pytest.raises(ValueError, match="reads \\(batch, 80, frames\\)"):
            listener.log_probs(true[None, :40])
    # the prior's mel where one is written, at prior_fraction
    prior = torch.full((80, 30), -3.0)
    (tmp_path / "prior").mkdir()
    torch.save(prior.half(), tmp_path / "prior" / f"{cache_key(paths[1])}.pt")
    always = make_objective("listener", TINY["listener"], {**quiet, "prior_dir": str(tmp_path / "prior"),
                                                            "prior_fraction": 1.0})
    assert torch.equal(always.example(corpus, 1, random.Random(0))["mel"], prior)
    assert torch.equal(always.example(corpus, 2, random.Random(0))["mel"], examples[2]["mel"])  # none written
    never = make_objective("listener", TINY["listener"], {**quiet, "prior_dir": str(tmp_path / "prior"),
                                                           "prior_fraction": 0.0})
    assert torch.equal(never.example(corpus, 1, random.Random(0))["mel"], examples[1]["mel"])
    # augmentation: same shape, seeded, and it does change the mel
    noisy = make_objective("listener", TINY["listener"]).options
    a = augment(true, noisy, random.Random(5))
    assert a.shape == true.shape and torch.equal(a, augment(true, noisy, random.Random(5)))
    assert not torch.equal(a, true)


def test_listener_options_are_checked():
    with pytest.raises(ValueError, match="prior_fraction"):
        make_objective("listener", TINY["listener"], {"prior_fraction": 1.5})
    with pytest.raises(ValueError, match=">= 0"):
        make_objective("listener", TINY["listener"], {"time_masks": -1})
    with pytest.raises(TrainingError, match="model.classes must be 29"):
        make_objective("listener", {**TINY["listener"], "classes": 27}).limits()
    with pytest.raises(ValueError, match="stride"):
        make_objective("listener", {**TINY["listener"], "stride": 0}).build_models()


def test_every_shipped_config_loads_and_builds_its_objective():
    """Each `hare/train/configs/*.yaml` parses, passes the config checks and names an objective whose model and
    options it accepts (no training: the corpora are not in the checkout)."""
    from pathlib import Path

    from hare.train.config import TrainConfig

    configs = sorted((Path(__file__).resolve().parent.parent / "hare" / "train" / "configs").glob("*.yaml"))
    assert any(p.name == "listener-tiny.yaml" for p in configs)
    for path in configs:
        cfg = TrainConfig.load(path)
        make_objective(cfg.objective, cfg.model, cfg.options)
