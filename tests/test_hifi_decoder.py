"""Tortoise v3's HiFi-GAN latent decoder: windowed resampling, streaming equal to the one-shot decode, the
pipeline's `decoder="hifigan"` path (one-shot and streamed) and its errors. The fixture itself
(`cases-v3/hifi_decoder`) runs in test_fixtures.py."""

from __future__ import annotations

import pytest
import torch

from hare.errors import ModelNotFoundError, SettingsError
from hare.models.configs import HifiDecoderConfig
from hare.models.hifi_decoder import HifiDecoder
from hare.pipeline import make_settings
from hare.rerank import MAX_CALM_RUN, fix_candidates
from hare.sampling import SamplingSettings, Stepper, generate
from tiny_models import tiny_models, tiny_tts, write_voice


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    return HifiDecoder(HifiDecoderConfig(latent_dim=16, cond_dim=8, initial_channels=32)).eval()


@pytest.mark.parametrize("n", [1, 2, 3, 23, 57])
def test_window_resampling_matches_the_reference_interpolation(decoder, n):
    lat = torch.randn(1, n, 16)
    full = decoder.upsample(lat)
    assert full.shape[-1] == decoder.frames_for(n)
    assert torch.allclose(decoder.upsample_window(lat, 0, full.shape[-1]), full, atol=1e-5)
    if full.shape[-1] > 10:  # an inner window reads only what it needs and gives the same frames
        assert torch.allclose(decoder.upsample_window(lat, 5, full.shape[-1] - 3), full[..., 5:-3], atol=1e-5)


@pytest.mark.parametrize("n,first,every,push", [(1, 3, 2, 1), (7, 1, 1, 2), (23, 3, 2, 1), (57, 1, 1, 2),
                                                (57, 20, 20, 5), (90, 4, 6, 3)])
def test_stream_equals_one_shot_decode(decoder, n, first, every, push):
    lat, speaker = torch.randn(1, n, 16), torch.randn(1, 8)
    whole = decoder.decode(lat, speaker)[0]
    stream = decoder.stream(speaker, first, every)
    pieces = [stream.push(lat[:, i: i + push]) for i in range(0, n, push)] + [stream.finish()]
    got = torch.cat(pieces)
    assert got.shape == whole.shape
    assert torch.allclose(got, whole, atol=1e-5), (got - whole).abs().max()
    if n >= 23:
        assert sum(p.numel() > 0 for p in pieces) >= 2  # audio left before the last latent came


def test_stream_cost_is_bounded(decoder):
    """Each window holds the new frames plus the receptive field, never the whole sequence so far."""
    calls = []
    real = decoder.generator.forward

    def spy(frames, cond=None):
        calls.append(frames.shape[-1])
        return real(frames, cond)

    decoder.generator.forward = spy
    try:
        stream = decoder.stream(torch.randn(1, 8), 4, 4)
        for _ in range(200):
            stream.push(torch.randn(1, 1, 16))
        stream.finish()
    finally:
        del decoder.generator.forward
    context = decoder.generator.context_frames()
    assert len(calls) > 20
    assert max(calls) <= round(4 * 4 * 24000 / 22050) + 2 * context + 8


def test_stream_refuses_misuse(decoder):
    stream = decoder.stream(torch.randn(1, 8))
    with pytest.raises(ValueError):
        stream.push(torch.randn(2, 3, 16))
    stream.finish()
    with pytest.raises(RuntimeError):
        stream.push(torch.randn(1, 1, 16))
    with pytest.raises(ValueError):
        decoder.stream(torch.randn(1, 8), 0, 4)


def _long_talker(seed=0):
    """Tiny models whose GPT rarely stops: candidates run to the code limit."""
    models = tiny_models(seed)
    with torch.no_grad():
        models["autoregressive"].mel_head.bias[8193] -= 3.0
    return models


def test_stepper_latents_are_the_teacher_forced_latents():
    gpt = _long_talker()["autoregressive"]
    cond = torch.randn(1, gpt.config.dim)
    text = torch.tensor([[5, 6, 7, 0]])
    settings = SamplingSettings(max_codes=12)
    stepper = Stepper(gpt, cond, text, 1, settings, torch.Generator().manual_seed(1), latents=True)
    codes, latents = zip(*(stepper.step() for _ in range(12)))
    codes = torch.stack(codes, dim=1)
    assert torch.equal(codes, generate(gpt, cond, text, 1, settings, torch.Generator().manual_seed(1)))
    forced = gpt.speech_latents(cond, text, codes)
    assert torch.allclose(torch.stack(latents, dim=1), forced, atol=1e-5)


@pytest.fixture()
def voices(tmp_path):
    write_voice(tmp_path / "alice")
    return tmp_path


def test_pipeline_hifigan_one_shot_and_stream_agree(voices):
    tts = tiny_tts(voices, models=_long_talker())
    kw = dict(voice="alice", preset="ultra_fast", seed=4, decoder="hifigan", max_codes=30)
    one = tts.tts("Hello there.", **kw)
    assert one.sample_rate == 24000
    assert one.timings.get("hifigan", 0) > 0 and "diffusion" not in one.timings and "rerank" not in one.timings
    pieces = list(tts.stream("Hello there.", stream_first_codes=3, stream_every_codes=4, **kw))
    assert len(pieces) >= 3
    streamed = torch.cat([p.audio for p in pieces])
    assert streamed.shape == one.audio.shape
    assert torch.allclose(streamed, one.audio, atol=1e-4), (streamed - one.audio).abs().max()


def test_pipeline_hifigan_stops_where_calm_cut_cuts(voices):
    """A GPT that stops at once: the streamed audio still ends where the one-shot path cuts."""
    models = tiny_models(2)
    with torch.no_grad():
        models["autoregressive"].mel_head.bias[8193] += 20.0
        models["autoregressive"].mel_embedding.weight[8193] += 5.0  # reading a stop instead of calm would show
    tts = tiny_tts(voices, models=models)
    kw = dict(voice="alice", preset="ultra_fast", seed=0, decoder="hifigan", max_codes=30)
    one = tts.tts("Hi.", **kw)
    streamed = torch.cat([p.audio for p in tts.stream("Hi.", **kw)])
    hifi = tts.hifi_decoder()
    assert one.audio.numel() == hifi.frames_for(MAX_CALM_RUN) * hifi.hop_length  # the stop and 7 calm codes
    assert torch.allclose(streamed, one.audio, atol=1e-4)


def test_hifigan_presets_sample_one_candidate_unless_told():
    assert make_settings("fast", decoder="hifigan").num_candidates == 1
    assert make_settings("fast", decoder="hifigan", num_candidates=4).num_candidates == 4
    assert make_settings("fast").num_candidates == 96
    with pytest.raises(SettingsError, match="decoder must be one of"):
        make_settings("fast", decoder="wavenet")
    with pytest.raises(SettingsError, match="stream_first_codes"):
        make_settings("fast", decoder="hifigan", stream_first_codes=0)


def test_hifigan_with_reranking(voices):
    tts = tiny_tts(voices, models=_long_talker())
    out = tts.tts("Hello there.", voice="alice", preset="ultra_fast", seed=1, decoder="hifigan", num_candidates=3,
                  k=2, max_codes=20)
    assert len(out.candidates) == 2 and "rerank" in out.timings


def test_model_without_hifigan_decoder_is_a_clear_error(voices):
    models = tiny_models()
    models["hifi_decoder"] = None
    tts = tiny_tts(voices, models=models)
    with pytest.raises(ModelNotFoundError, match="decoder='hifigan' needs"):
        tts.tts("Hello.", voice="alice", preset="ultra_fast", decoder="hifigan")


def test_single_candidate_skips_the_reranker(voices):
    tts = tiny_tts(voices, models=_long_talker())
    out = tts.tts("Hello.", voice="alice", preset="ultra_fast", seed=0, num_candidates=1, max_codes=10,
                  diffusion_steps=2)
    assert "rerank" not in out.timings
    codes = torch.tensor([[5, 6, 8193, 8193, 8193, 8193]])
    assert fix_candidates(codes).tolist() == [[5, 6, 83, 45, 45, 248]]  # what a lone candidate gets instead


def test_pipeline_hifigan_in_bf16_runs_time_major(voices, monkeypatch):
    """Under dtype="bf16" on a CPU with bf16 matrix hardware the latent decoder's generator runs in bfloat16,
    time-major (as hare-mini's vocoder): its audio is the float32 decoder's to bf16 rounding, streamed or not;
    under fp32 it is untouched."""
    from hare import kernels
    from hare.pipeline import TextToSpeech
    from hare.voices import VoiceLibrary

    monkeypatch.setattr(kernels, "bf16_matmul", lambda: True)
    kw = dict(voice="alice", preset="ultra_fast", seed=4, decoder="hifigan", max_codes=30)
    exact = tiny_tts(voices, models=_long_talker())
    want = exact.tts("Hello there.", **kw).audio
    assert not exact.hifi_decoder().generator.time_major
    m = _long_talker()
    tts = TextToSpeech(gpt=m["autoregressive"], clvp=m["clvp2"], diffusion=m["diffusion_decoder"],
                       vocoder=m["vocoder"], hifi_decoder=m["hifi_decoder"], voices=VoiceLibrary([voices]),
                       device="cpu", dtype="bf16")
    generator = tts.hifi_decoder().generator
    assert generator.time_major and generator.inp.weight.dtype == torch.bfloat16
    got = tts.tts("Hello there.", **kw).audio
    streamed = torch.cat([p.audio for p in tts.stream("Hello there.", stream_first_codes=3, stream_every_codes=4,
                                                      **kw)])
    assert got.shape == want.shape == streamed.shape and got.dtype == torch.float32
    rms = want.pow(2).mean().sqrt()
    for audio in (got, streamed):  # bf16 rounding: a small noise against the signal, no sample far off
        assert (audio - want).pow(2).mean().sqrt() < 0.05 * rms
        assert (audio - want).abs().max() < 0.1 * want.abs().max()


@pytest.mark.parametrize("decoder", ["diffusion", "hifigan"])
def test_pipeline_reads_the_sampling_pass_latents_for_the_picked_candidates(voices, monkeypatch, decoder):
    """Where the sampling pass keeps its latents (`_harvests_latents`) and they cover the picked candidates' cut,
    the pipeline skips the teacher-forced pass over them and makes the same audio (to float rounding); with no
    room for them, or candidates that all stop at once (the pass ends before the calm codes the cut keeps), it
    runs that pass."""
    import hare.pipeline as P

    stops_at_once = tiny_models(2)
    with torch.no_grad():
        stops_at_once["autoregressive"].mel_head.bias[8193] += 20.0
    for models, text, harvested in ((_long_talker(), "Hello there.", True), (stops_at_once, "Hi.", False)):
        tts = tiny_tts(voices, models=models)
        kw = dict(voice="alice", preset="ultra_fast", seed=3, max_codes=30, decoder=decoder)
        kept = tts.tts(text, **kw)
        monkeypatch.setattr(P, "HARVEST_BYTES", 0)
        forced = tts.tts(text, **kw)
        monkeypatch.undo()
        assert forced.timings.get("latents", 0) > 0
        assert ("latents" not in kept.timings) == harvested
        assert kept.audio.shape == forced.audio.shape
        assert torch.allclose(kept.audio, forced.audio, atol=1e-4), (kept.audio - forced.audio).abs().max()
