"""Where Hare keeps its files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def hare_home() -> Path:
    """Hare's cache root: env HARE_HOME, else ~/.cache/hare (models, hub downloads, voices, latent cache)."""
    return Path(os.environ.get("HARE_HOME") or Path.home() / ".cache" / "hare")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
