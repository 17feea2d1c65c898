"""Reranking the sampled candidates: their layout (fix-up, speech length, the speller's view), the scorers that
judge them, and the `Reranker` that blends the scores and picks.

A scorer is any object with `score(candidates) -> (n,) tensor | None` (higher is better, `-inf` rules a
candidate out, `None` abstains: the part is left out of the blend). The pipeline builds its reranker from the
model's networks and the synthesis settings (`TextToSpeech.reranker`); benches and tests build one from their
own scorers (`Precomputed` for scores measured elsewhere).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Protocol, Sequence

import torch

from hare.errors import SettingsError, TextError
from hare.models.configs import GPTConfig

log = logging.getLogger(__name__)

# the official VQ-VAE's codes for silence and for a zero-padded tail (omitting the tail gives a harsh ending):
# GPTConfig's defaults, the one place they are written; a model's own are in its GPTConfig
CALM_CODE = GPTConfig.calm_code
TAIL_CODES = GPTConfig.tail_codes
STOP_TOKEN = GPTConfig.stop_mel_token
MAX_CALM_RUN = 8  # calm codes kept after speech ends ("breathing room") before the latents are cut
SPELLER_CALM_RUN = 12  # calm codes the speller reads after a candidate's speech (it trained on 1 to 24)


# --------------------------------------------------------------------------------------------------
# The candidates' layout


def fix_candidates(codes: torch.Tensor, stop_token: int = STOP_TOKEN, calm_code: int = CALM_CODE,
                   tail_codes: tuple[int, ...] = TAIL_CODES) -> torch.Tensor:
    """Tortoise's fix-up of sampled candidates (returns a new tensor).

    codes: (batch, length). In every row that contains `stop_token`, the first stop and everything after it
    become the calm code and the last three positions become the tail codes. Rows without a stop token (the
    speech ran to the length cap) are left unchanged.
    """
    codes = codes.clone()
    seen_stop = (codes == stop_token).cumsum(dim=1) > 0  # (batch, length)
    has_stop = seen_stop[:, -1]
    if not bool(has_stop.all()):
        log.warning("%d candidate(s) never emitted a stop token: the text may be too long to speak in one "
                    "chunk", int((~has_stop).sum()))
    codes[seen_stop] = calm_code
    if tail_codes and codes.shape[1] >= len(tail_codes):
        tail = torch.tensor(tuple(tail_codes), dtype=codes.dtype, device=codes.device)
        codes[has_stop, -len(tail_codes):] = tail
    return codes


def lay_out(speech: torch.Tensor, calm_code: int, calm_run: int, tail_codes: tuple[int, ...]) -> torch.Tensor:
    """One candidate as the reranker's networks read it: its speech codes, `calm_run` silence codes, the tail
    codes. The one definition of the layout: inference builds it from sampled candidates (`spoken_candidates`;
    `fix_candidates` is the same with the run padded to the longest candidate) and training from true codes
    (`hare.train.objectives.candidates.as_candidate`, a random run length)."""
    end = torch.tensor((calm_code,) * calm_run + tuple(tail_codes), dtype=speech.dtype, device=speech.device)
    return torch.cat([speech, end])


def spoken_candidates(codes: torch.Tensor, stop_token: int = STOP_TOKEN, calm_code: int = CALM_CODE,
                      tail_codes: tuple[int, ...] = TAIL_CODES, calm_run: int = SPELLER_CALM_RUN) -> list[torch.Tensor]:
    """Each sampled candidate as the speller was trained to read it (the training side's `CandidateLayout`):
    the codes before its first stop token, `calm_run` calm codes and the tail codes, without the padding to
    the longest candidate that `fix_candidates` leaves. codes: (batch, length) -> batch 1-D tensors. A row
    without a stop token is kept whole, as `fix_candidates` keeps it."""
    if calm_run < 1:
        raise ValueError(f"calm_run must be >= 1 (got {calm_run})")
    rows = []
    for row in codes:
        stops = (row == stop_token).nonzero()
        rows.append(row if not stops.numel() else lay_out(row[: int(stops[0, 0])], calm_code, calm_run, tail_codes))
    return rows


def calm_cut(codes: torch.Tensor, max_calm_run: int = MAX_CALM_RUN, calm_code: int = CALM_CODE) -> int:
    """Number of leading codes to keep: cut at the first run of more than `max_calm_run` calm codes.

    codes: (length,). Returns the index of the (max_calm_run+1)-th consecutive calm code, or the full length.
    """
    calm = (codes == calm_code).to(torch.int64)
    # run length ending at each position: position minus the index of the last non-calm code before it
    idx = torch.arange(codes.shape[0], device=codes.device)
    last_break = torch.where(calm.bool(), torch.full_like(idx, -1), idx).cummax(dim=0).values
    run = idx - last_break
    over = (run > max_calm_run).nonzero()
    return int(over[0, 0]) if over.numel() else int(codes.shape[0])


def drop_short_candidates(codes: torch.Tensor, scores: torch.Tensor, ratio: float,
                          calm_code: int = CALM_CODE) -> torch.Tensor:
    """Scores with the too-short candidates set to -inf (a new tensor).

    codes: (candidates, length) after `fix_candidates`; scores: (candidates,). A candidate is too short when
    its speech (`calm_cut`) is under `ratio` times the median candidate's; if every one is, none is dropped.
    """
    lengths = torch.tensor([calm_cut(c, calm_code=calm_code) for c in codes], dtype=torch.float32)
    short = (lengths < ratio * lengths.median()).to(scores.device)
    if bool(short.all()):
        return scores
    return scores.masked_fill(short, float("-inf"))


@dataclasses.dataclass(frozen=True)
class Layout:
    """A model's speech-code conventions, as the reranker needs them (read from its `GPTConfig`)."""

    stop_token: int = STOP_TOKEN
    calm_code: int = CALM_CODE
    tail_codes: tuple[int, ...] = TAIL_CODES
    speller_calm_run: int = SPELLER_CALM_RUN

    @classmethod
    def of(cls, gpt_config) -> "Layout":
        return cls(gpt_config.stop_mel_token, gpt_config.calm_code, tuple(gpt_config.tail_codes))

    def fixed(self, sampled: torch.Tensor) -> torch.Tensor:
        return fix_candidates(sampled, self.stop_token, self.calm_code, self.tail_codes)

    def spoken(self, sampled: torch.Tensor) -> list[torch.Tensor]:
        return spoken_candidates(sampled, self.stop_token, self.calm_code, self.tail_codes, self.speller_calm_run)


# --------------------------------------------------------------------------------------------------
# What the scorers read, and the scorers


@dataclasses.dataclass
class Candidates:
    """One chunk's candidates as every scorer may read them.

    text: (1, text length) BPE ids with its stop token (what the CLVP and the letter scorers read); sampled:
    (n, length) as the GPT sampled them; fixed: the same after `fix_candidates`; ar_latent: the voice's GPT
    conditioning, (1, dim); cond_mels: the voice's prompt mels (the CVVP's input); gpt_text: the text as the
    GPT reads it, where its front end is not the BPE (a phoneme GPT; None: `text`). `shared` holds work
    several scorers use (one CLVP speech pass, one GPT pass)."""

    text: torch.Tensor
    sampled: torch.Tensor
    fixed: torch.Tensor
    layout: Layout
    ar_latent: torch.Tensor | None = None
    cond_mels: Sequence[torch.Tensor] | None = None
    gpt_text: torch.Tensor | None = None
    shared: dict = dataclasses.field(default_factory=dict)

    @property
    def text_for_gpt(self) -> torch.Tensor:
        return self.text if self.gpt_text is None else self.gpt_text

    def __len__(self) -> int:
        return len(self.fixed)

    def once(self, key, compute):
        """`compute()`'s value, computed at most once per key for these candidates."""
        if key not in self.shared:
            self.shared[key] = compute()
        return self.shared[key]


class Scorer(Protocol):
    """Judges candidates: (n,) scores, higher is better (-inf: ruled out), or None to abstain."""

    def score(self, candidates: Candidates) -> torch.Tensor | None: ...


def clvp_speech_states(clvp, candidates: Candidates) -> torch.Tensor:
    """The CLVP's speech encoder over the fixed candidates, once for all the scorers that read it."""
    return candidates.once(("clvp_states", id(clvp)), lambda: clvp.speech_states(candidates.fixed))


class ClvpScorer:
    """Tortoise's score: the CLVP's text-speech similarity of each fixed candidate, mixed with the CVVP's
    voice similarity (averaged over the prompt mels) at `cvvp_amount` when a CVVP and prompt mels are given,
    unstandardised, as the reference mixes them (`cvvp` may be a zero-argument loader, called only when it is
    needed: the CVVP is an optional download). `share_states`: reuse the CLVP speech pass another scorer
    (the CLVP's letter head) also reads."""

    def __init__(self, clvp, cvvp=None, cvvp_amount: float = 0.0, share_states: bool = False):
        self.clvp, self.cvvp, self.cvvp_amount, self.share_states = clvp, cvvp, cvvp_amount, share_states

    def score(self, candidates: Candidates) -> torch.Tensor:
        states = clvp_speech_states(self.clvp, candidates) if self.share_states else None
        scores = self.clvp.similarity(candidates.text, candidates.fixed, states=states)
        if self.cvvp is not None and self.cvvp_amount > 0 and candidates.cond_mels is not None:
            if not isinstance(self.cvvp, torch.nn.Module):
                self.cvvp = self.cvvp()
            device = candidates.fixed.device
            voice = torch.stack([self.cvvp.similarity(m.unsqueeze(0).to(device), candidates.fixed)
                                 for m in candidates.cond_mels]).mean(0)
            scores = self.cvvp_amount * voice + (1 - self.cvvp_amount) * scores
        return scores


class GptPass:
    """One teacher-forced GPT pass over the sampled candidates (`GPT.score_candidates`), shared by the
    likelihood and alignment scorers; the alignment is computed only when `alignment` is set."""

    def __init__(self, gpt, batch_size: int = 16, alignment: bool = False):
        self.gpt, self.batch_size, self.alignment = gpt, batch_size, alignment

    def __call__(self, candidates: Candidates):
        if candidates.ar_latent is None:
            raise SettingsError("likelihood_weight and alignment_weight need the voice's ar_latent in rerank")
        return candidates.once(("gpt", id(self)), lambda: self.gpt.score_candidates(
            candidates.ar_latent, candidates.text_for_gpt, candidates.sampled, batch_size=self.batch_size,
            alignment=self.alignment))


class LikelihoodScorer:
    """The GPT's mean log-likelihood of each candidate's codes and its stop."""

    def __init__(self, gpt_pass: GptPass):
        self.gpt_pass = gpt_pass

    def score(self, candidates: Candidates) -> torch.Tensor:
        return self.gpt_pass(candidates).log_likelihood


class AlignmentScorer:
    """How closely the GPT's guided-attention heads follow the text's diagonal (needs `GptPass(alignment=True)`)."""

    def __init__(self, gpt_pass: GptPass):
        self.gpt_pass = gpt_pass

    def score(self, candidates: Candidates) -> torch.Tensor:
        return self.gpt_pass(candidates).alignment


def text_letters(tokenizer, tokens) -> torch.Tensor | None:
    """The CTC letter classes (`hare.text.ctc_targets`) of a row of text token ids, read from its cleaned text
    (`tokenizer.decode`); None if it has no letters."""
    from hare.text import ctc_targets

    try:
        return torch.tensor(ctc_targets(tokenizer.decode(tokens), cleaned=True), dtype=torch.long)
    except TextError:
        return None


class LetterScorer:
    """A letter score: how well each candidate spells the text's letters (`text_letters`), the mean
    log-probability per letter of a CTC letter recogniser. Abstains on a text without letters."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def score(self, candidates: Candidates) -> torch.Tensor | None:
        letters = text_letters(self.tokenizer, candidates.text[0])
        return None if letters is None else self.read(letters, candidates)

    def read(self, letters: torch.Tensor, candidates: Candidates) -> torch.Tensor:
        raise NotImplementedError


class SpellerScorer(LetterScorer):
    """The speller network's letter score: each candidate read to its own end (`Layout.spoken`), as it was
    trained; under autocast to `dtype` when given (bf16 on a CPU's matrix units)."""

    def __init__(self, speller, tokenizer, dtype: torch.dtype | None = None):
        super().__init__(tokenizer)
        self.speller = speller
        self.dtype = dtype

    def read(self, letters, candidates):
        spoken = candidates.layout.spoken(candidates.sampled)
        if self.dtype is None:
            return self.speller.score(letters, spoken)
        device = next(self.speller.parameters()).device.type
        with torch.autocast(device, dtype=self.dtype):
            return self.speller.score(letters, spoken).float()


class ClvpLetterScorer(LetterScorer):
    """The letter score of a CLVP trained with a CTC letter head, on the fixed candidates (its speech pass is
    shared with `ClvpScorer(share_states=True)`)."""

    def __init__(self, clvp, tokenizer):
        super().__init__(tokenizer)
        self.clvp = clvp

    def read(self, letters, candidates):
        return self.clvp.ctc_score(letters, candidates.fixed, states=clvp_speech_states(self.clvp, candidates))


class Precomputed:
    """Scores measured elsewhere (a bench's saved scores, a test's): returned as given."""

    def __init__(self, scores: torch.Tensor | None):
        self.scores = scores

    def score(self, candidates: Candidates) -> torch.Tensor | None:
        if self.scores is not None and len(self.scores) != len(candidates):
            raise ValueError(f"{len(self.scores)} precomputed scores for {len(candidates)} candidates")
        return self.scores


# --------------------------------------------------------------------------------------------------
# The blend and the pick


def blend_scores(scores: torch.Tensor, parts: list[tuple[float, torch.Tensor | None]]) -> torch.Tensor:
    """The base score with other scores blended in: each standardised over the candidates, then
    (1 - sum of weights) * base + sum of weight * part. Parts of weight 0 are skipped (they may be None). A
    part's -inf (a candidate it rules out, as the letter score does one too short to spell the text) counts as
    one below its lowest finite value, so that it ranks last on that part without swamping the spread of the
    others. (candidates,) -> (candidates,)."""
    parts = [(w, p) for w, p in parts if w > 0]
    out = base_share(parts) * _standardize(scores.float())
    for w, p in parts:
        out = out + w * _standardize(_floor_impossible(p.float()))
    return out


def base_share(parts: list[tuple[float, torch.Tensor | None]]) -> float:
    """What `blend_scores` leaves the base score: 1 - the sum of the parts' weights."""
    return 1 - sum(w for w, _ in parts if w > 0)


def _floor_impossible(x: torch.Tensor) -> torch.Tensor:
    """-inf entries set to one below the lowest finite entry (all -inf: zeros, no preference)."""
    impossible = torch.isneginf(x)
    if not impossible.any():
        return x
    finite = x[~impossible]
    return x.masked_fill(impossible, float(finite.min()) - 1.0 if finite.numel() else 0.0)


def _standardize(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit spread over the candidates (a constant row stays constant: zeros)."""
    spread = x.std() if x.numel() > 1 else x.new_tensor(0.0)
    return (x - x.mean()) / spread.clamp(min=1e-6)


class Reranker:
    """Fixes the sampled candidates, scores them and picks the best.

    base: the scorer whose raw score the blend starts from (Tortoise's: `ClvpScorer`); parts: (weight,
    scorer) pairs blended in by `blend_scores` (weights sum to at most 1; the base keeps the rest, and is not
    run at all when it keeps nothing). min_length_ratio > 0: candidates whose speech is under that fraction of
    the median candidate's are never picked (`drop_short_candidates`), unless all are."""

    def __init__(self, layout: Layout, base: Scorer | None = None, parts: Sequence[tuple[float, Scorer]] = (),
                 min_length_ratio: float = 0.0):
        parts = [(float(w), s) for w, s in parts if w > 0]
        if sum(w for w, _ in parts) > 1 + 1e-9:
            raise ValueError(f"the parts' weights must sum to at most 1 (got {[w for w, _ in parts]})")
        if base is None and base_share(parts) > 1e-9:
            raise ValueError("a reranker without a base scorer needs parts whose weights sum to 1")
        self.layout, self.base, self.parts, self.min_length_ratio = layout, base, parts, min_length_ratio

    def candidates(self, text: torch.Tensor, sampled: torch.Tensor, *, ar_latent=None, cond_mels=None,
                   gpt_text=None) -> Candidates:
        return Candidates(text, sampled, self.layout.fixed(sampled), self.layout, ar_latent, cond_mels, gpt_text)

    def scores(self, candidates: Candidates) -> torch.Tensor:
        """Every candidate's blended score, (n,); the short-candidate rule is not applied here."""
        parts = [(w, s.score(candidates)) for w, s in self.parts]
        parts = [(w, p) for w, p in parts if p is not None]  # an abstaining scorer leaves the blend
        if parts and base_share(parts) <= 1e-9:  # the base keeps nothing: skip its pass
            return blend_scores(torch.zeros(len(candidates), device=candidates.fixed.device), parts)
        if self.base is None:  # every part that would have covered the base abstained
            raise ValueError("no scorer judged these candidates")
        scores = self.base.score(candidates)
        return blend_scores(scores, parts) if parts else scores

    def ranking(self, candidates: Candidates) -> torch.Tensor:
        """The scores `pick` ranks by: `scores` with the too-short candidates at -inf, (n,)."""
        scores = self.scores(candidates)
        if self.min_length_ratio > 0:
            scores = drop_short_candidates(candidates.fixed, scores, self.min_length_ratio, self.layout.calm_code)
        return scores

    def pick(self, candidates: Candidates, k: int = 1, min_k: int | None = None) -> torch.Tensor:
        """The k best fixed candidates, best first: (k', length). Those the ranking rules out (-inf) come last and
        only to make up `min_k` (default k: always k); k is capped at the number of candidates."""
        return candidates.fixed[self.pick_indices(candidates, k, min_k)]

    def pick_indices(self, candidates: Candidates, k: int = 1, min_k: int | None = None) -> torch.Tensor:
        """Which candidates `pick` returns, in its order: (k',) indices into `candidates`."""
        ranking = self.ranking(candidates)
        top = ranking.topk(min(k, len(ranking)))
        keep = max(k if min_k is None else min_k, int(torch.isfinite(top.values).sum()))
        return top.indices[:keep]
