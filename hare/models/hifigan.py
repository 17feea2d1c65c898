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

        cond: (batch, cond_channels, 1), required when the config has `cond_channels`, refused otherwise."""
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
        in the weights' dtype (bf16 where the pipeline converted them); with `chunk_frames` set, in windows of
        one fixed shape (`vocode_chunked`)."""
        if self.chunk_frames:
            return self.vocode_chunked(mel, self.chunk_frames)
        return self.forward(mel.to(self.inp.weight.dtype))[:, 0].float()

    chunk_frames: int = 0  # 0: one pass over the whole mel

    @torch.inference_mode()
    def vocode_chunked(self, mel: torch.Tensor, chunk: int) -> torch.Tensor:
        """`vocode` in windows of one shape: `chunk` frames kept from each window of chunk + 2 x
        `context_frames()` (the receptive field's half-width each side), the mel padded with silence (log 1e-5)
        to whole windows. oneDNN's bf16 convolutions pay a first call per input shape (on an AMX Xeon about
        1 s for 300 frames, more than the call itself), so one shape for every length keeps bf16 fast. Within
        float rounding of a whole-mel pass, except within `context_frames()` of the ends (the silence padding
        instead of each layer's zeros)."""
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1 frame (got {chunk})")
        b, bands, frames = mel.shape
        if frames == 0:
            return mel.new_zeros(b, 0, dtype=torch.float32)
        c = self.context_frames()
        windows = -(-frames // chunk)
        padded = F.pad(mel.to(self.inp.weight.dtype), (c, windows * chunk - frames + c), value=SILENCE)
        hop, out = self.hop_length, []
        for i in range(windows):
            wav = self(padded[:, :, i * chunk: i * chunk + chunk + 2 * c])[:, 0]
            out.append(wav[:, c * hop: (c + chunk) * hop].float())
        return torch.cat(out, dim=1)[:, : frames * hop]
