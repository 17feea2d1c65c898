"""Linear layers on oneDNN: pre-packed weights for fast float32 inference on x86 CPUs, and a training variant.

PyTorch's CPU `nn.Linear` goes to a BLAS (MKL) that re-reads the weight in its plain layout on every call.
oneDNN can instead keep the weight in its own blocked layout, packed once. On the 2-core AMD EPYC (AVX-512)
machine this project is benchmarked on, that runs the GPT's decode-step linears (16 rows against 1024x4096
weights) about 4x faster and large linears about 2x faster, with float32 results that differ from the BLAS
ones only by summation order (about 1e-6 relative; `tests/test_packed.py` checks it).

For training, `onednn_training_linears(module)` makes every `nn.Linear` run its float32 CPU matmuls, forward
and backward, on oneDNN (unpacked: the weights change every step): the same parameters, state dict and
results to float rounding, about 1.5x faster per linear layer here (`hare train` turns it on for CPU runs
without autocast; `train.cpu_kernels: off` turns it off).

`pack_linears(module)` swaps every `nn.Linear` of an inference model for a `PackedLinear` in place and frees
the plain weight (the packed copy replaces it; no memory is added), and the 3-wide convolutions a module
lists in `WINOGRAD_PACKABLE` for `WinogradConv1d`s (six packed filter transforms: twice the weight's memory).
The linears a module lists in `FEW_ROWS_PACKABLE` (the GPT's decode-step layers) are packed instead for
Hare's few-row kernel (`hare.kernels.panel_linear`: 16-column panels streamed once per call), which runs a
16-row decode step near the memory's bandwidth where oneDNN's small-row kernels reach about half of it; over
many rows the same panels are unpacked for PyTorch's BLAS.
It is inference-only: a packed module has no gradients and no `state_dict` entry for the weight.
`TextToSpeech` packs its networks when it runs float32 on a CPU that supports it (`packing_available()`);
`pack=False` turns that off.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from hare import kernels
from hare.kernels.reference import winograd_filters


def _pack(weight: torch.Tensor, batch_hint: int) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().float().contiguous(), batch_hint)


def _packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None,
                   gelu_tanh: bool = False) -> torch.Tensor:
    if gelu_tanh:  # the activation in the matmul's epilogue: no second pass over the output
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "gelu", [], "tanh")
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


# rows up to which a panel-packed linear runs Hare's kernel; above, PyTorch's BLAS on the weight unpacked for
# the call (the kernel is near the memory's speed at few rows, about 80 % of the BLAS at many; on this project's
# Xeon, one thread, 1024x4096: as fast as unpacking and the BLAS at 256 rows, 10 % slower at 1024)
PANEL_MAX_ROWS = 256


def _check_inference_input(x: torch.Tensor, what: str) -> None:
    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise RuntimeError(f"a packed {what} runs float32 on the CPU (got {x.dtype} on {x.device})")
    if kernels.autograd_records(x):
        raise RuntimeError(f"a packed {what} is for inference: it has no gradients")


@functools.lru_cache(maxsize=None)
def packing_available() -> bool:
    """True when this PyTorch build can pack linear weights for oneDNN and gets the right answer with them."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        g = torch.Generator().manual_seed(0)
        w, b, x = torch.randn(7, 5, generator=g), torch.randn(7, generator=g), torch.randn(3, 5, generator=g)
        out = _packed_linear(x, _pack(w, 3), b)
        return bool(torch.allclose(out, F.linear(x, w, b), atol=1e-5, rtol=1e-5))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


class PackedLinear(nn.Module):
    """Inference-only stand-in for an `nn.Linear` (float32, CPU), its weight packed for oneDNN, or with
    `few_rows` (when Hare's kernels are available) into 16-column panels for `hare.kernels.panel_linear`, or with
    `int8` into int8 panels for `hare.kernels.panel_linear_int8` (one scale per output column, the inputs
    quantised per row on the fly: the fast path's GPT; raises if that kernel is unavailable).

    `layout` says which: "onednn", "panels" or "int8"; `packed` holds the packed weight either way (the only
    copy); an int8 layer also holds its column `scales` and `sums` (buffers).
    """

    def __init__(self, linear: nn.Linear | nn.Conv1d, batch_hint: int = 16, few_rows: bool = False,
                 int8: bool = False):
        super().__init__()
        if linear.weight.device.type != "cpu":
            raise ValueError("only CPU linear layers can be packed")
        weight = linear.weight
        if isinstance(linear, nn.Conv1d):  # a 1x1 convolution is a linear layer over time-major rows
            if not _pointwise(linear):
                raise ValueError("only 1x1 convolutions (no padding, stride, dilation or groups) can be packed")
            weight = weight[..., 0]
        self.out_features, self.in_features = weight.shape
        bias = None if linear.bias is None else linear.bias.detach().float().contiguous()
        self.register_buffer("bias", bias, persistent=False)
        if int8:
            ops8 = kernels.panel_linear_int8()
            if ops8 is None:
                raise RuntimeError("int8 panels need Hare's CPU kernels (a C++ compiler), which are unavailable")
            self.layout = "int8"
            self.packed, scales, sums = ops8[0](weight.detach().float())
            self.register_buffer("scales", scales, persistent=False)
            self.register_buffer("sums", sums, persistent=False)
            return
        ops = kernels.panel_linear() if few_rows else None
        self.layout = "onednn" if ops is None else "panels"
        # a plain attribute: oneDNN's opaque layout, or the panels (panels, in_features, 16)
        self.packed = _pack(weight, batch_hint) if ops is None else ops[0](weight.detach().float())

    def kernel_weights(self) -> list[torch.Tensor]:
        """The packed weight as the compiled kernels take it: [panels] ("panels"), [panels, scales, sums]
        ("int8"); not for the oneDNN layout."""
        if self.layout == "panels":
            return [self.packed]
        if self.layout == "int8":
            return [self.packed, self.scales, self.sums]
        raise ValueError("a oneDNN-packed linear has no panel weights")

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weight matrix one call reads, float32 or int8 (not its buffers: bias, scales, sums)."""
        return self.in_features * self.out_features * (1 if self.layout == "int8" else 4)

    def forward(self, x: torch.Tensor, gelu_tanh: bool = False) -> torch.Tensor:
        """y = x W^T + b, or with `gelu_tanh` GELU(tanh approximation) of it, fused into the matmul. An int8
        layer also takes bfloat16/float16 inputs (under autocast: `dtype="bf16"` with `quantize="int8"`): they
        are quantised from float32, and y is float32."""
        if self.layout == "int8" and x.is_cpu and x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        if not (x.is_cpu and x.dtype == torch.float32) or kernels.autograd_records(x):
            _check_inference_input(x, "linear layer")  # raises
        x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        if self.layout == "int8":  # every row count: the int8 products are exact, the kernel blocks large ones
            if x2.stride(-1) != 1:
                x2 = x2.contiguous()
            y = torch.ops.hare.panel_linear_int8(x2, self.packed, self.scales, self.sums, self.bias,
                                                 self.out_features, gelu_tanh, "")
        elif self.layout == "onednn":
            y = _packed_linear(x2, self.packed, self.bias, gelu_tanh)
        elif x2.shape[0] <= PANEL_MAX_ROWS:
            if x2.stride(-1) != 1:
                x2 = x2.contiguous()
            y = torch.ops.hare.panel_linear(x2, self.packed, self.bias, self.out_features, gelu_tanh, "")
        else:  # many rows: the BLAS on the weight unpacked for this call (a transient copy)
            y = F.linear(x2, torch.ops.hare.panel_unpack(self.packed, self.out_features), self.bias)
            if gelu_tanh:
                y = F.gelu(y, approximate="tanh")
        return y if x.dim() == 2 else y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
                + (f", layout={self.layout}" if self.layout != "onednn" else ""))


# Winograd F(4,3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): the filter
# transform G; the input transform B^T and output transform A^T are written out in WinogradConv1d.forward.
class WinogradConv1d(nn.Module):
    """Inference-only stand-in for a 3-wide, stride-1, 'same'-padded `nn.Conv1d` (float32, CPU): Winograd's
    minimal filtering F(4,3) over time, its six products as packed oneDNN matmuls.

    Every 4 outputs y[4i .. 4i+3] come from the 6 inputs d0..d5 = x[4i-1 .. 4i+4] as
    Y = A^T [(G W) (B^T d)]: six (T/4 x C_in) @ (C_in x C_out) products instead of a direct convolution's
    three of T rows, half the multiplications. The same result to float rounding (about 4e-6 relative here;
    `tests/test_packed.py` checks it against `nn.Conv1d`); about 1.7x faster than PyTorch's convolution for the
    diffusion decoder's 1024-channel convolutions on the benchmark machine.

    With `int8` the six products run on Hare's int8 kernel instead (`hare.kernels.panel_linear_int8`: each
    transformed filter as int8 with a scale per output channel, each transformed input tile quantised on the
    fly; the fast path's diffusion decoder; it needs the compiled kernels).
    """

    def __init__(self, conv: nn.Conv1d, int8: bool = False):
        super().__init__()
        if conv.weight.device.type != "cpu":
            raise ValueError("only CPU convolutions can be packed")
        if not _same3(conv):
            raise ValueError("only 3-wide, stride-1, padding-1, undilated, ungrouped, zero-padded convolutions")
        self.out_channels, self.in_channels = conv.weight.shape[:2]
        self.int8 = int8
        if int8:
            ops8 = kernels.panel_linear_int8()
            if ops8 is None or kernels.winograd() is None:
                raise RuntimeError("int8 convolutions need Hare's CPU kernels (a C++ compiler), which are unavailable")
            self.packed = [ops8[0](f) for f in winograd_filters(conv.weight)]  # (panels, scales, sums) each
        else:
            self.packed = [_pack(f, 128) for f in winograd_filters(conv.weight)]
        bias = None if conv.bias is None else conv.bias.detach().float().contiguous()
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """x: (batch, in_channels, frames) -> (batch, out_channels, frames), a time-major tensor's view; plus
        `residual` (batch, out_channels, frames) when given (added in the same pass)."""
        _check_inference_input(x, "convolution")
        b, c, t = x.shape
        ops = kernels.winograd()
        if ops is None and self.int8:  # (HARE_KERNELS turned off after packing)
            raise RuntimeError("an int8 convolution needs Hare's CPU kernels, which are now unavailable")
        if ops is not None:  # the transforms as two compiled passes over time-major rows
            v = ops[0](_time_major(x))
            if self.int8:
                n = self.out_channels
                m = [torch.ops.hare.panel_linear_int8(v[i], *p, None, n, False, "") for i, p in enumerate(self.packed)]
            else:
                m = [_packed_linear(v[i], p, None) for i, p in enumerate(self.packed)]
            res = None if residual is None else _time_major(residual)
            return ops[1](m, self.bias, res, b, t).transpose(1, 2)
        n = (t + 3) // 4
        # time-major, zero frames around: row j holds x[j - 1]; tile i reads rows 4i .. 4i + 5
        xp = F.pad(x.transpose(1, 2), (0, 0, 1, 4 * n + 1 - t))
        d = [xp[:, j: j + 4 * n: 4] for j in range(6)]  # (batch, n, in_channels) each
        # B^T d
        a1, b1 = torch.add(d[4], d[2], alpha=-4), torch.add(d[3], d[1], alpha=-4)
        a2, b2 = d[4] - d[2], d[3] - d[1]
        v = (torch.add(torch.add(d[4], d[0], alpha=4), d[2], alpha=-5), a1 + b1, a1 - b1,
             torch.add(a2, b2, alpha=2), torch.add(a2, b2, alpha=-2),
             torch.add(torch.add(d[5], d[1], alpha=4), d[3], alpha=-5))
        m = [_packed_linear(vi.reshape(-1, c), p, None).view(b, n, self.out_channels) for vi, p in zip(v, self.packed)]
        # A^T m, written tile-interleaved into time-major rows
        p, q, r, s = m[1] + m[2], m[1] - m[2], m[3] + m[4], m[3] - m[4]
        y = x.new_empty(b, n, 4, self.out_channels)
        torch.add(m[0], p, out=y[:, :, 0])
        y[:, :, 0] += r
        torch.add(q, s, alpha=2, out=y[:, :, 1])
        torch.add(p, r, alpha=4, out=y[:, :, 2])
        torch.add(q, s, alpha=8, out=y[:, :, 3])
        y[:, :, 3] += m[5]
        if self.bias is not None:
            y += self.bias
        y = y.view(b, 4 * n, self.out_channels)[:, :t].transpose(1, 2)
        return y if residual is None else y + residual

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size=3, padding=1, bias={self.bias is not None}"
                + (", int8" if self.int8 else ""))


def _time_major(x: torch.Tensor) -> torch.Tensor:
    """(batch, channels, frames) -> its (batch, frames, channels) contiguous form (a view when it is one)."""
    xt = x.transpose(1, 2)
    return xt if xt.is_contiguous() else xt.contiguous()


def _same3(conv: nn.Conv1d) -> bool:
    return (type(conv) is nn.Conv1d and conv.kernel_size == (3,) and conv.stride == (1,) and conv.dilation == (1,)
            and conv.groups == 1 and conv.padding == (1,) and conv.padding_mode == "zeros")


def _pointwise(conv: nn.Conv1d) -> bool:
    return (conv.kernel_size == (1,) and conv.stride == (1,) and conv.dilation == (1,) and conv.groups == 1
            and conv.padding in ((0,), "valid"))


def pack_linears(module: nn.Module, batch_hint: int = 16, few_rows: bool = True, int8: bool = False,
                 int8_convolutions: bool = False) -> int:
    """Replace every float32 CPU `nn.Linear` inside `module` (in place) by a `PackedLinear`; returns how many.

    With `int8`, every `nn.Linear` gets int8 panels (`PackedLinear(int8=True)`: the fast path's weights, a
    quarter of float32's bytes; it needs Hare's kernels); with `int8_convolutions` too, so do the 1x1 and the
    Winograd convolutions below (the fast path's diffusion decoder); otherwise they stay float32.

    Subclasses of `nn.Linear` (quantised or otherwise special layers) are left alone. A module that lists
    linear children in `FEW_ROWS_PACKABLE` (layers that mostly run over few rows, such as the GPT's in its
    decode step) has those packed for Hare's few-row kernel when it is available (unless `few_rows` is False:
    oneDNN for every linear, as before that kernel). A module that lists
    children in `POINTWISE_PACKABLE` (1x1 `nn.Conv1d`s it can also run as linears over time-major rows, such
    as `layers.AttentionBlock`) has those packed too, and one that lists children in `WINOGRAD_PACKABLE`
    (3-wide 'same' convolutions, such as `diffusion.ResBlock`'s) has them swapped for `WinogradConv1d`s.
    """
    def float_cpu(m) -> bool:
        return m.weight.dtype == torch.float32 and m.weight.device.type == "cpu"

    def stand_in(parent, name, child):
        """The packed class to put in place of `child` (`parent`'s child `name`), or None to leave it."""
        if type(child) is nn.Linear and float_cpu(child):
            return PackedLinear
        if type(child) is nn.Conv1d and float_cpu(child):
            if name in getattr(parent, "POINTWISE_PACKABLE", ()) and _pointwise(child):
                return PackedLinear
            if name in getattr(parent, "WINOGRAD_PACKABLE", ()) and _same3(child):
                return WinogradConv1d
        return None

    # hold (parent, name, class) triples, not the layers: each plain weight is freed as soon as its layer is
    # swapped, so packing never holds two copies of the model
    slots = [(parent, name, cls) for parent in module.modules() if not isinstance(parent, nn.Linear)
             for name, child in parent.named_children() if (cls := stand_in(parent, name, child)) is not None]
    for parent, name, cls in slots:
        child = getattr(parent, name)
        panels = few_rows and name in getattr(parent, "FEW_ROWS_PACKABLE", ())
        quantise = int8 and (type(child) is nn.Linear or int8_convolutions)
        setattr(parent, name, PackedLinear(child, batch_hint, panels, quantise) if cls is PackedLinear
                else cls(child, int8=quantise))
    return len(slots)


class _OneDNNLinearFunction(torch.autograd.Function):
    """y = x W^T + b with the three matmuls (forward, input and weight gradients) on oneDNN. x: (n, in)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _packed_linear(x, weight, bias)  # a plain weight works too (oneDNN reorders it per call)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _packed_linear(grad, weight.t().contiguous(), None)  # grad @ W
        if ctx.needs_input_grad[1]:
            grad_w = _packed_linear(grad.t().contiguous(), x.t().contiguous(), None)  # grad^T @ x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=0)
        return grad_x, grad_w, grad_b


class OneDNNLinear(nn.Linear):
    """An `nn.Linear` (same parameters and state dict) whose float32 CPU matmuls run on oneDNN, with autograd.

    Anything else (another device or dtype, autocast, an empty input) goes through `F.linear`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or x.dtype != torch.float32 or self.weight.dtype != torch.float32
                or torch.is_autocast_enabled("cpu") or x.numel() == 0):
            return F.linear(x, self.weight, self.bias)
        y = _OneDNNLinearFunction.apply(x.reshape(-1, self.in_features), self.weight, self.bias)
        return y.view(*x.shape[:-1], self.out_features)


def onednn_training_linears(module: nn.Module) -> int:
    """Turn every plain `nn.Linear` inside `module` into a `OneDNNLinear` in place (its class only: parameters,
    hooks and state dict stay as they are); returns how many. A no-op count of 0 if oneDNN is unavailable."""
    if not packing_available():
        return 0
    count = 0
    for m in module.modules():
        if type(m) is nn.Linear:
            m.__class__ = OneDNNLinear
            count += 1
    return count
