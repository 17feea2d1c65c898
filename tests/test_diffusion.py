"""The diffusion decoder: batched guidance equals separate forwards; shapes; code and latent conditioning."""

import pytest
import torch

from hare import checkpoints

KW = dict(model_channels=32, num_layers=1, in_latent_channels=16, num_heads=2, unconditioned_percentage=0.5)


def _model():
    torch.manual_seed(0)
    return checkpoints.build("diffusion_decoder", checkpoints.config_for("diffusion_decoder", KW)).eval()


def test_guided_equals_two_forwards():
    m = _model()
    cond = m.conditioning_latent(torch.randn(1, 2, 100, 40))
    assert cond.shape == (1, 64)
    aligned = m.aligned_conditioning(torch.randn(1, 7, 16), cond, 30)
    assert aligned.shape == (1, 32, 30)
    x, t = torch.randn(1, 100, 30), torch.tensor([123])
    c, u = m.guided(x, t, aligned)
    assert torch.allclose(c, m(x, t, aligned), atol=1e-5)
    assert torch.allclose(u, m(x, t, m.unconditioned_conditioning(1, 30)), atol=1e-5)
    assert c.shape == (1, 200, 30)


def test_codes_and_dropout():
    m = _model()
    cond = torch.randn(3, 64)
    a = m.aligned_conditioning(torch.randint(0, 8193, (3, 5)), cond, 20, drop_mask=torch.tensor([True, False, True]))
    assert torch.allclose(a[0], m.unconditioned[0].expand(-1, 20))
    assert not torch.allclose(a[1], m.unconditioned[0].expand(-1, 20))
    m.train()
    assert m.random_drop_mask(1000, "cpu").float().mean().item() == pytest.approx(0.5, abs=0.08)
