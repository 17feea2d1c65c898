"""What every training objective is: the `Objective` base class (build the networks, turn an utterance into an
example, collate, compute the losses, export) and its optimisation `Phase`s, with the small helpers several
objectives share.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from hare.train.config import dataclass_from_dict


@dataclass(frozen=True)
class Phase:
    """One optimisation phase of a step: the models it trains and the ones it only reads (frozen)."""

    name: str
    trains: tuple[str, ...]
    reads: tuple[str, ...] = ()


def silence_ar_mel(bands: int = 80) -> torch.Tensor:
    """The normalised AR mel of silence, per band: (bands, 1)."""
    from hare import audio

    return (math.log(1e-5) / audio.mel_norms()).reshape(bands, 1)


def as_long(x) -> torch.Tensor:
    return torch.as_tensor(x).long()


class Objective:
    """Base class: one network (`"model"`), one phase, no EMA by default."""

    name = ""
    kind = ""  # hare.checkpoints kind of the exported network
    config_class: type = object
    options_class: type = object
    features: tuple[str, ...] = ()
    default_ema: float | None = None
    find_unused_parameters = False
    phases: tuple[Phase, ...] = (Phase("main", ("model",)),)

    def __init__(self, config=None, options=None):
        self.config = config if config is not None else self.config_class()
        self.options = options if options is not None else self.options_class()
        self._tokenizer = None
        self._tokenizer_name = None  # `text_tokenizer_name()`, kept for the data-loader workers

    @classmethod
    def from_dicts(cls, model: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None):
        return cls(dataclass_from_dict(cls.config_class, model, "model"),
                   dataclass_from_dict(cls.options_class, options, "options"))

    # -- building --------------------------------------------------------------------------------------
    def build_models(self) -> dict[str, nn.Module]:
        from hare import checkpoints

        return {"model": checkpoints.build(self.kind, self.config)}

    def export(self, models: Mapping[str, nn.Module]) -> tuple[nn.Module, str, Any]:
        """(module, checkpoint kind, config) to write with `hare.checkpoints.save`."""
        return models["model"], self.kind, self.config

    def main_model(self) -> str:
        return self.phases[0].trains[0]

    def fresh_parameters(self, init_config) -> tuple[str, ...]:
        """Key prefixes of parameters that `train.init` weights (of config `init_config`) may lack because this
        run's model settings add them (they start from their initial values); () = the weights must match."""
        return ()

    def load_init(self, model: nn.Module, source: nn.Module, what: str) -> None:
        """Load `train.init` weights (`source`, a built model) into the run's main model (built with the run's
        config): strictly, bar `fresh_parameters`."""
        from hare.checkpoints import load_strict

        load_strict(model, source.state_dict(), what=what, fresh=self.fresh_parameters(source.config))

    def text_tokenizer_name(self) -> str:
        """The text front end the examples' text tokens are for (`hare.text.tokenizer_for`): the official BPE
        tokenizer, unless the objective trains or reads a GPT that names another."""
        return "bpe"

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from hare.text import tokenizer_for

            if self._tokenizer_name is None:
                self._tokenizer_name = self.text_tokenizer_name()
            # a phoneme front end keeps what it has read on disk: a corpus comes back every epoch
            self._tokenizer = tokenizer_for(self._tokenizer_name, disk_cache=True)
        return self._tokenizer

    def __getstate__(self):  # the tokenizer is rebuilt in each data-loader worker (its front end's name is kept)
        state = dict(self.__dict__)
        state["_tokenizer"] = None
        return state

    # -- data ------------------------------------------------------------------------------------------
    def limits(self) -> dict[str, Any]:
        """Validation limits: min_seconds, max_seconds, max_text_tokens (None = no limit)."""
        return {"min_seconds": 0.5, "max_seconds": None, "max_text_tokens": None, "needs_text": False}

    def example(self, corpus, index: int, rng: random.Random) -> dict:
        raise NotImplementedError

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # -- loss ------------------------------------------------------------------------------------------
    def loss(self, phase: str, models: Mapping[str, nn.Module], batch: Mapping[str, torch.Tensor], step: int,
             scratch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def eval_loss(self, models, batch) -> dict[str, torch.Tensor]:
        return self.loss(self.phases[0].name, models, batch, step=0, scratch={})

    def prepare_for_training(self, models: Mapping[str, nn.Module]) -> None:
        """Hook run after weights are loaded and before the optimisers are made."""
