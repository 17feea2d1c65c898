"""The UniVNet vocoder objective: multi-resolution STFT loss + least-squares GAN with period and resolution
discriminators, two phases per step (generator, then discriminator); weight norm folded back on export.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from hare.models.configs import VocoderConfig
from hare.train.config import dataclass_from_dict
from hare.train.data import random_crop
from hare.train.objectives.base import Objective, Phase


def discriminator_config(value):
    """`options.discriminator` of the GAN objectives as a DiscriminatorConfig: the default for None, a mapping's
    fields checked."""
    from hare.train.discriminators import DiscriminatorConfig

    if value is None:
        return DiscriminatorConfig()
    if isinstance(value, Mapping):
        return dataclass_from_dict(DiscriminatorConfig, value, "discriminator")
    return value


@dataclass(frozen=True)
class VocoderOptions:
    segment_frames: int = 64  # mel frames per training segment (64 x 256 = 16384 samples, UniVNet's)
    stft_weight: float = 2.5
    gan_weight: float = 1.0
    gan_start_step: int = 0  # train on the STFT loss alone before this step
    weight_norm: bool = True  # train the generator with weight norm (folded back on export)
    discriminator: Any = None  # DiscriminatorConfig fields
    min_seconds: float = 0.5

    def __post_init__(self):
        object.__setattr__(self, "discriminator", discriminator_config(self.discriminator))


class VocoderObjective(Objective):
    name, kind = "vocoder", "vocoder"
    config_class, options_class = VocoderConfig, VocoderOptions
    features = ("wav24",)
    phases = (Phase("generator", ("generator",), ("discriminator",)), Phase("discriminator", ("discriminator",)))

    def build_models(self):
        from hare import checkpoints
        from hare.train.discriminators import Discriminator

        return {"generator": checkpoints.build(self.kind, self.config),
                "discriminator": Discriminator(self.options.discriminator)}

    def prepare_for_training(self, models):
        if self.options.weight_norm:
            models["generator"].apply_weight_norm()

    def export(self, models):
        """The generator with weight norm folded in (a fresh module; the training one is untouched)."""
        from hare import checkpoints

        gen = models["generator"]
        folded = checkpoints.build(self.kind, self.config).to(next(gen.parameters()).device)
        source = dict(gen.named_modules())
        with torch.no_grad():
            for name, module in folded.named_modules():
                for pname, p in module.named_parameters(recurse=False):
                    p.copy_(getattr(source[name], pname))  # a parametrised module computes its weight here
                for bname, b in module.named_buffers(recurse=False):
                    b.copy_(getattr(source[name], bname))
        return folded.eval(), self.kind, self.config

    def limits(self):
        return {**super().limits(), "min_seconds": self.options.min_seconds}

    def example(self, corpus, index, rng):
        wav = corpus.features(index, ("wav24",))["wav24"].float() / 32767.0
        return {"wav": random_crop(wav, self.options.segment_frames * self.config.hop_length, rng)}

    def collate(self, examples):
        return {"wav": torch.stack([e["wav"] for e in examples])}

    def loss(self, phase, models, batch, step, scratch):
        from hare import audio
        from hare.train.discriminators import discriminator_loss, generator_adversarial_loss, stft_loss

        real = batch["wav"]  # (batch, samples)
        disc = models["discriminator"]
        resolutions = self.options.discriminator.resolutions
        if phase == "generator":
            gen = models["generator"]
            frames = real.shape[-1] // self.config.hop_length
            with torch.autocast(real.device.type, enabled=False):
                mel = audio.vocoder_mel(real.float())[..., :frames]  # (batch, 100, frames)
            noise = torch.randn(real.shape[0], self.config.noise_dim, frames, device=real.device, dtype=mel.dtype)
            fake = gen(mel, noise)[:, 0]  # (batch, samples)
            sc, mag = stft_loss(fake, real, resolutions)
            losses = {"stft_sc": sc.detach(), "stft_mag": mag.detach()}
            total = self.options.stft_weight * (sc + mag)
            if step >= self.options.gan_start_step:
                adv = generator_adversarial_loss(disc(fake[:, None]))
                total = total + self.options.gan_weight * adv
                losses["adv"] = adv.detach()
            scratch["fake"] = fake.detach()
            losses["loss"] = total
            return losses
        if phase == "discriminator":
            fake = scratch.get("fake")
            if fake is None or step < self.options.gan_start_step:
                # keep every discriminator parameter in the graph (DDP) while contributing nothing
                zero = sum(p.sum() for p in disc.parameters()) * 0.0
                return {"loss": zero, "disc": zero.detach()}
            d = discriminator_loss(disc(real[:, None]), disc(fake[:, None]))
            return {"loss": d, "disc": d.detach()}
        raise ValueError(f"unknown vocoder phase {phase!r}")

    def eval_loss(self, models, batch):
        return self.loss("generator", models, batch, step=self.options.gan_start_step, scratch={})
