"""Building blocks shared by several networks.

- `group_norm(channels)`: GroupNorm computed in float32 with Tortoise's group-count rule.
- `AttentionBlock`: channels-first self-attention over time with the "legacy" fused QKV layout
  (the 3C qkv channels are grouped per head: [h0: q k v | h1: q k v | ...]) and an optional T5-style
  relative position bias, computed with `scaled_dot_product_attention`.
- `letter_log_probs`, `ctc_nll`, `letter_score`: CTC over letters, for the speller and the CLVP's optional
  letter head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hare import kernels


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 whatever the input dtype (stable under fp16/bf16 autocast).

    A time-major input at inference (a (batch, channels, frames) view of a (batch, frames, channels) tensor,
    as the packed diffusion decoder keeps its activations) is normalised in one compiled pass over its rows
    (`hare.kernels.group_norm`, when available) and comes out time-major too.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused(x)

    def fused(self, x: torch.Tensor, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
              silu: bool = False) -> torch.Tensor:
        """silu(GroupNorm(x) * (1 + scale) + shift), each extra optional: x (batch, channels, frames); scale,
        shift (batch, channels) (both or neither); SiLU only with `silu`."""
        op = kernels.group_norm() if _time_major_inference(x, self.weight) else None
        if op is not None:
            if scale is not None:
                scale, shift = scale.float().contiguous(), shift.float().contiguous()
            return op(x.transpose(1, 2), self.num_groups, self.weight, self.bias, scale, shift, self.eps,
                      silu).transpose(1, 2)
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        h = F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)
        if scale is not None:
            h = h * (1 + scale[..., None]) + shift[..., None]
        return F.silu(h) if silu else h


def _time_major_inference(x: torch.Tensor, weight: torch.Tensor | None) -> bool:
    """A float32 CPU (batch, channels, frames) view of time-major rows, with nothing to differentiate."""
    if x.dim() != 3 or x.dtype != torch.float32 or x.device.type != "cpu" or x.shape[1] < 2:
        return False
    if weight is not None and weight.dtype != torch.float32:
        return False
    return x.transpose(1, 2).is_contiguous() and not kernels.autograd_records(x, weight)


def group_norm(channels: int) -> GroupNorm32:
    """GroupNorm with 32 groups (8 for <=16 channels, 16 for <=64), halved until it divides `channels`."""
    groups = 32
    if channels <= 16:
        groups = 8
    elif channels <= 64:
        groups = 16
    while channels % groups:
        groups //= 2
    return GroupNorm32(groups, channels)


def relative_position_buckets(
    length: int, num_buckets: int = 32, max_distance: int = 64, device: torch.device | None = None
) -> torch.Tensor:
    """Bidirectional T5 buckets of (key - query) offsets, shape (length, length), values in [0, num_buckets)."""
    pos = torch.arange(length, device=device)
    offset = pos[None, :] - pos[:, None]  # key - query
    n = -offset
    half = num_buckets // 2
    buckets = (n < 0).long() * half
    n = n.abs()
    exact = half // 2
    n_clamped = n.clamp(min=1).float()  # log(0) guard: those entries take the exact branch anyway
    large = exact + (
        torch.log(n_clamped / exact) / math.log(max_distance / exact) * (half - exact)
    ).long()
    large = large.clamp(max=half - 1)
    return buckets + torch.where(n < exact, n, large)


class RelativePositionBias(nn.Module):
    """Learned bias per (bucketed offset, head), scaled by `scale` (sqrt of the head width in Tortoise)."""

    def __init__(self, heads: int, scale: float, num_buckets: int = 32, max_distance: int = 64):
        super().__init__()
        self.scale = scale
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.embedding = nn.Embedding(num_buckets, heads)
        self._cached: tuple[tuple, torch.Tensor] | None = None  # (key, bias) of the last length, inference only

    def forward(self, length: int) -> torch.Tensor:
        """Returns the additive attention bias, shape (1, heads, length, length), contiguous.

        Without autograd the bias of the last length is kept (a diffusion sampler asks for the same one in
        every layer of every step); the key includes the weight's version, so an update invalidates it.
        """
        w = self.embedding.weight
        key = (length, w.device, w.dtype, w._version)
        if self._cached is not None and self._cached[0] == key and not torch.is_grad_enabled():
            return self._cached[1]
        buckets = relative_position_buckets(length, self.num_buckets, self.max_distance, w.device)
        bias = self.embedding(buckets)  # (length, length, heads)
        bias = (bias * self.scale).permute(2, 0, 1).unsqueeze(0).contiguous()  # contiguous: SDPA's fused kernel
        if not torch.is_grad_enabled():
            self._cached = (key, bias)
        return bias


class AttentionBlock(nn.Module):
    """Pre-norm residual self-attention over the time axis of a (batch, channels, time) tensor."""

    def __init__(self, channels: int, heads: int, relative_position: bool = False):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = nn.Conv1d(channels, channels, 1)
        head_dim = channels // heads
        self.rel_pos = RelativePositionBias(heads, scale=head_dim**0.5) if relative_position else None

    # `hare.models.packed.pack_linears` may swap these 1x1 convs for packed linears over time-major rows
    POINTWISE_PACKABLE = ("qkv", "proj")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, channels, time)
        b, c, t = x.shape
        convs = isinstance(self.qkv, nn.Conv1d)
        if convs:  # (b, 3c, t), channels grouped per head as [q k v], then a time-major copy
            qkv = self.qkv(self.norm(x)).transpose(1, 2).contiguous()
        else:  # packed for inference: the 1x1 conv as a linear layer straight to time-major rows
            qkv = self.qkv(self.norm(x).transpose(1, 2))
        # time-major, so that q, k, v have a contiguous head_dim (SDPA's fused CPU kernel needs it; with
        # the head_dim strided it falls back to the unfused math path, ~2x slower here)
        q, k, v = qkv.view(b, t, self.heads, 3, c // self.heads).permute(3, 0, 2, 1, 4)  # (b, heads, t, hd)
        bias = self.rel_pos(t).to(q.dtype) if self.rel_pos is not None else None
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (b, heads, t, head_dim)
        if convs:
            return x + self.proj(h.permute(0, 1, 3, 2).reshape(b, c, t))
        return x + self.proj(h.transpose(1, 2).reshape(b, t, c)).transpose(1, 2)


# CTC letter scoring, shared by the speller (`hare.models.speller`) and the CLVP's optional letter head
def letter_log_probs(logits: torch.Tensor, upsample: int) -> torch.Tensor:
    """A letter head's output, `upsample` letter steps per input step: (b, n, upsample * classes) ->
    (b, n * upsample, classes) log-probabilities in float32."""
    b, n, width = logits.shape
    return logits.float().reshape(b, n * upsample, width // upsample).log_softmax(-1)


def ctc_nll(log_probs: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor,
            zero_infinity: bool = True) -> torch.Tensor:
    """Per-example CTC negative log-likelihood: (b, time, classes) log-probabilities with `lengths` valid steps,
    letters `targets` ((b, m) padded, or concatenated) with `target_lengths` -> (b,). An example too short to
    hold its letters is impossible: 0 with `zero_infinity` (training: no gradient from it), else inf."""
    return F.ctc_loss(log_probs.float().transpose(0, 1), targets, lengths, target_lengths, reduction="none",
                      zero_infinity=zero_infinity)


def letter_score(log_probs: torch.Tensor, letters: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """How well each candidate says the letters: (b, time, classes) log-probabilities, the first `lengths` steps
    of each row valid ((b,); None: all `time`), (m,) letter classes -> (b,) mean log-probability per letter
    (higher: better; -inf for a candidate too short to spell them)."""
    b, time, _ = log_probs.shape
    device = log_probs.device
    targets = letters.to(device).reshape(1, -1).expand(b, -1)
    lengths = torch.full((b,), time, dtype=torch.long, device=device) if lengths is None else lengths.to(device)
    nll = ctc_nll(log_probs, lengths, targets,
                  torch.full((b,), targets.shape[1], dtype=torch.long, device=device), zero_infinity=False)
    return -nll / max(targets.shape[1], 1)


def scores_by_length(lengths: list[int], score_rows, batch_size: int, device) -> torch.Tensor:
    """(b,) scores of b items of these `lengths`, computed by `score_rows(rows) -> (len(rows),)` on batches of
    at most `batch_size` items neighbouring in length (one long item does not pad all the others)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    scores = torch.empty(len(lengths), device=device)
    for start in range(0, len(order), batch_size):
        rows = order[start: start + batch_size]
        scores[rows] = score_rows(rows)
    return scores


def apply_weight_norm(module: nn.Module) -> nn.Module:
    """Re-parametrise every 1-D (transposed) convolution of `module` with weight norm (dim 0), in place, as the
    GAN vocoders are trained; `torch.nn.utils.parametrize.remove_parametrizations` folds it back."""
    from torch.nn.utils.parametrizations import weight_norm

    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
            weight_norm(m, dim=0)
    return module
