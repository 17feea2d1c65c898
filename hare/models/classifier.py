"""Tortoise v3's provenance classifier: "is this clip from Tortoise?" (`classifier.pth`).

A 1-D convolutional encoder reads the raw 24 kHz waveform: a 3-wide input convolution, then `depth` stages,
each `res_blocks` pre-norm residual blocks (GroupNorm-SiLU-conv twice, identity skip) at a constant width
followed by a strided 5-wide convolution that divides the frame rate by `downsample` and doubles the width
(official: 32 -> 1024 channels, 4^5 = 1024 samples per frame). GroupNorm-SiLU and a 1x1 convolution bring it to
`dim`; self-attention blocks (`hare.models.layers.AttentionBlock`, the same legacy fused-QKV block as the
other networks) mix the frames, and a linear head reads the first frame. Class 0 is "made by Tortoise".

The reference judges the first `max_samples` (220 000) samples of a clip; `hare.detect` does the loading,
resampling and trimming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hare.models.configs import ClassifierConfig
from hare.models.layers import AttentionBlock, group_norm


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, GroupNorm-SiLU-dropout-conv, plus the input (same width, same length)."""

    def __init__(self, channels: int, kernel_size: int, dropout: float):
        super().__init__()
        self.norm_in = group_norm(channels)
        self.conv_in = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.norm_out = group_norm(channels)
        self.dropout = nn.Dropout(dropout)
        self.conv_out = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(F.silu(self.norm_in(x)))
        return x + self.conv_out(self.dropout(F.silu(self.norm_out(h))))


class Stage(nn.Module):
    """Residual blocks at one width, then a strided convolution to twice the width (ceil(frames / stride))."""

    def __init__(self, channels: int, blocks: int, stride: int, kernel_size: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(channels, kernel_size, dropout) for _ in range(blocks))
        self.down = nn.Conv1d(channels, 2 * channels, 5, stride=stride, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.down(x)


class ProvenanceClassifier(nn.Module):
    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = config = config or ClassifierConfig()
        if config.kernel_size not in (3, 5):
            raise ValueError(f"kernel_size must be 3 or 5 (got {config.kernel_size})")
        self.conv_in = nn.Conv1d(config.in_channels, config.base_channels, 3, padding=1)
        widths = [config.base_channels * 2**i for i in range(config.depth)]
        self.stages = nn.ModuleList(
            Stage(w, config.res_blocks, config.downsample, config.kernel_size, config.dropout) for w in widths)
        top = config.base_channels * 2**config.depth
        self.final_norm = group_norm(top)
        self.final_proj = nn.Conv1d(top, config.dim, 1)
        self.attn = nn.ModuleList(AttentionBlock(config.dim, config.heads) for _ in range(config.attn_blocks))
        self.head = nn.Linear(config.dim, config.classes)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """Class logits: wav (batch, samples) or (batch, in_channels, samples) -> (batch, classes)."""
        if wav.dim() == 2:
            if self.config.in_channels != 1:
                raise ValueError(f"expected (batch, {self.config.in_channels}, samples), got {tuple(wav.shape)}")
            wav = wav[:, None]
        h = self.conv_in(wav)
        for stage in self.stages:
            h = stage(h)
        h = self.final_proj(F.silu(self.final_norm(h)))
        for block in self.attn:
            h = block(h)
        return self.head(h[:, :, 0])

    def prob_tortoise(self, wav: torch.Tensor) -> torch.Tensor:
        """Probability that Tortoise made each clip (softmax class 0, in float32): (batch, ...) -> (batch,)."""
        return torch.softmax(self(wav).float(), dim=-1)[:, 0]
