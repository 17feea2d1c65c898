"""Candidates as the reranker sees them, for the objectives whose networks score them (CLVP, the speller): the
`CandidateLayout` options and `as_candidate` (`hare.rerank.lay_out`), damaged copies of a code sequence (hard
negatives), and the letter targets and class count of a letter head.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from hare.errors import TextError
from hare.rerank import lay_out
from hare.text import CTC_ALPHABET, ctc_targets
from hare.train import TrainingError
from hare.train.objectives.base import as_long


@dataclass(frozen=True)
class CandidateLayout:
    """Options of the objectives whose networks score candidates (`as_candidate`)."""

    min_seconds: float = 0.5
    # Train on codes as the pipeline hands them to the reranker (`fix_candidates`): a run of the VQ-VAE's silence
    # code (`calm_code`, 1 to `max_calm_pad` of them, as shorter candidates are padded to the longest) and the
    # `tail_codes` after the speech, all of it seen by the encoder (no mask). None: plain masked codes.
    calm_code: int | None = None
    tail_codes: tuple[int, ...] = ()
    max_calm_pad: int = 24

    def __post_init__(self):
        if self.calm_code is not None and self.max_calm_pad < 1:
            raise ValueError(f"max_calm_pad must be >= 1 (got {self.max_calm_pad})")


def text_letters(text: str) -> torch.Tensor:
    """The CTC letter classes of an utterance's text (`hare.text.ctc_targets`); empty if it has no letters."""
    try:
        return as_long(ctc_targets(text))
    except TextError:
        return as_long([])


def check_letter_classes(field: str, classes: int) -> None:
    """A letter head's class count must be the letters of `hare.text.CTC_ALPHABET` and CTC's blank."""
    if classes != len(CTC_ALPHABET) + 1:
        raise TrainingError(f"model.{field} must be {len(CTC_ALPHABET) + 1} (hare.text.CTC_ALPHABET and the blank), "
                            f"got {classes}")


def as_candidate(codes: torch.Tensor, options: CandidateLayout, limit: int | None,
                 rng: random.Random) -> torch.Tensor:
    """Codes as the reranker sees them (`hare.rerank.lay_out`, as `fix_candidates` makes them): when `options.calm_code` is set, a run of 1 to
    `options.max_calm_pad` silence codes and `options.tail_codes` appended; at most `limit` codes (None: any)."""
    o, n = options, limit if limit is not None else len(codes) + options.max_calm_pad + len(options.tail_codes)
    if o.calm_code is not None:  # the speech keeps its length; the silence run shrinks to fit
        tail = len(o.tail_codes)
        pad = max(1, min(rng.randint(1, o.max_calm_pad), n - len(codes) - tail))
        codes = lay_out(codes[: n - pad - tail], o.calm_code, pad, tuple(o.tail_codes))
    return codes[:n]


def damage_codes(codes: torch.Tensor, other: torch.Tensor, rng: random.Random,
                 span: tuple[float, float] = (0.15, 0.4)) -> torch.Tensor:
    """A damaged copy of a code sequence, as an autoregressive model fails: a span (a `span` fraction of the
    length) dropped, said twice, or replaced by a span of `other` (another utterance: babble)."""
    n = len(codes)
    width = max(1, min(n - 1, round(n * rng.uniform(*span))))
    start = rng.randrange(0, n - width + 1)
    kind = rng.choice(("drop", "repeat", "replace")) if n > 1 else "replace"
    head, mid, tail = codes[:start], codes[start: start + width], codes[start + width:]
    if kind == "drop":
        return torch.cat([head, tail])
    if kind == "repeat":
        return torch.cat([head, mid, mid, tail])
    o = rng.randrange(0, max(1, len(other) - width + 1))
    babble = other[o: o + width]
    if torch.equal(babble, mid):  # the same codes (another copy of this utterance): babble in random codes
        babble = torch.randint(0, int(codes.max()) + 1, (width,), generator=torch.Generator().manual_seed(
            rng.randrange(2**31)), dtype=codes.dtype)
    return torch.cat([head, babble, tail])
