"""The listener objective (a Hare network, the reranker's mel letter recogniser): CTC over the letters of each
utterance's text given its HiFi-GAN log mel, with light augmentation, and optionally, in place of the recording's
mel, the mel the diffusion decoder's prior makes from the utterance's true codes (`prior_dir`, written by
`python -m hare.train.prior_mels`): the smooth mels the listener reads at inference.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from hare.audio import TACOTRON_MEL_MIN as FLOOR  # ln(1e-5): a HiFi-GAN log mel's silence
from hare.models.configs import ListenerConfig
from hare.train.data import cache_key, pad_stack
from hare.train.objectives.base import Objective, as_long
from hare.train.objectives.candidates import check_letter_classes, text_letters


@dataclass(frozen=True)
class ListenerOptions:
    min_seconds: float = 0.5
    # a folder of decoder-prior mels (`hare.train.prior_mels`), one `<cache key>.pt` per utterance; each example
    # reads its prior mel instead of the recording's with probability `prior_fraction` (where one exists)
    prior_dir: str | None = None
    prior_fraction: float = 0.5
    # SpecAugment-style masks (Park et al. 2019), each up to this many frames / bands, and how many of each
    time_masks: int = 2
    time_mask_frames: int = 12
    band_masks: int = 2
    band_mask_bands: int = 8
    # smoothing along time by a random 1-to-`blur_frames`-frame box filter with this probability (the prior's
    # mels are smoother than a recording's), and a random level shift of up to this many nats
    blur_probability: float = 0.3
    blur_frames: int = 5
    level_shift: float = 0.5

    def __post_init__(self):
        if not 0 <= self.prior_fraction <= 1:
            raise ValueError(f"prior_fraction must be in [0, 1] (got {self.prior_fraction})")
        if not 0 <= self.blur_probability <= 1:
            raise ValueError(f"blur_probability must be in [0, 1] (got {self.blur_probability})")
        if min(self.time_masks, self.time_mask_frames, self.band_masks, self.band_mask_bands, self.blur_frames) < 0:
            raise ValueError("mask counts, mask sizes and blur_frames must be >= 0")


def augment(mel: torch.Tensor, o: ListenerOptions, rng: random.Random) -> torch.Tensor:
    """(bands, frames) log mel -> a copy with `o`'s masks, blur and level shift drawn from `rng`."""
    mel = mel.clone()
    bands, frames = mel.shape
    if o.blur_frames > 1 and rng.random() < o.blur_probability:
        width = rng.randint(2, o.blur_frames)
        kernel = torch.full((bands, 1, width), 1.0 / width)
        padded = torch.nn.functional.pad(mel[None], (width // 2, (width - 1) // 2), mode="replicate")
        mel = torch.nn.functional.conv1d(padded, kernel, groups=bands)[0]
    if o.level_shift > 0:
        mel = mel + rng.uniform(-o.level_shift, o.level_shift)
    for _ in range(o.time_masks):
        w = rng.randint(0, min(o.time_mask_frames, frames // 8))
        if w:
            a = rng.randrange(frames - w + 1)
            mel[:, a: a + w] = FLOOR
    for _ in range(o.band_masks):
        w = rng.randint(0, min(o.band_mask_bands, bands))
        if w:
            a = rng.randrange(bands - w + 1)
            mel[a: a + w] = mel.mean()
    return mel


class ListenerObjective(Objective):
    """CTC over the letters of each utterance's text (`hare.text.ctc_targets`) given its HiFi-GAN log mel."""

    name, kind = "listener", "listener"
    config_class, options_class = ListenerConfig, ListenerOptions
    features = ("hifi_mel",)

    def limits(self):
        check_letter_classes("classes", self.config.classes)
        return {**super().limits(), "min_seconds": self.options.min_seconds, "needs_text": True}

    def example(self, corpus, index, rng):
        o = self.options
        mel = None
        if o.prior_dir is not None and rng.random() < o.prior_fraction:
            file = Path(o.prior_dir) / f"{cache_key(corpus.utterances[index].path)}.pt"
            if file.is_file():
                mel = torch.load(file, weights_only=True).float()
        if mel is None:
            mel = corpus.features(index, ("hifi_mel",))["hifi_mel"].float()
        # a text without letters teaches silence (all blanks)
        return {"mel": augment(mel, o, rng), "letters": text_letters(corpus.utterances[index].text)}

    def collate(self, examples):
        return {"mel": pad_stack([e["mel"] for e in examples], FLOOR),
                "frames": as_long([e["mel"].shape[-1] for e in examples]),
                "letters": pad_stack([e["letters"] for e in examples], 0),
                "letter_lengths": as_long([len(e["letters"]) for e in examples])}

    def loss(self, phase, models, batch, step, scratch):
        # per letter of the batch, as the training loss of `Listener.forward`
        return {"loss": models["model"](batch["mel"], batch["frames"], batch["letters"], batch["letter_lengths"])}
