"""The autoregressive decoder: text tokens + a voice latent -> speech codes (Tortoise's UnifiedVoice).

A GPT-2 stack (pre-LayerNorm blocks, fused qkv, GELU-tanh MLP of 4x width, final LayerNorm) over

    [voice latent] [start_text, text..., stop_text] [start_mel, codes..., stop_mel]

with one learned position table for text and one for speech codes, each counting from 0 (the voice latent
has no position, and the stack has no position table of its own). The stack's final LayerNorm is followed
by a second one (`final_norm`) before the text and mel heads.

Decoding keeps every layer's keys and values in one preallocated `KVCache`: `prefill` runs the prompt
once, for a single sequence, and shares its keys/values with every candidate (stored once, read once per
step); `decode_step` then adds one code per candidate. Speech positions are the training ones: the start token sits at position 0 and the i-th
generated code at position i (the reference's own cached path is one position off; its uncached path,
which the fixtures pin, is not).
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from hare import kernels
from hare.errors import TextTooLongError
from hare.models.configs import GPTConfig
from hare.models.layers import AttentionBlock
from hare.models.packed import PackedLinear

# width of the diagonal band the alignment score allows (relative positions; the guided-attention loss's sigma)
ALIGNMENT_SIGMA = 0.2


class KVCache:
    """Keys and values of every layer, filled up to `length` positions, stored position-major
    (layers, position, batch, heads, head_dim): one decoding step writes one contiguous block per layer, and
    attention over the cache reads it as long contiguous runs (`hare.kernels.decode_attention`).

    Rows may share a prefix (the prompt, after `expand`): its keys/values are stored once, head-major,
    `prefix_k`/`prefix_v` of shape (layers, 1, heads, prefix_length, head_dim), and `k`/`v` of shape
    (layers, capacity - prefix_length, batch, heads, head_dim) hold each row's own positions after it.
    Without a prefix, `k`/`v` hold every position.
    """

    def __init__(self, layers: int, batch: int, heads: int, capacity: int, head_dim: int, dtype, device,
                 prefix: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.prefix_k, self.prefix_v = prefix if prefix is not None else (None, None)
        self.prefix_length = 0 if prefix is None else prefix[0].shape[3]
        own = capacity - self.prefix_length
        # uninitialised: a position is always written before any query can see it
        self.k = torch.empty(layers, own, batch, heads, head_dim, dtype=dtype, device=device)
        self.v = torch.empty_like(self.k)
        self.length = self.prefix_length

    @property
    def batch(self) -> int:
        return self.k.shape[2]

    @property
    def capacity(self) -> int:
        return self.prefix_length + self.k.shape[1]

    def expand(self, batch: int, capacity: int) -> "KVCache":
        """A cache for `batch` rows that share this batch-1 cache's contents as their prefix (stored once),
        with room for `capacity` positions in all."""
        if self.batch != 1 or self.prefix_length:
            raise ValueError("only a batch-1 cache without a prefix can be expanded")
        if capacity < self.length:
            raise ValueError(f"capacity {capacity} is smaller than the cached length {self.length}")
        layers, _, _, heads, head_dim = self.k.shape
        prefix = tuple(t[:, : self.length].permute(0, 2, 3, 1, 4).contiguous() for t in (self.k, self.v))
        return KVCache(layers, batch, heads, capacity, head_dim, self.k.dtype, self.k.device, prefix=prefix)

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write keys/values (batch, s, heads, head_dim) of positions length .. length + s - 1."""
        start = self.length - self.prefix_length
        self.k[layer, start: start + k.shape[1]] = k.transpose(0, 1)
        self.v[layer, start: start + k.shape[1]] = v.transpose(0, 1)

    def own(self, layer: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's own keys/values of positions prefix_length .. end - 1: (batch, heads, n, head_dim) views."""
        n = end - self.prefix_length
        return self.k[layer, :n].permute(1, 2, 0, 3), self.v[layer, :n].permute(1, 2, 0, 3)

    def prefix(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared prefix's keys/values: (1, heads, prefix_length, head_dim), contiguous (an empty one
        without a prefix)."""
        if not self.prefix_length:
            empty = self.k.new_empty(1, self.k.shape[3], 0, self.k.shape[4])
            return empty, empty
        return self.prefix_k[layer], self.prefix_v[layer]

    def keys_values(self, layer: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """All keys/values of positions 0 .. end - 1 for every row: (batch, heads, end, head_dim)."""
        k, v = self.own(layer, end)
        if not self.prefix_length:
            return k, v
        pk, pv = self.prefix(layer)
        b = self.batch
        return (torch.cat([pk.expand(b, -1, -1, -1), k], dim=2), torch.cat([pv.expand(b, -1, -1, -1), v], dim=2))


# the KV cache dtypes Hare's CPU decode kernels read (with float32 queries and compute)
_KERNEL_CACHE_DTYPES = (torch.float32, torch.bfloat16)


def _attention_with_lse(q, k, v):
    """(output, log-sum-exp of the scaled scores) of softmax attention without a mask, on the CPU."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)[:2]


def _decode_attention(q: torch.Tensor, cache: KVCache, layer: int, end: int) -> torch.Tensor:
    """One new position per row attending to the shared prefix (if any) and to the row's own positions
    before `end`. q: (batch, heads, 1, head_dim) -> (batch, heads, 1, head_dim).

    The same softmax attention as over the concatenated keys. On the CPU the prefix's keys and values are
    read once for all rows instead of once per row (decoding is memory-bound there): in one pass by Hare's
    kernel (`hare.kernels.decode_attention`) when it is available, the query float32 and the cache float32 or
    bfloat16, else as two PyTorch attention parts merged by their log-sum-exp.
    """
    if q.device.type != "cpu":  # GPUs have the bandwidth: one fused call over the concatenated keys
        return F.scaled_dot_product_attention(q, *cache.keys_values(layer, end))
    k, v = cache.own(layer, end)
    pk, pv = cache.prefix(layer)
    inference = not kernels.autograd_records(q)  # the kernel has no gradient
    op = (kernels.decode_attention() if inference and q.dtype == torch.float32 and k.dtype in _KERNEL_CACHE_DTYPES
          else None)
    if op is not None:
        return op(q[:, :, 0], k, v, pk[0], pv[0], q.shape[-1] ** -0.5).unsqueeze(2)
    if q.dtype != k.dtype:  # int8 linears (float32 out) beside a bfloat16 cache under autocast
        q = q.to(k.dtype)
    if not cache.prefix_length:
        return F.scaled_dot_product_attention(q, k, v)
    b, h, _, d = q.shape
    shared_q = q.reshape(b, h, d).transpose(0, 1).unsqueeze(0)  # (1, heads, batch, d): rows as queries
    out_p, lse_p = _attention_with_lse(shared_q, pk, pv)
    out_p = out_p[0].transpose(0, 1).unsqueeze(2)  # (batch, heads, 1, d)
    lse_p = lse_p[0].transpose(0, 1).unsqueeze(-1)  # (batch, heads, 1)
    out_o, lse_o = _attention_with_lse(q, k, v)
    # softmax weights of the two parts: e^lse_p / (e^lse_p + e^lse_o) = sigmoid(lse_p - lse_o), and the rest
    share_p = torch.sigmoid(lse_p - lse_o).unsqueeze(-1)
    return torch.lerp(out_o, out_p, share_p if share_p.dtype == out_o.dtype else share_p.to(out_o.dtype))


def _decode_step_attention(qkv: torch.Tensor, cache: KVCache, layer: int, heads: int) -> torch.Tensor | None:
    """One new position per row straight from the fused projection, in one call of Hare's CPU kernel
    (`hare.kernels.decode_attention_qkv`): its key and value stored at `cache.length`, then attention over the
    shared prefix and the row's own positions. qkv: (batch, 1, 3 * dim) -> (batch, 1, dim); None where that
    kernel cannot run (another device or dtype, autograd, no kernels): `_decode_attention` then does it.

    The same result as storing, splitting and `_decode_attention`, without their dozen small operations per
    layer (a decode step is short enough for those to count)."""
    if qkv.device.type != "cpu" or qkv.dtype != torch.float32 or cache.k.dtype not in _KERNEL_CACHE_DTYPES:
        return None
    op = None if kernels.autograd_records(qkv) else kernels.decode_attention_qkv()
    if op is None:
        return None
    b, _, width = qkv.shape
    pk, pv = cache.prefix(layer)
    h = op(qkv.reshape(b, width), cache.k[layer], cache.v[layer], cache.length - cache.prefix_length, pk[0], pv[0],
           heads, (width // 3 // heads) ** -0.5)
    return h.view(b, 1, width // 3)


def _decode_step_block(block: "Block", x: torch.Tensor, cache: KVCache, layer: int) -> torch.Tensor | None:
    """A whole block's decode step in one call of Hare's CPU kernel (`hare.kernels.gpt_block_decode`): what
    `Block.forward` computes (to float rounding: the norms and residuals fused into the linears), without the
    thirty-odd operations and the Python between them. x: (batch, 1, dim) -> (batch, 1, dim); None where it
    cannot run (another device or dtype, autograd, the linears not packed for the few-row kernels — float32 or
    int8 panels —, hooks on the block's layers, no kernels)."""
    linears = (block.qkv, block.attn_out, block.fc, block.proj)
    if (x.device.type != "cpu" or x.dtype != torch.float32 or cache.k.dtype not in _KERNEL_CACHE_DTYPES
            or kernels.autograd_records(x)
            or not all(isinstance(m, PackedLinear) and m.layout in ("panels", "int8") for m in linears)):
        return None
    norms = (block.ln1, block.ln2)
    if any(m._forward_hooks or m._forward_pre_hooks for m in (*linears, *norms)) or block.ln1.eps != block.ln2.eps:
        return None
    op = kernels.gpt_block_decode()
    if op is None:
        return None
    b, _, d = x.shape
    pk, pv = cache.prefix(layer)
    y = op(x.reshape(b, d), block.ln1.weight, block.ln1.bias, block.ln2.weight, block.ln2.bias, block.ln1.eps,
           block.qkv.kernel_weights(), block.qkv.bias, block.attn_out.kernel_weights(), block.attn_out.bias,
           block.fc.kernel_weights(), block.fc.bias, block.proj.kernel_weights(), block.proj.bias, cache.k[layer],
           cache.v[layer],
           cache.length - cache.prefix_length, pk[0], pv[0], block.heads)
    return y.view(b, 1, d)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention, then a 4x GELU-tanh MLP."""

    # decoding runs these over one row per candidate: packed for Hare's few-row kernel (`hare.models.packed`)
    FEW_ROWS_PACKABLE = ("qkv", "attn_out", "fc", "proj")

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
        self.record_qk = False  # attention probes (`GPT.recording_qk`): keep this block's queries and keys

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        # x: (batch, seq, dim); with a cache, x holds the positions from cache.length on (their keys/values are stored)
        b, s, d = x.shape
        decode = cache is not None and s == 1 and cache.length > 0 and not self.record_qk and not self.training
        if decode and (y := _decode_step_block(self, x, cache, layer)) is not None:
            return y
        qkv = self.qkv(self.ln1(x))
        drop = self.dropout if self.training else 0.0
        h = _decode_step_attention(qkv, cache, layer, self.heads) if decode else None
        if h is None:
            h = self._attention(qkv, cache, layer, drop)
        a = self.attn_out(h)
        x = x + (F.dropout(a, drop) if drop else a)  # (no dropout call at inference: decoding is op-bound)
        if isinstance(self.fc, PackedLinear):  # inference on oneDNN: the GELU fused into the matmul
            m = self.proj(self.fc(self.ln2(x), gelu_tanh=True))
        else:
            m = self.proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))
        return x + (F.dropout(m, drop) if drop else m)

    def _attention(self, qkv: torch.Tensor, cache: KVCache | None, layer: int, drop: float) -> torch.Tensor:
        """Self-attention from the fused projection qkv (batch, seq, 3 * dim) -> (batch, seq, dim); with a cache,
        the positions from cache.length on (their keys/values are stored)."""
        b, s, d3 = qkv.shape
        d = d3 // 3
        q, k, v = (t.view(b, s, self.heads, d // self.heads) for t in qkv.split(d, dim=2))
        if cache is not None:
            cache.store(layer, k, v)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (batch, heads, seq, head_dim)
        if self.record_qk:
            self.recorded = (q, k)
        if cache is None:
            h = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        else:
            start, end = cache.length, cache.length + s
            if start == 0:  # the prompt: plain causal attention over itself
                h = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            elif s == 1:  # one new position per row sees everything before it
                h = _decode_attention(q, cache, layer, end)
            else:  # a chunk: causal within itself, full view of what is cached before it
                mask = torch.ones(s, end, dtype=torch.bool, device=qkv.device).tril(diagonal=start)
                keys, values = (t.to(q.dtype) for t in cache.keys_values(layer, end))
                h = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return h.transpose(1, 2).reshape(b, s, d)


def diagonal_attention_cost(q: torch.Tensor, k: torch.Tensor, text_lengths: torch.Tensor,
                            code_lengths: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """How far each speech query's attention over the text lies from the diagonal (DC-TTS's guided attention).

    q: (batch, heads, speech_len, head_dim) queries of the speech positions; k: (batch, heads, text_len,
    head_dim) keys of the text positions; text_lengths / code_lengths: (batch,) the real lengths (padding beyond
    them is ignored). The attention is renormalised over the real text keys, and each query's mass is weighted
    by 1 - exp(-d^2 / 2 sigma^2), d = text position / text length - speech position / speech length.
    Returns (cost (batch, heads, speech_len), valid (batch, speech_len) bool: the real speech queries).
    """
    m, d = q.shape[2:]
    t = k.shape[2]
    logits = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(d)  # (batch, heads, speech, text)
    i = torch.arange(t, device=q.device)
    j = torch.arange(m, device=q.device)
    key_ok = i[None] < text_lengths[:, None]  # (batch, text)
    query_ok = j[None] < code_lengths[:, None]  # (batch, speech)
    attn = logits.masked_fill(~key_ok[:, None, None], float("-inf")).softmax(dim=-1)
    rel = (i[None, None] / text_lengths[:, None, None].float()
           - j[None, :, None] / code_lengths[:, None, None].float())  # (batch, speech, text)
    weight = 1.0 - torch.exp(-rel ** 2 / (2 * sigma ** 2))
    return (attn * weight[:, None]).sum(-1), query_ok


class CandidateScores(NamedTuple):
    log_likelihood: torch.Tensor  # (candidates,) float32: mean log-probability per code (and first stop)
    alignment: torch.Tensor | None  # (candidates,) float32: minus the mean off-diagonal attention mass; or None


class GPTOutput(NamedTuple):
    loss_text: torch.Tensor  # scalar: mean cross-entropy over every text target (padding included)
    loss_mel: torch.Tensor  # scalar: the same over every speech target
    text_logits: torch.Tensor  # (batch, text_vocab + 1, text_len + 2)
    mel_logits: torch.Tensor  # (batch, mel_vocab, codes + 2)


class GPT(nn.Module):
    FEW_ROWS_PACKABLE = ("mel_head",)  # one row per candidate each decode step (see Block's)

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        if c.dim % c.heads:
            raise ValueError(f"dim ({c.dim}) must be divisible by heads ({c.heads})")
        bad = [p for p in c.alignment_heads if len(p) != 2 or not (0 <= p[0] < c.layers and 0 <= p[1] < c.heads)]
        if bad:
            raise ValueError(f"alignment_heads must be (block, head) pairs with block < {c.layers} and head < "
                             f"{c.heads} (got {[list(p) for p in bad]})")
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
        # the KV cache's dtype when decoding (None: the compute dtype). torch.bfloat16 with float32 compute halves
        # the bytes a decode step reads from the cache (the CPU fast path's reduced-precision option): keys and
        # values are rounded to bfloat16 as they are stored, everything else stays float32
        self.kv_cache_dtype: torch.dtype | None = None
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2's scheme: N(0, 0.02) for linears and embeddings, residual projections scaled down by depth
        for name, p in self.named_parameters():
            if name.startswith("cond_"):
                continue  # the conditioning encoder keeps PyTorch's conv defaults
            if p.dim() >= 2:
                residual = name.endswith(("attn_out.weight", "proj.weight"))
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * self.config.layers) if residual else 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    @property
    def max_codes(self) -> int:
        """The most codes a sequence can have: the speech position table holds start + codes + stop."""
        return self.config.mel_positions - 2

    @property
    def max_text_tokens(self) -> int:
        """The most text tokens a prompt can have: the text position table holds start + text + stop."""
        return self.config.text_positions - 2

    # -- conditioning ------------------------------------------------------------------------------------
    def conditioning_latent(self, mels: torch.Tensor) -> torch.Tensor:
        """Voice latent: the encoder's first output frame, averaged over clips.

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
        # x: (batch, seq, dim) input embeddings -> (batch, seq, dim) after the stack's final LayerNorm
        x = F.dropout(x, self.config.dropout, self.training)  # GPT-2's embedding dropout (training only)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.length += x.shape[1]
        return self.ln_f(x)

    def _text_embeddings(self, text_inputs: torch.Tensor) -> torch.Tensor:
        # text_inputs: (batch, len) with start and stop tokens -> (batch, len, dim)
        n = text_inputs.shape[1]
        if n > self.config.text_positions:
            raise TextTooLongError(f"the text has {n - 2} tokens; this model reads at most {self.max_text_tokens}: "
                            "split it into shorter pieces")
        pos = torch.arange(n, device=text_inputs.device)
        return self.text_embedding(text_inputs) + self.text_pos(pos)

    def _mel_embeddings(self, mel_inputs: torch.Tensor) -> torch.Tensor:
        # mel_inputs: (batch, len) starting with the start token -> (batch, len, dim)
        n = mel_inputs.shape[1]
        if n > self.config.mel_positions:
            raise ValueError(f"{n - 2} codes exceed this model's limit of {self.max_codes}")
        return self.mel_embedding(mel_inputs) + self.mel_pos(torch.arange(n, device=mel_inputs.device))

    @staticmethod
    def _inputs_and_targets(tokens: torch.Tensor, start: int, stop: int):
        """Aligned (inputs, targets): inputs = [start, tokens], targets = [tokens, stop]."""
        return F.pad(tokens, (1, 0), value=start), F.pad(tokens, (0, 1), value=stop)

    # -- teacher-forced forward (training, latents for the diffusion decoder) --------------------------------
    def forward(self, cond_latent: torch.Tensor, text_tokens: torch.Tensor, text_lengths: torch.Tensor,
                codes: torch.Tensor, wav_lengths: torch.Tensor, clip_inputs: bool = True,
                return_latent: bool = False) -> GPTOutput | torch.Tensor:
        """Teacher-forced pass over text and codes, as the reference `forward`.

        cond_latent: (batch, dim); text_tokens: (batch, text_len) long; text_lengths: (batch,);
        codes: (batch, n) long; wav_lengths: (batch,) audio samples (22.05 kHz) behind the codes.
        With `clip_inputs`, text is cut to the longest text_length and codes to the longest
        wav_length // mel_length_compression. Codes past each clip's end (+1 code of slack) become the stop
        token; a stop token is appended to text and codes, and each gets its start token in front.

        Returns GPTOutput (losses and logits) or, with `return_latent`, only the speech latents
        (batch, n, dim): final_norm'd hidden states of the speech span without its last two positions, so
        that latent i sits at the position whose logits predict code i.
        """
        c = self.config
        if clip_inputs:
            text_tokens = text_tokens[:, : int(text_lengths.max())]
            codes = codes[:, : int(wav_lengths.max()) // c.mel_length_compression]
        codes = self.pad_codes_after_end(codes, wav_lengths)
        text_in, text_target = self._inputs_and_targets(F.pad(text_tokens, (0, 1), value=c.stop_text_token),
                                                        c.start_text_token, c.stop_text_token)
        mel_in, mel_target = self._inputs_and_targets(F.pad(codes, (0, 1), value=c.stop_mel_token),
                                                      c.start_mel_token, c.stop_mel_token)
        x = torch.cat([cond_latent.unsqueeze(1).to(self.text_pos.weight.dtype),
                       self._text_embeddings(text_in), self._mel_embeddings(mel_in)], dim=1)
        h = self.final_norm(self._stack(x)[:, 1:])  # the voice latent's own output predicts nothing
        mel_h = h[:, -mel_in.shape[1]:]
        if return_latent:
            return mel_h[:, :-2]
        text_logits = self.text_head(h[:, : text_in.shape[1]]).transpose(1, 2)
        mel_logits = self.mel_head(mel_h).transpose(1, 2)
        return GPTOutput(F.cross_entropy(text_logits, text_target), F.cross_entropy(mel_logits, mel_target),
                         text_logits, mel_logits)

    def pad_codes_after_end(self, codes: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        """Replace codes after each clip's end (wav_length // compression + 1) by the stop token (a new tensor).

        codes: (batch, n); wav_lengths: (batch,) -> (batch, n)
        """
        ends = torch.div(wav_lengths, self.config.mel_length_compression, rounding_mode="trunc") + 1
        after = torch.arange(codes.shape[1], device=codes.device)[None, :] >= ends.to(codes.device)[:, None]
        return codes.masked_fill(after, self.config.stop_mel_token)

    def speech_latents(self, cond_latent: torch.Tensor, text_tokens: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The diffusion decoder's input: one latent per code, as the reference pipeline computes it.

        cond_latent: (batch, dim); text_tokens: (batch, text_len); codes: (batch, n) -> (batch, n, dim).
        (`forward(..., clip_inputs=False, return_latent=True)` with every code inside its clip.)
        """
        b, n = codes.shape
        wav_lengths = torch.full((b,), n * self.config.mel_length_compression, device=codes.device)
        text_lengths = torch.full((b,), text_tokens.shape[1], device=codes.device)
        return self(cond_latent, text_tokens, text_lengths, codes, wav_lengths, clip_inputs=False,
                    return_latent=True)

    def code_log_likelihood(self, cond_latent: torch.Tensor, text_tokens: torch.Tensor, codes: torch.Tensor,
                            batch_size: int = 16) -> torch.Tensor:
        """Each sampled candidate's mean log-probability per code under this model (teacher forced): the
        `log_likelihood` of `score_candidates`, (b,) float32."""
        return self.score_candidates(cond_latent, text_tokens, codes, batch_size).log_likelihood

    def score_candidates(self, cond_latent: torch.Tensor, text_tokens: torch.Tensor, codes: torch.Tensor,
                         batch_size: int = 16, alignment: bool = False,
                         sigma: float = ALIGNMENT_SIGMA) -> CandidateScores:
        """What this model thinks of each sampled candidate, from one teacher-forced pass (the reranker's input).

        cond_latent: (1, dim); text_tokens: (1, text_len) as the pipeline passes them; codes: (b, n) as sampled,
        right-padded with the stop token. `log_likelihood`: the mean log-probability over each row's codes up
        to and including its first stop token (all n codes when it has none). With `alignment` (needs the
        config's `alignment_heads`): minus the mean off-diagonal attention mass from the row's speech positions
        (start, codes, stop) to the text (`diagonal_attention_cost`, width `sigma`) over those heads: near 0
        for a candidate that reads its text in order, lower for one that skips, repeats or babbles.
        Computed `batch_size` rows at a time.
        """
        c = self.config
        if alignment and not c.alignment_heads:
            raise ValueError("this GPT's config names no alignment_heads (it was not trained with guided "
                             "attention): no alignment score")
        stop = c.stop_mel_token
        is_stop = codes == stop
        has_stop = is_stop.any(dim=1)
        lengths = torch.where(has_stop, is_stop.int().argmax(dim=1), torch.full_like(has_stop, codes.shape[1],
                                                                                   dtype=torch.long))
        layers = sorted({layer for layer, _ in c.alignment_heads}) if alignment else []
        likelihood, aligned = [], []
        for i in range(0, codes.shape[0], batch_size):
            rows, lens, stops = codes[i: i + batch_size], lengths[i: i + batch_size], has_stop[i: i + batch_size]
            rows = rows[:, : int(lens.max()) + 1]  # the sampler pads to its code limit: skip the stop padding
            b = rows.shape[0]
            wav_lengths = lens * c.mel_length_compression
            with self.recording_qk(layers):
                logits = self(cond_latent.expand(b, -1), text_tokens.expand(b, -1),
                              torch.full((b,), text_tokens.shape[1], device=codes.device), rows, wav_lengths,
                              clip_inputs=False).mel_logits.float()  # (b, vocab, n + 2)
            targets = F.pad(self.pad_codes_after_end(rows, wav_lengths), (0, 2), value=stop)
            logp = F.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)  # (b, n + 2)
            counted = torch.arange(targets.shape[1], device=codes.device)[None] < (lens + stops.long())[:, None]
            likelihood.append((logp * counted).sum(1) / counted.sum(1).clamp(min=1))
            if layers:
                aligned.append(-self._alignment_cost(layers, text_tokens.shape[1] + 2, lens + 2, sigma))
        return CandidateScores(torch.cat(likelihood), torch.cat(aligned) if layers else None)

    @contextlib.contextmanager
    def recording_qk(self, layers):
        """Within the block, the forward passes of the blocks numbered `layers` keep their queries and keys (read
        them with `speech_text_qk`): the guided-attention loss and the reranker's alignment score."""
        blocks = [self.blocks[i] for i in layers]
        for block in blocks:
            block.record_qk = True
        try:
            yield
        finally:
            for block in blocks:
                block.record_qk = False

    def speech_text_qk(self, layer: int, heads, text_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Block `layer`'s recorded queries of the speech positions and keys of the text positions, for `heads`
        (a list or slice of head indices), and forget them. The sequence is [voice latent, text inputs
        (text_len), speech inputs]: (batch, heads, speech_len, head_dim), (batch, heads, text_len, head_dim)."""
        block = self.blocks[layer]
        q, k = block.recorded
        block.recorded = None
        return q[:, heads, 1 + text_len:], k[:, heads, 1:1 + text_len]

    def _alignment_cost(self, layers: list[int], text_len: int, code_lengths: torch.Tensor,
                        sigma: float) -> torch.Tensor:
        """Mean off-diagonal mass over the alignment heads (each head's mean over the real speech queries), per
        row, from the qk the blocks just recorded."""
        total = 0.0
        for layer in layers:
            heads = [h for blk, h in self.config.alignment_heads if blk == layer]
            q, k = self.speech_text_qk(layer, heads, text_len)
            text_lengths = torch.full((q.shape[0],), text_len, device=q.device)
            cost, valid = diagonal_attention_cost(q, k, text_lengths, code_lengths.to(q.device), sigma)
            total = total + (cost * valid[:, None]).sum((1, 2)) / valid.sum(1).clamp(min=1)  # summed over heads
        return total / len(self.config.alignment_heads)

    # -- cached decoding ---------------------------------------------------------------------------------
    def prompt_length(self, text_len: int) -> int:
        """Positions in the prompt for a text of `text_len` tokens: latent, start, text, stop, start_mel."""
        return 1 + 1 + text_len + 1 + 1

    def _compute_dtype(self) -> torch.dtype:
        ref = self.ln_f.weight  # not a Linear: stays float when the linears are quantised
        if torch.is_autocast_enabled(ref.device.type):
            return torch.get_autocast_dtype(ref.device.type)
        return ref.dtype

    @torch.no_grad()
    def prefill(self, cond_latent: torch.Tensor, text_tokens: torch.Tensor, batch: int, max_codes: int,
                return_latent: bool = False):
        """Run the prompt once and share it: returns (logits for the first code, cache for `batch` sequences).

        cond_latent: (1, dim); text_tokens: (1, text_len) as `inference_speech` receives them (a stop token and
        the start token are added here). Logits: (batch, mel_vocab). The cache has room for `max_codes` more
        positions. The start-of-speech token sits at speech position 0. With `return_latent`, also the latent
        of the first code (`speech_latents`' first row: the final-normed state that predicts it), (batch, dim).
        """
        c = self.config
        if cond_latent.shape[0] != 1 or text_tokens.shape[0] != 1:
            raise ValueError("prefill takes one prompt (batch 1); the candidates share it")
        text_in = F.pad(F.pad(text_tokens, (0, 1), value=c.stop_text_token), (1, 0), value=c.start_text_token)
        start = torch.full((1, 1), c.start_mel_token, dtype=torch.long, device=text_tokens.device)
        x = torch.cat([cond_latent.unsqueeze(1).to(self.text_pos.weight.dtype),
                       self._text_embeddings(text_in), self._mel_embeddings(start)], dim=1)
        cache = KVCache(c.layers, 1, c.heads, x.shape[1], c.dim // c.heads, self.kv_cache_dtype or self._compute_dtype(),
                        x.device)
        latent = self.final_norm(self._stack(x, cache)[:, -1])
        logits = self.mel_head(latent).expand(batch, -1)
        cache = cache.expand(batch, x.shape[1] + max_codes)
        return (logits, cache, latent.expand(batch, -1)) if return_latent else (logits, cache)

    @torch.no_grad()
    def decode_step(self, codes: torch.Tensor, position: int, cache: KVCache, return_latent: bool = False):
        """Feed one code per sequence at speech position `position` (1 for the first generated code).

        codes: (batch,) -> logits for the next code, (batch, mel_vocab); with `return_latent`, (logits, the
        next code's latent (batch, dim), as `speech_latents` computes it).
        """
        if position >= self.config.mel_positions:
            raise ValueError(f"speech position {position} is past the model's {self.config.mel_positions} positions")
        if cache.length >= cache.capacity:
            raise ValueError(f"the cache is full ({cache.capacity} positions)")
        x = self.mel_embedding(codes)[:, None] + self.mel_pos.weight[position]
        latent = self.final_norm(self._stack(x, cache)[:, -1])
        logits = self.mel_head(latent)
        return (logits, latent) if return_latent else logits
