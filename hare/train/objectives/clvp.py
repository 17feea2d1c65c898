"""The CLVP objective: a symmetric contrastive loss over the batch (text <-> speech codes), with optional hard
negatives (damaged copies of each example's codes) and a CTC letter head on the speech encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hare.models.configs import CLVPConfig
from hare.text import CTC_ALPHABET
from hare.train import TrainingError
from hare.train.data import AR_RATE, CODE_SAMPLES, pad_stack
from hare.train.objectives.base import Objective, as_long
from hare.train.objectives.candidates import (CandidateLayout, as_candidate, check_letter_classes, damage_codes,
                                              text_letters)


@dataclass(frozen=True)
class CLVPOptions(CandidateLayout):
    # Hard negatives: each example also yields a damaged copy of its own codes (a span dropped, repeated, or
    # replaced by a span of another utterance: a GPT's usual failures), which its text must score below its
    # true codes. The text-to-speech loss then ranks every text against the batch's true and damaged codes,
    # teaching the fine-grained matching a reranker needs (candidates for one text all sound alike).
    # 0 = off; otherwise the probability that an example carries a damaged copy.
    hard_negatives: float = 0.0
    damage_span: tuple[float, float] = (0.15, 0.4)  # fraction of the codes a damage touches
    # Weight of the CTC loss of the letter head (needs the model's `ctc_classes`): the speech encoder also
    # learns to read the text's letters off the true codes (`hare.text.ctc_targets`). 0 = off.
    ctc_weight: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if self.ctc_weight < 0:
            raise ValueError(f"ctc_weight must be >= 0 (got {self.ctc_weight})")
        if not 0 <= self.hard_negatives <= 1:
            raise ValueError(f"hard_negatives must be in [0, 1] (got {self.hard_negatives})")
        lo, hi = self.damage_span
        if not 0 < lo <= hi < 1:
            raise ValueError(f"damage_span must be 0 < low <= high < 1 (got {self.damage_span})")


class CLVPObjective(Objective):
    name, kind = "clvp", "clvp2"
    config_class, options_class = CLVPConfig, CLVPOptions
    features = ("codes",)

    def limits(self):
        c = self.config
        if self.options.ctc_weight > 0 and not c.ctc_classes:
            raise TrainingError("options.ctc_weight needs a CLVP with a CTC head: set model.ctc_classes "
                                f"(the letters and the blank: {len(CTC_ALPHABET) + 1})")
        if c.ctc_classes:
            check_letter_classes("ctc_classes", c.ctc_classes)
        return {**super().limits(), "min_seconds": self.options.min_seconds,
                "max_seconds": (c.speech_seq_len - 1) * CODE_SAMPLES / AR_RATE,
                "max_text_tokens": c.text_seq_len, "needs_text": True}

    def fresh_parameters(self, init_config):
        return ("ctc_head.",) if self.config.ctc_classes and not init_config.ctc_classes else ()

    @property
    def find_unused_parameters(self) -> bool:  # DDP: a letter head that no loss trains (ctc_weight 0) idles
        return bool(self.config.ctc_classes) and self.options.ctc_weight == 0

    def example(self, corpus, index, rng):
        o = self.options
        codes = self._codes(corpus, index)
        text = corpus.utterances[index].text
        ex = {"text": torch.tensor(self.tokenizer.encode(text), dtype=torch.long),
              "codes": self._as_candidate(codes, rng)}
        if o.ctc_weight > 0:  # a text without letters teaches the contrastive loss only
            ex["letters"] = text_letters(text)
        if o.hard_negatives > 0 and rng.random() < o.hard_negatives:
            other = self._codes(corpus, rng.randrange(len(corpus))) if len(corpus) > 1 else codes
            ex["negative"] = self._as_candidate(damage_codes(codes, other, rng, o.damage_span), rng)
        return ex

    def _codes(self, corpus, index):
        return corpus.features(index, ("codes",))["codes"].long()

    def _as_candidate(self, codes, rng):
        return as_candidate(codes, self.options, self.config.speech_seq_len, rng)

    def collate(self, examples):
        texts, codes = [e["text"] for e in examples], [e["codes"] for e in examples]
        negatives = [e["negative"] for e in examples if "negative" in e]
        text = pad_stack(texts, 0)
        speech = pad_stack(codes + negatives, 0)
        lengths = as_long([len(s) for s in codes + negatives])
        batch = {"text": text, "codes": speech[: len(codes)],
                 "text_mask": torch.arange(text.shape[1])[None] < as_long([len(t) for t in texts])[:, None],
                 "speech_mask": torch.arange(speech.shape[1])[None] < lengths[: len(codes), None]}
        if "letters" in examples[0]:
            batch["letters"] = pad_stack([e["letters"] for e in examples], 0)
            batch["letter_lengths"] = as_long([len(e["letters"]) for e in examples])
            batch["speech_lengths"] = lengths[: len(codes)]
        if negatives:  # the damaged copies and, for each, the row of the text it belongs to
            batch["negatives"] = speech[len(codes):]
            batch["negative_mask"] = torch.arange(speech.shape[1])[None] < lengths[len(codes):, None]
            batch["negative_of"] = as_long([i for i, e in enumerate(examples) if "negative" in e])
        return batch

    def loss(self, phase, models, batch, step, scratch):
        model = models["model"]
        scale = model.temperature.exp().float()
        text_lat = model.text_latents(batch["text"], batch["text_mask"])
        states = model.speech_states(batch["codes"], batch["speech_mask"])
        speech_lat = model.speech_latents(batch["codes"], batch["speech_mask"], states=states)
        logits = (text_lat @ speech_lat.t()).float() * scale
        labels = torch.arange(logits.shape[0], device=logits.device)
        speech_to_text = F.cross_entropy(logits.t(), labels)
        out = {"accuracy": (logits.argmax(dim=1) == labels).float().mean().detach()}
        if "negatives" in batch:
            neg_lat = model.speech_latents(batch["negatives"], batch["negative_mask"])
            neg_logits = (text_lat @ neg_lat.t()).float() * scale  # every text against every damaged copy
            logits = torch.cat([logits, neg_logits], dim=1)
            rows = batch["negative_of"].to(logits.device)
            # how often a text scores its own true codes above its own damaged copy
            own_neg = neg_logits[rows, torch.arange(len(rows), device=logits.device)]
            out["hard_accuracy"] = (logits[rows, rows] > own_neg).float().mean().detach()
        out["loss"] = (F.cross_entropy(logits, labels) + speech_to_text) / 2
        if self.options.ctc_weight > 0:
            n_letters = batch["letter_lengths"]
            nll = model.ctc_loss(states, batch["speech_lengths"], batch["letters"], n_letters)
            out["ctc"] = (nll / n_letters.clamp(min=1)).mean()  # per letter, as F.ctc_loss's "mean"
            out["contrastive"] = out["loss"].detach()
            out["loss"] = out["loss"] + self.options.ctc_weight * out["ctc"]
        return out
