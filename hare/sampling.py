"""Sampling candidate speech-code sequences from the GPT with its key/value cache.

The network knows nothing about sampling: this module drives `gpt.prefill` / `gpt.decode_step` and
turns logits into codes with the same stack as the reference's Hugging Face `generate` call
(`UnifiedVoice.inference_speech` with transformers 4.31):

1. repetition penalty (CTRL style: a seen id's logit is divided by the penalty if positive, multiplied if
   negative) over every id of the running `input_ids`. The reference feeds `generate` a dummy prompt of
   filler ids `1` (one per prompt embedding) ending with the start token 8192, and the penalty gathers
   over *all* of `input_ids` (`RepetitionPenaltyLogitsProcessor.__call__`: `gather(scores, 1, input_ids)`),
   so ids 1 and 8192 count as seen from the first step on; the text ids do not (they are not in
   `input_ids`);
2. then the warpers, in transformers' order (`GenerationMixin._get_logits_warper`): temperature, top-k
   (50: transformers' default, Tortoise does not set it) and top-p; each keeps at least one id;
3. a multinomial draw (or the argmax when greedy; the repetition penalty applies there too).

`length_penalty` only affects beam search, so it has no effect here, as in the reference. Finished
sequences keep emitting the stop token (HF's pad id is the stop token too); a batch ends when every sequence
has stopped or after `max_codes` codes, and results are right-padded with the stop token to `max_codes`.
Randomness comes only from the `torch.Generator` passed in.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F

from hare.errors import SettingsError

# the reference feeds `generate` dummy prompt ids of value 1 (then the start token): both are "seen" ids
PROMPT_FILLER_ID = 1


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 0.8
    top_p: float = 0.8
    top_k: int = 50  # 0 disables
    repetition_penalty: float = 2.0
    length_penalty: float = 1.0  # a beam-search knob: no effect on sampling (as in the reference)
    max_codes: int = 500
    greedy: bool = False  # argmax after the repetition penalty (temperature, top-k, top-p unused)

    def __post_init__(self):
        checks = [
            (self.temperature > 0, f"temperature must be > 0 (got {self.temperature})"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1] (got {self.top_p})"),
            (self.top_k >= 0, f"top_k must be >= 0 (got {self.top_k})"),
            (self.repetition_penalty > 0, f"repetition_penalty must be > 0 (got {self.repetition_penalty})"),
            (self.max_codes >= 1, f"max_codes must be >= 1 (got {self.max_codes})"),
        ]
        for ok, message in checks:
            if not ok:
                raise SettingsError(message)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty on ids already in the sequence: positive logits / penalty, negative * penalty.

    logits: (batch, vocab); seen: (batch, vocab) bool -> (batch, vocab)
    """
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits per row (ties with the k-th are kept too), others -inf. k <= 0 disables."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: drop the least likely ids while their cumulative probability is <= 1 - p.

    The most likely id always survives. logits: (batch, vocab) -> (batch, vocab)
    """
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
    """Pick the next code per row. logits, seen: (batch, vocab) -> (batch,) long"""
    scores = apply_repetition_penalty(logits.float(), seen, settings.repetition_penalty)
    if settings.greedy:
        return scores.argmax(dim=-1)
    if settings.temperature != 1.0:
        scores = scores / settings.temperature
    ids = None
    k = settings.top_k
    if 0 < k < scores.shape[-1]:
        # top-k as a selection: top-p and the draw then work on the k survivors only, the same distribution
        # as filtering the whole vocabulary (top_k_filter) without sorting and drawing from 8k ids per row
        top, ids = scores.topk(k, dim=-1)
        kth = top[..., -1:]
        ties = int((scores >= kth).sum(dim=-1).max())
        if ties > k:  # ids tied with the k-th are kept too, as top_k_filter keeps them
            top, ids = scores.topk(ties, dim=-1)
            top = top.masked_fill(top < kth, float("-inf"))
        scores = top
    probs = top_p_filter(scores, settings.top_p).softmax(dim=-1)
    gen_device = generator.device if generator is not None else probs.device
    picked = torch.multinomial(probs.to(gen_device), 1, generator=generator).to(logits.device)
    if ids is not None:
        picked = ids.gather(-1, picked)
    return picked[:, 0]


def code_limit(gpt, settings: SamplingSettings) -> int:
    """Codes per candidate: `settings.max_codes`, capped by what the model's position table can hold."""
    return min(settings.max_codes, gpt.max_codes)


class Stepper:
    """Candidates sampled one code at a time, all sharing one prompt (the KV cache, the repetition penalty's
    seen ids, the stop rule). `step()` samples the next code of every row; `force(codes)` feeds given codes
    instead (the pipeline's streaming path continues past a stop with the calm codes `fix_candidates` would
    put there). With `latents`, each call also returns the latents that predicted the returned codes, as
    `GPT.speech_latents` would compute them for those positions: (batch, dim).
    """

    def __init__(self, gpt, cond_latent: torch.Tensor, text_tokens: torch.Tensor, batch: int,
                 settings: SamplingSettings, generator: torch.Generator | None = None, latents: bool = False):
        c = gpt.config
        self.gpt, self.settings, self.generator, self.latents = gpt, settings, generator, latents
        self.max_codes = code_limit(gpt, settings)
        if latents:
            self.logits, self.cache, self.latent = gpt.prefill(cond_latent, text_tokens, batch, self.max_codes,
                                                               return_latent=True)
        else:
            (self.logits, self.cache), self.latent = gpt.prefill(cond_latent, text_tokens, batch, self.max_codes), None
        device = self.logits.device
        self.seen = torch.zeros(batch, self.logits.shape[-1], dtype=torch.bool, device=device)
        self.seen[:, PROMPT_FILLER_ID] = True
        self.seen[:, c.start_mel_token] = True
        self.finished = torch.zeros(batch, dtype=torch.bool, device=device)
        self.stop = torch.full((batch,), c.stop_mel_token, dtype=torch.long, device=device)
        self.rows = torch.arange(batch, device=device)
        self.position = 0  # codes produced so far
        self._pending = None  # the last code, fed to the network when the next one is asked for

    @property
    def full(self) -> bool:
        return self.position >= self.max_codes

    def _advance(self) -> None:
        if self._pending is None:
            return
        if self.latents:
            self.logits, self.latent = self.gpt.decode_step(self._pending, self.position, self.cache,
                                                            return_latent=True)
        else:
            self.logits = self.gpt.decode_step(self._pending, self.position, self.cache)
        self._pending = None

    def step(self):
        """The next code of every row (a finished row repeats the stop token): (batch,) [, latents]."""
        self._advance()
        code = torch.where(self.finished, self.stop, next_codes(self.logits, self.seen, self.settings,
                                                                self.generator))
        return self._take(code)

    def force(self, code: torch.Tensor):
        """Take `code` (batch,) as the next codes; returns them [, the latents that predicted them]."""
        self._advance()
        return self._take(code)

    def amend(self, code: torch.Tensor) -> None:
        """Replace the codes just returned (batch,) by `code` before the network reads them (the pipeline's
        streaming path turns a stop into the calm code, as `fix_candidates` does)."""
        if self._pending is None:
            raise ValueError("no code to amend")
        self._pending = code

    def _take(self, code: torch.Tensor):
        if self.full:
            raise ValueError(f"no room for more than {self.max_codes} codes")
        latent = self.latent
        self.seen[self.rows, code] = True
        self.finished |= code == self.gpt.config.stop_mel_token
        self.position += 1
        self._pending = code
        return (code, latent) if self.latents else code


class SampledLatents(NamedTuple):
    """What the sampling pass computed of each candidate's GPT latents (`sample_codes(..., latents=True)`).

    latents: (n, width, dim) float32, `latents[i, j]` the final-normed state that predicted code j of row i, as
    `GPT.speech_latents` computes it for the codes the pass fed (zeros past `computed`); computed: (n,) how many
    of them the pass ran. From a row's first stop token on the pass fed the calm code instead (what
    `hare.rerank.fix_candidates` puts there), so the first latents of a fixed candidate are these, up to the
    first code where its fixed codes differ from `fed_codes`.
    """

    latents: torch.Tensor
    computed: torch.Tensor

    @staticmethod
    def fed_codes(codes: torch.Tensor, stop: int, calm: int) -> torch.Tensor:
        """The codes the pass fed for sampled `codes` (n, width): each from the row's first stop on is `calm`."""
        return codes.masked_fill((codes == stop).cumsum(dim=1) > 0, calm)

    def valid(self, codes: torch.Tensor, fixed: torch.Tensor, stop: int, calm: int) -> torch.Tensor:
        """(n,) how many leading latents of each row equal those of its `fixed` codes (n, width) taught: latent
        j reads codes 0 .. j - 1, so up to and including the first code where the fed and fixed codes differ."""
        same = self.fed_codes(codes, stop, calm) == fixed
        first_diff = torch.where(same.all(dim=1), torch.full_like(self.computed, codes.shape[1]),
                                 (~same).int().argmax(dim=1))
        return torch.minimum(first_diff + 1, self.computed)


@torch.no_grad()
def generate(gpt, cond_latent: torch.Tensor, text_tokens: torch.Tensor, batch: int, settings: SamplingSettings,
             generator: torch.Generator | None = None, latents: bool = False):
    """One batch of candidates sharing one prompt.

    cond_latent: (1, dim); text_tokens: (1, text_len) -> (batch, n <= max_codes) codes; a row that stopped
    holds the stop token from its first one on. The result ends early once every row has stopped.
    With `latents`, also (batch, n, dim) float32: the latent that predicted each code, a row fed the calm code
    from its stop on (`SampledLatents`); the codes are the same either way.
    """
    stepper = Stepper(gpt, cond_latent, text_tokens, batch, settings, generator, latents=latents)
    calm = torch.full((batch,), gpt.config.calm_code, dtype=torch.long, device=stepper.stop.device) if latents else None
    codes, states = [], []
    while not stepper.full and not (codes and bool(stepper.finished.all())):
        if latents:
            code, latent = stepper.step()
            states.append(latent.float())
            if bool(stepper.finished.any()):  # a stopped row reads the calm code (the other rows never see it)
                stepper.amend(torch.where(stepper.finished, calm, code))
        else:
            code = stepper.step()
        codes.append(code)
    out = torch.stack(codes, dim=1)
    return (out, torch.stack(states, dim=1)) if latents else out


def sample_codes(gpt, cond_latent: torch.Tensor, text_tokens: torch.Tensor, num_samples: int, batch_size: int,
                 settings: SamplingSettings, generator: torch.Generator | None = None, progress=None,
                 latents: bool = False):
    """`num_samples` candidates in batches of `batch_size`, each right-padded with the stop token.

    cond_latent: (1, dim); text_tokens: (1, text_len), ending with one stop token as the pipeline passes them
    -> (num_samples, min(settings.max_codes, gpt.max_codes)) long; with `latents`, (codes, `SampledLatents`).
    `progress` (optional, tqdm-like) is advanced by each finished batch's size and closed at the end.
    """
    if num_samples < 1 or batch_size < 1:
        raise SettingsError(f"need at least one sample and a batch size of at least 1 "
                            f"(got {num_samples} samples, batch size {batch_size})")
    stop = gpt.config.stop_mel_token
    width = code_limit(gpt, settings)
    results, states, computed = [], [], []
    try:
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            codes = generate(gpt, cond_latent, text_tokens, n, settings, generator, latents=latents)
            if latents:
                codes, latent = codes
                states.append(F.pad(latent, (0, 0, 0, width - latent.shape[1])))
                computed.append(torch.full((n,), latent.shape[1], dtype=torch.long, device=latent.device))
            results.append(F.pad(codes, (0, width - codes.shape[1]), value=stop))
            if progress is not None:
                progress.update(n)
    finally:
        if progress is not None:
            progress.close()
    codes = torch.cat(results, dim=0)
    return (codes, SampledLatents(torch.cat(states, dim=0), torch.cat(computed, dim=0))) if latents else codes
