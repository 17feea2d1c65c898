"""Contrastive rerankers: CLVP (text <-> speech codes) and CVVP (voice mel <-> speech codes).

Both are CLIP-style: two transformer encoders, pooled, projected, L2-normalised, and compared with a
learned temperature. The encoder is a pre-RMSNorm transformer with rotary positions (applied to queries,
keys *and* values, as the reference's x-transformers configuration does), GELU-gated feed-forwards and a
final LayerNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hare import kernels
from hare.models.configs import CLVPConfig, CVVPConfig
from hare.models.layers import AttentionBlock, ctc_nll, letter_log_probs, letter_score

HEAD_DIM = 64  # x-transformers' default head width, used by every Tortoise encoder regardless of model width


class RMSNorm(nn.Module):
    """x / max(||x|| / sqrt(dim), eps) * g."""

    def __init__(self, dim: int, eps: float = 1e-8):
        super().__init__()
        self.scale = dim**-0.5
        self.eps = eps
        self.g = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.norm(dim=-1, keepdim=True) * self.scale
        return x / norm.clamp(min=self.eps) * self.g


class Rotary(nn.Module):
    """Rotary position angles for the first `dim` channels of every head."""

    def __init__(self, dim: int):
        super().__init__()
        # a persistent buffer: the official checkpoints carry it
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))

    def forward(self, length: int) -> torch.Tensor:
        t = torch.arange(length, device=self.inv_freq.device, dtype=self.inv_freq.dtype)
        freqs = torch.outer(t, self.inv_freq)
        return torch.cat([freqs, freqs], dim=-1)  # (length, dim)


def apply_rotary(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate the first angles.shape[-1] channels of x (..., length, head_dim); the rest pass through."""
    d = angles.shape[-1]
    rot, rest = x[..., :d], x[..., d:]
    first, second = rot.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    return torch.cat([rot * cos + rotated * sin, rest], dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        inner = heads * HEAD_DIM
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, angles: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # x: (batch, length, dim); mask: (batch, length) True = real token
        b, n, _ = x.shape
        q, k, v = (t(x).view(b, n, self.heads, HEAD_DIM).transpose(1, 2) for t in (self.to_q, self.to_k, self.to_v))
        q, k, v = (apply_rotary(t, angles) for t in (q, k, v))
        attn_mask = mask[:, None, None, :] if mask is not None else None
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(h.transpose(1, 2).reshape(b, n, -1))


class GatedFeedForward(nn.Module):
    """Linear to 2*inner, value * GELU(gate), Linear back."""

    def __init__(self, dim: int, mult: int, dropout: float):
        super().__init__()
        inner = dim * mult
        self.proj_in = nn.Linear(dim, 2 * inner)
        self.proj_out = nn.Linear(inner, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj_in(x).chunk(2, dim=-1)
        if self.training or kernels.autograd_records(gate):
            return self.proj_out(self.dropout(value * F.gelu(gate)))
        # inference (eval mode, no autograd): in place in the projection's output, no two more (tokens x inner)
        # buffers to allocate
        return self.proj_out(value.mul_(torch.ops.aten.gelu_(gate)))


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ff_mult: int, dropout: float):
        super().__init__()
        self.attn_norm = RMSNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.ff_norm = RMSNorm(dim)
        self.ff = GatedFeedForward(dim, ff_mult, dropout)

    def forward(self, x, angles, mask):
        x = x + self.attn(self.attn_norm(x), angles, mask)
        return x + self.ff(self.ff_norm(x))


class Encoder(nn.Module):
    """Pre-norm transformer encoder with rotary positions and a final LayerNorm: (b, n, dim) -> (b, n, dim)."""

    def __init__(self, dim: int, depth: int, heads: int, ff_mult: int, dropout: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, ff_mult, dropout) for _ in range(depth))
        self.rotary = Rotary(max(HEAD_DIM // 2, 32))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        angles = self.rotary(x.shape[1])
        for layer in self.layers:
            x = layer(x, angles, mask)
        return self.norm(x)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over axis 1 of (b, n, d), counting only mask=True positions."""
    if mask is None:
        return x.mean(dim=1)
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(dim=1) / m.sum(dim=1)


def _contrastive(a: torch.Tensor, b: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the batch: row i of a matches row i of b."""
    logits = a @ b.t() * temperature.exp()
    labels = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


class CLVP(nn.Module):
    def __init__(self, config: CLVPConfig, dropout: float = 0.1):
        super().__init__()
        self.config = c = config
        self.text_emb = nn.Embedding(c.text_vocab, c.text_dim)
        self.speech_emb = nn.Embedding(c.speech_vocab, c.speech_dim)
        self.text_encoder = Encoder(c.text_dim, c.text_depth, c.text_heads, c.ff_mult, dropout)
        self.speech_encoder = Encoder(c.speech_dim, c.speech_depth, c.speech_heads, c.ff_mult, dropout)
        self.to_text_latent = nn.Linear(c.text_dim, c.latent_dim, bias=False)
        self.to_speech_latent = nn.Linear(c.speech_dim, c.latent_dim, bias=False)
        self.temperature = nn.Parameter(torch.tensor(1.0))
        if c.ctc_classes:
            self.ctc_head = nn.Linear(c.speech_dim, c.ctc_classes * c.ctc_upsample)

    def text_latents(self, text: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # text: (b, n) token ids -> (b, latent) unit vectors
        h = self.text_encoder(self.text_emb(text), mask)
        return F.normalize(self.to_text_latent(masked_mean(h, mask)), dim=-1)

    def speech_states(self, codes: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The speech encoder's output: (b, n) codes -> (b, n, speech_dim)."""
        return self.speech_encoder(self.speech_emb(codes), mask)

    def speech_latents(self, codes: torch.Tensor, mask: torch.Tensor | None = None,
                       states: torch.Tensor | None = None) -> torch.Tensor:
        # codes: (b, n) speech codes -> (b, latent) unit vectors (`states`: their speech_states, if computed)
        h = self.speech_states(codes, mask) if states is None else states
        return F.normalize(self.to_speech_latent(masked_mean(h, mask)), dim=-1)

    def ctc_log_probs(self, states: torch.Tensor) -> torch.Tensor:
        """Letter log-probabilities from speech_states: (b, n, dim) -> (b, n * ctc_upsample, ctc_classes)."""
        if not self.config.ctc_classes:
            raise ValueError("this CLVP has no CTC head (its config's ctc_classes is 0)")
        return letter_log_probs(self.ctc_head(states), self.config.ctc_upsample)

    def ctc_loss(self, states: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor,
                 target_lengths: torch.Tensor, zero_infinity: bool = True) -> torch.Tensor:
        """Per-example CTC negative log-likelihood of the letters `targets` ((b, m) padded, or concatenated) given
        speech_states of codes with `lengths` valid positions each: (b,). An example too short to hold its
        letters is impossible: 0 with `zero_infinity` (training: no gradient from it), else inf."""
        return ctc_nll(self.ctc_log_probs(states), lengths * self.config.ctc_upsample, targets, target_lengths,
                       zero_infinity=zero_infinity)

    def ctc_score(self, letters: torch.Tensor, codes: torch.Tensor, states: torch.Tensor | None = None) -> torch.Tensor:
        """How well each candidate says the letters: (m,) letter classes, (b, n) codes (all n positions read;
        `states`: their speech_states, if already computed) -> (b,) mean log-probability per letter (higher:
        better; -inf for a candidate too short to spell them)."""
        states = self.speech_states(codes) if states is None else states
        return letter_score(self.ctc_log_probs(states), letters)

    def similarity(self, text: torch.Tensor, codes: torch.Tensor, states: torch.Tensor | None = None) -> torch.Tensor:
        """Score every candidate: text (1 or b, n_text), codes (b, n_codes) -> (b,). One text row is encoded once.
        `states`: the codes' speech_states, if already computed (for ctc_score too)."""
        t = self.text_latents(text)
        s = self.speech_latents(codes, states=states)
        return (t * s).sum(dim=-1) * self.temperature.exp()

    def forward(self, text, codes, text_mask=None, speech_mask=None):
        """Contrastive training loss over the batch (rows are matching pairs)."""
        return _contrastive(self.text_latents(text, text_mask), self.speech_latents(codes, speech_mask),
                            self.temperature)


class CollapsingEncoder(nn.Module):
    """Transformer encoder, then 1x1 conv, attention block, 1x1 conv, and a mean over time: (b, n, d) -> (b, d)."""

    def __init__(self, dim: int, depth: int, heads: int, ff_mult: int, dropout: float):
        super().__init__()
        self.encoder = Encoder(dim, depth, heads, ff_mult, dropout)
        self.proj_in = nn.Conv1d(dim, dim, 1)
        self.attn = AttentionBlock(dim, heads)
        self.proj_out = nn.Conv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x).transpose(1, 2)
        h = self.proj_out(self.attn(self.proj_in(h)))
        return h.mean(dim=2)


class CVVP(nn.Module):
    def __init__(self, config: CVVPConfig, dropout: float = 0.0):
        super().__init__()
        self.config = c = config
        self.cond_convs = nn.ModuleList([
            nn.Conv1d(c.n_mels, c.dim // 2, 5, stride=2, padding=2),
            nn.Conv1d(c.dim // 2, c.dim, 3, stride=2, padding=1),
        ])
        self.cond_encoder = CollapsingEncoder(c.dim, c.cond_depth, c.heads, c.ff_mult, dropout)
        self.to_cond_latent = nn.Linear(c.dim, c.dim, bias=False)
        self.speech_emb = nn.Embedding(c.speech_vocab, c.dim)
        self.speech_encoder = CollapsingEncoder(c.dim, c.speech_depth, c.heads, c.ff_mult, dropout)
        self.to_speech_latent = nn.Linear(c.dim, c.dim, bias=False)
        self.temperature = nn.Parameter(torch.tensor(1.0))

    def voice_latents(self, mel: torch.Tensor) -> torch.Tensor:
        # mel: (b, n_mels, frames) conditioning mel -> (b, dim) unit vectors
        h = mel
        for conv in self.cond_convs:  # no activation between the two convs, as in the reference
            h = conv(h)
        return F.normalize(self.to_cond_latent(self.cond_encoder(h.transpose(1, 2))), dim=-1)

    def speech_latents(self, codes: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.to_speech_latent(self.speech_encoder(self.speech_emb(codes))), dim=-1)

    def similarity(self, mel: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """mel (1 or b, n_mels, frames), codes (b, n) -> (b,)."""
        return (self.voice_latents(mel) * self.speech_latents(codes)).sum(dim=-1) * self.temperature.exp()

    def forward(self, mel, codes):
        return _contrastive(self.voice_latents(mel), self.speech_latents(codes), self.temperature)
