"""Respacing, guidance ramp, each sampler on toy problems whose exact noise prediction is known, training terms."""

import math

import numpy as np
import pytest
import torch

from hare import schedulers
from hare.errors import SettingsError

AC = np.cumprod(1 - schedulers.linear_betas())


def test_space_timesteps_reference_values():
    assert schedulers.space_timesteps(4000, 30)[:6] == [0, 138, 276, 414, 552, 689]
    for n in (1, 10, 30, 80, 200, 400, 4000):
        steps = schedulers.space_timesteps(4000, n)
        assert len(steps) == n and steps[0] == 0 and (n == 1 or steps[-1] == 3999)
    assert schedulers.space_timesteps(4000, 200)[:3] == [0, 20, 40] and schedulers.space_timesteps(4000, 200)[-2:] == [3979, 3999]
    assert schedulers.space_timesteps(4000, 4000) == list(range(4000))
    for bad in (0, 4001):
        with pytest.raises(SettingsError):
            schedulers.space_timesteps(4000, bad)
    with pytest.raises(SettingsError):
        schedulers.make_sampler("euler", 10)


def test_respaced_betas_keep_the_cumulative_alphas():
    s = schedulers.DDPM()
    s.set_timesteps(30)
    kept = s.timesteps.flip(0).numpy()
    assert kept[0] == 0 and kept[-1] == 3999
    np.testing.assert_allclose(np.cumprod(1 - s.betas.numpy()), AC[kept], rtol=1e-12)


def test_log_snr_spacing():
    for n in (1, 2, 10, 30, 80, 400, 4000):
        steps = schedulers.log_snr_timesteps(AC, n)
        assert len(steps) == n and steps == sorted(set(steps)) and steps[0] == 0 and (n == 1 or steps[-1] == 3999)
    lam = 0.5 * np.log(AC / (1 - AC))
    gaps = np.diff(lam[schedulers.log_snr_timesteps(AC, 10)])
    assert gaps.max() / gaps.min() < 1.1  # even in log-SNR (the reference's stride gives ~100x swings)
    assert schedulers.DPMSolverPP2M().spacing == "log_snr" and schedulers.DDIM().spacing == "reference"


def test_ramp_and_guide():
    assert schedulers.ramped_k(2.0, 29, 30) == pytest.approx(2.0 / 30)
    assert schedulers.ramped_k(2.0, 0, 30) == 2.0
    c, u = torch.ones(1, 4, 3), torch.zeros(1, 4, 3)
    g = schedulers.guide(c, u, 2.0)
    assert torch.equal(g[:, :2], torch.full((1, 2, 3), 3.0)) and torch.equal(g[:, 2:], c[:, 2:])


class Recording(schedulers.DDIM):
    def step(self, model_output, i, x, generator=None):
        self.seen.append((model_output[0, 0, 0].item(), model_output[0, 1, 0].item()))
        return x


def test_loop_applies_the_ramp_per_step():
    """A model whose conditioned eps is 0, unconditioned eps 1, variance 0.5: guided eps = -k(1 - r/N)."""
    def model_fn(x, t):
        return torch.tensor([[[0.0], [0.5]]]), torch.tensor([[[1.0], [-9.0]]])

    s = Recording()
    s.seen = []
    schedulers.denoise_loop(model_fn, (1, 1, 1), s, 5, cond_free_k=2.0)
    assert [e for e, _ in s.seen] == pytest.approx([-2.0 * (1 - r / 5) for r in (4, 3, 2, 1, 0)])
    assert all(v == 0.5 for _, v in s.seen)  # variance channels from the conditioned output


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


@pytest.mark.parametrize("name,steps", [("ddpm", 30), ("ddpm", 1), ("ddim", 10), ("ddim", 1), ("dpm++2m", 10),
                                        ("dpm++2m", 5), ("dpm++2m", 1)])
def test_samplers_recover_the_point(name, steps):
    target = torch.linspace(-0.8, 0.8, 12).view(1, 2, 6)
    out = schedulers.sample(PointModel(target), torch.zeros(1, 1, 6), (1, 2, 6), sampler=name, steps=steps,
                            cond_free=True, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, target, atol=2e-2), (out - target).abs().max()


S = 0.2  # data ~ N(0, S^2) elementwise: E[x0 | x_t] and hence the exact eps are known in closed form


def gaussian_model(x, t):
    ab = float(AC[int(t[0])])
    eps = x * math.sqrt(1 - ab) / (ab * S * S + 1 - ab)
    return torch.cat([eps, torch.full_like(eps, -1.0)], dim=1)  # v = -1: the posterior variance


def _ode_solution(x_T):
    """The probability-flow ODE maps x_T to x_0 linearly for Gaussian data."""
    return x_T * math.sqrt(S * S * AC[0] + 1 - AC[0]) / math.sqrt(S * S * AC[-1] + 1 - AC[-1])


X_T = torch.randn(1, 1, 4000, generator=torch.Generator().manual_seed(0))


def test_ddim_with_all_steps_solves_the_ode_and_ddpm_samples_the_data(one_thread):
    ddim = schedulers.denoise_loop(gaussian_model, X_T.shape, "ddim", 4000, noise=X_T)
    assert (ddim - _ode_solution(X_T)).abs().max() < 5e-3
    ddpm = schedulers.denoise_loop(gaussian_model, X_T.shape, "ddpm", 4000, noise=X_T,
                                   generator=torch.Generator().manual_seed(1))
    assert ddpm.std().item() == pytest.approx(S, rel=0.05) and abs(ddpm.mean().item()) < 0.02
    assert (ddpm - ddim).abs().mean() > 0.05  # ancestral: not the deterministic path


@pytest.mark.parametrize("steps,tol", [(10, 0.04), (20, 0.02), (30, 0.01)])
def test_dpm_solver_converges_to_the_ode_solution(steps, tol):
    out = schedulers.denoise_loop(gaussian_model, X_T.shape, "dpm++2m", steps, noise=X_T)
    assert (out - _ode_solution(X_T)).abs().max() < tol
    assert out.std().item() == pytest.approx(S, rel=0.03)


def test_sampling_is_reproducible_with_a_generator():
    def draw(seed):
        return schedulers.denoise_loop(gaussian_model, (1, 2, 8), "ddpm", 10, temperature=0.8,
                                       generator=torch.Generator().manual_seed(seed))
    assert torch.equal(draw(3), draw(3)) and not torch.equal(draw(3), draw(4))


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


def test_vlb_vanishes_for_the_exact_model_and_respects_the_mask():
    """Exact eps and v = -1 (the true posterior variance) make the KL zero for every t > 0."""
    torch.manual_seed(0)
    x0 = torch.rand(4, 3, 6) * 1.6 - 0.8
    t = torch.tensor([1, 10, 1500, 3999])
    noise = torch.randn_like(x0)
    xt = schedulers.q_sample(x0, t, noise)
    exact = torch.cat([noise, -torch.ones_like(noise)], dim=1)
    assert schedulers.vlb_term(exact, x0, xt, t).abs().max() < 1e-3
    wrong = torch.cat([noise, torch.ones_like(noise)], dim=1)  # beta_t instead: differs where t is small
    assert (schedulers.vlb_term(wrong, x0, xt, t)[:2] > 1e-3).all()
    # the mask averages over the valid frames only
    out = torch.randn(4, 6, 6)
    mask = torch.arange(6)[None] < torch.tensor([6, 4, 3, 6])[:, None]
    masked = schedulers.vlb_term(out, x0, xt, t, mask=mask)
    for b, n in enumerate((6, 4, 3, 6)):
        alone = schedulers.vlb_term(out[b:b + 1, :, :n], x0[b:b + 1, :, :n], xt[b:b + 1, :, :n], t[b:b + 1])
        assert masked[b].item() == pytest.approx(alone.item(), rel=1e-5)


class CountingModel(PointModel):
    def __init__(self, target):
        super().__init__(target)
        self.calls = []

    def __call__(self, x, t, aligned):
        self.calls.append(int(t[0]))
        return super().__call__(x, t, aligned)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm++2m"])
def test_shallow_diffusion_starts_from_the_prior(name):
    """start < 1: only the kept steps at or below start * trained steps run, beginning at the noised prior."""
    target = torch.linspace(-0.8, 0.8, 12).view(1, 2, 6)
    model = CountingModel(target)
    out = schedulers.sample(model, torch.zeros(1, 1, 6), (1, 2, 6), sampler=name, steps=20, cond_free=False,
                            generator=torch.Generator().manual_seed(0), start=0.4, prior=target + 0.3)
    assert model.calls and max(model.calls) <= 0.4 * 3999 and len(model.calls) < 20
    assert torch.allclose(out, target, atol=3e-2)
    full = CountingModel(target)
    schedulers.sample(full, torch.zeros(1, 1, 6), (1, 2, 6), sampler=name, steps=20, cond_free=False,
                      generator=torch.Generator().manual_seed(0), start=1.0, prior=target)
    assert len(full.calls) == 20  # start=1: the whole reverse process, the prior unused


def test_shallow_diffusion_checks_its_arguments():
    with pytest.raises(SettingsError, match="needs a prior"):
        schedulers.denoise_loop(lambda x, t: x, (1, 1, 2), "ddim", 5, start=0.5)
    with pytest.raises(SettingsError, match=r"start must be in \[0, 1\]"):
        schedulers.denoise_loop(lambda x, t: x, (1, 1, 2), "ddim", 5, start=-0.1, prior=torch.zeros(1, 1, 2))
    with pytest.raises(SettingsError, match="needs a prior"):
        schedulers.denoise_loop(lambda x, t: x, (1, 1, 2), "ddim", 5, start=0.0)


def test_start_zero_is_the_prior_alone():
    """start=0: no model call, the prior comes back as it is."""
    target = torch.linspace(-0.8, 0.8, 12).view(1, 2, 6)
    model = CountingModel(target)
    prior = target + 0.3
    out = schedulers.sample(model, torch.zeros(1, 1, 6), (1, 2, 6), sampler="ddpm", steps=20, cond_free=True,
                            generator=torch.Generator().manual_seed(0), start=0.0, prior=prior)
    assert model.calls == [] and torch.equal(out, prior)
