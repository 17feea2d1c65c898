"""The PyTorch definitions the compiled kernels are checked against (their reference implementations): the
kernels' self-check at load and the tests compare each kernel with these, and the models fall back on them
where a kernel is unavailable. Plain PyTorch, no model code: the kernels import nothing from `hare.models`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Winograd F(4,3)'s filter transform G (6 x 3)
_WINOGRAD_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6), (1 / 24, 1 / 12, 1 / 6),
               (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))


def winograd_filters(weight: torch.Tensor) -> list[torch.Tensor]:
    """The six filter transforms G W of a 3-wide convolution's weight (out, in, 3): float32 (out, in)
    matrices, computed in float64 and rounded once."""
    w = weight.detach().double()
    return [sum(g * w[..., k] for k, g in enumerate(row)).float().contiguous() for row in _WINOGRAD_G]


def check_lvc_length(x: torch.Tensor, kernel: torch.Tensor, hop: int) -> None:
    if x.shape[2] != kernel.shape[4] * hop:
        raise ValueError(f"LVC input length {x.shape[2]} != frames {kernel.shape[4]} x hop {hop}")


def location_variable_conv_reference(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor,
                                     hop: int) -> torch.Tensor:
    """`location_variable_conv` in PyTorch operations (differentiable, any device and dtype)."""
    check_lvc_length(x, kernel, hop)
    b, _, length = x.shape
    out_channels, ksize, frames = kernel.shape[2], kernel.shape[3], kernel.shape[4]
    pad = (ksize - 1) // 2
    windows = F.pad(x, (pad, pad)).unfold(2, hop + 2 * pad, hop)  # (b, in, frames, hop + 2 pad)
    taps = windows.unfold(3, ksize, 1)  # (b, in, frames, hop, k)
    y = torch.einsum("bifsk,biokf->bofs", taps, kernel) + bias.unsqueeze(-1)
    return y.reshape(b, out_channels, frames * hop)
