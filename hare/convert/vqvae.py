"""The VQ-VAE has no official Tortoise file: this module only serves Hare's own checkpoints."""

from __future__ import annotations

from hare.models.configs import VQVAEConfig
from hare.models.vqvae import VQVAE

CONFIG_CLASS = VQVAEConfig

# DLAS DiscreteVAE argument names -> Hare's
_DLAS_NAMES = {"num_tokens": "num_codes", "hidden_dim": "hidden", "codebook_dim": "codebook_dim",
               "num_resnet_blocks": "resblocks", "num_layers": "layers", "channels": "n_mels"}


def config_from_reference(kwargs: dict) -> VQVAEConfig:
    unknown = set(kwargs) - set(_DLAS_NAMES) - {f.name for f in VQVAEConfig.__dataclass_fields__.values()}
    if unknown:
        raise TypeError(f"unknown VQ-VAE arguments: {sorted(unknown)}")
    return VQVAEConfig(**{_DLAS_NAMES.get(k, k): v for k, v in kwargs.items()})


def build(config: VQVAEConfig) -> VQVAE:
    return VQVAE(config)


def map_state_dict(sd: dict, config: VQVAEConfig) -> dict:
    return dict(sd)
