"""The diffusion decoder (Tortoise's DiffusionTts): predicts noise (and a variance interpolation) for a noisy
normalised 100-band mel, conditioned on the GPT's latents (or speech codes) and a voice latent.

The work that does not depend on the diffusion step is split out so a sampler runs it once:
`conditioning_latent` (voice), `aligned_conditioning` (latents or codes -> per-frame conditioning), and the
per-step `forward`. Conditioning-free guidance replaces the aligned conditioning by a learned embedding; the
`guided` helper runs both branches as one batched forward. Sampling lives in `hare.schedulers`.

Training-only pieces: `random_drop_mask` (rows trained unconditioned, for guidance), layer drop in the
trunk (`config.layer_drop`) and `predict_mel` (the auxiliary mel head on the aligned conditioning, which is
also the prior of shallow diffusion at inference).
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
from torch import nn

from hare.models.configs import DiffusionConfig
from hare.models.layers import AttentionBlock, group_norm
from hare.models.packed import PackedLinear, WinogradConv1d


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (original, integer) timesteps, [cos | sin] order: (batch,) -> (batch, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """GroupNorm-SiLU-1x1 conv, then scale/shift from the time embedding, SiLU, 3-wide conv; identity skip.

    Packed for inference (`hare.models.packed.pack_linears`), the 1x1 conv becomes a linear layer over
    time-major rows and the 3-wide one a Winograd convolution that adds the skip in its output pass: the
    block then reads and returns time-major activations (as (batch, channels, frames) views), and its
    GroupNorms run fused with their scale/shift and SiLU.
    """

    POINTWISE_PACKABLE = ("conv_in",)
    WINOGRAD_PACKABLE = ("conv_out",)

    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.norm_in = group_norm(channels)
        self.conv_in = nn.Conv1d(channels, channels, 1)
        self.emb = nn.Linear(channels, 2 * channels)
        self.norm_out = group_norm(channels)
        self.dropout = nn.Dropout(dropout)
        self.conv_out = nn.Conv1d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        # x: (batch, channels, frames); time_emb: (batch, channels)
        h = self.norm_in.fused(x, silu=True)
        if isinstance(self.conv_in, PackedLinear):  # time-major rows in and out
            h = self.conv_in(h.transpose(1, 2)).transpose(1, 2)
        else:
            h = self.conv_in(h)
        scale, shift = self.emb(F.silu(time_emb)).to(h.dtype).chunk(2, dim=1)
        h = self.dropout(self.norm_out.fused(h, scale, shift, silu=True))
        if isinstance(self.conv_out, WinogradConv1d):
            return self.conv_out(h, residual=x)
        return x + self.conv_out(h)


class PriorBlock(nn.Module):
    """A residual convolution block of the auxiliary mel head, at frame rate: GroupNorm-SiLU-conv(5),
    SiLU-conv(5). Its receptive field spans neighbouring codes, so the guess can vary within a code's frames
    (the aligned conditioning is constant across them)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.conv1 = nn.Conv1d(channels, channels, 5, padding=2)
        self.conv2 = nn.Conv1d(channels, channels, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(self.norm(x)))))


class DiffusionLayer(nn.Module):
    def __init__(self, channels: int, heads: int, dropout: float):
        super().__init__()
        self.res = ResBlock(channels, dropout)
        self.attn = AttentionBlock(channels, heads, relative_position=True)

    def forward(self, x, time_emb):
        return self.attn(self.res(x, time_emb))


class DiffusionDecoder(nn.Module):
    def __init__(self, config: DiffusionConfig):
        super().__init__()
        self.config = c = config
        ch, heads = c.channels, c.heads
        self.inp = nn.Conv1d(c.in_channels, ch, 3, padding=1)
        self.time_in = nn.Linear(ch, ch)
        self.time_out = nn.Linear(ch, ch)
        # aligned conditioning from speech codes (training on VQ-VAE codes) or from GPT latents (inference)
        self.code_embedding = nn.Embedding(c.num_codes, ch)
        self.code_blocks = nn.ModuleList(AttentionBlock(ch, heads, relative_position=True) for _ in range(3))
        self.latent_in = nn.Conv1d(c.latent_channels, ch, 3, padding=1)
        self.latent_blocks = nn.ModuleList(AttentionBlock(ch, heads, relative_position=True) for _ in range(4))
        self.code_norm = group_norm(ch)
        # voice latent from 24 kHz mels
        self.context_convs = nn.ModuleList([
            nn.Conv1d(c.in_channels, ch, 3, padding=1, stride=2),
            nn.Conv1d(ch, 2 * ch, 3, padding=1, stride=2),
        ])
        self.context_blocks = nn.ModuleList(AttentionBlock(2 * ch, heads, relative_position=True) for _ in range(5))
        self.unconditioned = nn.Parameter(torch.randn(1, ch, 1))
        self.cond_layers = nn.ModuleList(DiffusionLayer(ch, heads, c.dropout) for _ in range(3))
        self.merge = nn.Conv1d(2 * ch, ch, 1)
        self.layers = nn.ModuleList(DiffusionLayer(ch, heads, c.dropout) for _ in range(c.layers))
        self.res_layers = nn.ModuleList(ResBlock(ch, c.dropout) for _ in range(3))
        self.out_norm = group_norm(ch)
        self.out_conv = nn.Conv1d(ch, c.out_channels, 3, padding=1)
        # auxiliary mel guess from the aligned conditioning (trained with the auxiliary loss; the shallow-diffusion
        # prior): `prior_layers` residual conv blocks (none in Tortoise-sized configs), then one conv
        self.prior_blocks = nn.ModuleList(PriorBlock(ch) for _ in range(c.prior_layers))
        self.mel_head = nn.Conv1d(ch, c.in_channels, 3, padding=1)

    # -- timestep-independent ---------------------------------------------------------------------------
    def conditioning_latent(self, mels: torch.Tensor) -> torch.Tensor:
        """Voice latent from unnormalised 24 kHz log-mels: (batch, clips, 100, frames) -> (batch, 2*channels).

        Every clip is encoded, the outputs are concatenated along time and averaged.
        """
        if mels.dim() == 3:
            mels = mels.unsqueeze(1)
        b, n = mels.shape[:2]
        h = mels.flatten(0, 1)
        for conv in self.context_convs:
            h = conv(h)
        for block in self.context_blocks:
            h = block(h)
        # (b*n, 2ch, t) -> mean over all clips' frames (clips share a length, so this equals concat+mean)
        return h.view(b, n, h.shape[1], h.shape[2]).mean(dim=(1, 3))

    def aligned_conditioning(self, aligned: torch.Tensor, cond_latent: torch.Tensor, frames: int,
                             drop_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-frame conditioning for `frames` output frames.

        aligned: GPT latents (batch, length, latent_channels) float, or speech codes (batch, length) long;
        cond_latent: (batch, 2*channels). `drop_mask` (batch,) bool replaces rows by the unconditioned
        embedding (training-time dropout for conditioning-free guidance). -> (batch, channels, frames)
        """
        if not aligned.is_floating_point():
            h = self.code_embedding(aligned).transpose(1, 2)
            for block in self.code_blocks:
                h = block(h)
        else:
            h = self.latent_in(aligned.transpose(1, 2))
            for block in self.latent_blocks:
                h = block(h)
        scale, shift = cond_latent.chunk(2, dim=1)
        h = self.code_norm(h) * (1 + scale.unsqueeze(-1)) + shift.unsqueeze(-1)
        if drop_mask is not None:
            h = torch.where(drop_mask[:, None, None], self.unconditioned.to(h.dtype).expand_as(h), h)
        return F.interpolate(h, size=frames, mode="nearest")

    def unconditioned_conditioning(self, batch: int, frames: int) -> torch.Tensor:
        """The conditioning-free branch's conditioning: the learned embedding everywhere. -> (batch, channels, frames)"""
        return self.unconditioned.expand(batch, -1, frames)

    def predict_mel(self, aligned: torch.Tensor, drop_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Auxiliary training head: a mel guessed from the aligned conditioning alone.

        aligned: (batch, channels, frames) -> (batch, in_channels, frames). Rows in `drop_mask` (trained
        unconditioned) come out as zeros, so no gradient reaches the conditioning path through them.
        """
        h = aligned
        for block in self.prior_blocks:
            h = block(h)
        mel = self.mel_head(h)
        if drop_mask is not None:
            mel = mel * drop_mask.logical_not()[:, None, None].to(mel.dtype)
        return mel

    def random_drop_mask(self, batch: int, device) -> torch.Tensor | None:
        """Rows to train unconditioned (probability `unconditioned_percentage`), or None."""
        p = self.config.unconditioned_percentage
        if not self.training or p <= 0:
            return None
        return torch.rand(batch, device=device) < p

    # -- per step -------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, aligned: torch.Tensor) -> torch.Tensor:
        """x: (batch, 100, frames) noisy mel; t: (batch,) original timesteps; aligned: (batch, channels, frames)
        from `aligned_conditioning` (or `unconditioned_conditioning`) -> (batch, 200, frames) [eps | variance]."""
        time_emb = self.time_out(F.silu(self.time_in(timestep_embedding(t, self.config.channels).to(x.dtype))))
        cond = aligned
        for layer in self.cond_layers:
            cond = layer(cond, time_emb)
        h = self.merge(torch.cat([self.inp(x), cond], dim=1))
        trunk = [*self.layers, *self.res_layers]
        for i, layer in enumerate(trunk):
            if self._skip(i, len(trunk)):
                continue
            h = layer(h, time_emb)
        h = F.silu(self.out_norm(h.float()))  # the output head in float32, as the reference
        return self.out_conv(h.to(self.out_conv.weight.dtype))

    def _skip(self, i: int, n: int) -> bool:
        """Layer drop (training only): skip trunk block i of n with probability `layer_drop`, never the ends."""
        p = self.config.layer_drop
        return self.training and p > 0 and 0 < i < n - 1 and random.random() < p

    def guided(self, x: torch.Tensor, t: torch.Tensor, aligned: torch.Tensor):
        """Conditioned and conditioning-free outputs from one batched forward: (out_cond, out_uncond)."""
        b, frames = x.shape[0], x.shape[-1]
        both = self(torch.cat([x, x]), torch.cat([t, t]),
                    torch.cat([aligned, self.unconditioned_conditioning(b, frames).to(aligned.dtype)]))
        return both[:b], both[b:]
