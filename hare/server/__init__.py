"""`hare serve`: an OpenAI-compatible speech server with a voice library API and a web page.

- `app`: the FastAPI app (`create_app`), its routes, authentication and body limits, `serve`, `running_server`;
- `errors`: `APIError` and OpenAI's JSON error shape;
- `encoders`: the response audio formats and how they stream;
- `workers`: the bounded synthesis thread pool.
"""

from hare.server.app import create_app, running_server, serve  # noqa: F401
from hare.server.encoders import available_formats  # noqa: F401
