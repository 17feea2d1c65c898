"""Optimisation: AdamW without weight decay on biases and norm gains, the learning-rate schedule (linear warmup,
then constant / cosine / linear / multistep), and the exponential moving average of the weights.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn

from hare.train.config import OptimSettings


class EMA:
    """Exponential moving average of a model's parameters (buffers copied), in float32."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        params = dict(model.named_parameters())
        for k, v in model.state_dict().items():
            if k in params and v.is_floating_point():
                self.shadow[k].mul_(d).add_(v.float(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, model: nn.Module) -> None:
        own = model.state_dict()
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in self.shadow.items()})

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: Mapping) -> None:
        self.decay, self.updates = state["decay"], state["updates"]
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)


def lr_lambda(o: OptimSettings, total_steps: int):
    def factor(step: int) -> float:
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        if o.schedule == "multistep":
            return o.gamma ** sum(step >= m for m in o.milestones)
        span = max(1, total_steps - o.warmup_steps)
        progress = min(1.0, (step - o.warmup_steps) / span)
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if o.schedule == "cosine" else 1 - progress
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * shape

    return factor


def make_optimizer(model: nn.Module, o: OptimSettings) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=o.lr, betas=tuple(o.betas), eps=o.eps)
