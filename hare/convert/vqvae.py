"""VQ-VAE checkpoints -> hare.models.vqvae.VQVAE.

Tortoise shipped no VQ-VAE. Two layouts load here:
- Hare's own keys (what `hare.checkpoints.save` writes): passed through unchanged;
- DLAS `DiscreteVAE` keys (`encoder.N...`, `decoder.N...`, `codebook.embed` ...), e.g. a community copy
  of Tortoise's `dvae.pth` (unwrap a `{"model": ...}` training checkpoint first). Its constructor
  arguments go to `config_from_reference`, e.g. `{"num_tokens": 8192, "hidden_dim": 512,
  "codebook_dim": 512, "num_resnet_blocks": 3, "num_layers": 2, "channels": 80, "positional_dims": 1,
  "kernel_size": 3, "use_transposed_convs": False}`.
"""

from __future__ import annotations

import dataclasses
import re

import torch

from hare.models.configs import VQVAEConfig
from hare.models.vqvae import VQVAE

CONFIG_CLASS = VQVAEConfig

# DLAS DiscreteVAE argument names -> Hare's
_DLAS_NAMES = {"num_tokens": "num_codes", "hidden_dim": "hidden", "codebook_dim": "codebook_dim",
               "num_resnet_blocks": "resblocks", "num_layers": "layers", "channels": "n_mels"}
# DLAS arguments whose only value Hare implements (the Tortoise DVAE's)
_DLAS_FIXED = {"positional_dims": 1, "kernel_size": 3, "stride": 2, "use_transposed_convs": False,
               "activation": "relu", "encoder_norm": False, "normalization": None, "use_lr_quantizer": False}
# DLAS arguments that only affect training-time logging or the loss (Hare's loss lives in hare.train)
_DLAS_IGNORED = {"record_codes", "smooth_l1_loss", "straight_through", "lr_quantizer_args"}


def config_from_reference(kwargs: dict) -> VQVAEConfig:
    """Hare's or DLAS DiscreteVAE's argument names; missing ones take Tortoise's DVAE sizes (the defaults)."""
    hare_fields = {f.name for f in dataclasses.fields(VQVAEConfig)}
    unknown = set(kwargs) - set(_DLAS_NAMES) - set(_DLAS_FIXED) - _DLAS_IGNORED - hare_fields
    if unknown:
        raise TypeError(f"unknown VQ-VAE arguments: {sorted(unknown)}")
    for name, value in _DLAS_FIXED.items():
        if name in kwargs and kwargs[name] != value:
            raise TypeError(f"Hare's VQ-VAE implements DiscreteVAE with {name}={value!r}, got {kwargs[name]!r}")
    values = {}
    for key, value in kwargs.items():
        if key in _DLAS_FIXED or key in _DLAS_IGNORED:
            continue
        values[_DLAS_NAMES.get(key, key)] = value
    return VQVAEConfig(**values)


def build(config: VQVAEConfig) -> VQVAE:
    return VQVAE(config)


def _dlas_rules(config: VQVAEConfig) -> list[tuple[re.Pattern, str]]:
    L, R = config.layers, config.resblocks
    rules = [(rf"encoder\.{i}\.0\.(weight|bias)", rf"downsample.{i}.\1") for i in range(L)]
    for j in range(R):
        for src, dst in (("0", "conv1"), ("2", "conv2"), ("4", "proj")):
            rules.append((rf"encoder\.{L + j}\.net\.{src}\.(weight|bias)", rf"encoder_blocks.{j}.{dst}.\1"))
            rules.append((rf"decoder\.{1 + j}\.net\.{src}\.(weight|bias)", rf"decoder_blocks.{j}.{dst}.\1"))
    rules.append((rf"encoder\.{L + R}\.(weight|bias)", r"to_codebook.\1"))
    first_up = 1 + R if R else 0
    if R:
        rules.append((r"decoder\.0\.(weight|bias)", r"from_codebook.\1"))
    rules += [(rf"decoder\.{first_up + i}\.0\.conv\.(weight|bias)", rf"upsample.{i}.\1") for i in range(L)]
    rules.append((rf"decoder\.{first_up + L}\.(weight|bias)", r"out.\1"))
    rules.append((r"codebook\.cluster_size", "quantizer.cluster_size"))
    return [(re.compile(p + "$"), r) for p, r in rules]


def map_state_dict(sd: dict, config: VQVAEConfig) -> dict:
    if "codebook.embed" not in sd:
        return dict(sd)  # Hare's own layout
    out = {}
    rules = _dlas_rules(config)
    for key, value in sd.items():
        if key in ("codebook.embed", "codebook.embed_avg"):  # (dim, codes) -> (codes, dim)
            out["quantizer.embed" if key == "codebook.embed" else "quantizer.embed_sum"] = value.t().contiguous()
            continue
        for pattern, repl in rules:
            if pattern.match(key):
                key = pattern.sub(repl, key)
                break
        out[key] = value
    ref = sd["codebook.embed"]
    # Hare-only quantiser state: dead-code counters at zero, the codebook marked as already trained
    out.setdefault("quantizer.unused_steps", torch.zeros(ref.shape[1], dtype=ref.dtype, device=ref.device))
    out.setdefault("quantizer.initialized", torch.ones(1, dtype=ref.dtype, device=ref.device))  # trained codebook
    return out
