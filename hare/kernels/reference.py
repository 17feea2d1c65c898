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


def gpt_block_decode_reference(x, norms, weights, k_cache, v_cache, position, prefix_k, prefix_v, heads, eps=1e-5):
    """What gpt_block_decode computes, from PyTorch's LayerNorm, linears and GELU around the decode attention kernel
    (`torch.ops.hare.decode_attention_qkv`, checked on its own): x (batch, dim); norms: (ln1 weight, ln1 bias, ln2
    weight, ln2 bias); weights: the (weight, bias) pairs of qkv, attn_out, fc and proj. Writes the new key and value
    at `position` of the caches, as the kernel does."""
    dim = x.shape[1]
    qkv = F.linear(F.layer_norm(x, (dim,), norms[0], norms[1], eps), *weights[0])
    h = torch.ops.hare.decode_attention_qkv(qkv, k_cache, v_cache, position, prefix_k, prefix_v, heads,
                                            (dim // heads) ** -0.5)
    x1 = x + F.linear(h, *weights[1])
    m = F.gelu(F.linear(F.layer_norm(x1, (dim,), norms[2], norms[3], eps), *weights[2]), approximate="tanh")
    return x1 + F.linear(m, *weights[3])


def quantize_int8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row, as the int8 panel kernel quantises weights (per output column) and inputs (per
    row): x (rows, k) float32 -> (values (rows, k) float32 holding integers in [-127, 127], scales (rows,)),
    scale = max |x| / 127 (1 for an all-zero row), values = round-half-even(x * (1 / scale))."""
    amax = x.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    return torch.round(x * torch.reciprocal(scale)[:, None]).clamp(-127, 127), scale


def panel_linear_int8_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                                gelu_tanh: bool = False) -> torch.Tensor:
    """What `panel_linear_int8` computes, in PyTorch: x (rows, k) and the float weight (n, k) each quantised
    (`quantize_int8_rows`; the weight's values as `panel_pack_int8` rounds them: w / scale), their integer
    product exact (float64), scaled back in float32, plus the bias, GELU-tanh of it with `gelu_tanh`."""
    qx, sx = quantize_int8_rows(x.float())
    amax = weight.float().abs().amax(dim=1)
    sw = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    qw = torch.round(weight.float() / sw[:, None]).clamp(-127, 127)
    y = (sx[:, None] * sw[None, :]) * (qx.double() @ qw.double().T).float()
    if bias is not None:
        y = y + bias
    return F.gelu(y, approximate="tanh") if gelu_tanh else y
