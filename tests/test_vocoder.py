"""UniVNet: output length, seeded noise, weight-norm round trip, the vectorised LVC against a loop."""

import torch
import torch.nn.functional as F

from hare import checkpoints
from hare.models.vocoder import location_variable_conv


def _tiny():
    torch.manual_seed(0)
    cfg = checkpoints.config_for("vocoder", {"channel_size": 4, "strides": [4, 4, 2], "noise_dim": 8, "hop_length": 32})
    return checkpoints.build("vocoder", cfg).eval()


def test_vocode_length_range_and_seed():
    model = _tiny()
    mel = torch.randn(2, 100, 7) - 5
    a = model.vocode(mel, generator=torch.Generator().manual_seed(0))
    b = model.vocode(mel, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 7 * 32) and torch.equal(a, b)
    assert a.abs().max() <= 1.0


def test_weight_norm_round_trip_keeps_output():
    model = _tiny()
    mel, z = torch.randn(1, 100, 5), torch.randn(1, 8, 5)
    before = model(mel, z)
    model.apply_weight_norm()
    assert any("parametrizations" in k for k in model.state_dict())
    after = model(mel, z)
    model.remove_weight_norm()
    assert torch.allclose(before, after, atol=1e-5)
    assert torch.allclose(before, model(mel, z), atol=1e-5)


def test_lvc_equals_per_frame_conv():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4 * 5, generator=g)
    kernel = torch.randn(2, 3, 6, 3, 4, generator=g)
    bias = torch.randn(2, 6, 4, generator=g)
    got = location_variable_conv(x, kernel, bias, hop=5)
    xp = F.pad(x, (1, 1))
    for b in range(2):
        for f in range(4):
            seg = xp[b : b + 1, :, f * 5 : f * 5 + 7]
            w = kernel[b, :, :, :, f].permute(1, 0, 2)  # (out, in, k)
            want = F.conv1d(seg, w, bias[b, :, f])
            assert torch.allclose(got[b, :, f * 5 : (f + 1) * 5], want[0], atol=1e-5)
