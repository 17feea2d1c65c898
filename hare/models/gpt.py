"""The autoregressive decoder: text tokens + a voice latent -> speech codes (Tortoise's UnifiedVoice).

A GPT-2 stack (pre-LayerNorm blocks, fused qkv, GELU-tanh MLP) over the sequence

    [voice latent] [start_text, text..., stop_text] [start_mel, codes..., stop_mel]

with learned position tables for text and for speech codes, each counting from 0 (the voice latent has no
position). The stack's final LayerNorm is followed by a second one (`final_norm`) before the heads.

Decoding uses a preallocated key/value cache: `prefill` runs the prompt once (batch 1) and copies it to
every candidate; `decode_step` then adds one code per candidate.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from hare.models.configs import GPTConfig
from hare.models.layers import AttentionBlock


class KVCache:
    """Keys and values of every layer: (layers, batch, heads, capacity, head_dim), filled up to `length`."""

    def __init__(self, layers: int, batch: int, heads: int, capacity: int, head_dim: int, dtype, device):
        self.k = torch.zeros(layers, batch, heads, capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def expand(self, batch: int, capacity: int) -> "KVCache":
        """A cache for `batch` sequences sharing this (batch-1) cache's prefix, with room for `capacity`."""
        if self.k.shape[1] != 1:
            raise ValueError("only a batch-1 cache can be expanded")
        layers, _, heads, _, hd = self.k.shape
        new = KVCache(layers, batch, heads, capacity, hd, self.k.dtype, self.k.device)
        new.k[:, :, :, : self.length] = self.k[:, :, :, : self.length]
        new.v[:, :, :, : self.length] = self.v[:, :, :, : self.length]
        new.length = self.length
        return new


class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention then a 4x GELU-tanh MLP."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        d = config.dim
        self.heads = config.heads
        self.ln1 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.qkv = nn.Linear(d, 3 * d)
        self.attn_out = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.fc = nn.Linear(d, 4 * d)
        self.proj = nn.Linear(4 * d, d)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        # x: (batch, seq, dim). With a cache, x holds the positions after cache.length (keys/values are stored).
        b, s, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (t.view(b, s, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        drop = self.dropout if self.training else 0.0
        if cache is None:
            h = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        else:
            start, end = cache.length, cache.length + s
            cache.k[layer, :, :, start:end] = k
            cache.v[layer, :, :, start:end] = v
            keys, values = cache.k[layer, :, :, :end], cache.v[layer, :, :, :end]
            if s == 1:  # one new position attends to everything before it
                h = F.scaled_dot_product_attention(q, keys, values)
            else:  # a chunk: causal within itself, full view of what is cached before it
                mask = torch.ones(s, end, dtype=torch.bool, device=x.device).tril(diagonal=start)
                h = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        h = h.transpose(1, 2).reshape(b, s, d)
        x = x + F.dropout(self.attn_out(h), drop, self.training)
        m = self.proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))
        return x + F.dropout(m, drop, self.training)


class GPTOutput(NamedTuple):
    loss_text: torch.Tensor  # scalar
    loss_mel: torch.Tensor  # scalar
    text_logits: torch.Tensor  # (batch, text_vocab + 1, text_len)
    mel_logits: torch.Tensor  # (batch, mel_vocab, mel_len)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        self.cond_in = nn.Conv1d(c.n_mels, c.dim, 1)
        self.cond_blocks = nn.ModuleList(AttentionBlock(c.dim, c.heads) for _ in range(c.cond_attn_blocks))
        self.text_embedding = nn.Embedding(c.text_vocab + 1, c.dim)
        self.text_pos = nn.Embedding(c.text_positions, c.dim)
        self.mel_embedding = nn.Embedding(c.mel_vocab, c.dim)
        self.mel_pos = nn.Embedding(c.mel_positions, c.dim)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.ln_f = nn.LayerNorm(c.dim, eps=c.layer_norm_eps)
        self.final_norm = nn.LayerNorm(c.dim)
        self.text_head = nn.Linear(c.dim, c.text_vocab + 1)
        self.mel_head = nn.Linear(c.dim, c.mel_vocab)
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2's scheme: N(0, 0.02) for linears and embeddings, residual projections scaled by depth
        for name, p in self.named_parameters():
            if name.startswith("cond_"):
                continue  # the conditioning encoder keeps PyTorch's conv defaults
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * self.config.layers) if name.endswith(("attn_out.weight", "proj.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    # -- conditioning ------------------------------------------------------------------------------------
    def conditioning_latent(self, mels: torch.Tensor) -> torch.Tensor:
        """Voice latent: mean over clips of the encoder's first output frame.

        mels: (batch, clips, n_mels, frames) or (batch, n_mels, frames) -> (batch, dim)
        """
        if mels.dim() == 3:
            mels = mels.unsqueeze(1)
        b, n = mels.shape[:2]
        h = self.cond_in(mels.flatten(0, 1))
        for block in self.cond_blocks:
            h = block(h)
        return h[:, :, 0].view(b, n, -1).mean(dim=1)

    # -- shared pieces -------------------------------------------------------------------------------------
    def _stack(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.length += x.shape[1]
        return self.ln_f(x)

    def _text_embeddings(self, text_inputs: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(text_inputs.shape[1], device=text_inputs.device)
        return self.text_embedding(text_inputs) + self.text_pos(pos)

    def _mel_embeddings(self, mel_inputs: torch.Tensor, offset: int = 0) -> torch.Tensor:
        pos = torch.arange(offset, offset + mel_inputs.shape[1], device=mel_inputs.device)
        return self.mel_embedding(mel_inputs) + self.mel_pos(pos)

    def _with_start_and_stop(self, tokens: torch.Tensor, start: int, stop: int):
        """(inputs, targets): inputs = [start, tokens], targets = [tokens, stop]."""
        return F.pad(tokens, (1, 0), value=start), F.pad(tokens, (0, 1), value=stop)

    # -- teacher-forced forward (training, latents) ------------------------------------------------------
    def _teacher_forced(self, cond_latent, text_tokens, codes):
        """Hidden states after final_norm for the text span and the mel span, plus the targets."""
        c = self.config
        text = F.pad(text_tokens, (0, 1), value=c.stop_text_token)
        codes = F.pad(codes, (0, 1), value=c.stop_mel_token)
        text_in, text_target = self._with_start_and_stop(text, c.start_text_token, c.stop_text_token)
        mel_in, mel_target = self._with_start_and_stop(codes, c.start_mel_token, c.stop_mel_token)
        x = torch.cat([cond_latent.unsqueeze(1), self._text_embeddings(text_in), self._mel_embeddings(mel_in)], 1)
        h = self.final_norm(self._stack(x)[:, 1:])  # the first output belongs to the voice latent
        text_h = h[:, : text_in.shape[1]]
        mel_h = h[:, -mel_in.shape[1]:]
        return text_h, mel_h, text_target, mel_target

    def forward(self, cond_latent: torch.Tensor, text_tokens: torch.Tensor, text_lengths: torch.Tensor,
                codes: torch.Tensor, wav_lengths: torch.Tensor, clip_inputs: bool = True) -> GPTOutput:
        """Teacher-forced losses and logits (the reference `forward`).

        cond_latent: (batch, dim); text_tokens: (batch, text_len) long; text_lengths: (batch,);
        codes: (batch, mel_len) long; wav_lengths: (batch,) audio samples behind the codes.
        Codes past each clip's end (wav_length // compression + 1) become the stop token.
        """
        c = self.config
        if clip_inputs:
            text_tokens = text_tokens[:, : int(text_lengths.max())]
            codes = codes[:, : int(wav_lengths.max()) // c.mel_length_compression]
        codes = self.pad_codes_after_end(codes, wav_lengths)
        text_h, mel_h, text_target, mel_target = self._teacher_forced(cond_latent, text_tokens, codes)
        text_logits = self.text_head(text_h).transpose(1, 2)
        mel_logits = self.mel_head(mel_h).transpose(1, 2)
        return GPTOutput(F.cross_entropy(text_logits, text_target), F.cross_entropy(mel_logits, mel_target),
                         text_logits, mel_logits)

    def pad_codes_after_end(self, codes: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        """Replace codes after each clip's end (+1 code of slack) by the stop token (a new tensor)."""
        ends = torch.div(wav_lengths, self.config.mel_length_compression, rounding_mode="trunc") + 1
        after = torch.arange(codes.shape[1], device=codes.device)[None, :] >= ends.to(codes.device)[:, None]
        return codes.masked_fill(after, self.config.stop_mel_token)

    def speech_latents(self, cond_latent: torch.Tensor, text_tokens: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Final hidden states for each code, the diffusion decoder's input.

        cond_latent: (batch, dim); text_tokens: (batch, text_len); codes: (batch, n) -> (batch, n, dim).
        Latent i is the state at the position that predicts code i.
        """
        _, mel_h, _, _ = self._teacher_forced(cond_latent, text_tokens, codes)
        return mel_h[:, :-2]

    # -- cached decoding ---------------------------------------------------------------------------------
    def prompt_length(self, text_len: int) -> int:
        """Positions in the prompt for a text of `text_len` tokens: latent, start, text, stop, start_mel."""
        return 1 + text_len + 2 + 1

    @torch.no_grad()
    def prefill(self, cond_latent: torch.Tensor, text_tokens: torch.Tensor, batch: int, max_codes: int):
        """Run the prompt once and return (logits for the first code (batch, mel_vocab), cache for `batch`).

        cond_latent: (1, dim); text_tokens: (1, text_len) (as `inference_speech` receives them: a stop token
        and the start token are added here). The start-of-speech token sits at speech position 0.
        """
        c = self.config
        if cond_latent.shape[0] != 1 or text_tokens.shape[0] != 1:
            raise ValueError("prefill takes one prompt; candidates share it")
        text = F.pad(text_tokens, (0, 1), value=c.stop_text_token)
        text_in = F.pad(text, (1, 0), value=c.start_text_token)
        start = torch.full((1, 1), c.start_mel_token, dtype=torch.long, device=text_tokens.device)
        x = torch.cat([cond_latent.unsqueeze(1).to(self.text_pos.weight.dtype),
                       self._text_embeddings(text_in), self._mel_embeddings(start)], dim=1)
        ref = self.ln_f.weight  # not a Linear: stays float when the linears are quantised
        dtype = torch.get_autocast_dtype(ref.device.type) if torch.is_autocast_enabled(ref.device.type) else ref.dtype
        cache = KVCache(c.layers, 1, c.heads, x.shape[1], c.dim // c.heads, dtype, ref.device)
        h = self._stack(x, cache)[:, -1]
        logits = self.mel_head(self.final_norm(h))
        return logits.expand(batch, -1), cache.expand(batch, x.shape[1] + max_codes)

    @torch.no_grad()
    def decode_step(self, codes: torch.Tensor, position: int, cache: KVCache) -> torch.Tensor:
        """Feed one code per sequence at speech position `position` (1 for the first generated code).

        codes: (batch,) -> logits for the next code (batch, mel_vocab).
        """
        if position >= self.config.mel_positions:
            raise ValueError(f"speech position {position} exceeds the model's {self.config.mel_positions} positions")
        x = self.mel_embedding(codes)[:, None] + self.mel_pos.weight[position]
        h = self._stack(x, cache)[:, -1]
        return self.mel_head(self.final_norm(h))
