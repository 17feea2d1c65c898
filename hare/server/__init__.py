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

Modules:

- `app`: the FastAPI app (`create_app`): error handlers, authentication and body limits, `/health`, the web page;
  `serve`, `running_server`;
- `speech`: `POST /v1/audio/speech`, whole or streamed;
- `catalog`: the models, presets, formats and voices the server offers, and their routes;
- `errors`: `APIError` and OpenAI's JSON error shape;
- `encoders`: the response audio formats and how they stream;
- `workers`: the bounded synthesis thread pool.
"""

from hare.server.app import create_app, running_server, serve  # noqa: F401
from hare.server.encoders import available_formats  # noqa: F401
