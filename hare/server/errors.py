"""The server's errors: `APIError` (an HTTP status and OpenAI's JSON error shape) and the mapping of Hare's own
errors onto it."""

import json

from hare.errors import (AudioError, CheckpointError, HareError, ModelNotFoundError, SettingsError, TextError,
                         VoiceError)


class APIError(Exception):
    """An error answered as OpenAI-shaped JSON."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def error_body(status: int, message: str, type: str, code: str | None, param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type, "param": param, "code": code}}).encode()


def hare_error(exc: HareError) -> APIError:
    """Map Hare's user errors to HTTP: bad text, voice, audio or settings are 400s."""
    param, code, status, kind = None, None, 400, "invalid_request_error"
    if isinstance(exc, TextError):
        param, code = "input", "invalid_input"
    elif isinstance(exc, VoiceError):
        param, code = "voice", "invalid_voice"
    elif isinstance(exc, AudioError):
        code = "invalid_audio"
    elif isinstance(exc, SettingsError):
        code = "invalid_settings"
    elif isinstance(exc, ModelNotFoundError):  # e.g. a random voice on a model without latent generators
        code = "model_not_found"
    elif isinstance(exc, CheckpointError):  # the server's own files are broken: not the client's fault
        status, kind, code = 500, "server_error", "checkpoint_error"
    return APIError(status, str(exc), type=kind, param=param, code=code)
