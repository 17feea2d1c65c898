"""What the server offers, and the routes that list and change it: the model ids it answers to (the loaded model
and its aliases), presets, response formats and the default voice (`Catalog`); `GET /v1/models`,
`GET /v1/models/{id}`, and the voice library: `GET /v1/voices`, `POST /v1/voices` (a multipart upload of clips),
`DELETE /v1/voices/{name}`."""

import logging
import tempfile
import threading
import time
from pathlib import Path

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from hare.audio import AR_SAMPLE_RATE as CLIP_RATE  # voice clips are checked at the conditioning rate
from hare.audio import VOCODER_SAMPLE_RATE as SAMPLE_RATE
from hare.errors import AudioError, VoiceError
from hare.server.encoders import available_formats
from hare.server.errors import APIError
from hare.voices import AUDIO_EXTENSIONS, RANDOM_VOICE, validate_name

log = logging.getLogger(__name__)

MAX_UPLOAD_FILES = 16


class Catalog:
    """The model ids a server answers to (`model_name` and its `model_aliases`), its presets and response formats,
    and the voice a request that names none gets."""

    def __init__(self, tts, model_name: str | None, model_aliases: tuple[str, ...], default_voice: str | None,
                 default_preset: str | None):
        self.tts = tts
        self.model_name = model_name or str(getattr(tts, "model_id", "hare"))
        self.model_aliases = model_aliases
        self.served = {self.model_name, *model_aliases}
        self.formats = available_formats()
        self.default_format = "mp3" if "mp3" in self.formats else "wav"
        self.default_voice = default_voice
        self.default_preset = default_preset
        self.created = int(time.time())
        try:
            from hare.settings import PRESETS

            self.presets = list(getattr(tts, "presets", None) or PRESETS)
        except ImportError:  # pragma: no cover
            self.presets = []

    def fallback_voice(self) -> str:
        if self.default_voice is not None:
            return self.default_voice
        try:
            return "default" if "default" in self.tts.voices.names() else RANDOM_VOICE
        except Exception:
            return RANDOM_VOICE

    def model_object(self, name: str) -> dict:
        obj = {"id": name, "object": "model", "created": self.created, "owned_by": "hare"}
        if name == self.model_name:
            obj.update(presets=self.presets, default_preset=self.default_preset, sample_rate=SAMPLE_RATE,
                       response_formats=list(self.formats), default_voice=self.fallback_voice())
        else:
            obj["root"] = self.model_name
        return obj


def add_model_routes(app, catalog: Catalog) -> None:
    """`GET /v1/models` and `GET /v1/models/{id}` on `app`."""
    model_name, model_aliases, served = catalog.model_name, catalog.model_aliases, catalog.served
    model_object = catalog.model_object

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_object(n) for n in [model_name, *model_aliases]]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id not in served:
            raise APIError(404, f"the model {model_id!r} does not exist", param="model", code="model_not_found")
        return model_object(model_id)


def add_voice_routes(app, tts, catalog: Catalog, *, max_upload_bytes: int) -> None:
    """The voice library of `tts` on `app`: list, upload (at most `max_upload_bytes` of audio), delete."""
    fallback_voice = catalog.fallback_voice
    voice_lock = threading.Lock()

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
