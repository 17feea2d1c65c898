"""The speller objective (a Hare network, the reranker's letter recogniser): CTC over the letters of each
utterance's text given its codes, laid out as the reranker receives them, with optional random code noise.
"""

from __future__ import annotations

from dataclasses import dataclass

from hare.models.configs import SpellerConfig
from hare.train.data import pad_stack
from hare.train.objectives.base import Objective, as_long
from hare.train.objectives.candidates import CandidateLayout, as_candidate, check_letter_classes, text_letters


@dataclass(frozen=True)
class SpellerOptions(CandidateLayout):
    # Probability that each code is replaced by a random one (GPT samples are noisier than the VQ-VAE's codes
    # of real speech). 0 = off.
    code_noise: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.code_noise < 1:
            raise ValueError(f"code_noise must be in [0, 1) (got {self.code_noise})")


class SpellerObjective(Objective):
    """CTC over the letters of each utterance's text (`hare.text.ctc_targets`) given its VQ-VAE codes."""

    name, kind = "speller", "speller"
    config_class, options_class = SpellerConfig, SpellerOptions
    features = ("codes",)

    def limits(self):
        check_letter_classes("classes", self.config.classes)
        return {**super().limits(), "min_seconds": self.options.min_seconds, "needs_text": True}

    def example(self, corpus, index, rng):
        o = self.options
        codes = corpus.features(index, ("codes",))["codes"].long().flatten()
        if o.code_noise > 0:
            codes = codes.clone()
            for i in range(len(codes)):
                if rng.random() < o.code_noise:
                    codes[i] = rng.randrange(self.config.speech_vocab)
        # a text without letters teaches silence (all blanks)
        return {"codes": as_candidate(codes, o, None, rng), "letters": text_letters(corpus.utterances[index].text)}

    def collate(self, examples):
        pad = self.options.calm_code if self.options.calm_code is not None else 0
        return {"codes": pad_stack([e["codes"] for e in examples], pad),
                "lengths": as_long([len(e["codes"]) for e in examples]),
                "letters": pad_stack([e["letters"] for e in examples], 0),
                "letter_lengths": as_long([len(e["letters"]) for e in examples])}

    def loss(self, phase, models, batch, step, scratch):
        # per letter of the batch, as the training loss of `Speller.forward`
        return {"loss": models["model"](batch["codes"], batch["lengths"], batch["letters"], batch["letter_lengths"])}
