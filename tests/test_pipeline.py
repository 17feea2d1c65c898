"""End-to-end synthesis on tiny random models: presets, seeds, long text, lengths, voices, errors."""

from __future__ import annotations

import pytest
import torch

import hare
from hare.errors import SettingsError, TextError, VoiceError
from hare.pipeline import SAMPLE_RATE
from hare.settings import PRESETS, Settings, make_settings

from tiny_models import save_official_layout, tiny_models, tiny_tts, write_voice

SHRINK = dict(num_candidates=3, diffusion_steps=4, max_codes=30)


pytestmark = pytest.mark.usefixtures("isolated_home")


@pytest.fixture(scope="module")
def models():
    return tiny_models()


@pytest.fixture()
def tts(tmp_path, models):
    voices = tmp_path / "voices"
    write_voice(voices / "alice", freq=180)
    write_voice(voices / "bob", freq=120)
    return tiny_tts(voices, models=models)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_runs(tts, preset):
    out = tts.tts("Hello there, world.", voice="alice", preset=preset, seed=1, **SHRINK)
    assert out.sample_rate == SAMPLE_RATE == 24000
    assert out.audio.dim() == 1 and out.audio.numel() > 0 and out.audio.abs().max() <= 1
    assert out.audio.numel() % 256 == 0
    assert set(out.timings) == {"conditioning", "autoregressive", "rerank", "latents", "diffusion", "vocoder"}
    assert out.settings["preset"] == preset and out.settings["seed"] == 1


def test_seed_reproducible_and_varies(tts):
    a = tts.tts("Same words.", voice="alice", preset="ultra_fast", seed=5, **SHRINK).audio
    b = tts.tts("Same words.", voice="alice", preset="ultra_fast", seed=5, **SHRINK).audio
    c = tts.tts("Same words.", voice="alice", preset="ultra_fast", seed=6, **SHRINK).audio
    assert torch.equal(a, b)
    assert a.shape != c.shape or not torch.equal(a, c)


def test_audio_length_matches_codes(tts, monkeypatch):
    import hare.pipeline as P

    seen = {}
    real = P.calm_cut

    def spy(codes, *a, **k):
        seen["keep"] = real(codes, *a, **k)
        return seen["keep"]

    monkeypatch.setattr(P, "calm_cut", spy)
    out = tts.tts("Length check.", voice="alice", preset="ultra_fast", seed=2, **SHRINK)
    assert out.audio.numel() == P.diffusion_frames(seen["keep"]) * 256


def test_long_text_is_split_and_joined(tts):
    text = " ".join(f"This is sentence number {i} of a long paragraph." for i in range(12))
    chunks = list(tts.stream(text, voice="alice", preset="ultra_fast", seed=3, **SHRINK))
    assert len(chunks) >= 2
    whole = tts.tts(text, voice="alice", preset="ultra_fast", seed=3, **SHRINK)
    assert whole.settings["chunks"] == len(chunks)
    assert whole.audio.numel() == sum(c.audio.numel() for c in chunks)


def test_k_candidates_and_cvvp(tts):
    out = tts.tts("Pick two.", voice="alice", preset="fast", seed=4, k=2, cvvp_amount=0.5, **SHRINK)
    assert len(out.candidates) == 2 and torch.equal(out.candidates[0], out.audio)


def test_random_and_mixed_voices(tts):
    r = tts.tts("Random voice.", voice="random", preset="ultra_fast", seed=1, **SHRINK)
    m = tts.tts("Mixed voice.", voice="alice&bob", preset="ultra_fast", seed=1, **SHRINK)
    assert r.audio.numel() > 0 and m.audio.numel() > 0


def test_voice_match_equalises_the_decoded_mel_to_the_voice(tts, tmp_path, monkeypatch, caplog):
    """voice_match=1 hands the vocoder the same mel as without it, shifted per band so that its speech frames'
    band means are the voice clips' (`voice_latents(...).mel_mean`); a voice without clips skips it, saying so."""
    from hare import audio
    from hare.pipeline import VoiceConditioning
    from safetensors.torch import save_file

    seen = []
    real = tts.vocoder.vocode
    monkeypatch.setattr(tts.vocoder, "vocode", lambda mel, **k: seen.append(mel.clone()) or real(mel, **k))
    plain = tts.tts("Match me.", voice="alice", preset="ultra_fast", seed=3, **SHRINK)
    matched = tts.tts("Match me.", voice="alice", preset="ultra_fast", seed=3, voice_match=1.0, **SHRINK)
    cond = tts.voice_latents("alice")
    assert isinstance(cond, VoiceConditioning) and cond.mel_mean.shape == (tts.mel_format.n_mels,)
    clips = [audio.load_audio(c, 22050) for c in sorted((tmp_path / "voices" / "alice").iterdir())]
    want = audio.mel_band_means([audio.vocoder_mel(audio.resample(c, 22050, 24000)) for c in clips])
    torch.testing.assert_close(cond.mel_mean, want)
    before, after = seen[0][0], seen[1][0]
    speech = audio.speech_frame_mask(before)
    torch.testing.assert_close(after[:, speech].mean(1), cond.mel_mean, atol=1e-4, rtol=0)
    shift = after - before
    assert shift.abs().max() > 0.1
    torch.testing.assert_close(shift, shift[:, :1].expand_as(shift))
    assert plain.audio.shape == matched.audio.shape and not torch.equal(plain.audio, matched.audio)
    mixed = tts.voice_latents("alice&bob").mel_mean
    torch.testing.assert_close(mixed, (cond.mel_mean + tts.voice_latents("bob").mel_mean) / 2)

    latents_only = tmp_path / "voices" / "dave"
    latents_only.mkdir()
    save_file({"ar": cond.ar.contiguous(), "diffusion": cond.diffusion.contiguous()},
              str(latents_only / "latents.safetensors"))
    assert tts.voice_latents("dave").mel_mean is None
    with caplog.at_level("WARNING", logger="hare.pipeline"):
        out = tts.tts("Match me.", voice="dave", preset="ultra_fast", seed=3, voice_match=1.0, **SHRINK)
    assert "voice_match 1 skipped" in caplog.text and torch.equal(out.audio, plain.audio)
    assert tts.voice_latents("alice&dave").mel_mean is None  # not half a mix's mean
    with pytest.raises(SettingsError, match="voice_match"):
        tts.tts("Hi.", voice="alice", voice_match=1.5)


def test_voice_warp_warps_the_decoded_mel_from_the_default_voice(tts, monkeypatch, caplog):
    """voice_warp=1 hands the vocoder the plain mel warped by the factor estimated from the default voice's
    band means to the voice's (`voice_warp_factor`); the default voice itself is not warped; a model without a
    default voice with clips skips it, saying so."""
    from hare import audio

    seen = []
    real = tts.vocoder.vocode
    monkeypatch.setattr(tts.vocoder, "vocode", lambda mel, **k: seen.append(mel.clone()) or real(mel, **k))
    tts.default_voice = "bob"
    alice = tts.voice_latents("alice").mel_mean
    factor = tts.voice_warp_factor(alice)
    assert factor == audio.estimate_voice_warp(tts.voice_latents("bob").mel_mean, alice, tts.mel_format)
    assert factor != 1.0  # a 180 Hz voice against a 120 Hz one
    assert tts.voice_warp_factor(tts.voice_latents("bob").mel_mean) == 1.0
    tts.tts("Warp me.", voice="alice", preset="ultra_fast", seed=3, **SHRINK)
    tts.tts("Warp me.", voice="alice", preset="ultra_fast", seed=3, voice_warp=1.0, **SHRINK)
    tts.tts("Warp me.", voice="alice", preset="ultra_fast", seed=3, voice_warp=0.5, **SHRINK)
    torch.testing.assert_close(seen[1], audio.warp_mel_frequencies(seen[0], factor, tts.mel_format))
    torch.testing.assert_close(seen[2], audio.warp_mel_frequencies(seen[0], factor ** 0.5, tts.mel_format))
    seen.clear()
    tts.tts("Warp me.", voice="bob", preset="ultra_fast", seed=3, **SHRINK)
    tts.tts("Warp me.", voice="bob", preset="ultra_fast", seed=3, voice_warp=1.0, **SHRINK)
    assert torch.equal(seen[0], seen[1])

    tts.default_voice, tts._native_mel_mean = "random", False
    with caplog.at_level("WARNING", logger="hare.pipeline"):
        assert tts.voice_warp_factor(alice) == 1.0
    assert "voice_warp skipped" in caplog.text
    with pytest.raises(SettingsError, match="voice_warp"):
        tts.tts("Hi.", voice="alice", voice_warp=-0.1)


def test_latent_cache_entries_of_an_older_hare_are_completed(tts, tmp_path):
    """A cache entry without the mel mean (written before voice_match), or with one computed the old way, is
    recomputed, not served short or stale."""
    from safetensors.torch import load_file, save_file

    from hare.pipeline import MEL_MEAN_KEY

    want = tts.voice_latents("alice").mel_mean
    (entry,) = (tmp_path / "home" / "cache" / "latents").rglob("alice@*.safetensors")
    old = {k: v for k, v in load_file(str(entry)).items() if k != MEL_MEAN_KEY}
    save_file({**old, "mel_mean": torch.zeros_like(want)}, str(entry))  # an older way's name and value
    torch.testing.assert_close(tts.voice_latents("alice").mel_mean, want)
    assert MEL_MEAN_KEY in load_file(str(entry))


def test_latents_cached_and_invalidated(tts, tmp_path):
    cache_dir = tmp_path / "home" / "cache" / "latents"
    tts.tts("Cache me.", voice="alice", preset="ultra_fast", seed=1, **SHRINK)
    first = list(cache_dir.rglob("alice@*.safetensors"))
    assert len(first) == 1
    write_voice(tmp_path / "voices" / "alice", freq=300, clips=3)  # clips change: a new fingerprint
    tts.tts("Cache me.", voice="alice", preset="ultra_fast", seed=1, **SHRINK)
    second = list(cache_dir.rglob("alice@*.safetensors"))
    assert len(second) == 1 and second != first


def test_errors(tts, tmp_path):
    with pytest.raises(TextError):
        tts.tts("   ", voice="alice")
    with pytest.raises(TextError):
        tts.tts("?!...", voice="alice")
    with pytest.raises(VoiceError, match="unknown voice"):
        tts.tts("Hi.", voice="nobody")
    with pytest.raises(VoiceError, match="invalid voice name"):
        tts.tts("Hi.", voice="../alice")
    (tmp_path / "voices" / "empty").mkdir()
    with pytest.raises(VoiceError, match="no usable audio"):
        tts.tts("Hi.", voice="empty")
    with pytest.raises(SettingsError, match="unknown preset"):
        tts.tts("Hi.", voice="alice", preset="turbo")
    with pytest.raises(SettingsError, match="top_p"):
        tts.tts("Hi.", voice="alice", top_p=1.5)
    with pytest.raises(SettingsError, match="unknown setting"):
        tts.tts("Hi.", voice="alice", warp_speed=9)


def test_presets_have_reference_values():
    assert make_settings("ultra_fast") == Settings(num_candidates=16, diffusion_steps=30, cond_free=False)
    s = make_settings("standard")
    assert (s.num_candidates, s.diffusion_steps, s.cond_free, s.temperature, s.top_p, s.repetition_penalty,
            s.cond_free_k, s.diffusion_temperature) == (256, 200, True, 0.8, 0.8, 2.0, 2.0, 1.0)


def test_load_model_from_directory(tmp_path, models):
    d = save_official_layout(models, tmp_path / "models")
    tts = hare.load_model(d, voices_dirs=[write_voice(tmp_path / "v" / "carol").parent])
    out = tts.tts("From a folder.", voice="carol", preset="ultra_fast", seed=0, **SHRINK)
    assert out.audio.numel() > 0
    with pytest.raises(hare.ModelNotFoundError, match="unknown model"):
        hare.load_model("no-such-model")


def test_replaced_folder_weights_never_reuse_cached_voice_latents(tmp_path, models):
    """Overwriting a model folder's weights (a new training run exported to the same place) must not serve
    the old weights' cached voice latents: the cache key covers the folder's files."""
    from hare import audio, checkpoints

    d = save_official_layout(models, tmp_path / "models")
    voices = write_voice(tmp_path / "v" / "carol").parent
    first = hare.load_model(d, voices_dirs=[voices]).voice_latents("carol")[0]
    again = hare.load_model(d, voices_dirs=[voices]).voice_latents("carol")[0]
    torch.testing.assert_close(again, first)
    other = tiny_models(seed=1)["autoregressive"]
    checkpoints.save(other, "autoregressive", other.config, d / "autoregressive.safetensors")
    tts = hare.load_model(d, voices_dirs=[voices])
    fresh = tts.voice_latents("carol")[0]
    clips = sorted((voices / "carol").iterdir())
    want = tts.conditioning_latents([audio.load_audio(c, 22050) for c in clips],
                                    generator=torch.Generator().manual_seed(0))[0]
    assert not torch.allclose(fresh, first)
    torch.testing.assert_close(fresh, want)


def test_freed_memory_goes_back_to_the_system_on_cpu_only(monkeypatch):
    import sys

    from hare import pipeline

    calls = []
    monkeypatch.setattr(pipeline, "_malloc_trim", lambda: lambda pad: calls.append(pad))
    pipeline._return_freed_memory(torch.device("meta"))  # not host memory: nothing to hand back
    assert calls == []
    pipeline._return_freed_memory(torch.device("cpu"))
    assert calls == [0]
    monkeypatch.undo()
    if sys.platform.startswith("linux"):
        assert callable(pipeline._malloc_trim())  # glibc's malloc_trim, found and callable
        pipeline._return_freed_memory(torch.device("cpu"))


def test_decoder_inputs_are_returned_and_the_diffusion_stage_reruns_alone(tts):
    """Each chunk's picked candidate's decoder input comes back with the speech; `diffuse` redoes that stage
    alone: the mel length the input names, the same mel for the same generator, another for other steps."""
    from hare.pipeline import DecoderInput

    out = tts.tts("One sentence here. And a second one there.", voice="alice", preset="ultra_fast", seed=2,
                  split_desired_length=20, split_max_length=30, **SHRINK)
    assert len(out.decoder_inputs) == out.settings["chunks"] == 2
    first = out.decoder_inputs[0]
    assert isinstance(first, DecoderInput) and first.latents.shape[0] == 1 and first.frames > 0
    settings = make_settings("ultra_fast", diffusion_steps=3)
    mel = tts.diffuse(first, settings, torch.Generator().manual_seed(0))
    assert mel.shape == (1, tts.diffusion.config.in_channels, first.frames)
    assert torch.equal(mel, tts.diffuse(first, settings, torch.Generator().manual_seed(0)))
    other = tts.diffuse(first, make_settings("ultra_fast", diffusion_steps=5), torch.Generator().manual_seed(0))
    assert not torch.allclose(mel, other)


def test_a_piece_too_long_for_the_gpt_is_split_further(tts):
    """A piece of the split text with more tokens than the GPT's text positions (here an unpunctuated run of
    words under split_max_length characters) is split again at half the lengths instead of failing."""
    words = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
             "quebec romeo sierra tango uniform victor whiskey xray yankee zulu ").split()
    text = " ".join(words[i % len(words)] for i in range(45))
    assert len(text) < 300 and len(tts.tokenizer.encode(text)) > tts.gpt.max_text_tokens
    out = tts.tts(text, voice="alice", preset="ultra_fast", seed=1, **SHRINK)
    assert out.settings["chunks"] >= 2 and out.audio.numel() > 0
    with pytest.raises(TextError, match="reads at most"):
        tts.chunk_tokens(text)
