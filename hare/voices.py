"""The voice library: a voice is a folder of reference clips; conditioning latents are cached per voice.

Library folders are searched in order: user-given folders first, then `$HARE_HOME/voices` (default
`~/.cache/hare/voices`), then voices bundled with a model. Names are plain identifiers and never escape
their library folder. `a&b` mixes voices (their latents are averaged); `random` asks the pipeline for a
voice drawn by the random latent generators.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from hare.paths import hare_home
from hare.errors import AudioError, VoiceError

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a")
LATENTS_FILE = "latents.safetensors"  # optional precomputed (ar, diffusion) latents inside a voice folder
RANDOM_VOICE = "random"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")



def validate_name(name: str) -> str:
    """A voice name is 1-64 characters of letters, digits, `_`, `-`, `.`, starting with a letter or digit."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise VoiceError(
            f"invalid voice name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter "
            "or digit (no paths; pass a folder path with --voice DIR instead)"
        )
    return name


@dataclass(frozen=True)
class Voice:
    """One voice: its name and either reference clips or a precomputed latents file."""

    name: str
    folder: Path | None
    clips: tuple[Path, ...] = ()
    latents_file: Path | None = None

    def fingerprint(self) -> str:
        """Changes whenever a clip (or the latents file) is added, removed or modified."""
        h = hashlib.sha256()
        files = list(self.clips) + ([self.latents_file] if self.latents_file else [])
        for path in files:
            h.update(path.name.encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
        return h.hexdigest()[:32]


def _scan_folder(name: str, folder: Path) -> Voice:
    clips = tuple(sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS))
    latents = folder / LATENTS_FILE
    latents_file = latents if latents.is_file() else None
    if not clips and latents_file is None:
        raise VoiceError(
            f"voice {name!r} ({folder}) has no usable audio: add {', '.join(AUDIO_EXTENSIONS[:4])} clips "
            "of a few seconds each"
        )
    return Voice(name=name, folder=folder, clips=clips, latents_file=latents_file)


@dataclass
class VoiceLibrary:
    """Folders of voices, searched in order. The first folder is where `add` writes."""

    folders: list[Path] = field(default_factory=list)

    @classmethod
    def default(cls, extra: Iterable[str | os.PathLike] = (), bundled: Iterable[str | os.PathLike] = ()) -> "VoiceLibrary":
        folders = [Path(p) for p in extra] + [hare_home() / "voices"] + [Path(p) for p in bundled]
        return cls(folders)

    @property
    def user_folder(self) -> Path:
        user = hare_home() / "voices"
        return user if user in self.folders else self.folders[0]

    def names(self) -> list[str]:
        seen: dict[str, None] = {}
        for folder in self.folders:
            if folder.is_dir():
                for p in sorted(folder.iterdir()):
                    if p.is_dir() and _NAME_RE.fullmatch(p.name):
                        seen.setdefault(p.name, None)
        return list(seen)

    def get(self, name_or_dir: str | os.PathLike) -> Voice:
        """A voice by library name (a plain identifier, never a path), or by a folder given as a Path."""
        if isinstance(name_or_dir, os.PathLike):
            folder = Path(name_or_dir).expanduser()
            if not folder.is_dir():
                raise VoiceError(f"voice folder not found: {folder}")
            return _scan_folder(folder.name, folder)
        name = validate_name(name_or_dir)
        for root in self.folders:
            folder = root / name
            if folder.is_dir() and folder.resolve().parent == root.resolve():
                return _scan_folder(name, folder)
        known = ", ".join(self.names()) or "none"
        raise VoiceError(f"unknown voice {name!r} (known voices: {known}; or pass a folder of clips)")

    def parse(self, spec: str | os.PathLike) -> list[Voice] | None:
        """`name`, `a&b` (mix), a folder Path, or `random` (-> None: draw a random voice)."""
        if isinstance(spec, os.PathLike):
            return [self.get(spec)]
        spec = (spec or "").strip() if isinstance(spec, str) else spec
        if not spec or not isinstance(spec, str):
            raise VoiceError("empty voice name")
        if spec == RANDOM_VOICE:
            return None
        parts = [p.strip() for p in spec.split("&")]
        if any(p == RANDOM_VOICE for p in parts):
            raise VoiceError("'random' cannot be mixed with other voices")
        return [self.get(p) for p in parts]

    def add(self, name: str, clips: Sequence[str | os.PathLike], validate: Callable[[Path], None] | None = None,
            overwrite: bool = False) -> Voice:
        """Copy `clips` into a new voice folder in the user library, validating each clip first."""
        name = validate_name(name)
        if name == RANDOM_VOICE:
            raise VoiceError("'random' is reserved")
        if not clips:
            raise VoiceError("give at least one audio clip")
        paths = [Path(c) for c in clips]
        for p in paths:
            if not p.is_file():
                raise VoiceError(f"clip not found: {p}")
            if p.suffix.lower() not in AUDIO_EXTENSIONS:
                raise VoiceError(f"{p}: not an audio file ({', '.join(AUDIO_EXTENSIONS)})")
            if validate is not None:
                try:
                    validate(p)
                except AudioError as exc:
                    raise VoiceError(f"clip {p} is not usable: {exc}") from exc
        folder = self.user_folder / name
        if folder.exists():
            if not overwrite:
                raise VoiceError(f"voice {name!r} already exists at {folder}")
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for i, p in enumerate(paths):
            shutil.copy2(p, folder / f"{i:02d}_{p.name}")
        return _scan_folder(name, folder)

    def remove(self, name: str) -> None:
        name = validate_name(name)
        folder = self.user_folder / name
        if not folder.is_dir():
            raise VoiceError(f"unknown voice {name!r} in {self.user_folder}")
        shutil.rmtree(folder)


class LatentCache:
    """Conditioning latents per (model, voice fingerprint), as safetensors under $HARE_HOME/cache/latents."""

    def __init__(self, root: Path | None = None):
        self.root = root or hare_home() / "cache" / "latents"

    def _path(self, model_id: str, voice: Voice) -> Path:
        safe_model = re.sub(r"[^A-Za-z0-9_.-]", "_", model_id)
        return self.root / safe_model / f"{voice.name}@{voice.fingerprint()}.safetensors"

    def get_or_compute(self, model_id: str, voice: Voice, compute: Callable[[Voice], dict[str, torch.Tensor]],
                       keys: Iterable[str] = ()) -> dict[str, torch.Tensor]:
        """The cached tensors for (model, voice), computing and storing them when missing, stale, or lacking
        one of `keys` (an entry written by an older Hare that cached less)."""
        from safetensors.torch import load_file, save_file

        path = self._path(model_id, voice)
        if path.is_file():
            try:
                cached = load_file(str(path))
            except Exception as exc:  # a corrupt cache entry is recomputed, never trusted
                log.warning("ignoring unreadable latent cache %s: %s", path, exc)
            else:
                if all(k in cached for k in keys):
                    return cached
        tensors = compute(voice)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, path)
        for stale in path.parent.glob(f"{voice.name}@*.safetensors"):
            if stale != path:
                stale.unlink(missing_ok=True)
        return tensors


def load_latents_file(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a voice's precomputed latents (safetensors with tensors `ar` and `diffusion`)."""
    from safetensors.torch import load_file

    try:
        t = load_file(str(path))
        return t["ar"], t["diffusion"]
    except Exception as exc:
        raise VoiceError(f"cannot read voice latents {path}: {exc}") from exc
