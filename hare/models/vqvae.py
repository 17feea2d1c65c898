"""The discrete VAE that turns 80-band mels into speech codes (training data for the GPT and CLVP).

Encoder: `layers` stride-2 convs (4x time compression for 2), residual blocks, a 1x1 projection to the
codebook width; an exponential-moving-average vector quantiser with `num_codes` entries; a mirrored decoder
with nearest-neighbour upsampling. Input is the normalised AR mel (`hare.audio.ar_mel`), as in Tortoise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hare.models.configs import VQVAEConfig


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 1),
        )

    def forward(self, x):
        return x + self.net(x)


class EMAQuantizer(nn.Module):
    """Nearest-code quantiser whose codebook follows an exponential moving average of its assignments.

    Unused codes are restarted from random encoder outputs (so the codebook stays in use).
    """

    def __init__(self, dim: int, num_codes: int, decay: float = 0.99, eps: float = 1e-5, restart_after: int = 100):
        super().__init__()
        self.decay, self.eps, self.restart_after = decay, eps, restart_after
        embed = torch.randn(num_codes, dim)
        self.register_buffer("embed", embed)
        self.register_buffer("cluster_size", torch.zeros(num_codes))
        self.register_buffer("embed_sum", embed.clone())
        self.register_buffer("unused_steps", torch.zeros(num_codes))

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        # z: (n, dim) -> (n,) nearest code ids
        dist = z.pow(2).sum(1, keepdim=True) - 2 * z @ self.embed.t() + self.embed.pow(2).sum(1)[None]
        return dist.argmin(dim=1)

    def forward(self, z: torch.Tensor):
        # z: (batch, dim, frames) -> (quantised with straight-through gradient, commitment loss, codes (batch, frames))
        b, d, t = z.shape
        flat = z.transpose(1, 2).reshape(-1, d)
        ids = self.codes(flat.detach().float())
        q = self.embed[ids].to(z.dtype)
        if self.training:
            self._ema_update(flat.detach().float(), ids)
        commit = F.mse_loss(flat, q.detach())
        q = flat + (q - flat).detach()
        return q.view(b, t, d).transpose(1, 2), commit, ids.view(b, t)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, ids: torch.Tensor) -> None:
        onehot = F.one_hot(ids, self.embed.shape[0]).type(flat.dtype)
        counts = onehot.sum(0)
        sums = onehot.t() @ flat
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
            torch.distributed.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        size = (self.cluster_size + self.eps) / (n + self.embed.shape[0] * self.eps) * n
        self.embed.copy_(self.embed_sum / size.unsqueeze(1))
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        dead = self.unused_steps >= self.restart_after
        if dead.any() and flat.shape[0] > 0:
            pick = torch.randint(0, flat.shape[0], (int(dead.sum()),), device=flat.device)
            fresh = flat[pick].contiguous()
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.broadcast(fresh, 0)  # every rank restarts with rank 0's vectors
            self.embed[dead] = fresh
            self.embed_sum[dead] = fresh
            self.cluster_size[dead] = 1.0
            self.unused_steps[dead] = 0


class VQVAE(nn.Module):
    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = c = config
        enc, ch = [], c.n_mels
        for i in range(c.layers):
            out = c.hidden * (2 ** i)
            enc += [nn.Conv1d(ch, out, 3, stride=2, padding=1), nn.ReLU()]
            ch = out
        enc += [ResBlock(ch) for _ in range(c.resblocks)]
        enc += [nn.Conv1d(ch, c.codebook_dim, 1)]
        self.encoder = nn.Sequential(*enc)
        self.quantizer = EMAQuantizer(c.codebook_dim, c.num_codes, c.ema_decay)
        dec = [nn.Conv1d(c.codebook_dim, ch, 1)] + [ResBlock(ch) for _ in range(c.resblocks)]
        for i in reversed(range(c.layers)):
            out = c.n_mels if i == 0 else c.hidden * (2 ** (i - 1))
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv1d(ch, out, 3, padding=1)]
            if i:
                dec.append(nn.ReLU())
            ch = out
        self.decoder = nn.Sequential(*dec)

    @property
    def compression(self) -> int:
        return 2 ** self.config.layers

    def _trim(self, mel: torch.Tensor) -> torch.Tensor:
        frames = mel.shape[-1] - mel.shape[-1] % self.compression
        return mel[..., :frames]

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (batch, n_mels, frames) -> codes (batch, frames // compression)."""
        z = self.encoder(self._trim(mel))
        flat = z.transpose(1, 2).reshape(-1, z.shape[1])
        return self.quantizer.codes(flat.float()).view(z.shape[0], -1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (batch, n) -> mel (batch, n_mels, n * compression)."""
        q = self.quantizer.embed[codes].transpose(1, 2)
        return self.decoder(q)

    def forward(self, mel: torch.Tensor):
        """-> (reconstruction, commitment loss, codes); the reconstruction covers the trimmed input."""
        z = self.encoder(self._trim(mel))
        q, commit, codes = self.quantizer(z)
        return self.decoder(q), commit, codes

    @staticmethod
    def codebook_usage(codes: torch.Tensor, num_codes: int) -> dict[str, float]:
        """Perplexity of the code distribution and the fraction of codes used in `codes`."""
        counts = torch.bincount(codes.flatten(), minlength=num_codes).float()
        p = counts / counts.sum().clamp(min=1)
        entropy = -(p[p > 0] * p[p > 0].log()).sum()
        return {"perplexity": float(entropy.exp()), "used_fraction": float((counts > 0).float().mean())}
