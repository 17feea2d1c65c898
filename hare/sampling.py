"""Sampling candidate speech-code sequences from the GPT with its key/value cache.

The logits go through the same stack as the reference's Hugging Face `generate` (transformers 4.31):
repetition penalty over every id of the running sequence (which, in the reference, includes the prompt's
filler ids `1` and the start-of-speech token), then temperature, top-k (50, transformers' default) and
top-p (nucleus). Finished sequences keep emitting the stop token; results are right-padded with it to
`max_codes`, as the reference pads every batch.
"""

from __future__ import annotations

import dataclasses

import torch

# the reference feeds `generate` dummy prompt ids of value 1 (then the start token): they are "seen" ids
PROMPT_FILLER_ID = 1


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 0.8
    top_p: float = 0.8
    top_k: int = 50
    repetition_penalty: float = 2.0
    length_penalty: float = 1.0  # a beam-search knob: no effect on sampling (as in the reference)
    max_codes: int = 500
    greedy: bool = False


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty on ids already in the sequence: positive logits / penalty, negative * penalty."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits per row (ties with the k-th kept), others -inf. k <= 0 disables."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: drop the least likely ids whose cumulative probability is <= 1 - p (keeps >= 1 id)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= (1 - p)
    drop_sorted[..., -1] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def next_codes(logits: torch.Tensor, seen: torch.Tensor, settings: SamplingSettings,
               generator: torch.Generator | None) -> torch.Tensor:
    """Pick the next code per row from (batch, vocab) logits."""
    scores = apply_repetition_penalty(logits.float(), seen, settings.repetition_penalty)
    if settings.greedy:
        return scores.argmax(dim=-1)
    scores = scores / settings.temperature
    scores = top_p_filter(top_k_filter(scores, settings.top_k), settings.top_p)
    probs = scores.softmax(dim=-1)
    gen_device = generator.device if generator is not None else probs.device
    picked = torch.multinomial(probs.to(gen_device), 1, generator=generator)[:, 0]
    return picked.to(logits.device)


@torch.no_grad()
def generate(gpt, cond_latent: torch.Tensor, text_tokens: torch.Tensor, batch: int, settings: SamplingSettings,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """One batch of candidates: (batch, n <= max_codes) codes, finished rows padded with the stop token."""
    c = gpt.config
    max_codes = min(settings.max_codes, c.mel_positions - 1)
    logits, cache = gpt.prefill(cond_latent, text_tokens, batch, max_codes)
    seen = torch.zeros(batch, logits.shape[-1], dtype=torch.bool, device=logits.device)
    seen[:, PROMPT_FILLER_ID] = True
    seen[:, c.start_mel_token] = True
    finished = torch.zeros(batch, dtype=torch.bool, device=logits.device)
    out = []
    rows = torch.arange(batch, device=logits.device)
    for step in range(max_codes):
        code = next_codes(logits, seen, settings, generator)
        code = torch.where(finished, torch.full_like(code, c.stop_mel_token), code)
        out.append(code)
        seen[rows, code] = True
        finished |= code == c.stop_mel_token
        if bool(finished.all()) or step == max_codes - 1:
            break
        logits = gpt.decode_step(code, step + 1, cache)
    return torch.stack(out, dim=1)


def sample_codes(gpt, cond_latent: torch.Tensor, text_tokens: torch.Tensor, num_samples: int, batch_size: int,
                 settings: SamplingSettings, generator: torch.Generator | None = None, progress=None) -> torch.Tensor:
    """`num_samples` candidates in batches of `batch_size`: (num_samples, max_codes), stop-padded.

    cond_latent: (1, dim); text_tokens: (1, text_len), ending with one stop token as the pipeline passes them.
    `progress` (optional, tqdm-like) is advanced by the number of candidates of each finished batch.
    """
    stop = gpt.config.stop_mel_token
    width = min(settings.max_codes, gpt.config.mel_positions - 1)
    results = []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        codes = generate(gpt, cond_latent, text_tokens, n, settings, generator)
        results.append(torch.nn.functional.pad(codes, (0, width - codes.shape[1]), value=stop))
        if progress is not None:
            progress.update(n)
    if progress is not None:
        progress.close()
    return torch.cat(results, dim=0)
