"""Respacing, guidance ramp, and each sampler on a toy problem whose exact noise prediction is known."""

import math

import numpy as np
import pytest
import torch

from hare import schedulers


def test_space_timesteps_reference_values():
    assert schedulers.space_timesteps(4000, 30)[:6] == [0, 138, 276, 414, 552, 689]
    for n in (1, 10, 30, 80, 200, 400, 4000):
        steps = schedulers.space_timesteps(4000, n)
        assert len(steps) == n and steps[0] == 0 and (n == 1 or steps[-1] == 3999)
    with pytest.raises(ValueError):
        schedulers.space_timesteps(4000, 0)


def test_ramp_and_guide():
    assert schedulers.ramped_k(2.0, 29, 30) == pytest.approx(2.0 / 30)
    assert schedulers.ramped_k(2.0, 0, 30) == 2.0
    c, u = torch.ones(1, 4, 3), torch.zeros(1, 4, 3)
    g = schedulers.guide(c, u, 2.0)
    assert torch.equal(g[:, :2], torch.full((1, 2, 3), 3.0)) and torch.equal(g[:, 2:], c[:, 2:])


class PointModel:
    """The data distribution is a single point x0*: the exact eps is (x_t - sqrt(abar) x0*) / sqrt(1 - abar)."""

    def __init__(self, target):
        self.target = target
        self.ac = np.cumprod(1 - schedulers.linear_betas())

    def __call__(self, x, t, aligned):
        ac = float(self.ac[int(t[0])])
        eps = (x - math.sqrt(ac) * self.target) / math.sqrt(1 - ac)
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)  # v = 0: mid variance

    def guided(self, x, t, aligned):
        out = self(x, t, aligned)
        return out, out


@pytest.mark.parametrize("name,steps", [("ddpm", 30), ("ddim", 10), ("dpm++2m", 10), ("dpm++2m", 5)])
def test_samplers_recover_the_point(name, steps):
    target = torch.linspace(-0.8, 0.8, 12).view(1, 2, 6)
    out = schedulers.sample(PointModel(target), torch.zeros(1, 1, 6), (1, 2, 6), sampler=name, steps=steps,
                            cond_free=True, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, target, atol=2e-2), (out - target).abs().max()


def test_q_sample_matches_schedule():
    x0, noise = torch.ones(2, 1, 3), torch.zeros(2, 1, 3)
    xt = schedulers.q_sample(x0, torch.tensor([0, 3999]), noise)
    ac = np.cumprod(1 - schedulers.linear_betas())
    assert xt[0, 0, 0].item() == pytest.approx(math.sqrt(ac[0]), rel=1e-6)
    assert xt[1, 0, 0].item() == pytest.approx(math.sqrt(ac[3999]), rel=1e-4)


def test_vlb_is_finite_and_trains_variance_only():
    x0 = torch.rand(2, 3, 5) * 2 - 1
    xt = torch.randn(2, 3, 5)
    out = torch.randn(2, 6, 5, requires_grad=True)
    loss = schedulers.vlb_term(out, x0, xt, torch.tensor([0, 100]))
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    loss.sum().backward()
    assert out.grad[:, :3].abs().sum() == 0 and out.grad[:, 3:].abs().sum() > 0
