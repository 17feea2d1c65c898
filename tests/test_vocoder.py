"""UniVNet: output length, seeded noise, weight-norm round trip, the vectorised LVC against a loop."""

import json

import pytest
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


@pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm. is deprecated:FutureWarning")
def test_weight_norm_folding_matches_torch_on_a_transposed_conv():
    """Old-style weight norm (dim 0, also on the transposed convs): w = g * v / ||v|| over all dims but 0."""
    from hare.convert.vocoder import _fold_weight_norm

    torch.manual_seed(0)
    ref = torch.nn.utils.weight_norm(torch.nn.ConvTranspose1d(4, 4, 4, stride=2))  # as the reference wraps it
    with torch.no_grad():
        ref.weight_g.mul_(torch.rand_like(ref.weight_g) + 0.5)
    assert ref.weight_g.shape == (4, 1, 1)
    folded = _fold_weight_norm({"convt.weight_g": ref.weight_g.detach(), "convt.weight_v": ref.weight_v.detach()})
    assert set(folded) == {"convt.weight"}
    x = torch.randn(1, 4, 5)
    assert torch.allclose(F.conv_transpose1d(x, folded["convt.weight"], ref.bias, stride=2), ref(x), atol=1e-5)


def test_wrapped_and_unwrapped_official_dicts_load_alike():
    from conftest import FIXTURES

    case = FIXTURES / "vocoder"
    if not case.is_dir():
        pytest.skip("vocoder fixture not found")
    meta = json.loads((case / "meta.json").read_text())
    wrapped = torch.load(case / "weights.pth", weights_only=True)
    assert set(wrapped) == {"model_g"}
    a = checkpoints.convert("vocoder", wrapped, meta["kwargs"])
    b = checkpoints.convert("vocoder", dict(wrapped["model_g"]), meta["kwargs"])
    from hare.convert.vocoder import map_state_dict

    assert set(map_state_dict(wrapped, a.config)) == set(a.state_dict())  # the converter unwraps by itself too
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_noise_of_the_wrong_length_is_refused():
    model = _tiny()
    mel = torch.randn(1, 100, 6)
    try:
        model.vocode(mel, noise=torch.randn(1, 8, 6))  # must cover frames + 10
    except ValueError as exc:
        assert "frames + 10" in str(exc)
    else:
        raise AssertionError("short noise accepted")
