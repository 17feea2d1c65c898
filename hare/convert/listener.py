"""Listener checkpoints -> hare.models.listener.Listener.

The listener is a Hare network (Tortoise has none), so only Hare's own keys exist: they pass through unchanged,
and `hare.checkpoints` still checks every key and shape strictly.
"""

from __future__ import annotations

from hare.models.configs import ListenerConfig
from hare.models.listener import Listener

CONFIG_CLASS = ListenerConfig


def config_from_reference(kwargs: dict | None) -> ListenerConfig:
    """Hare's own field names (`ListenerConfig`); missing ones take its defaults."""
    return ListenerConfig(**dict(kwargs or {}))


def build(config: ListenerConfig) -> Listener:
    return Listener(config)


def map_state_dict(sd: dict, config: ListenerConfig) -> dict:
    return dict(sd)
