"""Diffusion samplers for the decoder (which knows nothing about sampling).

The decoder was trained as a 4000-step DDPM with a linear beta schedule, epsilon prediction and a
learned-range variance (its output is [eps | v], v in [-1, 1] interpolating between the posterior and the
beta log-variances). Every sampler here works on a respaced subset of the 4000 steps chosen with the
reference's rule, calls the model with the *original* integer timestep, and shares one interface:

    sampler.set_timesteps(n)            # picks n of the trained steps; sampler.timesteps is descending
    x = sampler.step(model_output, i, x, generator)   # i = 0 .. n-1 in sampling order

- `DDPM`: ancestral sampling with the learned variance (the reference's sampler; bit-compatible).
- `DDIM`: deterministic (eta = 0), same respacing.
- `DPMSolverPP2M`: DPM-Solver++ (2M), a second-order multistep solver on the data prediction.

Conditioning-free guidance (`guide`) mixes the eps channels of a conditioned and an unconditioned output,
`eps = (1 + k') eps_c - k' eps_u`, with the reference's ramp `k' = k (1 - r/N)` at respaced index r
(r counts down from N-1 to 0, so guidance grows to k at the end); the variance channels are the
conditioned ones.
"""

from __future__ import annotations

import math

import numpy as np
import torch

TRAINED_STEPS = 4000


def linear_betas(steps: int = TRAINED_STEPS) -> np.ndarray:
    """The linear schedule scaled to `steps` (1e-4..0.02 at 1000 steps), float64."""
    scale = 1000 / steps
    return np.linspace(scale * 0.0001, scale * 0.02, steps, dtype=np.float64)


def space_timesteps(trained: int, count: int) -> list[int]:
    """`count` evenly strided steps of `trained`, rounded as the reference does (includes 0 and trained-1)."""
    if not 1 <= count <= trained:
        raise ValueError(f"cannot take {count} steps out of {trained}")
    stride = 1 if count <= 1 else (trained - 1) / (count - 1)
    taken, cur = set(), 0.0
    for _ in range(count):
        taken.add(round(cur))  # Python's round (half to even), as the reference
        cur += stride
    return sorted(taken)


def ramped_k(k: float, respaced_index: int, num_steps: int) -> float:
    """Guidance strength at respaced index r of N: k * (1 - r / N)."""
    return k * (1 - respaced_index / num_steps)


def guide(out_cond: torch.Tensor, out_uncond: torch.Tensor, k: float) -> torch.Tensor:
    """Conditioning-free guidance on the eps half of the channels; the variance half is the conditioned one."""
    c = out_cond.shape[1] // 2
    eps = (1 + k) * out_cond[:, :c] - k * out_uncond[:, :c]
    return torch.cat([eps, out_cond[:, c:]], dim=1)


def _gather(arr: np.ndarray, index: int, like: torch.Tensor) -> torch.Tensor:
    """A schedule constant as a float32 scalar tensor on like's device (as the reference's extraction)."""
    return torch.tensor(np.float32(arr[index]), dtype=torch.float32, device=like.device)


class _Respaced:
    """A respaced schedule: betas recomputed from the kept steps' cumulative alphas (float64)."""

    def __init__(self, trained_steps: int = TRAINED_STEPS):
        self.trained_steps = trained_steps
        self.base_betas = linear_betas(trained_steps)
        self.base_alphas_cumprod = np.cumprod(1.0 - self.base_betas)
        self.set_timesteps(trained_steps)

    def set_timesteps(self, n: int) -> None:
        kept = space_timesteps(self.trained_steps, n)
        ac = self.base_alphas_cumprod[kept]
        betas = 1 - ac / np.append(1.0, ac[:-1])
        self.num_steps = n
        self._kept = np.asarray(kept)
        self.betas_np = betas
        self.alphas_cumprod = ac
        self.alphas_cumprod_prev = np.append(1.0, ac[:-1])
        # descending: sampling order, original timesteps (what the model is called with)
        self.timesteps = torch.tensor(kept[::-1], dtype=torch.long)

    @property
    def betas(self) -> torch.Tensor:
        return torch.from_numpy(self.betas_np.copy())

    def respaced_index(self, i: int) -> int:
        """Respaced index (N-1 .. 0) of the i-th sampling step."""
        return self.num_steps - 1 - i

    def initial_noise(self, shape, temperature: float, generator, device, dtype=torch.float32) -> torch.Tensor:
        gen_device = generator.device if generator is not None else device
        return (torch.randn(shape, generator=generator, device=gen_device, dtype=dtype) * temperature).to(device)

    def _pred_xstart(self, eps: torch.Tensor, x: torch.Tensor, r: int) -> torch.Tensor:
        ac = self.alphas_cumprod
        x0 = _gather(np.sqrt(1.0 / ac), r, x) * x - _gather(np.sqrt(1.0 / ac - 1), r, x) * eps
        return x0.clamp(-1, 1)


class DDPM(_Respaced):
    """Ancestral sampling with the learned-range variance (the reference's `p_sample_loop`)."""

    def set_timesteps(self, n: int) -> None:
        super().set_timesteps(n)
        b, ac, ac_prev = self.betas_np, self.alphas_cumprod, self.alphas_cumprod_prev
        self.posterior_variance = b * (1 - ac_prev) / (1 - ac)
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = b * np.sqrt(ac_prev) / (1 - ac)
        self.posterior_mean_coef2 = (1 - ac_prev) * np.sqrt(1 - b) / (1 - ac)

    def p_mean_variance(self, model_output: torch.Tensor, x: torch.Tensor, r: int) -> dict[str, torch.Tensor]:
        """Mean and (log) variance of p(x_{r-1} | x_r) and the x0 prediction, at respaced index r.

        model_output: (batch, 2C, frames) [eps | v] (already guided); x: (batch, C, frames).
        """
        c = x.shape[1]
        eps, v = model_output[:, :c], model_output[:, c:]
        min_log = _gather(self.posterior_log_variance_clipped, r, x)
        max_log = _gather(np.log(self.betas_np), r, x)
        frac = (v + 1) / 2
        log_variance = frac * max_log + (1 - frac) * min_log
        x0 = self._pred_xstart(eps, x, r)
        mean = _gather(self.posterior_mean_coef1, r, x) * x0 + _gather(self.posterior_mean_coef2, r, x) * x
        return {"mean": mean, "variance": torch.exp(log_variance), "log_variance": log_variance, "pred_xstart": x0}

    def step(self, model_output, i, x, generator=None):
        r = self.respaced_index(i)
        out = self.p_mean_variance(model_output, x, r)
        if r == 0:
            return out["mean"]
        gen_device = generator.device if generator is not None else x.device
        noise = torch.randn(x.shape, generator=generator, device=gen_device, dtype=x.dtype).to(x.device)
        return out["mean"] + torch.exp(0.5 * out["log_variance"]) * noise


class DDIM(_Respaced):
    """Deterministic DDIM (eta = 0) on the respaced schedule."""

    def step(self, model_output, i, x, generator=None):
        r = self.respaced_index(i)
        c = x.shape[1]
        x0 = self._pred_xstart(model_output[:, :c], x, r)
        ac, ac_prev = self.alphas_cumprod[r], self.alphas_cumprod_prev[r]
        eps = (math.sqrt(1.0 / ac) * x - x0) / math.sqrt(1.0 / ac - 1)  # eps consistent with the clamped x0
        return (x0 * math.sqrt(ac_prev) + math.sqrt(1 - ac_prev) * eps).to(x.dtype)


class DPMSolverPP2M(_Respaced):
    """DPM-Solver++ (2M): multistep second order on the x0 prediction, in log-SNR time (lambda)."""

    def set_timesteps(self, n: int) -> None:
        super().set_timesteps(n)
        self._prev_x0 = None
        self._prev_h = None

    def _lambda(self, r: int) -> float:
        ac = self.alphas_cumprod[r]
        return 0.5 * math.log(ac / (1 - ac))

    def step(self, model_output, i, x, generator=None):
        r = self.respaced_index(i)
        if i == 0:
            self._prev_x0, self._prev_h = None, None
        c = x.shape[1]
        x0 = self._pred_xstart(model_output[:, :c], x, r)
        if r == 0:  # the last step lands on the data prediction
            return x0
        ac, ac_next = self.alphas_cumprod[r], self.alphas_cumprod[r - 1]
        sigma, sigma_next = math.sqrt(1 - ac), math.sqrt(1 - ac_next)
        alpha_next = math.sqrt(ac_next)
        h = self._lambda(r - 1) - self._lambda(r)
        if self._prev_x0 is None:
            d = x0
        else:
            ratio = self._prev_h / h
            d = (1 + 1 / (2 * ratio)) * x0 - (1 / (2 * ratio)) * self._prev_x0
        x_next = (sigma_next / sigma) * x - alpha_next * math.expm1(-h) * d
        self._prev_x0, self._prev_h = x0, h
        return x_next.to(x.dtype)


SAMPLERS = {"ddpm": DDPM, "ddim": DDIM, "dpm++2m": DPMSolverPP2M}


def make_sampler(name: str, steps: int, trained_steps: int = TRAINED_STEPS) -> _Respaced:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    sampler = SAMPLERS[name](trained_steps)
    sampler.set_timesteps(steps)
    return sampler


@torch.no_grad()
def sample(model, aligned: torch.Tensor, shape, *, sampler: str = "ddpm", steps: int = 30, cond_free: bool = True,
           cond_free_k: float = 2.0, temperature: float = 1.0, generator: torch.Generator | None = None,
           progress=None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Draw a normalised mel (shape (batch, C, frames)) from the diffusion decoder `model`.

    `aligned` is the per-frame conditioning from `model.aligned_conditioning`. With `cond_free`, every step
    runs the conditioned and unconditioned branches as one batched forward and mixes them (`guide`).
    `progress` (optional, tqdm-like) advances once per step.
    """
    s = make_sampler(sampler, steps)
    device = aligned.device
    x = noise.to(device) if noise is not None else s.initial_noise(shape, temperature, generator, device, aligned.dtype)
    for i, t in enumerate(s.timesteps.tolist()):
        tt = torch.full((shape[0],), t, dtype=torch.long, device=device)
        if cond_free:
            out_c, out_u = model.guided(x, tt, aligned)
            out = guide(out_c, out_u, ramped_k(cond_free_k, s.respaced_index(i), s.num_steps))
        else:
            out = model(x, tt, aligned)
        x = s.step(out.float(), i, x.float(), generator)
        if progress is not None:
            progress.update(1)
    if progress is not None:
        progress.close()
    return x


# ---------------------------------------------------------------------------------------------------
# Training pieces


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, trained_steps: int = TRAINED_STEPS) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, for original timesteps t (batch,)."""
    ac = torch.from_numpy(np.cumprod(1.0 - linear_betas(trained_steps))).to(x0.device, torch.float32)[t]
    ac = ac.view(-1, *([1] * (x0.dim() - 1)))
    return ac.sqrt() * x0 + (1 - ac).sqrt() * noise


def _normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def _discretized_gaussian_nll(x, mean, log_scale, bin_width: float = 2.0 / 255):
    """-log p(x) of a Gaussian integrated over bins of `bin_width` (improved-diffusion's decoder term)."""
    centered = x - mean
    inv_stdv = torch.exp(-log_scale)
    cdf_plus = _approx_std_normal_cdf(inv_stdv * (centered + bin_width / 2))
    cdf_min = _approx_std_normal_cdf(inv_stdv * (centered - bin_width / 2))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(x < -0.999, log_cdf_plus,
                            torch.where(x > 0.999, log_one_minus_cdf_min, torch.log((cdf_plus - cdf_min).clamp(min=1e-12))))
    return -log_probs


def vlb_term(model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
             trained_steps: int = TRAINED_STEPS) -> torch.Tensor:
    """The learned-variance VLB term per batch row, in bits per dimension (improved-diffusion's L_vlb).

    The eps half of `model_output` is detached (stop-gradient), so this term trains only the variance
    channels, as in "Improved DDPM": KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for t > 0, and the
    decoder's discretised NLL at t = 0.
    """
    ddpm = DDPM(trained_steps)  # full 4000-step schedule
    c = x0.shape[1]
    frozen = torch.cat([model_output[:, :c].detach(), model_output[:, c:]], dim=1)
    losses = []
    for b in range(x0.shape[0]):
        r = int(t[b])
        out = ddpm.p_mean_variance(frozen[b:b + 1], x_t[b:b + 1], r)
        true_mean = (_gather(ddpm.posterior_mean_coef1, r, x0) * x0[b:b + 1]
                     + _gather(ddpm.posterior_mean_coef2, r, x0) * x_t[b:b + 1])
        true_logvar = _gather(ddpm.posterior_log_variance_clipped, r, x0)
        if r == 0:
            nll = _discretized_gaussian_nll(x0[b:b + 1], out["mean"], 0.5 * out["log_variance"])
            losses.append(nll.mean() / math.log(2.0))
        else:
            kl = _normal_kl(true_mean, true_logvar, out["mean"], out["log_variance"])
            losses.append(kl.mean() / math.log(2.0))
    return torch.stack(losses)
