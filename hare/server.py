"""`hare serve`: an OpenAI-compatible speech server with a voice library API and a web page.

Routes (all but `/health` need the API key when one is set):

- `POST /v1/audio/speech`: OpenAI's body (`model`, `input`, `voice`, `response_format`, `speed`,
  `stream_format`) plus Hare's `preset`, `seed`, `stream` and `decoder` ("hifigan": Tortoise v3's fast path,
  whose stream sends audio while the codes are sampled). Returns the audio bytes; with `stream: true`
  (or `stream_format: "sse"`) the audio of each text chunk is sent as soon as it is ready.
- `GET /v1/models`, `GET /v1/models/{id}`, `GET /v1/voices`, `POST /v1/voices` (multipart: `name` and one or
  more audio clips), `DELETE /v1/voices/{name}`, `GET /health`, and the web page at `/`.

Synthesis runs in a bounded pool of worker threads (the models are loaded once and shared; the event loop only
moves bytes). When every worker is busy and the queue is full the server answers 503 with Retry-After. A client
that disconnects cancels its job: a queued job never starts, a running one stops after its current text chunk.
Errors are JSON in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
"""


import asyncio
import base64
import concurrent.futures
import contextlib
import dataclasses
import io
import json
import logging
import math
import queue
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from hare.errors import (AudioError, CheckpointError, HareError, ModelNotFoundError, SettingsError, TextError,
                         VoiceError)

log = logging.getLogger(__name__)

SAMPLE_RATE = 24000
# OpenAI's built-in voice names: a request naming one that the library lacks gets the default voice
OPENAI_VOICES = frozenset({"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer",
                           "verse", "marin", "cedar"})
CLIP_RATE = 22050  # voice clips are checked at the conditioning rate
MAX_JSON_BYTES = 1 << 20  # request bodies other than voice uploads
MAX_UPLOAD_FILES = 16
MIN_SPEED, MAX_SPEED = 0.25, 4.0
DEFAULT_ALIASES = ("tts-1", "tts-1-hd")  # OpenAI's model names, served by the loaded model
STREAMABLE = ("pcm", "wav", "mp3", "aac")  # formats whose pieces can be sent one after another


# ---------------------------------------------------------------------------------------------------------------
# Errors


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


def _error_body(status: int, message: str, type: str, code: str | None, param: str | None = None) -> bytes:
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


# ---------------------------------------------------------------------------------------------------------------
# Audio: encoding and speed


@dataclasses.dataclass(frozen=True)
class AudioFormat:
    name: str
    media_type: str
    encode: Callable[[np.ndarray], bytes]  # float32 mono in [-1, 1] -> bytes of a complete file
    stream_header: bytes | None = None  # streams of this format start with these bytes (None: not streamable)
    stream_piece: Callable[[np.ndarray], bytes] | None = None


def _pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).round().astype("<i2").tobytes()


def _soundfile_encoder(fmt: str, subtype: str, **options) -> Callable[[np.ndarray], bytes]:
    def encode(x: np.ndarray) -> bytes:
        import soundfile

        buf = io.BytesIO()
        soundfile.write(buf, np.clip(x, -1, 1).astype(np.float32), SAMPLE_RATE, format=fmt, subtype=subtype,
                        **options)
        return buf.getvalue()

    return encode


def _ffmpeg_encoder(args: list[str]) -> Callable[[np.ndarray], bytes]:
    def encode(x: np.ndarray) -> bytes:
        proc = subprocess.run(["ffmpeg", "-v", "error", "-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", "1",
                               "-i", "-", *args, "-"], input=_pcm16(x), capture_output=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.decode(errors="replace")[:200])
        return proc.stdout

    return encode


_MP3_BITRATES = {  # kbit/s by bitrate index, Layer III
    "1": (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    "2": (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def strip_mp3_info_frame(data: bytes) -> bytes:
    """Drop a leading Xing/Info frame: it states the length of one piece, and decoders that trust it would stop
    there when pieces are sent one after another."""
    if len(data) < 4 or data[0] != 0xFF or (data[1] & 0xE0) != 0xE0:
        return data
    version = (data[1] >> 3) & 3  # 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
    bitrate_index, rate_index, padding = data[2] >> 4, (data[2] >> 2) & 3, (data[2] >> 1) & 1
    if version == 1 or ((data[1] >> 1) & 3) != 1 or bitrate_index in (0, 15) or rate_index == 3:
        return data  # not Layer III, or a header we do not parse
    bitrate = _MP3_BITRATES["1" if version == 3 else "2"][bitrate_index] * 1000
    rate = _MP3_RATES[version][rate_index]
    length = (144 if version == 3 else 72) * bitrate // rate + padding
    if b"Xing" in data[:length] or b"Info" in data[:length]:
        return data[length:]
    return data


def available_formats() -> dict[str, AudioFormat]:
    """The response formats this machine can encode (each is tried once on a short signal)."""
    from hare.audio import wav_header

    probe = (0.1 * np.sin(np.arange(2400) * 0.05)).astype(np.float32)
    candidates = [
        AudioFormat("wav", "audio/wav", _soundfile_encoder("WAV", "PCM_16"), wav_header(SAMPLE_RATE), _pcm16),
        AudioFormat("pcm", "audio/pcm", _pcm16, b"", _pcm16),
        AudioFormat("flac", "audio/flac", _soundfile_encoder("FLAC", "PCM_16")),
        AudioFormat("opus", "audio/ogg; codecs=opus", _soundfile_encoder("OGG", "OPUS")),
    ]
    # constant bit rate (~88 kbit/s): a stream of pieces has no per-piece length header for decoders to trust
    mp3 = _soundfile_encoder("MP3", "MPEG_LAYER_III", bitrate_mode="CONSTANT", compression_level=0.5)
    candidates.append(AudioFormat("mp3", "audio/mpeg", mp3, b"",  # MP3 frames can be concatenated
                                  lambda x: strip_mp3_info_frame(mp3(x))))
    if shutil.which("ffmpeg"):
        aac = _ffmpeg_encoder(["-c:a", "aac", "-b:a", "64k", "-f", "adts"])
        candidates.append(AudioFormat("aac", "audio/aac", aac, b"", aac))  # ADTS frames can be concatenated
    formats = {}
    for fmt in candidates:
        try:
            if fmt.encode(probe):
                formats[fmt.name] = fmt
        except Exception as exc:  # a codec missing from this libsndfile build
            log.info("response format %s unavailable: %s", fmt.name, exc)
    return formats


def time_stretch(wav: torch.Tensor, speed: float, n_fft: int = 1024, hop: int = 256) -> torch.Tensor:
    """Play `wav` `speed` times faster at the same pitch (phase vocoder): (samples,) -> (~samples / speed,).

    Frames of the STFT are read at `speed` times the hop, magnitudes interpolated between neighbouring frames,
    phases advanced by each bin's measured instantaneous frequency; speech keeps its pitch, with the slight
    phasiness typical of a phase vocoder at large factors.
    """
    # wav: (samples,)
    if speed == 1.0 or wav.numel() == 0:
        return wav
    length = wav.shape[-1]
    out_length = max(1, round(length / speed))
    x = torch.nn.functional.pad(wav.float(), (0, max(0, n_fft - length)))
    window = torch.hann_window(n_fft, dtype=x.dtype, device=x.device)
    spec = torch.stft(x, n_fft, hop, window=window, return_complex=True)  # (bins, frames)
    spec = torch.nn.functional.pad(spec, (0, 2))  # two silent frames so that every step has a right neighbour
    steps = torch.arange(0, spec.shape[-1] - 2, speed, dtype=x.dtype, device=x.device)
    left_i = steps.floor().long()
    frac = (steps - left_i)[None]
    left, right = spec[:, left_i], spec[:, left_i + 1]
    mag = (1 - frac) * left.abs() + frac * right.abs()
    expected = 2 * math.pi * hop * torch.arange(spec.shape[0], dtype=x.dtype, device=x.device)[:, None] / n_fft
    delta = right.angle() - left.angle() - expected
    delta = delta - 2 * math.pi * torch.round(delta / (2 * math.pi))
    phase = torch.cat([spec[:, :1].angle(), (expected + delta)[:, :-1]], dim=1).cumsum(dim=1)
    out = torch.polar(mag, phase)
    y = torch.istft(out, n_fft, hop, window=window, length=out_length)
    return y.clamp(-1, 1).to(wav.dtype)


# ---------------------------------------------------------------------------------------------------------------
# The worker pool


class Busy(Exception):
    """Every worker is busy and the queue is full."""

    def __init__(self, retry_after: int):
        super().__init__(f"server busy, retry after {retry_after} s")
        self.retry_after = retry_after


class Cancelled(Exception):
    """The client went away; the job stopped."""


class WorkerPool:
    """`workers` threads take jobs from a queue holding at most `max_queue` waiting jobs.

    A job is `fn(cancel: threading.Event)`; it should check `cancel` between steps. `submit` returns a
    concurrent Future; cancelling that future before a worker picks the job up frees its queue slot at once.
    """

    def __init__(self, workers: int = 1, max_queue: int = 8):
        if workers < 1 or max_queue < 0:
            raise ValueError("workers must be >= 1 and max_queue >= 0")
        self.workers = workers
        self.max_queue = max_queue
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._running = 0
        self._avg_seconds = 1.0  # moving average of a job's run time, for Retry-After
        self.completed = 0
        self.cancelled = 0
        self.rejected = 0
        self._threads = [threading.Thread(target=self._work, name=f"hare-worker-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def stats(self) -> dict:
        with self._lock:
            return {"workers": self.workers, "running": self._running, "queued": self._waiting,
                    "max_queue": self.max_queue, "completed": self.completed, "cancelled": self.cancelled,
                    "rejected": self.rejected}

    def retry_after(self) -> int:
        with self._lock:
            backlog = self._waiting + self._running
            return max(1, math.ceil(self._avg_seconds * backlog / self.workers))

    def submit(self, fn: Callable[[threading.Event], Any]) -> tuple[concurrent.futures.Future, threading.Event]:
        future: concurrent.futures.Future = concurrent.futures.Future()
        cancel = threading.Event()
        with self._lock:
            busy = self._waiting + self._running >= self.workers + self.max_queue
            if busy:
                self.rejected += 1
            else:
                self._waiting += 1
        if busy:
            raise Busy(self.retry_after())
        future.add_done_callback(self._on_done)
        self._jobs.put((fn, future, cancel))
        return future, cancel

    def _on_done(self, future: concurrent.futures.Future) -> None:
        if future.cancelled():  # cancelled while waiting: give the slot back now
            with self._lock:
                self._waiting -= 1
                self.cancelled += 1

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            fn, future, cancel = item
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued (already counted in _on_done)
            with self._lock:
                self._waiting -= 1
                self._running += 1
            start = time.perf_counter()
            result, error = None, None
            try:
                result = fn(cancel)
            except BaseException as exc:  # delivered to the waiting request
                error = exc
            seconds = time.perf_counter() - start
            with self._lock:  # counts first, so that whoever sees the result also sees them
                self._running -= 1
                if cancel.is_set():
                    self.cancelled += 1
                else:
                    self.completed += 1
                    self._avg_seconds = 0.8 * self._avg_seconds + 0.2 * seconds
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    def shutdown(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)


# ---------------------------------------------------------------------------------------------------------------
# Authentication and body limits (plain ASGI, so that it covers every route including static files)


class _Guard:
    def __init__(self, app, api_key: str | None, max_upload_bytes: int):
        self.app = app
        self.api_key = api_key
        self.max_upload_bytes = max_upload_bytes

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        value = headers.get(b"authorization", b"").decode("latin-1").strip()
        supplied = headers.get(b"x-api-key", b"").decode("latin-1").strip()
        scheme, _, credentials = value.partition(" ")
        if scheme.lower() == "bearer":
            supplied = credentials.strip()
        elif scheme.lower() == "basic":  # the web page in a browser: any user name, the key as password
            try:
                supplied = base64.b64decode(credentials.strip()).decode().partition(":")[2]
            except Exception:
                supplied = ""
        return bool(supplied) and secrets.compare_digest(supplied.encode(), self.api_key.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        path = scope.get("path", "")
        if self.api_key and path != "/health" and not self._authorized(headers):
            api = path.startswith("/v1/")
            challenge = b'Bearer realm="hare"' if api else b'Basic realm="hare", charset="UTF-8"'
            body = _error_body(401, "missing or invalid API key (send 'Authorization: Bearer KEY')",
                               "authentication_error", "invalid_api_key")
            return await _send_json(send, 401, body, [(b"www-authenticate", challenge)])
        is_upload = scope.get("method") == "POST" and path.rstrip("/") == "/v1/voices"
        limit = self.max_upload_bytes + 65536 if is_upload else MAX_JSON_BYTES
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            what = "upload" if is_upload else "request body"
            body = _error_body(413, f"{what} too large ({int(length)} bytes; the limit is {limit})",
                               "invalid_request_error", "request_too_large")
            return await _send_json(send, 413, body, [(b"connection", b"close")])
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    scope["hare.body_limit"] = limit
                    raise APIError(413, f"request body too large (the limit is {limit} bytes)",
                                   code="request_too_large")
            return message

        return await self.app(scope, limited_receive, send)


async def _send_json(send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] = ()) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------------------------------------
# The app


def _web_dir() -> Path:
    return Path(str(resources.files("hare") / "web"))


def create_app(tts, *, api_key: str | None = None, workers: int = 1, max_queue: int = 8,
               max_input_chars: int = 4096, max_upload_bytes: int = 20 * 2**20, model_name: str | None = None,
               model_aliases: tuple[str, ...] = DEFAULT_ALIASES, default_voice: str | None = None,
               default_preset: str | None = None, overrides: dict | None = None, disconnect_poll: float = 0.1):
    """A FastAPI app serving `tts` (a `hare.pipeline.TextToSpeech` or anything with its `stream` and `voices`).

    `model_name` is the id clients ask for (default: `tts.model_id`); `model_aliases` are other ids served by
    the same model (OpenAI's names, so that unmodified clients work). `default_voice` is used when a request
    names none (default: `default` when the library has it, else `random`). `default_preset` is used when a
    request names none (default: the pipeline's). `overrides` are synthesis settings applied to every request
    (e.g. `{"num_candidates": 4, "max_codes": 200}` to bound the work per request on a CPU server).
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.concurrency import run_in_threadpool

    from hare.voices import AUDIO_EXTENSIONS, RANDOM_VOICE, validate_name

    model_name = model_name or str(getattr(tts, "model_id", "hare"))
    served = {model_name, *model_aliases}
    formats = available_formats()
    default_format = "mp3" if "mp3" in formats else "wav"
    pool = WorkerPool(workers, max_queue)
    voice_lock = threading.Lock()
    created = int(time.time())
    try:
        from hare.settings import PRESETS

        presets = list(getattr(tts, "presets", None) or PRESETS)
    except ImportError:  # pragma: no cover
        presets = []

    def fallback_voice() -> str:
        if default_voice is not None:
            return default_voice
        try:
            return "default" if "default" in tts.voices.names() else RANDOM_VOICE
        except Exception:
            return RANDOM_VOICE

    class SpeechRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")

        model: str | None = None
        input: str
        voice: str | dict | None = None
        response_format: str | None = None
        speed: float = 1.0
        instructions: str | None = None  # accepted for compatibility; Hare has no instruction-following voices
        stream_format: str | None = None  # "audio" (default) or "sse"
        stream: bool = False
        preset: str | None = None
        seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
        decoder: str | None = None  # Hare: "diffusion" or "hifigan" (Tortoise v3's fast path; streams per codes)

    async def lifespan(app):
        yield
        pool.shutdown()

    app = FastAPI(title="Hare", description="OpenAI-compatible text-to-speech", version=_version(),
                  lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.pool = pool
    app.state.tts = tts
    app.state.formats = formats

    # -- errors -------------------------------------------------------------------------------------------
    def error_response(err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(HareError)
    async def _hare_error(request, exc: HareError):
        return error_response(hare_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [p for p in first.get("loc", ()) if isinstance(p, str) and p != "body"]
        message = "; ".join(f"{'.'.join(p for p in e.get('loc', ()) if isinstance(p, str) and p != 'body') or 'body'}"
                            f": {e.get('msg', 'invalid')}" for e in errors) or "invalid request"
        return error_response(APIError(400, message, param=".".join(loc) or None, code="invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        too_large = request.scope.get("hare.body_limit")
        if too_large is not None:  # FastAPI reports a body cut short by the size guard as a parse error
            return error_response(APIError(413, f"request body too large (the limit is {too_large} bytes)",
                                           code="request_too_large"))
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error_response(APIError(exc.status_code, str(exc.detail), code=codes.get(exc.status_code),
                                       headers=dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(APIError(500, f"internal error ({exc.__class__.__name__})", type="server_error",
                                       code="internal_error"))

    def busy_error(exc: Busy) -> APIError:
        return APIError(503, f"the server is busy ({pool.workers} worker(s), {pool.max_queue} queued); "
                        f"retry after {exc.retry_after} s", type="server_error", code="server_busy",
                        headers={"Retry-After": str(exc.retry_after)})

    # -- helpers ------------------------------------------------------------------------------------------
    async def wait_for(future: concurrent.futures.Future, cancel: threading.Event, request: Request):
        """The job's result; cancels the job when the client disconnects first."""
        wrapped = asyncio.wrap_future(future)
        try:
            while True:
                done, _ = await asyncio.wait({wrapped}, timeout=disconnect_poll)
                if done:
                    return wrapped.result()
                if await request.is_disconnected():
                    raise Cancelled("client disconnected")
        except (Cancelled, asyncio.CancelledError):
            cancel.set()
            future.cancel()
            wrapped.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody awaits it any more
            raise

    def parse_speech(body: SpeechRequest) -> dict:
        if body.model is not None and body.model not in served:
            raise APIError(404, f"the model {body.model!r} does not exist; this server has "
                           f"{', '.join(sorted(served))}", param="model", code="model_not_found")
        text = body.input
        if not text or not text.strip():
            raise APIError(400, "input is empty: give some text to speak", param="input", code="empty_input")
        if len(text) > max_input_chars:
            raise APIError(400, f"input is too long ({len(text)} characters; the limit is {max_input_chars})",
                           param="input", code="input_too_long")
        voice = body.voice
        if isinstance(voice, dict):
            voice = voice.get("id")
        voice = fallback_voice() if voice is None or (isinstance(voice, str) and not voice.strip()) else voice
        if not isinstance(voice, str):
            raise APIError(400, "voice must be a name or {\"id\": name}", param="voice", code="invalid_voice")
        voice = voice.strip()
        if voice.lower() in OPENAI_VOICES and voice not in tts.voices.names():
            voice = fallback_voice()  # unmodified OpenAI clients always name one of OpenAI's own voices
        try:
            parts = tts.voices.parse(voice)  # unknown names, bad names and traversal attempts fail here
        except VoiceError as exc:
            raise APIError(400, str(exc), param="voice", code="voice_not_found") from None
        del parts
        fmt = body.response_format or default_format
        if fmt not in formats:
            raise APIError(400, f"response_format {fmt!r} is not available here; choose one of "
                           f"{', '.join(formats)}", param="response_format", code="unsupported_format")
        if not MIN_SPEED <= body.speed <= MAX_SPEED or not math.isfinite(body.speed):
            raise APIError(400, f"speed must be between {MIN_SPEED} and {MAX_SPEED} (got {body.speed})",
                           param="speed", code="invalid_speed")
        if body.stream_format not in (None, "audio", "sse"):
            raise APIError(400, "stream_format must be 'audio' or 'sse'", param="stream_format",
                           code="invalid_stream_format")
        preset = body.preset or default_preset
        if preset is not None and presets and preset not in presets:
            raise APIError(400, f"unknown preset {preset!r}; choose one of {', '.join(presets)}", param="preset",
                           code="invalid_preset")
        stream = body.stream or body.stream_format == "sse"
        if stream and formats[fmt].stream_piece is None:
            raise APIError(400, f"response_format {fmt!r} cannot be streamed; stream one of "
                           f"{', '.join(f for f in STREAMABLE if f in formats)}", param="response_format",
                           code="unsupported_format")
        kwargs = {"voice": voice, "seed": body.seed, "progress": False, **(overrides or {})}
        if body.decoder is not None:
            from hare.settings import DECODERS

            if body.decoder not in DECODERS:
                raise APIError(400, f"decoder must be one of {', '.join(DECODERS)} (got {body.decoder!r})",
                               param="decoder", code="invalid_decoder")
            kwargs["decoder"] = body.decoder
        if preset is not None:
            kwargs["preset"] = preset
        return {"text": text, "kwargs": kwargs, "format": formats[fmt], "speed": float(body.speed),
                "stream": stream, "sse": body.stream_format == "sse"}

    def finish(audio: torch.Tensor, speed: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        audio = audio.detach().float().cpu().reshape(-1)
        if sample_rate != SAMPLE_RATE:  # every response is 24 kHz, as OpenAI's (hare-mini makes 22.05 kHz)
            from hare.audio import resample_sinc

            audio = resample_sinc(audio, sample_rate, SAMPLE_RATE)
        if speed != 1.0:
            audio = time_stretch(audio, speed)
        return audio.clamp(-1, 1).numpy()

    def info_headers(speech, fmt: AudioFormat) -> dict[str, str]:
        settings = getattr(speech, "settings", None) or {}
        headers = {"X-Hare-Sample-Rate": str(SAMPLE_RATE)}
        if "seed" in settings:
            headers["X-Hare-Seed"] = str(settings["seed"])
        if "chunks" in settings:
            headers["X-Hare-Chunks"] = str(settings["chunks"])
        if fmt.name == "pcm":
            headers["X-Hare-Encoding"] = "s16le"
        return headers

    # -- speech ---------------------------------------------------------------------------------------------
    @app.post("/v1/audio/speech")
    async def speech(body: SpeechRequest, request: Request):
        job = parse_speech(body)
        if job["stream"]:
            return await speech_stream(job, request)
        fmt: AudioFormat = job["format"]

        def run(cancel: threading.Event):
            pieces, last = [], None
            generator = tts.stream(job["text"], **job["kwargs"])
            try:
                for last in generator:
                    pieces.append(finish(last.audio, job["speed"], last.sample_rate))
                    if cancel.is_set():
                        raise Cancelled("client disconnected")
            finally:
                generator.close()
            return fmt.encode(np.concatenate(pieces)), last

        try:
            future, cancel = pool.submit(run)
        except Busy as exc:
            raise busy_error(exc) from None
        try:
            data, last = await wait_for(future, cancel, request)
        except Cancelled:
            return Response(status_code=499)  # nobody is listening any more
        return Response(data, media_type=fmt.media_type, headers=info_headers(last, fmt))

    async def speech_stream(job: dict, request: Request):
        fmt: AudioFormat = job["format"]
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()

        def run(cancel: threading.Event):
            generator = tts.stream(job["text"], **job["kwargs"])
            try:
                for speech in generator:
                    data = fmt.stream_piece(finish(speech.audio, job["speed"], speech.sample_rate))
                    loop.call_soon_threadsafe(pieces.put_nowait, ("audio", data, speech))
                    if cancel.is_set():
                        return
            except BaseException as exc:
                loop.call_soon_threadsafe(pieces.put_nowait, ("error", exc, None))
                return
            finally:
                generator.close()
            loop.call_soon_threadsafe(pieces.put_nowait, ("end", None, None))

        try:
            future, cancel = pool.submit(run)
        except Busy as exc:
            raise busy_error(exc) from None

        async def next_piece():
            getter = asyncio.ensure_future(pieces.get())
            try:
                while True:
                    done, _ = await asyncio.wait({getter}, timeout=disconnect_poll)
                    if done:
                        return getter.result()
                    if await request.is_disconnected():
                        raise Cancelled("client disconnected")
            finally:
                if not getter.done():
                    getter.cancel()

        # the first piece decides the status: errors before any audio are proper JSON errors
        try:
            kind, value, first = await next_piece()
        except (Cancelled, asyncio.CancelledError):
            cancel.set()
            future.cancel()
            return Response(status_code=499)
        if kind == "error":  # handled like any error of a request (HareError -> 4xx)
            raise value
        headers = info_headers(first, fmt)
        if kind == "end":  # pragma: no cover - a stream always yields at least one chunk
            value = b""

        def sse(data: bytes) -> bytes:
            event = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
            return f"data: {json.dumps(event)}\n\n".encode()

        async def body_iter():
            chunks = 1 if kind == "audio" else 0
            finished = kind != "audio"
            try:
                if job["sse"]:
                    if fmt.stream_header:
                        yield sse(fmt.stream_header)
                    yield sse(value)
                else:
                    yield fmt.stream_header + value
                while kind == "audio":
                    k, v, _ = await next_piece()
                    finished = k != "audio"
                    if k == "end":
                        break
                    if k == "error":  # the status is sent already: end the stream (SSE says why)
                        log.warning("stream ended early by an error after %d chunk(s): %s", chunks, v)
                        if job["sse"]:
                            err = hare_error(v) if isinstance(v, HareError) else APIError(
                                500, f"internal error ({v.__class__.__name__})", type="server_error",
                                code="internal_error")
                            yield f"data: {json.dumps({'type': 'error', **err.body()})}\n\n".encode()
                            return
                        break
                    chunks += 1
                    yield sse(v) if job["sse"] else v
                if job["sse"]:
                    done = {"type": "speech.audio.done", "chunks": chunks,
                            "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}}
                    yield f"data: {json.dumps(done)}\n\n".encode()
            except Cancelled:
                log.info("client disconnected after %d chunk(s); job cancelled", chunks)
            finally:  # the client went away (or the server stops): the worker stops after its current chunk
                if not finished:
                    cancel.set()
                    future.cancel()

        media = "text/event-stream" if job["sse"] else fmt.media_type
        headers["Cache-Control"] = "no-cache"
        return StreamingResponse(body_iter(), media_type=media, headers=headers)

    # -- models -------------------------------------------------------------------------------------------
    def model_object(name: str) -> dict:
        obj = {"id": name, "object": "model", "created": created, "owned_by": "hare"}
        if name == model_name:
            obj.update(presets=presets, default_preset=default_preset, sample_rate=SAMPLE_RATE,
                       response_formats=list(formats), default_voice=fallback_voice())
        else:
            obj["root"] = model_name
        return obj

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_object(n) for n in [model_name, *model_aliases]]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id not in served:
            raise APIError(404, f"the model {model_id!r} does not exist", param="model", code="model_not_found")
        return model_object(model_id)

    # -- voices -------------------------------------------------------------------------------------------
    def voice_object(name: str) -> dict:
        lib = tts.voices
        obj = {"id": name, "object": "voice", "name": name}
        try:
            v = lib.get(name)
            obj["clips"] = len(v.clips)
            obj["deletable"] = v.folder is not None and v.folder.parent.resolve() == Path(lib.user_folder).resolve()
        except (VoiceError, OSError) as exc:
            obj.update(clips=0, deletable=False, error=str(exc))
        return obj

    @app.get("/v1/voices")
    async def voices():
        names = await run_in_threadpool(tts.voices.names)
        data = await run_in_threadpool(lambda: [voice_object(n) for n in names])
        return {"object": "list", "data": data, "default": fallback_voice()}

    @app.post("/v1/voices", status_code=201)
    async def add_voice(request: Request):
        from starlette.datastructures import UploadFile

        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise APIError(415, "upload voices as multipart/form-data with a 'name' field and audio files",
                           code="unsupported_media_type")
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > max_upload_bytes + 65536:
                raise APIError(413, f"upload too large (the limit is {max_upload_bytes} bytes of audio)",
                               code="request_too_large")
        replay = [{"type": "http.request", "body": bytes(body), "more_body": False}]

        async def receive():
            return replay.pop() if replay else {"type": "http.disconnect"}

        form_request = Request(request.scope, receive)
        try:
            form = await form_request.form(max_files=MAX_UPLOAD_FILES, max_fields=16)
        except APIError:
            raise
        except Exception as exc:
            detail = getattr(exc, "detail", None) or str(exc)
            raise APIError(400, f"malformed multipart upload: {detail}", code="invalid_upload") from None
        try:
            name = form.get("name")
            if not isinstance(name, str) or not name.strip():
                raise APIError(400, "give the voice a 'name'", param="name", code="invalid_voice_name")
            name = name.strip()
            try:
                validate_name(name)
            except VoiceError as exc:
                raise APIError(400, str(exc), param="name", code="invalid_voice_name") from None
            if name == RANDOM_VOICE:
                raise APIError(400, "'random' is reserved", param="name", code="invalid_voice_name")
            overwrite = str(form.get("overwrite", "")).lower() in ("1", "true", "yes", "on")
            files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            if not files:
                raise APIError(400, "attach at least one audio clip (multipart field 'files')", param="files",
                               code="no_clips")
            total = 0
            clips = []
            for i, f in enumerate(files):
                suffix = Path(f.filename or "").suffix.lower()
                if suffix not in AUDIO_EXTENSIONS:
                    raise APIError(415, f"{f.filename!r} is not an audio file (accepted: "
                                   f"{', '.join(AUDIO_EXTENSIONS)})", param="files", code="unsupported_media_type")
                data = await f.read()
                total += len(data)
                if total > max_upload_bytes:
                    raise APIError(413, f"upload too large (the limit is {max_upload_bytes} bytes)",
                                   code="request_too_large")
                clips.append((f"clip{i}{suffix}", f.filename, data))
        finally:
            await form.close()
        return await run_in_threadpool(store_voice, name, clips, overwrite)

    def store_voice(name: str, clips: list[tuple[str, str, bytes]], overwrite: bool) -> JSONResponse:
        from hare.audio import load_audio, validate_clip

        with tempfile.TemporaryDirectory(prefix="hare-upload-") as tmp:
            paths = []
            for safe_name, original, data in clips:
                path = Path(tmp) / safe_name
                path.write_bytes(data)
                try:
                    validate_clip(load_audio(path, CLIP_RATE), CLIP_RATE, name=original or safe_name)
                except AudioError as exc:
                    raise APIError(400, f"{original!r} is not usable audio: {exc}".replace(str(path), safe_name),
                                   param="files", code="invalid_audio") from None
                paths.append(path)
            with voice_lock:
                lib = tts.voices
                if name in lib.names() and not overwrite:
                    raise APIError(409, f"voice {name!r} already exists (send overwrite=true to replace it)",
                                   param="name", code="voice_exists")
                lib.add(name, paths, overwrite=overwrite)
        log.info("added voice %s (%d clip(s))", name, len(paths))
        return JSONResponse(voice_object(name), status_code=201)

    @app.delete("/v1/voices/{name:path}")
    async def delete_voice(name: str):
        try:
            validate_name(name)
        except VoiceError as exc:
            raise APIError(400, str(exc), param="name", code="invalid_voice_name") from None

        def remove():
            with voice_lock:
                lib = tts.voices
                if name not in lib.names():
                    raise APIError(404, f"voice {name!r} does not exist", param="name", code="voice_not_found")
                if not (Path(lib.user_folder) / name).is_dir():
                    raise APIError(403, f"voice {name!r} is bundled with the model and cannot be deleted",
                                   param="name", code="voice_not_deletable")
                lib.remove(name)
            log.info("removed voice %s", name)
            return {"id": name, "object": "voice.deleted", "deleted": True}

        return await run_in_threadpool(remove)

    # -- health and the page ------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, **pool.stats()}

    web = _web_dir()
    assets = {"app.js": "text/javascript", "style.css": "text/css"}

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(web / "index.html", media_type="text/html; charset=utf-8")

    @app.get("/web/{asset}", include_in_schema=False)
    async def asset(asset: str):
        if asset not in assets:
            raise APIError(404, f"no such file: {asset}", code="not_found")
        return FileResponse(web / asset, media_type=f"{assets[asset]}; charset=utf-8")

    app.add_middleware(_Guard, api_key=api_key or None, max_upload_bytes=max_upload_bytes)
    return app


def _version() -> str:
    from hare import __version__

    return __version__


def serve(tts, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", **app_options) -> None:
    """Run the server with uvicorn until interrupted (the models in `tts` are already loaded)."""
    import uvicorn

    app = create_app(tts, **app_options)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


@contextlib.contextmanager
def running_server(app, *, log_level: str = "warning", start_timeout: float = 30.0, stop_timeout: float = 15.0):
    """uvicorn serving `app` on 127.0.0.1 (a free port) in a background thread; yields the base URL and
    stops the server on exit (for tests, benchmarks and embedding)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level=log_level, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not (server.started and server.servers):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(stop_timeout)
