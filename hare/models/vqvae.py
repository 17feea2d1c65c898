"""The discrete VAE that turns 80-band mels into speech codes (training data for the GPT and CLVP).

Encoder: `layers` stride-2 convs (4x time compression for 2), residual blocks, a 1x1 projection to the
codebook width; an exponential-moving-average vector quantiser with `num_codes` entries; a mirrored decoder
(1x1 projection, residual blocks, nearest-neighbour x2 upsampling + conv per layer, a 1x1 output conv).
Input is the normalised AR mel (`hare.audio.ar_mel`), as in Tortoise.

The layout is that of DLAS's `DiscreteVAE` (1-D, ReLU, kernel 3, no transposed convs), the network that
made Tortoise's speech codes, so `hare.convert.vqvae` can also load a DLAS `dvae.pth`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hare.models.configs import VQVAEConfig


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=1)
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, channels, frames)
        return x + self.proj(F.relu(self.conv2(F.relu(self.conv1(x)))))


class EMAQuantizer(nn.Module):
    """Nearest-code quantiser whose codebook follows an exponential moving average of its assignments.

    Buffers: `embed` (num_codes, dim) the codebook; `cluster_size` and `embed_sum` the running assignment
    counts and vector sums (embed = embed_sum / smoothed cluster_size); `unused_steps` per code, for the
    optional restart of codes unused for `restart_after` updates (0 disables) from random encoder outputs;
    `initialized`, 0 until the first training step replaces the random codebook by random encoder outputs
    (so that the codebook starts where the data is, whatever its scale).
    """

    def __init__(self, dim: int, num_codes: int, decay: float = 0.99, eps: float = 1e-5, restart_after: int = 100):
        super().__init__()
        self.decay, self.eps, self.restart_after = decay, eps, restart_after
        embed = torch.randn(num_codes, dim)
        self.register_buffer("embed", embed)
        # every code starts as if it had been assigned once, to its own vector: a proper running mean from step 1
        self.register_buffer("cluster_size", torch.ones(num_codes))
        self.register_buffer("embed_sum", embed.clone())
        self.register_buffer("unused_steps", torch.zeros(num_codes))
        self.register_buffer("initialized", torch.zeros(1))

    @property
    def num_codes(self) -> int:
        return self.embed.shape[0]

    def codes(self, flat: torch.Tensor) -> torch.Tensor:
        # flat: (n, dim) -> (n,) nearest code ids, always in fp32 (autocast would make the argmin unreliable)
        with torch.autocast(flat.device.type, enabled=False):
            z, e = flat.float(), self.embed.float()
            dist = z.pow(2).sum(1, keepdim=True) - 2 * z @ e.t() + e.pow(2).sum(1)[None]
            return dist.argmin(dim=1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        # codes: (batch, n) -> (batch, dim, n)
        return F.embedding(codes, self.embed).transpose(1, 2)

    def forward(self, z: torch.Tensor):
        # z: (batch, dim, frames) -> (quantised with straight-through gradient, commitment loss, codes (batch, frames))
        b, d, t = z.shape
        flat = z.transpose(1, 2).reshape(-1, d)
        if self.training and not bool(self.initialized):
            self._init_from_data(flat.detach().float())
        ids = self.codes(flat.detach())
        q = self.embed[ids].to(z.dtype)  # the codebook before this step's update (a copy)
        if self.training:
            self._ema_update(flat.detach().float(), ids)
        commit = F.mse_loss(flat, q.detach())
        q = flat + (q - flat).detach()
        return q.view(b, t, d).transpose(1, 2), commit, ids.view(b, t)

    @torch.no_grad()
    def _init_from_data(self, flat: torch.Tensor) -> None:
        # flat: (n, dim) fp32; codes are drawn with replacement when n < num_codes (duplicates restart later)
        if flat.shape[0] >= self.num_codes:
            pick = torch.randperm(flat.shape[0], device=flat.device)[: self.num_codes]
        else:
            pick = torch.randint(0, flat.shape[0], (self.num_codes,), device=flat.device)
        fresh = flat[pick].contiguous()
        if _distributed():
            torch.distributed.broadcast(fresh, 0)
        self.embed.copy_(fresh)
        self.embed_sum.copy_(fresh)
        self.cluster_size.fill_(1.0)
        self.unused_steps.zero_()
        self.initialized.fill_(1.0)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, ids: torch.Tensor) -> None:
        # flat: (n, dim) fp32, ids: (n,)
        counts = torch.bincount(ids, minlength=self.num_codes).to(flat.dtype)
        sums = torch.zeros(self.num_codes, flat.shape[1], dtype=flat.dtype, device=flat.device).index_add_(0, ids, flat)
        if _distributed():
            torch.distributed.all_reduce(counts)
            torch.distributed.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.num_codes * self.eps) * n  # Laplace smoothing
        self.embed.copy_(self.embed_sum / smoothed.unsqueeze(1))
        if self.restart_after <= 0:
            return
        # counts are all-reduced, so every rank sees the same dead codes
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        dead = self.unused_steps >= self.restart_after
        n_dead = int(dead.sum())
        if n_dead and flat.shape[0] > 0:
            fresh = flat[torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)].contiguous()
            if _distributed():
                torch.distributed.broadcast(fresh, 0)  # every rank restarts with rank 0's vectors
            self.embed[dead] = fresh.to(self.embed.dtype)
            self.embed_sum[dead] = fresh.to(self.embed_sum.dtype)
            self.cluster_size[dead] = 1.0
            self.unused_steps[dead] = 0


class VQVAE(nn.Module):
    def __init__(self, config: VQVAEConfig):
        super().__init__()
        c = self.config = config
        if c.layers < 1:
            raise ValueError("the VQ-VAE needs at least one stride-2 layer")
        widths = [c.hidden * 2**i for i in range(c.layers)]  # encoder widths, e.g. 512, 1024
        inner = widths[-1]
        self.downsample = nn.ModuleList(
            nn.Conv1d(cin, cout, 3, stride=2, padding=1) for cin, cout in zip([c.n_mels] + widths[:-1], widths)
        )
        self.encoder_blocks = nn.ModuleList(ResBlock(inner) for _ in range(c.resblocks))
        self.to_codebook = nn.Conv1d(inner, c.codebook_dim, 1)
        self.quantizer = EMAQuantizer(c.codebook_dim, c.num_codes, c.ema_decay, c.ema_eps, c.restart_after)
        # without residual blocks the first upsampling conv reads the codebook vectors directly
        self.from_codebook = nn.Conv1d(c.codebook_dim, inner, 1) if c.resblocks else None
        self.decoder_blocks = nn.ModuleList(ResBlock(inner) for _ in range(c.resblocks))
        dec_in = [inner if c.resblocks else c.codebook_dim] + widths[::-1][:-1]
        self.upsample = nn.ModuleList(nn.Conv1d(cin, cout, 3, padding=1) for cin, cout in zip(dec_in, widths[::-1]))
        self.out = nn.Conv1d(widths[0], c.n_mels, 1)

    @property
    def compression(self) -> int:
        return 2**self.config.layers

    def _trim(self, mel: torch.Tensor) -> torch.Tensor:
        frames = mel.shape[-1] - mel.shape[-1] % self.compression
        return mel[..., :frames]

    def encoder(self, mel: torch.Tensor) -> torch.Tensor:
        # mel: (batch, n_mels, frames) -> (batch, codebook_dim, frames // compression); frames a multiple of it
        x = mel
        for conv in self.downsample:
            x = F.relu(conv(x))
        for block in self.encoder_blocks:
            x = block(x)
        return self.to_codebook(x)

    def decoder(self, q: torch.Tensor) -> torch.Tensor:
        # q: (batch, codebook_dim, n) -> (batch, n_mels, n * compression)
        x = q if self.from_codebook is None else self.from_codebook(q)
        for block in self.decoder_blocks:
            x = block(x)
        for conv in self.upsample:
            x = F.relu(conv(F.interpolate(x, scale_factor=2, mode="nearest")))
        return self.out(x)

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (batch, n_mels, frames) -> codes (batch, frames // compression); trailing frames are dropped."""
        z = self.encoder(self._trim(mel))
        return self.quantizer.codes(z.transpose(1, 2).reshape(-1, z.shape[1])).view(z.shape[0], -1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (batch, n) -> mel (batch, n_mels, n * compression)."""
        return self.decoder(self.quantizer.lookup(codes).to(self.out.weight.dtype))

    def forward(self, mel: torch.Tensor):
        """mel (batch, n_mels, frames) -> (reconstruction of the trimmed mel, commitment loss, codes).

        In training mode the quantiser's EMA codebook update runs as a side effect.
        """
        z = self.encoder(self._trim(mel))
        q, commit, codes = self.quantizer(z)
        return self.decoder(q), commit, codes

    @staticmethod
    def codebook_usage(codes: torch.Tensor, num_codes: int) -> dict[str, float]:
        """Perplexity of the code distribution in `codes` (1 .. num_codes) and the fraction of codes used."""
        counts = torch.bincount(codes.flatten().long(), minlength=num_codes).float()
        p = counts / counts.sum().clamp(min=1)
        p = p[p > 0]
        entropy = -(p * p.log()).sum()
        return {"perplexity": float(entropy.exp()), "used_fraction": float((counts > 0).float().mean())}
