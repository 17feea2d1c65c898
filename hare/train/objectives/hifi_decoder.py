"""The HiFi-GAN latent decoder objective (Tortoise v3's fast decoder) on a frozen GPT's latents: multi-resolution
STFT + least-squares GAN + feature matching, with the vocoder objective's discriminators.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from hare.models.configs import HifiDecoderConfig
from hare.train import TrainingError
from hare.train.data import AR_RATE, CODE_SAMPLES
from hare.train.objectives.base import Objective, Phase, as_long
from hare.train.objectives.gpt import ar_conditioning_clips, frozen_gpt_latents, load_frozen_gpt
from hare.train.objectives.vocoder import VocoderObjective, discriminator_config


@dataclass(frozen=True)
class HifiDecoderOptions:
    gpt: str = ""  # the frozen GPT whose latents the decoder learns to voice (Hare safetensors), required
    segment_codes: int = 24  # codes per training window (24 x 1024 samples at 22.05 kHz ~ 1.1 s)
    gpt_cond_clips: int = 1  # the GPT's conditioning clips per example (other utterances of the speaker)
    gpt_cond_frames: int = 128
    stft_weight: float = 2.5  # multi-resolution STFT loss (the mel-like spectral loss)
    gan_weight: float = 1.0
    feature_weight: float = 2.0  # HiFi-GAN's feature matching
    gan_start_step: int = 0
    weight_norm: bool = True  # trained with weight norm, folded back on export (as the official file has it)
    discriminator: Any = None  # DiscriminatorConfig fields
    min_seconds: float = 0.5

    def __post_init__(self):
        if not self.gpt:
            raise ValueError("options.gpt must name the frozen GPT (a Hare autoregressive.safetensors)")
        if self.segment_codes < 4:
            raise ValueError(f"segment_codes must be at least 4 (got {self.segment_codes})")
        object.__setattr__(self, "discriminator", discriminator_config(self.discriminator))


class HifiDecoderObjective(Objective):
    """The HiFi-GAN latent decoder on a frozen GPT's teacher-forced latents (as the pipeline computes them)
    against the 24 kHz waveform: multi-resolution STFT + least-squares GAN + feature matching, with the
    vocoder objective's discriminators. From scratch, or from the official `hifidecoder.pth` (train.init)."""

    name, kind = "hifi_decoder", "hifi_decoder"
    config_class, options_class = HifiDecoderConfig, HifiDecoderOptions
    features = ("codes", "wav24", "ar_mel")
    phases = (Phase("generator", ("generator",), ("discriminator",)), Phase("discriminator", ("discriminator",)))

    def __init__(self, config=None, options=None):
        super().__init__(config, options)
        self._gpt = None

    def __getstate__(self):  # data-loader workers never run the GPT
        state = super().__getstate__()
        state["_gpt"] = None
        return state

    def build_models(self):
        from hare import checkpoints
        from hare.train.discriminators import Discriminator

        return {"generator": checkpoints.build(self.kind, self.config),
                "discriminator": Discriminator(self.options.discriminator)}

    def prepare_for_training(self, models):
        if self.options.weight_norm:
            from hare.models.layers import apply_weight_norm

            apply_weight_norm(models["generator"])

    def export(self, models):
        return VocoderObjective.export(self, models)  # weight norm folded into a fresh module

    def text_tokenizer_name(self) -> str:
        return self.gpt().config.text_tokenizer

    def gpt(self, device=None):
        if self._gpt is None:
            self._gpt = load_frozen_gpt(self.options.gpt, self.config.latent_dim, "model.latent_dim")
            if self.config.cond_dim != self._gpt.config.dim:
                raise TrainingError(f"model.cond_dim must be the GPT's width {self._gpt.config.dim} "
                                    f"(got {self.config.cond_dim})")
        if device is not None:
            self._gpt = self._gpt.to(device)
        return self._gpt

    def limits(self):
        c = self.gpt().config
        return {**super().limits(), "min_seconds": self.options.min_seconds, "needs_text": True,
                "max_text_tokens": c.max_text_tokens, "max_seconds": (c.max_mel_tokens - 1) * CODE_SAMPLES / AR_RATE}

    def _samples_per_code(self) -> float:
        return CODE_SAMPLES * self.config.sample_rate / AR_RATE

    def example(self, corpus, index, rng):
        o = self.options
        feats = corpus.features(index, ("codes", "wav24"))
        codes, wav = feats["codes"].long().flatten(), feats["wav24"].float() / 32767.0
        n, window = codes.shape[0], o.segment_codes
        start = rng.randint(0, n - window) if n > window else 0
        per_code = self._samples_per_code()
        s0 = round(start * per_code)
        length = self._segment_samples()
        target = wav[s0:s0 + length]
        text = self.tokenizer.encode(corpus.utterances[index].text) + [self.tokenizer.stop_token]
        clips = ar_conditioning_clips(corpus, index, rng, o.gpt_cond_clips, o.gpt_cond_frames)
        return {"wav": F.pad(target, (0, length - target.shape[0])),
                "samples": min(target.shape[0], round(min(window, n - start) * per_code)),
                "text": torch.tensor(text, dtype=torch.long), "prefix": codes[:start + window], "start": start,
                "ar_cond": clips}

    def _segment_samples(self) -> int:
        """Samples the decoder makes for one window of codes."""
        c = self.config
        frames = math.floor(math.floor(self.options.segment_codes * c.code_upsample) * c.rate_ratio)
        return frames * math.prod(c.upsample_rates)

    def collate(self, examples):
        length = examples[0]["wav"].shape[0]
        return {"wav": torch.stack([e["wav"] for e in examples]),
                "mask": torch.arange(length)[None] < as_long([e["samples"] for e in examples])[:, None],
                "text": [e["text"] for e in examples], "prefix": [e["prefix"] for e in examples],
                "start": as_long([e["start"] for e in examples]),
                "ar_cond": torch.stack([e["ar_cond"] for e in examples])}

    def loss(self, phase, models, batch, step, scratch):
        from hare.train.discriminators import (discriminator_loss, feature_matching_loss,
                                               generator_adversarial_loss, stft_loss)

        o = self.options
        real = batch["wav"] * batch["mask"]  # past an utterance's end: silence, as the decoder should give
        disc = models["discriminator"]
        resolutions = o.discriminator.resolutions
        if phase == "generator":
            latents, voice = frozen_gpt_latents(self.gpt(real.device), batch, o.segment_codes)
            fake = models["generator"](latents, voice)[:, 0, :real.shape[-1]] * batch["mask"]
            sc, mag = stft_loss(fake, real, resolutions)
            losses = {"stft_sc": sc.detach(), "stft_mag": mag.detach()}
            total = o.stft_weight * (sc + mag)
            if step >= o.gan_start_step:
                fake_scores, fake_maps = disc(fake[:, None], features=True)
                with torch.no_grad():
                    _, real_maps = disc(real[:, None], features=True)
                adv = generator_adversarial_loss(fake_scores)
                fm = feature_matching_loss(real_maps, fake_maps)
                total = total + o.gan_weight * adv + o.feature_weight * fm
                losses.update(adv=adv.detach(), feature=fm.detach())
            scratch["fake"], scratch["real"] = fake.detach(), real
            losses["loss"] = total
            return losses
        if phase == "discriminator":
            fake = scratch.get("fake")
            if fake is None or step < o.gan_start_step:
                zero = sum(p.sum() for p in disc.parameters()) * 0.0  # every parameter in the graph (DDP)
                return {"loss": zero, "disc": zero.detach()}
            d = discriminator_loss(disc(scratch["real"][:, None]), disc(fake[:, None]))
            return {"loss": d, "disc": d.detach()}
        raise ValueError(f"unknown hifi_decoder phase {phase!r}")

    def eval_loss(self, models, batch):
        return self.loss("generator", models, batch, step=self.options.gan_start_step, scratch={})
