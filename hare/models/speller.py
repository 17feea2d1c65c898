"""The speller: a CTC letter recogniser over speech codes, the reranker's check that a candidate says the text.

A CLIP-style score (the CLVP's) compares pooled summaries of the text and of the speech, so a candidate that
drops or garbles a word can still score well. The speller instead reads letters off the codes (CTC, Graves et
al. 2006), and `letter_score` is the mean log-probability per letter of the text given a candidate: it falls
with every missing or wrong word. Hare-mini ships one; the pipeline blends its score in with
`Settings.ctc_weight`. The same score can come from a CTC head on the CLVP (`CLVPConfig.ctc_classes`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hare.models.clvp import Encoder
from hare.models.configs import SpellerConfig
from hare.models.layers import ctc_nll, letter_log_probs, letter_score, scores_by_length


class Speller(nn.Module):
    def __init__(self, config: SpellerConfig, dropout: float = 0.1):
        super().__init__()
        self.config = c = config
        if c.conv_kernel % 2 != 1:
            raise ValueError(f"conv_kernel must be odd (got {c.conv_kernel})")
        self.emb = nn.Embedding(c.speech_vocab, c.dim)
        pad = c.conv_kernel // 2
        self.conv1 = nn.Conv1d(c.dim, c.dim, c.conv_kernel, padding=pad)
        self.conv2 = nn.Conv1d(c.dim, c.dim, c.conv_kernel, padding=pad)
        self.encoder = Encoder(c.dim, c.depth, c.heads, c.ff_mult, dropout)
        self.head = nn.Linear(c.dim, c.classes * c.upsample)

    def log_probs(self, codes: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(b, n) codes (the first `lengths` of each row real, the rest padding; None: all) ->
        (b, n * upsample, classes) letter log-probabilities (float32)."""
        n = codes.shape[1]
        mask = None
        x = self.emb(codes)
        if lengths is not None:
            mask = torch.arange(n, device=codes.device)[None] < lengths.to(codes.device)[:, None]
            x = x * mask[..., None].to(x.dtype)  # padding must not leak into real codes through the convolutions
        h = F.gelu(self.conv1(x.transpose(1, 2)))
        h = F.gelu(self.conv2(h if mask is None else h * mask[:, None].to(h.dtype)))
        x = x + h.transpose(1, 2)
        return letter_log_probs(self.head(self.encoder(x, mask)), self.config.upsample)

    def nll(self, codes: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor,
            target_lengths: torch.Tensor) -> torch.Tensor:
        """Per-example CTC negative log-likelihood of the letters `targets` ((b, m) padded, or concatenated) given
        (b, n) padded codes with `lengths`: (b,). Examples too short for their letters give 0 (no gradient)."""
        return ctc_nll(self.log_probs(codes, lengths), lengths * self.config.upsample, targets, target_lengths)

    def score(self, letters: torch.Tensor, codes: torch.Tensor | list[torch.Tensor],
              batch_size: int = 16) -> torch.Tensor:
        """(m,) letter classes and b candidates -> (b,) mean log-probability per letter (higher: better; -inf for
        a candidate too short to spell them). `codes`: a (b, n) tensor, every position read; or a list of b 1-D
        code tensors of any lengths, each read to its own end as in training (padding masked), scored in
        batches of `batch_size` neighbours in length so that one long candidate does not pad all the others."""
        if isinstance(codes, torch.Tensor):
            return letter_score(self.log_probs(codes), letters)
        if not codes:
            raise ValueError("no candidates to score")
        device = codes[0].device

        def score_rows(rows):
            lengths = torch.tensor([len(codes[i]) for i in rows], device=device)
            batch = nn.utils.rnn.pad_sequence([codes[i] for i in rows], batch_first=True)
            return letter_score(self.log_probs(batch, lengths), letters, lengths * self.config.upsample)

        return scores_by_length([len(c) for c in codes], score_rows, batch_size, device)

    def forward(self, codes, lengths, targets, target_lengths):
        """Training loss: the batch's CTC negative log-likelihood per letter."""
        nll = self.nll(codes, lengths, targets, target_lengths)
        return nll.sum() / target_lengths.sum().clamp(min=1)
