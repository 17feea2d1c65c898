"""Hare: the Tortoise TTS architecture, done right and fast."""

__version__ = "0.1.0.dev0"

from hare.errors import (  # noqa: E402
    AudioError,
    CheckpointError,
    HareError,
    ModelNotFoundError,
    TextError,
    VoiceError,
)

__all__ = [
    "__version__",
    "AudioError",
    "CheckpointError",
    "HareError",
    "ModelNotFoundError",
    "TextError",
    "VoiceError",
]
