"""Is this clip from Tortoise? Tortoise v3's provenance classifier (`is_this_from_tortoise.py`), in Hare.

`detect(audio)` returns the probability that Tortoise made a clip, computed as the reference does: the audio
as mono 24 kHz in [-1, 1] (`hare.audio.load_audio`, which reads WAV, FLAC, OGG/Opus and MP3 and resamples as
the reference does), its first 220 000 samples (~9.2 s), softmax of the classifier's two logits, class 0.

The classifier's weights come like every other official file: `classifier.pth` of the `tortoise-v2` model
(downloaded from the Hugging Face hub and converted to Hare safetensors once, under $HARE_HOME/models), or
a folder of model files (`classifier.safetensors`, Hare's format with its own config, or `classifier.pth`, the
official layout at the official sizes). The loaded classifier is kept, so that later calls only run it.

Clips shorter than `MIN_SECONDS` or silent where they are judged are refused (`AudioError`, naming the clip):
the classifier has nothing to go on, and its answer would look like a verdict.

This module imports torch only when used. The package exports the function `detect` under the module's own
name, so `hare.detect` is the function: reach the module's other names with `from hare.detect import ...`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hare.errors import AudioError, CheckpointError, ModelNotFoundError

if TYPE_CHECKING:
    import torch

    from hare.models.classifier import ProvenanceClassifier

DEFAULT_MODEL = "tortoise-v2"  # the registered model whose files hold the official classifier.pth
MIN_SECONDS = 0.5

_lock = threading.Lock()
_loaded: dict[str, tuple[tuple, Any]] = {}  # resolved file -> (its stamp, the classifier)


def _stamp(path: Path) -> tuple:
    """Changes whenever the weights (or a safetensors' config beside them) are replaced."""
    files = [path, path.with_suffix(".json")] if path.suffix == ".safetensors" else [path]
    return tuple((f.stat().st_size, f.stat().st_mtime_ns) if f.exists() else None for f in files)


def _classifier_file(model: str | os.PathLike | None) -> Path:
    """The weights file `model` names: a registered model name, a folder of model files, or a file."""
    from hare import checkpoints

    model = DEFAULT_MODEL if model is None else model
    if isinstance(model, str) and model in checkpoints.REGISTRY and not Path(model).exists():
        return checkpoints.fetch("classifier", checkpoints.REGISTRY[model])
    path = Path(model)
    if path.is_dir():
        found = checkpoints.find_in_dir(path, "classifier")
        if found is None:
            raise ModelNotFoundError(f"no classifier model in {path}: expected classifier.safetensors (Hare) or "
                                     f"{checkpoints.OFFICIAL_FILES['classifier']} (official Tortoise layout)")
        return found
    if path.is_file():
        return path
    if isinstance(model, str) and not path.suffix and os.sep not in model:
        raise ModelNotFoundError(f"unknown model {model!r}; known models: {', '.join(checkpoints.REGISTRY)} "
                                 "(or pass a folder with classifier.pth or classifier.safetensors)")
    raise ModelNotFoundError(f"models folder not found: {path}")


def _load_file(path: Path) -> ProvenanceClassifier:
    from hare import checkpoints

    if path.suffix == ".safetensors":
        model, kind, _ = checkpoints.load(path)
        if kind != "classifier":
            raise CheckpointError(f"{path} holds a {kind} model, not the classifier")
        return model
    return checkpoints.load_official_file("classifier", path)  # official sizes, strictly


def load_classifier(model: str | os.PathLike | None = None) -> ProvenanceClassifier:
    """The provenance classifier (eval mode, CPU), loaded once per weights file and kept.

    `model`: None or a registered model name (default `tortoise-v2`: its classifier.pth, downloaded and
    converted on first use), a folder holding classifier.safetensors or classifier.pth, or such a file.
    Raises ModelNotFoundError (missing, not downloadable) or CheckpointError (corrupt, wrong network or size).
    """
    path = _classifier_file(model).resolve()
    stamp = _stamp(path)
    with _lock:
        cached = _loaded.get(str(path))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        classifier = _load_file(path)
        _loaded[str(path)] = (stamp, classifier)
        return classifier


def _raw_clip(audio, sample_rate: int | None, target_rate: int) -> torch.Tensor:
    import numpy as np
    import torch

    from hare.audio import resample_sinc

    if sample_rate is None:
        raise AudioError("raw audio needs its sample_rate (a file's own rate is read from the file)")
    if isinstance(audio, np.ndarray):
        wav = torch.from_numpy(np.ascontiguousarray(audio))
    elif isinstance(audio, torch.Tensor):
        wav = audio
    else:
        raise TypeError(f"audio must be a path, a binary file, a tensor or an ndarray, not {type(audio).__name__}")
    if not wav.is_floating_point():
        raise AudioError(f"expected floating-point samples in [-1, 1], got {wav.dtype} (scale integer PCM first)")
    while wav.dim() > 1 and wav.shape[0] == 1:
        wav = wav[0]
    if wav.dim() != 1:
        raise AudioError(f"expected mono audio, shape (samples,), got shape {tuple(audio.shape)}")
    if not torch.isfinite(wav).all():
        raise AudioError("the audio contains NaN or infinite samples")
    return resample_sinc(wav.detach().float().cpu(), int(sample_rate), target_rate)


def prepare_clip(audio, sample_rate: int | None = None, rate: int = 24000, max_samples: int = 220000,
                 min_seconds: float = MIN_SECONDS) -> torch.Tensor:
    """What the classifier judges: the clip as mono float32 at `rate`, its first `max_samples` samples.

    `audio`: a path or binary file of audio (loaded and resampled as the reference loads it, clipped to
    [-1, 1]), or raw samples, a 1-D tensor or ndarray (or (1, samples)) at `sample_rate`, taken as they are.
    Raises AudioError (naming the file) for unreadable, empty, shorter than `min_seconds` or silent audio.
    """
    from hare.audio import SILENCE_PEAK, load_audio

    if isinstance(audio, (str, os.PathLike)) or hasattr(audio, "read"):
        if sample_rate is not None:
            raise TypeError("sample_rate is for raw audio only: a file's own rate is read from the file")
        name = str(audio) if isinstance(audio, (str, os.PathLike)) else str(getattr(audio, "name", "audio stream"))
        wav = load_audio(audio, rate)
    else:
        name = "audio"
        wav = _raw_clip(audio, sample_rate, rate)
    seconds = wav.shape[-1] / rate
    if seconds < min_seconds:
        raise AudioError(f"{name}: too short to judge ({seconds:.2f} s; at least {min_seconds:g} s)")
    judged = wav[:max_samples]
    if float(judged.abs().max()) < SILENCE_PEAK:
        where = f" in its first {max_samples / rate:.1f} s, the part judged" if wav.shape[-1] > max_samples else ""
        raise AudioError(f"{name}: silent (peak below {SILENCE_PEAK:g}{where}): nothing to judge")
    return judged


def score(classifier: ProvenanceClassifier, wav: torch.Tensor) -> float:
    """The probability that Tortoise made `wav` (a prepared clip, see `prepare_clip`)."""
    import torch

    weight = next(classifier.parameters())
    with torch.inference_mode():
        return float(classifier.prob_tortoise(wav.to(weight.device, weight.dtype)[None, None])[0])


def detect(audio, sample_rate: int | None = None, model=None) -> float:
    """Probability (0 to 1) that Tortoise made a clip, as Tortoise v3's `is_this_from_tortoise.py` computes it.

    `audio`: a path (or binary file) of audio in any format `hare.audio.load_audio` reads, or raw mono
    samples (a 1-D tensor or ndarray, floats in [-1, 1]) with their `sample_rate`. The clip is resampled to
    24 kHz and its first 220 000 samples (~9.2 s) are judged. `model`: None (the official classifier of
    `tortoise-v2`, downloaded once), a registered model name, a folder holding classifier.safetensors or
    classifier.pth, such a file, or a loaded `ProvenanceClassifier`.

    Raises AudioError for unusable audio (unreadable, shorter than 0.5 s, silent), ModelNotFoundError or
    CheckpointError for missing or broken weights.
    """
    from hare.models.classifier import ProvenanceClassifier

    classifier = model if isinstance(model, ProvenanceClassifier) else load_classifier(model)
    config = classifier.config
    return score(classifier, prepare_clip(audio, sample_rate, config.sample_rate, config.max_samples))
