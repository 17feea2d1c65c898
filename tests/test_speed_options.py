"""Each fast-path option stays within its stated tolerance of the exact fp32 path (no timing here)."""

from __future__ import annotations

import copy

import pytest
import torch

from hare.pipeline import TextToSpeech

from tiny_models import tiny_models, write_voice

# Stated tolerances, relative to the spread (std) of the exact fp32 logits. Measured on this tiny model:
# int8 max 0.075 / mean 0.014, bf16 max 0.065 / mean 0.003.
INT8_LOGIT_TOL = (0.10, 0.02)  # (max, mean) |int8 - fp32| GPT logits / std(fp32 logits)
INT8_CLVP_TOL = 0.05  # max |int8 - fp32| CLVP scores / (max - min of fp32 scores + 1)
BF16_LOGIT_TOL = (0.10, 0.01)
INT8_DIFFUSION_TOL = 0.05  # rms |int8 - fp32| of a denoising step's output / its std (tiny model)


def _close(a, b, tol):
    err = (a - b).abs() / a.std()
    return err.max() < tol[0] and err.mean() < tol[1]


@pytest.fixture(scope="module")
def models():
    return tiny_models(seed=3)


def _tts(models, **kw):
    return TextToSpeech(gpt=models["autoregressive"], clvp=models["clvp2"], diffusion=models["diffusion_decoder"],
                        vocoder=models["vocoder"], device="cpu", **kw)


def _logits(tts):
    cond = torch.randn(1, 32, generator=torch.Generator().manual_seed(0))
    text = torch.tensor([[20, 2, 31, 40, 7, 0]])
    codes = torch.randint(0, 8192, (1, 15), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), tts._autocast("latents"):
        out = tts.gpt(cond, text, torch.tensor([6]), codes, torch.tensor([15 * 1024]), clip_inputs=False)
    return out.mel_logits.float()


def test_int8_gpt_and_clvp_within_tolerance(models):
    exact, fast = _tts(models), _tts(copy.deepcopy(models), quantize="int8")
    a, b = _logits(exact), _logits(fast)
    assert _close(a, b, INT8_LOGIT_TOL)
    text = torch.tensor([[20, 2, 31, 40, 7, 0]])
    codes = torch.randint(0, 8192, (8, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        s1, s2 = exact.clvp.similarity(text, codes), fast.clvp.similarity(text, codes)
    assert (s1 - s2).abs().max() / (s1.max() - s1.min() + 1) < INT8_CLVP_TOL
    assert isinstance(exact.gpt.blocks[0].qkv, torch.nn.Linear)
    assert not isinstance(fast.gpt.blocks[0].qkv, torch.nn.Linear)  # converted in place, no float copy kept


def test_int8_diffusion_decoder_within_tolerance(models):
    """quantize="int8" runs the diffusion decoder on int8 too (packed): one denoising step's output within a few %
    of the float decoder's spread."""
    from hare import kernels

    if kernels.panel_linear_int8() is None:
        pytest.skip("no C++ compiler: the diffusion decoder stays float32 without Hare's int8 kernel")
    fast = _tts(copy.deepcopy(models), quantize="int8", pack=True)  # (packing is in place: copies first)
    exact = _tts(copy.deepcopy(models), pack=True)
    g = torch.Generator().manual_seed(4)
    latents, voice = torch.randn(1, 12, 32, generator=g), torch.randn(1, 2 * exact.diffusion.config.channels,
                                                                       generator=g)
    x = torch.randn(1, exact.diffusion.config.in_channels, 48, generator=g)
    with torch.no_grad():
        out = [tts.diffusion(x, torch.tensor([300]), tts.diffusion.aligned_conditioning(latents, voice, 48))
               for tts in (exact, fast)]
    assert (out[0] - out[1]).pow(2).mean().sqrt() < INT8_DIFFUSION_TOL * out[0].std()


def test_bf16_autocast_within_tolerance(models):
    a = _logits(_tts(models))
    b = _logits(_tts(models, dtype="bf16"))
    assert _close(a, b, BF16_LOGIT_TOL)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])  # bf16: bench/pipeline.py's hare_bf16 (AMX machines)
def test_fast_path_end_to_end(models, tmp_path, monkeypatch, dtype):
    monkeypatch.setenv("HARE_HOME", str(tmp_path))
    write_voice(tmp_path / "v" / "alice")
    from hare.voices import VoiceLibrary

    tts = _tts(copy.deepcopy(models), quantize="int8", dtype=dtype, pack=True)
    tts.voices = VoiceLibrary([tmp_path / "v"])
    out = tts.tts("Fast path.", voice="alice", preset="ultra_fast", sampler="dpm++2m", diffusion_steps=5,
                  num_candidates=2, max_codes=20, seed=0)
    assert out.audio.numel() > 0 and torch.isfinite(out.audio).all()


def test_bad_speed_options(models):
    from hare.errors import SettingsError

    with pytest.raises(SettingsError):
        _tts(models, quantize="int4")
    with pytest.raises(SettingsError):
        _tts(models, dtype="fp8")


def test_bfloat16_kv_cache_with_float32_compute(models):
    """GPT.kv_cache_dtype = bfloat16 (the CPU fast path under dtype="bf16"): the cache is stored in bfloat16, the
    decode step still computes in float32 (its logits float32), within bf16's tolerance of the float32 cache's."""
    gpt = copy.deepcopy(models["autoregressive"])
    cond, text = torch.randn(1, 32, generator=torch.Generator().manual_seed(4)), torch.tensor([[5, 9, 17]])
    codes = torch.tensor([[1, 2, 3], [40, 50, 60]])
    outs = []
    for dtype in (None, torch.bfloat16):
        gpt.kv_cache_dtype = dtype
        with torch.no_grad():
            _, cache = gpt.prefill(cond, text, 2, 5)
            assert cache.k.dtype == (dtype or torch.float32) and cache.prefix_k.dtype == cache.k.dtype
            steps = [gpt.decode_step(codes[:, i], i + 1, cache) for i in range(3)]
        assert all(s.dtype == torch.float32 for s in steps)
        outs.append(torch.stack(steps))
    assert not torch.equal(outs[0], outs[1])  # the cache really was rounded
    assert _close(outs[0], outs[1], BF16_LOGIT_TOL)


def test_bf16_with_int8_panels_keeps_the_gpt_float32_and_its_cache_bfloat16(models):
    from hare import kernels

    if kernels.panel_linear_int8() is None:
        pytest.skip("no C++ compiler: the GPT is on PyTorch's int8 linears, under autocast")
    fast = _tts(copy.deepcopy(models), quantize="int8", dtype="bf16", pack=True)
    assert fast.gpt.kv_cache_dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")
    with fast._autocast("autoregressive"), fast._autocast("latents"):
        assert not torch.is_autocast_enabled("cpu")  # the int8 panels read float32
    with fast._autocast("conditioning"):
        assert torch.is_autocast_enabled("cpu")
    plain = _tts(copy.deepcopy(models), quantize="int8", pack=True)
    assert plain.gpt.kv_cache_dtype is None


def test_bf16_cached_decode_within_tolerance(models):
    # the decode path (shared-prompt cache, two attention parts merged) under bf16 autocast
    gpt = models["autoregressive"]
    cond, text = torch.randn(1, 32, generator=torch.Generator().manual_seed(4)), torch.tensor([[5, 9, 17]])
    codes = torch.tensor([[1, 2, 3], [40, 50, 60]])
    outs = []
    for autocast in (False, True):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            _, cache = gpt.prefill(cond, text, 2, 5)
            outs.append(torch.stack([gpt.decode_step(codes[:, i], i + 1, cache).float() for i in range(3)]))
    assert _close(outs[0], outs[1], BF16_LOGIT_TOL)
