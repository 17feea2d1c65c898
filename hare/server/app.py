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
import json
import logging
import math
import secrets
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from hare.audio import AR_SAMPLE_RATE as CLIP_RATE  # voice clips are checked at the conditioning rate
from hare.audio import VOCODER_SAMPLE_RATE as SAMPLE_RATE  # every response is 24 kHz, as OpenAI's
from hare.audio import time_stretch
from hare.errors import AudioError, HareError, VoiceError
from hare.server.encoders import AudioFormat, available_formats
from hare.server.errors import APIError, error_body, hare_error
from hare.server.workers import Busy, Cancelled, WorkerPool

log = logging.getLogger(__name__)


# OpenAI's built-in voice names: a request naming one that the library lacks gets the default voice
OPENAI_VOICES = frozenset({"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer",
                           "verse", "marin", "cedar"})
MAX_JSON_BYTES = 1 << 20  # request bodies other than voice uploads
MAX_UPLOAD_FILES = 16
MIN_SPEED, MAX_SPEED = 0.25, 4.0
DEFAULT_ALIASES = ("tts-1", "tts-1-hd")  # OpenAI's model names, served by the loaded model
STREAMABLE = ("pcm", "wav", "mp3", "aac")  # formats whose pieces can be sent one after another


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
            body = error_body(401, "missing or invalid API key (send 'Authorization: Bearer KEY')",
                               "authentication_error", "invalid_api_key")
            return await _send_json(send, 401, body, [(b"www-authenticate", challenge)])
        is_upload = scope.get("method") == "POST" and path.rstrip("/") == "/v1/voices"
        limit = self.max_upload_bytes + 65536 if is_upload else MAX_JSON_BYTES
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            what = "upload" if is_upload else "request body"
            body = error_body(413, f"{what} too large ({int(length)} bytes; the limit is {limit})",
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


async def _until_disconnected(task: asyncio.Future, request, poll: float):
    """`task`'s result; Cancelled when the client disconnects first (asked every `poll` seconds)."""
    while True:
        done, _ = await asyncio.wait({task}, timeout=poll)
        if done:
            return task.result()
        if await request.is_disconnected():
            raise Cancelled("client disconnected")


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
            return await _until_disconnected(wrapped, request, disconnect_poll)
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
                return await _until_disconnected(getter, request, disconnect_poll)
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
