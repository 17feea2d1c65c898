"""HiFi-GAN V1 generator: the vocoder hare-mini uses (80-band 22.05 kHz mels, hop 256).

The structure follows the paper (Kong et al., "HiFi-GAN", 2020): a 7-tap input convolution, four transposed
convolutions upsampling 8·8·2·2 = 256x, each followed by a multi-receptive-field fusion of three residual
stacks (kernels 3/7/11, dilations 1/3/5), then a 7-tap output convolution and tanh. Weight norm is folded
into plain weights when imported (`hare.convert.hifigan`). With `cond_channels` > 0 a global conditioning
vector is added after the input convolution through a 1x1 convolution (Tortoise v3's latent decoder,
`hare.models.hifi_decoder`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hare.audio import TACOTRON_MEL_MIN as SILENCE  # ln(1e-5): the HiFi-GAN log mel of silence
from hare.models.configs import HiFiGANConfig

SLOPE = 0.1  # leaky ReLU slope inside the network (the final activation uses torch's default 0.01)


class _DilatedStack(nn.Module):
    """Pairs of (dilated conv, plain conv), each pair added back onto its input."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]):
        super().__init__()
        self.dilated = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, dilation=d, padding=d * (kernel - 1) // 2) for d in dilations)
        self.plain = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for a, b in zip(self.dilated, self.plain):
            x = x + b(F.leaky_relu(a(F.leaky_relu(x, SLOPE)), SLOPE))
        return x


class _Stage(nn.Module):
    """One upsampling step and its multi-receptive-field fusion (mean of the stacks)."""

    def __init__(self, c_in: int, c_out: int, rate: int, kernel: int, config: HiFiGANConfig):
        super().__init__()
        self.up = nn.ConvTranspose1d(c_in, c_out, kernel, stride=rate, padding=(kernel - rate) // 2)
        self.stacks = nn.ModuleList(
            _DilatedStack(c_out, k, tuple(d)) for k, d in zip(config.resblock_kernels, config.resblock_dilations))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(F.leaky_relu(x, SLOPE))
        total = self.stacks[0](x)
        for stack in self.stacks[1:]:
            total = total + stack(x)
        return total / len(self.stacks)


ROW_BLOCK_ELEMENTS = 1 << 21  # a time-major convolution's gathered taps per matrix product (4 MB in bf16)


def _taps_product(x: torch.Tensor, kernel: int, dilation: int, padding: int, out_rows: int,
                  weight_t: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None,
                  slope: float | None, tiles: "_Tiles | None" = None) -> torch.Tensor:
    """out[t] = bias (+ residual[t]) + concat_j f(x[t + j dilation - padding]) @ weight_t for t < out_rows, rows
    of x outside it read as zeros, f the leaky ReLU of `slope` (or nothing): x (frames, in) time-major,
    weight_t (kernel x in, out). Rows go in blocks of one size per weight, whatever the length (the last one
    padded, a short input's only one too), so that a vocoder meets the same few matrix shapes for every input:
    oneDNN prepares each new shape on first use (tens of ms), which one warm-up call then pays for all lengths.
    Each block's taps are gathered side by side into one buffer reused for every block (`hare.kernels.row_taps`,
    which applies f on the way; PyTorch copies without it), then one product, the residual already in its
    accumulator. With `tiles` (a bf16 weight on a CPU with AMX bf16 tiles, `_Tiles.of`) the whole convolution
    is one call of `hare.kernels.conv_rows` instead, which reads the taps in place."""
    from hare import kernels

    if tiles is not None:
        return tiles(x, kernel, dilation, padding, out_rows, residual, slope)
    c = x.shape[1]
    width = kernel * c
    rows = max(16, ROW_BLOCK_ELEMENTS // width // 16 * 16)
    blocks = -(-out_rows // rows)
    gather = kernels.row_taps() if x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) else None
    x = x.contiguous()
    if gather is None:
        if slope is not None:
            x = F.leaky_relu(x, slope)
        x = F.pad(x, (0, 0, padding, max(0, blocks * rows + dilation * (kernel - 1) - padding - x.shape[0])))
    out = x.new_empty(blocks * rows, weight_t.shape[1])
    if residual is not None:
        out[:out_rows].copy_(residual)
        out[out_rows:].zero_()
        out.add_(bias)
    buffer = x.new_empty(rows, width)
    taps = buffer.view(rows, kernel, c)
    for i in range(blocks):
        start = i * rows
        if gather is not None:
            gather(x, start, rows, kernel, dilation, padding, slope is not None, slope or 0.0, buffer)
        else:
            for j in range(kernel):
                taps[:, j].copy_(x[start + j * dilation: start + j * dilation + rows])
        if residual is None:
            torch.addmm(bias, buffer, weight_t, out=out[start: start + rows])
        else:
            out[start: start + rows].addmm_(buffer, weight_t)
    return out[:out_rows]


class _Tiles:
    """A time-major convolution's weight in AMX's bf16 tile layout and its float32 bias, for
    `hare.kernels.conv_rows` (float32 sums, one rounding to bf16)."""

    def __init__(self, ops, weight_t: torch.Tensor, bias: torch.Tensor):
        self.pack, self.conv = ops
        self.packed = self.pack(weight_t)
        self.bias = bias.float().contiguous()

    @classmethod
    def of(cls, weight_t: torch.Tensor, bias: torch.Tensor, in_channels: int) -> "_Tiles | None":
        """The tiles for this (kernel x in_channels, out) weight, or None where the kernel does not apply (not
        bf16 on a CPU, the CPU without AMX bf16 tiles, no kernels, input channels or outputs not multiples of
        32)."""
        if (weight_t.dtype != torch.bfloat16 or weight_t.device.type != "cpu" or weight_t.shape[1] % 32
                or in_channels % 32):
            return None
        from hare import kernels

        ops = kernels.conv_rows()
        return None if ops is None else cls(ops, weight_t, bias)

    def __call__(self, x, kernel, dilation, padding, out_rows, residual, slope):
        return self.conv(x.contiguous(), self.packed, self.bias,
                         None if residual is None else residual.contiguous(), kernel, dilation, padding, out_rows,
                         slope is not None, slope or 0.0)


class _RowConv:
    """A Conv1d over time-major rows: x (time, in) -> (time, out), as `_taps_product` with the weight laid out
    (kernel x in, out); the leaky ReLU before it (`slope`) and a residual added after it are fused in."""

    def __init__(self, conv: nn.Conv1d):
        if conv.stride[0] != 1 or conv.groups != 1 or not isinstance(conv.padding[0], int):
            raise ValueError("only plain stride-1 convolutions with integer padding are supported")
        w = conv.weight.detach()
        self.out_channels, self.in_channels, self.kernel = w.shape
        self.dilation, self.padding = conv.dilation[0], conv.padding[0]
        self.weight_t = w.permute(2, 1, 0).reshape(self.kernel * self.in_channels, self.out_channels).contiguous()
        self.bias = conv.bias.detach() if conv.bias is not None else w.new_zeros(self.out_channels)
        self.tiles = _Tiles.of(self.weight_t, self.bias, self.in_channels)

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                 slope: float | None = None) -> torch.Tensor:
        out_frames = x.shape[0] + 2 * self.padding - self.dilation * (self.kernel - 1)
        return _taps_product(x, self.kernel, self.dilation, self.padding, out_frames, self.weight_t, self.bias,
                             residual, slope, self.tiles)


class _RowConvTranspose:
    """A ConvTranspose1d (stride r, kernel k, padding p) over time-major rows. Output sample m = q r + phase of
    the uncropped result is the sum over t < J = ceil(k / r) of x[q - t] @ W[:, :, phase + t r]: one product of
    each row's J neighbours side by side (`_taps_product`, taps x[q - J + 1] .. x[q]) with a (J x in, r x out)
    weight gives every phase of q at once; the leaky ReLU before it (`slope`) fused in."""

    def __init__(self, conv: nn.ConvTranspose1d):
        if conv.groups != 1 or conv.dilation[0] != 1 or conv.output_padding[0] != 0:
            raise ValueError("only plain transposed convolutions are supported")
        w = conv.weight.detach()  # (in, out, kernel)
        c_in, self.out_channels, self.kernel = w.shape
        self.rate, self.padding = conv.stride[0], conv.padding[0]
        self.taps = -(-self.kernel // self.rate)
        big = w.new_zeros(self.taps, c_in, self.rate, self.out_channels)
        for t in range(self.taps):  # gathered tap j reads x[q - (J - 1 - j)]
            for phase in range(self.rate):
                if phase + t * self.rate < self.kernel:
                    big[self.taps - 1 - t, :, phase] = w[:, :, phase + t * self.rate]
        self.weight_t = big.reshape(self.taps * c_in, self.rate * self.out_channels).contiguous()
        bias = conv.bias.detach() if conv.bias is not None else w.new_zeros(self.out_channels)
        self.bias = bias.repeat(self.rate)
        self.tiles = _Tiles.of(self.weight_t, self.bias, c_in)

    def __call__(self, x: torch.Tensor, slope: float | None = None) -> torch.Tensor:
        frames, r = x.shape[0], self.rate
        length = (frames - 1) * r - 2 * self.padding + self.kernel
        q = ((frames - 1) * r + self.kernel - 1) // r + 1
        y = _taps_product(x, self.taps, 1, self.taps - 1, q, self.weight_t, self.bias, None, slope, self.tiles)
        return y.view(q * r, self.out_channels)[self.padding: self.padding + length]


class HiFiGAN(nn.Module):
    def __init__(self, config: HiFiGANConfig | None = None):
        super().__init__()
        self.config = config = config or HiFiGANConfig()
        if len(config.upsample_rates) != len(config.upsample_kernels):
            raise ValueError("upsample_rates and upsample_kernels must have the same length")
        c = config.initial_channels
        if c >> len(config.upsample_rates) < 1:
            raise ValueError(f"initial_channels {c} halves to nothing over {len(config.upsample_rates)} stages")
        self.inp = nn.Conv1d(config.n_mels, c, 7, padding=3)
        self.cond = nn.Conv1d(config.cond_channels, c, 1) if config.cond_channels > 0 else None
        self.stages = nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(config.upsample_rates, config.upsample_kernels)):
            self.stages.append(_Stage(c // 2 ** i, c // 2 ** (i + 1), rate, kernel, config))
        self.out = nn.Conv1d(c // 2 ** len(config.upsample_rates), 1, 7, padding=3)

    @property
    def hop_length(self) -> int:
        hop = 1
        for r in self.config.upsample_rates:
            hop *= r
        return hop

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def context_frames(self) -> int:
        """Input frames of context each side of a frame that its output samples depend on (the receptive
        field's half-width, rounded up): decoding frames [a - C, b + C) and keeping [a, b) gives what a decode
        of the whole sequence gives there."""
        c = self.config
        half = 3.0  # the 7-tap input convolution
        rate = 1
        for r, k in zip(c.upsample_rates, c.upsample_kernels):
            half += -(-k // r) / 2 / rate  # a transposed convolution's output reads ceil(k / r) inputs
            rate *= r
            half += max(sum((kk - 1) * (d + 1) // 2 for d in ds)
                        for kk, ds in zip(c.resblock_kernels, c.resblock_dilations)) / rate
        return int(half) + 2  # and a frame of margin each side

    def forward(self, mel: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, n_mels, frames) natural-log magnitude mel -> (batch, 1, frames * 256) audio in [-1, 1].

        cond: (batch, cond_channels, 1), required when the config has `cond_channels`, refused otherwise.
        With `time_major` set and no gradient asked for, each item goes through `forward_time_major`."""
        if self.time_major and not torch.is_grad_enabled():
            if cond is not None and cond.shape[0] not in (1, len(mel)):
                raise ValueError(f"cond has {cond.shape[0]} rows for {len(mel)} mels")
            conds = [None] * len(mel) if cond is None else cond.expand(len(mel), -1, -1)
            items = [self.forward_time_major(m, c) for m, c in zip(mel, conds)]
            return torch.stack(items)[:, None].to(self.inp.weight.dtype)
        x = self.inp(mel)
        if self.cond is not None:
            if cond is None:
                raise ValueError("this generator is conditioned: pass cond (batch, cond_channels, 1)")
            x = x + self.cond(cond)
        elif cond is not None:
            raise ValueError("this generator takes no conditioning input")
        for stage in self.stages:
            x = stage(x)
        return torch.tanh(self.out(F.leaky_relu(x)))

    @torch.inference_mode()
    def vocode(self, mel: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(batch, n_mels, frames) -> (batch, samples) float32; `generator` is unused (no noise input). Computed
        in the weights' dtype (bf16 where the pipeline converted them); with `time_major` set, as matrix
        products over time-major rows (`forward_time_major`)."""
        if self.time_major:
            return torch.stack([self.forward_time_major(m) for m in mel])  # float32, unrounded
        return self.forward(mel.to(self.inp.weight.dtype))[:, 0].float()

    time_major: bool = False  # vocode through `forward_time_major`

    @torch.inference_mode()
    def forward_time_major(self, mel: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """`forward` for one item, (n_mels, frames) [, (cond_channels, 1)] -> (samples,) float32, computed
        time-major: activations are (time, channels) rows and every convolution one matrix product per block of
        rows over the block's taps side by side (`_RowConv`); a transposed convolution is one product per
        input row giving all `rate` output phases (`_RowConvTranspose`). In bfloat16 on AMX this runs at the
        matrix units' speed for any length: oneDNN's bf16 convolutions compile each new input shape on first
        use (about 1.5 s for hare-mini's vocoder), while these products have a few shapes, the same for every
        length (the first call prepares them). The same function as `forward` to float rounding (float32
        sums, rounded to the weights' dtype as a convolution's are)."""
        if self.cond is None and cond is not None:
            raise ValueError("this generator takes no conditioning input")
        if self.cond is not None and cond is None:
            raise ValueError("this generator is conditioned: pass cond (cond_channels, 1)")
        if mel.shape[-1] == 0:
            return mel.new_zeros(0, dtype=torch.float32)
        ops = self._row_ops()
        dtype = self.inp.weight.dtype
        x = ops["inp"](mel.t().to(dtype))
        if cond is not None:
            x = x + ops["cond"](cond.reshape(1, -1).to(dtype))
        for up, stacks in ops["stages"]:
            x = up(x, slope=SLOPE)
            total = None
            for pairs in stacks:
                h = x
                for a, b in pairs:
                    h = b(a(h, slope=SLOPE), residual=h, slope=SLOPE)
                total = h if total is None else total.add_(h)
            x = total.div_(len(stacks))
        return torch.tanh(ops["out"](x, slope=0.01))[:, 0].float()  # F.leaky_relu's default slope, as forward

    def _row_ops(self) -> dict:
        """The time-major form of every convolution (`forward_time_major`), built once from the current weights
        and rebuilt when any of them changes (another dtype, device or new values)."""
        key = tuple((p.data_ptr(), p.dtype, p.device, p._version) for p in self.parameters())
        cached = getattr(self, "_row_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        ops = {"inp": _RowConv(self.inp), "out": _RowConv(self.out),
               "cond": _RowConv(self.cond) if self.cond is not None else None,
               "stages": [(_RowConvTranspose(stage.up),
                           [[(_RowConv(a), _RowConv(b)) for a, b in zip(s.dilated, s.plain)] for s in stage.stacks])
                          for stage in self.stages]}
        self._row_cache = (key, ops)
        return ops
