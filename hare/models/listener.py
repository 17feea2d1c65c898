"""The listener: a CTC letter recogniser over mels, the reranker's ear.

The speller (`hare.models.speller`) reads letters off a candidate's codes; what a user hears is the decoder's
mel made from them, and the two part ways where the decoder blurs a word the codes still hold. The listener
reads the decoded mel instead (CTC, Graves et al. 2006): `score` is the mean log-probability per letter of the
text given each mel, as the speller's. The pipeline uses it on the speller's best few candidates, each decoded
by the diffusion decoder's own mel guess (its prior: one pass, no diffusion steps), `Settings.listen_candidates`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hare.models.clvp import Encoder
from hare.models.configs import ListenerConfig
from hare.models.layers import ctc_nll, letter_log_probs, letter_score, scores_by_length

# A HiFi-GAN log mel (natural log of magnitude, floored at 1e-5) is roughly centred and scaled by these
# before the network reads it
MEL_CENTRE, MEL_SCALE = -5.0, 2.5


class Listener(nn.Module):
    def __init__(self, config: ListenerConfig, dropout: float = 0.1):
        super().__init__()
        self.config = c = config
        if c.conv_kernel % 2 != 1:
            raise ValueError(f"conv_kernel must be odd (got {c.conv_kernel})")
        if c.stride < 1:
            raise ValueError(f"stride must be at least 1 (got {c.stride})")
        pad = c.conv_kernel // 2
        self.conv1 = nn.Conv1d(c.n_mels, c.dim, c.conv_kernel, stride=c.stride, padding=pad)
        self.conv2 = nn.Conv1d(c.dim, c.dim, c.conv_kernel, padding=pad)
        self.encoder = Encoder(c.dim, c.depth, c.heads, c.ff_mult, dropout)
        self.head = nn.Linear(c.dim, c.classes)

    def steps(self, frames: torch.Tensor | int):
        """Output steps for `frames` mel frames (the strided convolution's output length)."""
        c = self.config
        return (frames + 2 * (c.conv_kernel // 2) - c.conv_kernel) // c.stride + 1

    def log_probs(self, mel: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """(b, n_mels, t) HiFi-GAN log mels (the first `frames` of each row real, the rest padding; None: all)
        -> (b, steps(t), classes) letter log-probabilities (float32)."""
        if mel.dim() != 3 or mel.shape[1] != self.config.n_mels:
            raise ValueError(f"the listener reads (batch, {self.config.n_mels}, frames) mels (got "
                             f"{tuple(mel.shape)})")
        x = (mel.to(self.conv1.weight.dtype) - MEL_CENTRE) / MEL_SCALE
        mask = None
        if frames is not None:
            t = mel.shape[2]
            x = x * (torch.arange(t, device=mel.device)[None] < frames.to(mel.device)[:, None])[:, None].to(x.dtype)
        h = F.gelu(self.conv1(x))
        if frames is not None:
            n = h.shape[2]
            mask = torch.arange(n, device=mel.device)[None] < self.steps(frames.to(mel.device))[:, None]
            h = h * mask[:, None].to(h.dtype)  # padding must not leak into real steps through the convolution
        h = h + F.gelu(self.conv2(h))
        return letter_log_probs(self.head(self.encoder(h.transpose(1, 2), mask)), 1)

    def nll(self, mel: torch.Tensor, frames: torch.Tensor, targets: torch.Tensor,
            target_lengths: torch.Tensor) -> torch.Tensor:
        """Per-example CTC negative log-likelihood of the letters `targets` ((b, m) padded) given (b, n_mels, t)
        padded mels with `frames`: (b,). Examples too short for their letters give 0 (no gradient)."""
        return ctc_nll(self.log_probs(mel, frames), self.steps(frames), targets, target_lengths)

    def score(self, letters: torch.Tensor, mels: list[torch.Tensor], batch_size: int = 16) -> torch.Tensor:
        """(m,) letter classes and b mels ((n_mels, t) each, any lengths) -> (b,) mean log-probability per letter
        (higher: better; -inf for a mel too short to spell them), scored in batches of neighbours in length."""
        if not mels:
            raise ValueError("no mels to score")
        device = mels[0].device

        def score_rows(rows):
            frames = torch.tensor([mels[i].shape[-1] for i in rows], device=device)
            width = int(frames.max())
            batch = torch.stack([F.pad(mels[i].float(), (0, width - mels[i].shape[-1])) for i in rows])
            return letter_score(self.log_probs(batch, frames), letters, self.steps(frames))

        return scores_by_length([m.shape[-1] for m in mels], score_rows, batch_size, device)

    def forward(self, mel, frames, targets, target_lengths):
        """Training loss: the batch's CTC negative log-likelihood per letter."""
        nll = self.nll(mel, frames, targets, target_lengths)
        return nll.sum() / target_lengths.sum().clamp(min=1)
