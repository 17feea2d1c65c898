"""HiFi-GAN (hare-mini's vocoder): the jik876 key map, its mel front end, and the bundled weights."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch.nn.utils import parametrize

from hare import audio, checkpoints
from hare.convert.hifigan import config_from_reference
from hare.models.configs import HiFiGANConfig
from hare.models.hifigan import HiFiGAN

SMALL = HiFiGANConfig(initial_channels=16, upsample_rates=(8, 8, 4), upsample_kernels=(16, 16, 8),
                      resblock_kernels=(3, 5), resblock_dilations=((1, 3), (1, 2)))


def jik876_layout(model: HiFiGAN) -> dict[str, torch.Tensor]:
    """Model weights renamed to the jik876 generator's keys, each weight split into weight_g / weight_v as
    torch's (old-style) weight norm stores it, with v scaled so that only g * v / |v| gives w back."""
    per_stage = len(model.config.resblock_kernels)
    out = {}
    for key, value in model.state_dict().items():
        k = key.replace("inp.", "conv_pre.").replace("out.", "conv_post.")
        k = re.sub(r"stages\.(\d+)\.up\.", r"ups.\1.", k)
        m = re.match(r"stages\.(\d+)\.stacks\.(\d+)\.(dilated|plain)\.(\d+)\.(weight|bias)", k)
        if m:
            i = int(m.group(1)) * per_stage + int(m.group(2))
            k = f"resblocks.{i}.convs{1 if m.group(3) == 'dilated' else 2}.{m.group(4)}.{m.group(5)}"
        if k.endswith(".weight"):
            dims = tuple(range(1, value.dim()))
            g = value.norm(dim=dims, keepdim=True)
            out[k[:-len("weight")] + "weight_g"] = g
            out[k[:-len("weight")] + "weight_v"] = value * 3.0  # any positive scale of v: g fixes the norm
        else:
            out[k] = value
    return out


def test_jik876_checkpoint_converts_exactly():
    torch.manual_seed(0)
    model = HiFiGAN(SMALL).eval()
    converted = checkpoints.convert("hifigan", {"generator": jik876_layout(model)},
                                    {"upsample_initial_channel": 16, "upsample_rates": [8, 8, 4],
                                     "upsample_kernel_sizes": [16, 16, 8], "resblock_kernel_sizes": [3, 5],
                                     "resblock_dilation_sizes": [[1, 3], [1, 2]]})
    mel = torch.randn(1, 80, 12)
    with torch.no_grad():
        assert torch.allclose(converted(mel), model(mel), atol=1e-5)
    assert model(mel).shape == (1, 1, 12 * 256)


def test_unknown_keys_are_named():
    model = HiFiGAN(SMALL)
    sd = jik876_layout(model)
    sd["mystery.weight"] = torch.zeros(1)
    with pytest.raises(checkpoints.CheckpointError, match="mystery"):
        checkpoints.convert("hifigan", {"generator": sd}, {"upsample_initial_channel": 16,
                                                           "upsample_rates": [8, 8, 4],
                                                           "upsample_kernel_sizes": [16, 16, 8],
                                                           "resblock_kernel_sizes": [3, 5],
                                                           "resblock_dilation_sizes": [[1, 3], [1, 2]]})


def test_config_from_reference_defaults_to_v1():
    assert config_from_reference(None) == HiFiGANConfig()
    with pytest.raises(ValueError, match="ResBlock1"):
        config_from_reference({"resblock": "2"})


def test_weight_norm_folding_matches_torch():
    conv = torch.nn.ConvTranspose1d(4, 3, 5)
    wn = torch.nn.utils.parametrizations.weight_norm(conv)
    with torch.no_grad():
        wn.parametrizations.weight.original0.mul_(torch.rand_like(wn.parametrizations.weight.original0) + 0.5)
    from hare.convert._common import fold_weight_norm

    sd = {"x.weight_g": wn.parametrizations.weight.original0, "x.weight_v": wn.parametrizations.weight.original1}
    assert torch.allclose(fold_weight_norm(sd)["x.weight"], wn.weight, atol=1e-6)
    assert parametrize.is_parametrized(wn)


def test_hifigan_mel_matches_an_independent_stft():
    """jik876's front end: reflect padding (n_fft - hop) / 2, no centring, magnitude, Slaney mel, log."""
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng(0)
    wav = torch.from_numpy(rng.uniform(-0.5, 0.5, 22050 // 2).astype(np.float32))
    ours = audio.hifigan_mel(wav)
    assert ours.shape == (80, wav.shape[0] // 256)
    x = torch.nn.functional.pad(wav[None, None], (384, 384), mode="reflect")[0]
    spec = torch.stft(x, 1024, 256, 1024, window=torch.hann_window(1024), center=False, return_complex=True)
    basis = torch.from_numpy(librosa.filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=0, fmax=8000)).float()
    ref = torch.log(torch.clamp(basis @ torch.sqrt(spec.abs() ** 2 + 1e-9), min=1e-5))[0]
    assert torch.allclose(ours, ref, atol=1e-4)


def test_mel_formats():
    hifi, univnet = audio.mel_format("hifigan"), audio.mel_format("univnet")
    assert hifi.frames_for_codes(10) == 40 and univnet.frames_for_codes(10) == 43
    wav = torch.zeros(22050 * 5)
    assert hifi.conditioning_mel(wav).shape == (80, 368)
    assert univnet.conditioning_mel(wav).shape == (100, 401)
    with pytest.raises(ValueError, match="unknown mel format"):
        audio.mel_format("wavenet")


BUNDLED = checkpoints.package_path("weights/hare-mini") / "vocoder.safetensors"


@pytest.mark.skipif(not BUNDLED.is_file(), reason="hare-mini's vocoder is not in this checkout")
def test_bundled_vocoder_resynthesises_speech(tmp_path):
    """The shipped HiFi-GAN (stored in float16) turns a real mel back into audio with nearly the same mel."""
    voc, kind, config = checkpoints.load(BUNDLED)
    assert kind == "hifigan" and config == HiFiGANConfig()
    assert all(p.dtype == torch.float32 for p in voc.parameters())
    t = torch.arange(22050) / 22050
    # a vowel-like test signal: harmonics of a gliding 120-200 Hz pitch under a slow envelope
    f0 = 120 + 80 * t
    phase = 2 * torch.pi * torch.cumsum(f0, 0) / 22050
    wav = sum(torch.sin(k * phase) / k for k in range(1, 20)) * 0.1 * torch.sin(torch.pi * t)
    mel = audio.hifigan_mel(wav)
    out = voc.vocode(mel[None])[0]
    assert out.shape == (22050 // 256 * 256,)
    again = audio.hifigan_mel(out)
    loud = mel > -6  # compare where there is energy
    assert (again - mel)[loud].abs().mean() < 0.5


@pytest.mark.parametrize("config", [
    SMALL,
    HiFiGANConfig(initial_channels=16, resblock_kernels=(3, 7), resblock_dilations=((1, 3, 5), (1, 3, 5))),
    HiFiGANConfig(initial_channels=8, upsample_rates=(5, 3), upsample_kernels=(11, 6), resblock_kernels=(3,),
                  resblock_dilations=((2,),), cond_channels=6),
])
def test_time_major_vocoding_is_the_same_function(config, monkeypatch):
    """forward_time_major (the bf16 path: every convolution one matrix product per block of rows, a transposed
    one every output phase at once) computes what forward computes: float32 to rounding, for lengths of one
    frame up, one block or many (the last padded), odd rates and kernels, conditioning; bf16 to bf16's rounding.
    `time_major` routes vocode (a batch) through it; a change of weights rebuilds its layout."""
    from hare.models import hifigan

    torch.manual_seed(0)
    g = HiFiGAN(config).eval()
    cond = torch.randn(2, config.cond_channels, 1) if config.cond_channels else None
    for blocks in (hifigan.ROW_BLOCK_ELEMENTS, 64):  # one block per convolution, then many
        monkeypatch.setattr(hifigan, "ROW_BLOCK_ELEMENTS", blocks)
        for frames in (1, 2, 9, 40):
            mel = torch.randn(2, 80, frames) - 5
            with torch.no_grad():
                want = g(mel, cond)[:, 0]
            got = torch.stack([g.forward_time_major(m, None if cond is None else c)
                               for m, c in zip(mel, cond if cond is not None else [None, None])])
            assert got.shape == want.shape and got.dtype == torch.float32
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert g.forward_time_major(torch.zeros(80, 0), cond[0] if cond is not None else None).shape == (0,)
    if cond is not None:
        with pytest.raises(ValueError, match="conditioned"):
            g.forward_time_major(mel[0])
        return
    with pytest.raises(ValueError, match="no conditioning"):
        g.forward_time_major(mel[0], torch.zeros(3, 1))
    g.time_major = True
    torch.testing.assert_close(g.vocode(mel), want, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        g.out.bias.add_(0.25)  # new values in place: the time-major layout follows
        want = g(mel)[:, 0]
    torch.testing.assert_close(g.vocode(mel), want, atol=1e-5, rtol=1e-4)
    g.to(torch.bfloat16)
    got = g.vocode(mel)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=0.03, rtol=0)
    with pytest.raises(ValueError, match="stride-1"):
        hifigan._RowConv(torch.nn.Conv1d(4, 4, 3, stride=2))


def test_forward_takes_the_time_major_path_for_inference_only():
    """With `time_major` set, forward (what the HiFi-GAN latent decoder calls, its conditioning broadcast over the
    batch) goes time-major without gradients and stays the module's own graph with them (training)."""
    torch.manual_seed(0)
    g = HiFiGAN(HiFiGANConfig(initial_channels=8, upsample_rates=(4, 4), upsample_kernels=(8, 8),
                              resblock_kernels=(3,), resblock_dilations=((1, 3),), cond_channels=5)).eval()
    mel, cond = torch.randn(3, 80, 7) - 5, torch.randn(1, 5, 1)
    with torch.no_grad():
        want = g(mel, cond)
    g.time_major = True
    calls = []
    real = g.forward_time_major
    g.forward_time_major = lambda m, c=None: calls.append(1) or real(m, c)
    with torch.no_grad():
        got = g(mel, cond)
    assert len(calls) == 3 and got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="2 rows for 3"):
        with torch.no_grad():
            g(mel, cond.expand(2, -1, -1))
    calls.clear()
    g(mel, cond).sum().backward()  # gradients: the plain graph
    assert not calls and g.inp.weight.grad is not None
