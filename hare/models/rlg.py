"""Random latent generator: maps Gaussian noise to a conditioning latent (the "random" voice)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hare.models.configs import RLGConfig


class EqualizedLinear(nn.Module):
    """Linear layer with equalized learning rate (StyleGAN): weight scaled by lr_mul/sqrt(in) at run time,
    bias by lr_mul, followed by leaky ReLU(0.2) * sqrt(2)."""

    def __init__(self, dim: int, lr_mul: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim, dim) / lr_mul)
        self.bias = nn.Parameter(torch.zeros(dim))
        self.weight_scale = lr_mul / math.sqrt(dim)
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, dim)
        y = F.linear(x, self.weight * self.weight_scale, self.bias * self.lr_mul)
        return F.leaky_relu(y, 0.2) * math.sqrt(2.0)


class RandomLatentGenerator(nn.Module):
    def __init__(self, config: RLGConfig):
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(EqualizedLinear(config.dim, config.lr_mul) for _ in range(config.layers))
        self.out = nn.Linear(config.dim, config.dim)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        # noise: (batch, dim) -> (batch, dim)
        x = noise
        for block in self.blocks:
            x = block(x)
        return self.out(x)

    def generate(self, batch: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random latent per row, from fresh N(0, I) noise (drawn on the generator's device, then moved)."""
        gen_device = generator.device if generator is not None else self.out.weight.device
        noise = torch.randn(batch, self.config.dim, generator=generator, device=gen_device)
        return self(noise.to(self.out.weight.device, self.out.weight.dtype))
