"""Hare: the Tortoise TTS architecture, done right and fast."""

__version__ = "0.1.0.dev0"

from hare.errors import (  # noqa: E402
    AudioError,
    CheckpointError,
    HareError,
    ModelNotFoundError,
    SettingsError,
    TextError,
    VoiceError,
)

__all__ = [
    "__version__",
    "AudioError",
    "CheckpointError",
    "HareError",
    "ModelNotFoundError",
    "SettingsError",
    "TextError",
    "VoiceError",
]


def load_model(name_or_dir="hare-mini", **kwargs):
    """Load a TextToSpeech: a registered model name or a folder of model files (see hare.loading.load_model)."""
    from hare.loading import load_model as _load

    return _load(name_or_dir, **kwargs)


__all__.append("load_model")

# the function, bound over the submodule of the same name (hare.detect imports torch only when called)
from hare.detect import detect  # noqa: E402

__all__.append("detect")
