"""Diffusion samplers for the decoder (which knows nothing about sampling), and the training-side pieces.

The decoder was trained as a 4000-step DDPM with a linear beta schedule, epsilon prediction and a
learned-range variance (its output is [eps | v], v in [-1, 1] interpolating between the posterior and the
beta log-variances). Every sampler here works on a respaced subset of the 4000 steps chosen with the
reference's rule (betas recomputed from the kept cumulative alphas, in float64), calls the model with the
*original* integer timestep, and shares one interface:

    sampler.set_timesteps(n)                          # n of the trained steps; sampler.timesteps descending
    x = sampler.step(model_output, i, x, generator)   # i = 0 .. n-1 in sampling order

- `DDPM`: ancestral sampling with the learned variance (the reference's sampler; bit-compatible).
- `DDIM`: deterministic (eta = 0), same respacing.
- `DPMSolverPP2M`: DPM-Solver++ (2M), a second-order multistep solver on the data prediction. Its steps
  are spaced uniformly in log-SNR by default (`spacing="log_snr"`): with the reference's evenly strided
  steps the ratio of consecutive log-SNR steps swings widely and the multistep extrapolation overshoots.

Conditioning-free guidance (`guide`) mixes the eps channels of a conditioned and an unconditioned output,
`eps = (1 + k') eps_c - k' eps_u`, with the reference's ramp `k' = k (1 - r/N)` at respaced index r
(r counts down from N-1 to 0, so guidance grows from ~0 to k at the end); the variance channels are the
conditioned ones. `denoise_loop` runs any sampler on a model function; `sample` is the decoder's loop.

Training: `q_sample` (forward noising) and `vlb_term` (the learned-variance bound of "Improved DDPM").
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np
import torch

from hare.errors import SettingsError

TRAINED_STEPS = 4000


def linear_betas(steps: int = TRAINED_STEPS) -> np.ndarray:
    """The linear schedule scaled to `steps` (1e-4..0.02 at 1000 steps), float64."""
    scale = 1000 / steps
    return np.linspace(scale * 0.0001, scale * 0.02, steps, dtype=np.float64)


def space_timesteps(trained: int, count: int) -> list[int]:
    """`count` evenly strided steps of `trained`, rounded as the reference does (includes 0 and trained-1)."""
    if not 1 <= count <= trained:
        raise SettingsError(f"cannot take {count} diffusion steps out of {trained} (choose 1..{trained})")
    stride = 1 if count <= 1 else (trained - 1) / (count - 1)
    taken, cur = set(), 0.0
    for _ in range(count):
        taken.add(round(cur))  # Python's round (half to even), as the reference
        cur += stride
    return sorted(taken)


def log_snr_timesteps(alphas_cumprod: np.ndarray, count: int) -> list[int]:
    """`count` distinct trained steps spaced evenly in log-SNR (includes 0 and the last step).

    Each ideal (fractional) step is rounded, then nudged up to stay distinct where log-SNR changes faster
    than one step per integer timestep (near t = 0).
    """
    trained = len(alphas_cumprod)
    if not 1 <= count <= trained:
        raise SettingsError(f"cannot take {count} diffusion steps out of {trained} (choose 1..{trained})")
    if count == 1:
        return [0]
    lam = 0.5 * np.log(alphas_cumprod / (1 - alphas_cumprod))  # decreasing in t
    targets = np.linspace(lam[-1], lam[0], count)  # increasing
    ideal = np.interp(targets, lam[::-1], np.arange(trained)[::-1].astype(np.float64))[::-1]  # increasing t
    taken: list[int] = []
    for k, v in enumerate(ideal):
        low = taken[-1] + 1 if taken else 0
        taken.append(int(min(max(round(v), low), trained - count + k)))
    return taken


def ramped_k(k: float, respaced_index: int, num_steps: int) -> float:
    """Guidance strength at respaced index r of N: k * (1 - r / N)."""
    return k * (1 - respaced_index / num_steps)


def guide(out_cond: torch.Tensor, out_uncond: torch.Tensor, k: float) -> torch.Tensor:
    """Conditioning-free guidance on the eps half of the channels; the variance half is the conditioned one."""
    # out_cond, out_uncond: (batch, 2C, frames) [eps | v]
    c = out_cond.shape[1] // 2
    eps = (1 + k) * out_cond[:, :c] - k * out_uncond[:, :c]
    return torch.cat([eps, out_cond[:, c:]], dim=1)


def _at(arr: np.ndarray, index, like: torch.Tensor) -> torch.Tensor:
    """Schedule constant(s) (float64 tables) as float32 on like's device, as the reference extracts them.

    `index` is an int (-> scalar tensor) or a (batch,) tensor (-> shape (batch, 1, ...) broadcasting on like).
    """
    if not torch.is_tensor(index):
        return torch.tensor(np.float32(arr[int(index)]), dtype=torch.float32, device=like.device)
    table = torch.from_numpy(arr.astype(np.float32)).to(like.device)
    return table[index.to(like.device).long()].view(-1, *([1] * (like.dim() - 1)))


class Sampler:
    """A respaced schedule: the kept steps, their betas recomputed from the cumulative alphas (float64).

    `spacing` picks the kept steps: "reference" (evenly strided, `space_timesteps`) or "log_snr"
    (`log_snr_timesteps`); None takes the sampler's default.
    """

    default_spacing = "reference"

    def __init__(self, trained_steps: int = TRAINED_STEPS, spacing: str | None = None):
        self.spacing = spacing or self.default_spacing
        if self.spacing not in ("reference", "log_snr"):
            raise SettingsError(f"unknown step spacing {self.spacing!r}; choose 'reference' or 'log_snr'")
        self.trained_steps = trained_steps
        self.base_betas = linear_betas(trained_steps)
        self.base_alphas_cumprod = np.cumprod(1.0 - self.base_betas)
        self.set_timesteps(trained_steps)

    def set_timesteps(self, n: int) -> None:
        if self.spacing == "log_snr":
            kept = log_snr_timesteps(self.base_alphas_cumprod, n)
        else:
            kept = space_timesteps(self.trained_steps, n)
        ac = self.base_alphas_cumprod[kept]
        self.num_steps = n
        self.alphas_cumprod = ac
        self.alphas_cumprod_prev = np.append(1.0, ac[:-1])
        self.betas_np = 1 - ac / self.alphas_cumprod_prev
        # descending: sampling order, original timesteps (what the model is called with)
        self.timesteps = torch.tensor(kept[::-1], dtype=torch.long)

    @property
    def betas(self) -> torch.Tensor:
        return torch.from_numpy(self.betas_np.copy())

    def respaced_index(self, i: int) -> int:
        """Respaced index (N-1 .. 0) of the i-th sampling step."""
        return self.num_steps - 1 - i

    def initial_noise(self, shape, temperature: float, generator, device, dtype=torch.float32) -> torch.Tensor:
        """x_T ~ N(0, temperature^2), drawn with `generator` (on its own device) and moved to `device`."""
        gen_device = generator.device if generator is not None else device
        return (torch.randn(shape, generator=generator, device=gen_device, dtype=dtype) * temperature).to(device)

    def _pred_xstart(self, eps: torch.Tensor, x: torch.Tensor, r: int) -> torch.Tensor:
        ac = self.alphas_cumprod
        x0 = _at(np.sqrt(1.0 / ac), r, x) * x - _at(np.sqrt(1.0 / ac - 1), r, x) * eps
        return x0.clamp(-1, 1)

    def step(self, model_output: torch.Tensor, i: int, x: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """x_{t-1} from x_t at sampling step i; model_output: (batch, 2C, frames) [eps | v], already guided."""
        raise NotImplementedError


class DDPM(Sampler):
    """Ancestral sampling with the learned-range variance (the reference's `p_sample_loop`)."""

    def set_timesteps(self, n: int) -> None:
        super().set_timesteps(n)
        b, ac, ac_prev = self.betas_np, self.alphas_cumprod, self.alphas_cumprod_prev
        self.posterior_variance = b * (1 - ac_prev) / (1 - ac)
        # log of the posterior variance with its first entry (0) replaced by the second; with a single step there
        # is no second: that step adds no noise, so its variance only has to be finite (beta's, the range's top)
        pv = self.posterior_variance
        self.posterior_log_variance_clipped = np.log(np.append(pv[1] if len(pv) > 1 else b[0], pv[1:]))
        self.posterior_mean_coef1 = b * np.sqrt(ac_prev) / (1 - ac)
        self.posterior_mean_coef2 = (1 - ac_prev) * np.sqrt(1 - b) / (1 - ac)

    def p_mean_variance(self, model_output: torch.Tensor, x: torch.Tensor, r: int,
                        clip: bool = True) -> dict[str, torch.Tensor]:
        """Mean and (log) variance of p(x_{r-1} | x_r) and the x0 prediction, at respaced index r.

        model_output: (batch, 2C, frames) [eps | v] (already guided); x: (batch, C, frames). `clip` clamps
        the x0 prediction to [-1, 1] (sampling); training's bound uses it unclamped.
        """
        c = x.shape[1]
        eps, v = model_output[:, :c], model_output[:, c:]
        min_log = _at(self.posterior_log_variance_clipped, r, x)
        max_log = _at(np.log(self.betas_np), r, x)
        frac = (v + 1) / 2
        log_variance = frac * max_log + (1 - frac) * min_log
        ac = self.alphas_cumprod
        x0 = _at(np.sqrt(1.0 / ac), r, x) * x - _at(np.sqrt(1.0 / ac - 1), r, x) * eps
        if clip:
            x0 = x0.clamp(-1, 1)
        mean = _at(self.posterior_mean_coef1, r, x) * x0 + _at(self.posterior_mean_coef2, r, x) * x
        return {"mean": mean, "variance": torch.exp(log_variance), "log_variance": log_variance, "pred_xstart": x0}

    def step(self, model_output, i, x, generator=None):
        r = self.respaced_index(i)
        out = self.p_mean_variance(model_output, x, r)
        if r == 0:  # no noise on the last step
            return out["mean"]
        gen_device = generator.device if generator is not None else x.device
        noise = torch.randn(x.shape, generator=generator, device=gen_device, dtype=x.dtype).to(x.device)
        return out["mean"] + torch.exp(0.5 * out["log_variance"]) * noise


class DDIM(Sampler):
    """Deterministic DDIM (eta = 0) on the respaced schedule; the variance channels are ignored."""

    def step(self, model_output, i, x, generator=None):
        r = self.respaced_index(i)
        c = x.shape[1]
        x0 = self._pred_xstart(model_output[:, :c], x, r)
        ac, ac_prev = self.alphas_cumprod[r], self.alphas_cumprod_prev[r]
        eps = (math.sqrt(1.0 / ac) * x - x0) / math.sqrt(1.0 / ac - 1)  # eps consistent with the clamped x0
        return (x0 * math.sqrt(ac_prev) + math.sqrt(1 - ac_prev) * eps).to(x.dtype)


class DPMSolverPP2M(Sampler):
    """DPM-Solver++ (2M): multistep second order on the (clamped) x0 prediction, in log-SNR time lambda.

    The first step is first order (no history); the last lands on the model's x0 prediction at t = 0.
    """

    default_spacing = "log_snr"

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
        if r == 0:
            return x0
        ac, ac_next = self.alphas_cumprod[r], self.alphas_cumprod[r - 1]
        sigma, sigma_next = math.sqrt(1 - ac), math.sqrt(1 - ac_next)
        alpha_next = math.sqrt(ac_next)
        h = self._lambda(r - 1) - self._lambda(r)
        if self._prev_x0 is None:
            d = x0
        else:
            half_inv_ratio = h / (2 * self._prev_h)  # 1 / (2 r), r = h_prev / h
            d = (1 + half_inv_ratio) * x0 - half_inv_ratio * self._prev_x0
        x_next = (sigma_next / sigma) * x - alpha_next * math.expm1(-h) * d
        self._prev_x0, self._prev_h = x0, h
        return x_next.to(x.dtype)


SAMPLERS = {"ddpm": DDPM, "ddim": DDIM, "dpm++2m": DPMSolverPP2M}


def make_sampler(name: str, steps: int, trained_steps: int = TRAINED_STEPS) -> Sampler:
    """A sampler by name ("ddpm", "ddim", "dpm++2m") set to `steps` respaced steps."""
    if name not in SAMPLERS:
        raise SettingsError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    sampler = SAMPLERS[name](trained_steps)
    sampler.set_timesteps(steps)
    return sampler


ModelFn = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]


@torch.no_grad()
def denoise_loop(model_fn: ModelFn, shape, sampler: str | Sampler = "ddpm", steps: int = 30,
                 cond_free_k: float = 2.0, temperature: float = 1.0, generator: torch.Generator | None = None,
                 progress=None, *, noise: torch.Tensor | None = None, device=None,
                 dtype: torch.dtype = torch.float32, prior: torch.Tensor | None = None,
                 start: float = 1.0) -> torch.Tensor:
    """Sample a (batch, C, frames) tensor with any sampler from `model_fn(x, t) -> output`.

    `t` is the (batch,) original timestep. The output is (batch, 2C, frames) [eps | v], or a pair
    (conditioned, unconditioned) to which ramped guidance with `cond_free_k` is applied. `sampler` is a name
    or a `Sampler` (then set to `steps`). `x` reaches the model in `dtype`; the sampler's arithmetic is float32.
    `noise` (optional) replaces the initial N(0, temperature^2) draw. `progress` (tqdm-like) advances per step
    and is closed at the end.

    Shallow diffusion (DiffSinger's mechanism): with a `prior` guess of the result and `start` < 1, sampling
    begins at the first kept step at or below `start` of the trained schedule, from the prior noised to that
    step (x_t = sqrt(abar_t) prior + sqrt(1 - abar_t) noise), so fewer steps run and the result stays close
    to the prior's structure. `start=1` (the default) is the full reverse process; `start=0` runs no step and
    returns the prior itself (the decoder's regression guess alone).
    """
    if not 0 <= start <= 1:
        raise SettingsError(f"start must be in [0, 1] (got {start})")
    if start < 1 and prior is None:
        raise SettingsError("shallow diffusion (start < 1) needs a prior")
    s = make_sampler(sampler, steps) if isinstance(sampler, str) else sampler
    if not isinstance(sampler, str):
        s.set_timesteps(steps)
    device = torch.device(device) if device is not None else (noise.device if noise is not None else torch.device("cpu"))
    if start == 0:
        if progress is not None:
            progress.update(steps)
            progress.close()
        return prior.to(device, torch.float32).clone()
    try:
        x = noise.to(device, torch.float32) if noise is not None else s.initial_noise(shape, temperature, generator, device)
        first = 0
        if start < 1:
            limit = start * (s.trained_steps - 1)
            kept = s.timesteps.tolist()
            first = next((i for i, t in enumerate(kept) if t <= limit), len(kept) - 1)
            ac = float(s.base_alphas_cumprod[kept[first]])
            x = math.sqrt(ac) * prior.to(device, torch.float32) + math.sqrt(1.0 - ac) * x
            if progress is not None:
                progress.update(first)
        for i, t in enumerate(s.timesteps.tolist()):
            if i < first:
                continue
            tt = torch.full((x.shape[0],), t, dtype=torch.long, device=device)
            out = model_fn(x.to(dtype), tt)
            if isinstance(out, tuple):
                out = guide(out[0].float(), out[1].float(), ramped_k(cond_free_k, s.respaced_index(i), s.num_steps))
            x = s.step(out.float(), i, x, generator)
            if progress is not None:
                progress.update(1)
    finally:
        if progress is not None:
            progress.close()
    return x


@torch.no_grad()
def sample(model, aligned: torch.Tensor, shape, *, sampler: str | Sampler = "ddpm", steps: int = 30,
           cond_free: bool = True, cond_free_k: float = 2.0, temperature: float = 1.0,
           generator: torch.Generator | None = None, progress=None,
           noise: torch.Tensor | None = None, start: float = 1.0, prior: torch.Tensor | None = None) -> torch.Tensor:
    """Draw a normalised mel of `shape` (batch, C, frames) from the diffusion decoder `model`.

    `aligned` (batch, channels, frames) is the per-frame conditioning from `model.aligned_conditioning`
    (computed once). With `cond_free`, every step runs the conditioned and unconditioned branches as one
    batched forward (`model.guided`) and mixes them with the ramped `cond_free_k`. `start` < 1 runs shallow
    diffusion from `prior` (see `denoise_loop`).
    """
    if cond_free:
        def model_fn(x, t):
            return model.guided(x, t, aligned)
    else:
        def model_fn(x, t):
            return model(x, t, aligned)
    return denoise_loop(model_fn, shape, sampler, steps, cond_free_k, temperature, generator, progress,
                        noise=noise, device=aligned.device, dtype=aligned.dtype, prior=prior, start=start)


# ---------------------------------------------------------------------------------------------------
# Training pieces


@functools.lru_cache(maxsize=4)
def _full_schedule(trained_steps: int) -> DDPM:
    """The un-respaced schedule (every trained step), for training. Treat as read-only."""
    return DDPM(trained_steps)


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, trained_steps: int = TRAINED_STEPS) -> torch.Tensor:
    """Forward noising: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, for original timesteps t (batch,)."""
    ac = _full_schedule(trained_steps).alphas_cumprod
    return _at(np.sqrt(ac), t, x0) * x0 + _at(np.sqrt(1.0 - ac), t, x0) * noise


def _normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def _discretized_gaussian_nll(x, mean, log_scale, bin_width: float = 2.0 / 255):
    """-log p(x) of a Gaussian integrated over bins of `bin_width` (the edge bins extend to +-infinity)."""
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
             trained_steps: int = TRAINED_STEPS, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The learned-variance bound term per batch row, in bits per dimension ("Improved DDPM"'s L_vlb).

    model_output: (batch, 2C, frames) [eps | v] at original timesteps t (batch,); x0, x_t: (batch, C, frames).
    For t > 0 it is KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)), for t = 0 the decoder's discretised NLL of
    x0 (bins of 2/255 on [-1, 1]). The eps half is detached (stop-gradient), so the term trains only the
    variance channels, and the x0 prediction is not clamped, both as in improved-diffusion. The result is a
    mean over channels and frames (over the frames where `mask` (batch, frames) is true, if given); the
    reference adds it unweighted to the eps MSE (loss type "mse").
    """
    s = _full_schedule(trained_steps)
    c = x0.shape[1]
    eps, v = model_output[:, :c].detach(), model_output[:, c:]
    x0_pred = _at(np.sqrt(1.0 / s.alphas_cumprod), t, x_t) * x_t - _at(np.sqrt(1.0 / s.alphas_cumprod - 1), t, x_t) * eps
    coef1, coef2 = _at(s.posterior_mean_coef1, t, x_t), _at(s.posterior_mean_coef2, t, x_t)
    model_mean = coef1 * x0_pred + coef2 * x_t
    min_log = _at(s.posterior_log_variance_clipped, t, x_t)
    frac = (v + 1) / 2
    model_log_var = frac * _at(np.log(s.betas_np), t, x_t) + (1 - frac) * min_log
    true_mean = coef1 * x0 + coef2 * x_t
    kl = _normal_kl(true_mean, min_log, model_mean, model_log_var)
    nll = _discretized_gaussian_nll(x0, model_mean, 0.5 * model_log_var)
    t_zero = (t.to(x0.device) == 0).view(-1, *([1] * (x0.dim() - 1)))
    bits = torch.where(t_zero, nll, kl) / math.log(2.0)
    if mask is None:
        return bits.flatten(1).mean(dim=1)
    m = mask[:, None].to(bits.dtype).expand_as(bits)
    return (bits * m).flatten(1).sum(dim=1) / m.flatten(1).sum(dim=1).clamp(min=1)
