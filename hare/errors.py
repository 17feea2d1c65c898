"""Exceptions a user can cause. The CLI turns them into exit code 2, the server into HTTP 4xx."""


class HareError(Exception):
    """Base class of every error Hare raises on bad user input."""


class TextError(HareError, ValueError):
    """The text cannot be spoken (empty, nothing pronounceable after cleaning, too long)."""


class TextTooLongError(TextError):
    """One piece of text has more tokens than the model reads (the pipeline splits such a piece further)."""


class AudioError(HareError, ValueError):
    """An audio file or clip is unreadable, empty, silent, too short or otherwise unusable."""


class VoiceError(HareError, LookupError):
    """Unknown voice, a voice folder without usable clips, or an invalid voice name."""


class CheckpointError(HareError, ValueError):
    """A checkpoint is corrupt, incomplete, of the wrong kind, or does not match the model's shapes."""


class ModelNotFoundError(HareError, FileNotFoundError):
    """A model file is missing and cannot be downloaded."""


class SettingsError(HareError, ValueError):
    """An invalid synthesis setting or preset."""
