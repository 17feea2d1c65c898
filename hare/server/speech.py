"""`POST /v1/audio/speech`: the request's checks, synthesis on the worker pool, and the answer, whole or streamed
(raw audio or server-sent events) as each text chunk is ready; the job is cancelled when the client goes away."""

import asyncio
import base64
import concurrent.futures
import json
import logging
import math
import threading

import numpy as np
import torch
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from hare.audio import VOCODER_SAMPLE_RATE as SAMPLE_RATE  # every response is 24 kHz, as OpenAI's
from hare.audio import time_stretch
from hare.errors import HareError, VoiceError
from hare.server.encoders import AudioFormat
from hare.server.errors import APIError, hare_error
from hare.server.workers import Busy, Cancelled

log = logging.getLogger(__name__)

# OpenAI's built-in voice names: a request naming one that the library lacks gets the default voice
OPENAI_VOICES = frozenset({"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer",
                           "verse", "marin", "cedar"})
MIN_SPEED, MAX_SPEED = 0.25, 4.0
STREAMABLE = ("pcm", "wav", "mp3", "aac")  # formats whose pieces can be sent one after another


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


async def _until_disconnected(task: asyncio.Future, request: Request, poll: float):
    """`task`'s result; Cancelled when the client disconnects first (asked every `poll` seconds)."""
    while True:
        done, _ = await asyncio.wait({task}, timeout=poll)
        if done:
            return task.result()
        if await request.is_disconnected():
            raise Cancelled("client disconnected")


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


def add_speech_routes(app, tts, pool, catalog, *, max_input_chars: int, overrides: dict | None,
                      disconnect_poll: float) -> None:
    """`POST /v1/audio/speech` on `app`: `tts` synthesises on `pool`, for the models, formats, presets and default
    voice of `catalog` (a `hare.server.catalog.Catalog`)."""
    served, formats, default_format = catalog.served, catalog.formats, catalog.default_format
    presets, default_preset, fallback_voice = catalog.presets, catalog.default_preset, catalog.fallback_voice

    def busy_error(exc: Busy) -> APIError:
        return APIError(503, f"the server is busy ({pool.workers} worker(s), {pool.max_queue} queued); "
                        f"retry after {exc.retry_after} s", type="server_error", code="server_busy",
                        headers={"Retry-After": str(exc.retry_after)})

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
