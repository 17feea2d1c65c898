"""Where Hare keeps its files."""

from __future__ import annotations

import os
from pathlib import Path


def hare_home() -> Path:
    """Hare's cache root: env HARE_HOME, else ~/.cache/hare (models, hub downloads, voices, latent cache)."""
    return Path(os.environ.get("HARE_HOME") or Path.home() / ".cache" / "hare")
