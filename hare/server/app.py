"""`hare serve`'s FastAPI app: `create_app` joins the speech routes (`speech`) and the models and voices routes
(`catalog`) with the error handlers, the authentication and body limits, the health check and the web page;
`serve` and `running_server` run it with uvicorn.
"""

import base64
import contextlib
import logging
import secrets
import threading
import time
from importlib import resources
from pathlib import Path

from hare.errors import HareError
from hare.server.errors import APIError, error_body, hare_error
from hare.server.workers import WorkerPool

log = logging.getLogger(__name__)


MAX_JSON_BYTES = 1 << 20  # request bodies other than voice uploads
DEFAULT_ALIASES = ("tts-1", "tts-1-hd")  # OpenAI's model names, served by the loaded model


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
    from fastapi import FastAPI

    from hare.server.catalog import Catalog, add_model_routes, add_voice_routes
    from hare.server.speech import add_speech_routes

    catalog = Catalog(tts, model_name, model_aliases, default_voice, default_preset)
    pool = WorkerPool(workers, max_queue)

    async def lifespan(app):
        yield
        pool.shutdown()

    app = FastAPI(title="Hare", description="OpenAI-compatible text-to-speech", version=_version(),
                  lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.pool = pool
    app.state.tts = tts
    app.state.formats = catalog.formats
    _add_error_handlers(app)
    add_speech_routes(app, tts, pool, catalog, max_input_chars=max_input_chars, overrides=overrides,
                      disconnect_poll=disconnect_poll)
    add_model_routes(app, catalog)
    add_voice_routes(app, tts, catalog, max_upload_bytes=max_upload_bytes)
    _add_page_routes(app, pool, catalog.model_name)
    app.add_middleware(_Guard, api_key=api_key or None, max_upload_bytes=max_upload_bytes)
    return app


def _add_error_handlers(app) -> None:
    """Every error answered in OpenAI's JSON shape: Hare's own errors, validation errors, 404/405, the body limit
    and anything unexpected (500)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

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


def _add_page_routes(app, pool: WorkerPool, model_name: str) -> None:
    """`GET /health` (open without the key) and the web page: `/` and its assets under `/web/`."""
    from fastapi.responses import FileResponse

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
