"""rlg_auto.pth / rlg_diffuser.pth (RandomLatentConverter) -> hare.models.rlg.RandomLatentGenerator."""

from __future__ import annotations

from hare.models.configs import RLGConfig
from hare.models.rlg import RandomLatentGenerator

CONFIG_CLASS = RLGConfig


def config_from_reference(kwargs: dict) -> RLGConfig:
    if set(kwargs) - {"channels"}:
        raise TypeError(f"unknown RandomLatentConverter arguments: {sorted(set(kwargs) - {'channels'})}")
    if "channels" not in kwargs:
        raise TypeError("RandomLatentConverter needs `channels`")
    return RLGConfig(dim=int(kwargs["channels"]))


def build(config: RLGConfig) -> RandomLatentGenerator:
    return RandomLatentGenerator(config)


def map_state_dict(sd: dict, config: RLGConfig) -> dict:
    out = {}
    last = config.layers  # the plain Linear after the equalized layers
    for key, value in sd.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "layers" and parts[1].isdigit():
            i = int(parts[1])
            if i < last:
                out[f"blocks.{i}.{parts[2]}"] = value
                continue
            if i == last:
                out[f"out.{parts[2]}"] = value
                continue
        out[key] = value
    return out
