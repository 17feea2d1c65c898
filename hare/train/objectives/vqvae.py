"""The VQ-VAE objective: mel reconstruction (MSE) + commitment; reports codebook perplexity and the codes used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hare.models.configs import VQVAEConfig
from hare.train.data import random_crop
from hare.train.objectives.base import Objective, silence_ar_mel


@dataclass(frozen=True)
class VQVAEOptions:
    crop_frames: int = 256  # mel frames per example (a multiple of the compression)
    min_seconds: float = 1.0


class VQVAEObjective(Objective):
    name, kind = "vqvae", "vqvae"
    config_class, options_class = VQVAEConfig, VQVAEOptions
    features = ("ar_mel",)

    def limits(self):
        return {**super().limits(), "min_seconds": self.options.min_seconds}

    def example(self, corpus, index, rng):
        mel = corpus.features(index, ("ar_mel",))["ar_mel"].float()
        crop = self.options.crop_frames
        if mel.shape[-1] < crop:
            mel = torch.cat([mel, silence_ar_mel(mel.shape[0]).expand(-1, crop - mel.shape[-1])], dim=1)
        return {"mel": random_crop(mel, crop, rng)}

    def collate(self, examples):
        return {"mel": torch.stack([e["mel"] for e in examples])}

    def loss(self, phase, models, batch, step, scratch):
        model = models["model"]
        mel = batch["mel"]  # (batch, 80, frames)
        recon, commit, codes = model(mel)
        target = mel[..., : recon.shape[-1]]
        mse = F.mse_loss(recon.float(), target.float())
        usage = type(model).codebook_usage(codes.detach(), self.config.num_codes)
        return {"loss": mse + self.config.commitment * commit.float(), "mse": mse.detach(),
                "commitment": commit.detach().float(),
                "perplexity": torch.tensor(usage["perplexity"], device=mel.device),
                "codes_used": torch.tensor(usage["used_fraction"], device=mel.device)}
