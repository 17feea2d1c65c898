"""Speller checkpoints -> hare.models.speller.Speller.

The speller is a Hare network (Tortoise has none), so only Hare's own keys exist: they pass through unchanged,
and `hare.checkpoints` still checks every key and shape strictly.
"""

from __future__ import annotations

from hare.models.configs import SpellerConfig
from hare.models.speller import Speller

CONFIG_CLASS = SpellerConfig


def config_from_reference(kwargs: dict | None) -> SpellerConfig:
    """Hare's own field names (`SpellerConfig`); missing ones take its defaults."""
    return SpellerConfig(**dict(kwargs or {}))


def build(config: SpellerConfig) -> Speller:
    return Speller(config)


def map_state_dict(sd: dict, config: SpellerConfig) -> dict:
    return dict(sd)
