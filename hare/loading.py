"""Model resolution: what a model name or folder means (the registry, a models folder, the packaged hare-mini),
its `model.json` (default voice and settings), its bundled voices, and `load_model`, which builds the
`TextToSpeech` from it. The CLI and the server resolve models through here too."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Callable

from hare.devices import resolve_device
from hare.errors import CheckpointError, ModelNotFoundError, SettingsError


@dataclasses.dataclass
class ModelSource:
    """Where a model's files come from and what they say about themselves.

    model_id: the key of its voice-latent cache (changes when its files do); default_voice: the voice used
    when a request names none; bundled_voices: voice folders that come with the model; settings: its
    `model.json` settings (its defaults under every preset); loader: kind -> the loaded network;
    cpu_defaults: its `model.json` load options on a CPU (`quantize`, `dtype`), used where the caller names
    neither."""

    model_id: str
    default_voice: str
    bundled_voices: list[Path]
    settings: dict
    loader: Callable[[str], object]
    cpu_defaults: dict = dataclasses.field(default_factory=dict)


def resolve_model(name_or_dir: str | os.PathLike = "hare-mini",
                  models_dir: str | os.PathLike | None = None) -> ModelSource:
    """A registered model name (downloaded and converted on first load) or a folder of model files.

    A folder may hold official-layout Tortoise files (autoregressive.pth, clvp2.pth, ...) or Hare safetensors
    (autoregressive.safetensors + .json, ...), a `voices/` library (its voice `default`, if any, becomes the
    default voice) and a `model.json` ({"default_voice": ..., "settings": {...}}). `models_dir` overrides where
    the files are looked for. Reads no weights."""
    from hare import checkpoints

    directory = models_dir if models_dir is not None else (name_or_dir if Path(name_or_dir).is_dir() else None)
    bundled: list[Path] = []
    model_dir = None  # a folder whose model.json may set the default voice and settings
    if directory is not None:
        directory = Path(directory)
        if not directory.is_dir():
            raise ModelNotFoundError(f"models folder not found: {directory}")
        # keyed on the folder's files too: replaced weights must not reuse the old weights' voice latents
        model_id = f"dir-{directory.resolve()}-{checkpoints.files_stamp(directory)}"
        model_dir = directory
        default_voice = "random"
        if (directory / "voices").is_dir():
            bundled.append(directory / "voices")
            if (directory / "voices" / "default").is_dir():
                default_voice = "default"

        def loader(kind):
            return checkpoints.load_kind_from_dir(directory, kind)
    else:
        name = str(name_or_dir)
        spec = checkpoints.REGISTRY.get(name)
        if spec is None:
            raise ModelNotFoundError(
                f"unknown model {name!r}; known models: {', '.join(checkpoints.REGISTRY)} (or pass a folder)")
        model_id = name
        default_voice = spec.default_voice
        if spec.package_dir is not None:
            model_dir = checkpoints.package_path(spec.package_dir)
            bundled.append(model_dir / "voices")
            # bundled weights change with the package: key the voice-latent cache on their contents
            model_id = f"{name}-{checkpoints.files_digest(model_dir)}"

        def loader(kind):
            return checkpoints.load(checkpoints.fetch(kind, spec))[0]

    settings, cpu_defaults = {}, {}
    if model_dir is not None and (model_dir / "model.json").is_file():
        try:
            meta = json.loads((model_dir / "model.json").read_text())
            settings = dict(meta.get("settings", {}))
            default_voice = meta.get("default_voice", default_voice)
            cpu_defaults = dict(meta.get("cpu_defaults", {}))
        except (ValueError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"invalid {model_dir / 'model.json'}: {exc}") from None
        unknown = sorted(set(cpu_defaults) - {"quantize", "dtype"})
        if unknown or cpu_defaults.get("quantize", "none") not in QUANTIZE or \
                cpu_defaults.get("dtype", "fp32") not in DTYPES:
            raise CheckpointError(f"invalid {model_dir / 'model.json'}: cpu_defaults takes quantize "
                                  f"({', '.join(QUANTIZE)}) and dtype ({', '.join(DTYPES)}), got {cpu_defaults}")
    return ModelSource(model_id, default_voice, bundled, settings, loader, cpu_defaults)


QUANTIZE = ("none", "int8")  # load_model's `quantize` values ("none" and None: float weights)
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # its `dtype` values: their torch dtypes


def load_options(source: ModelSource, device, quantize: str | None, dtype: str | None) -> tuple[str | None, str]:
    """The (quantize, dtype) a model loads with: what the caller names; where it names neither and the
    device is a CPU, the model's `cpu_defaults` (hare-mini: int8 weights and a bfloat16 KV cache); else float
    weights in fp32. quantize "none" is None."""
    if quantize is not None and quantize not in QUANTIZE:
        raise SettingsError(f"quantize must be one of {', '.join(QUANTIZE)} (got {quantize!r})")
    if dtype is not None and dtype not in DTYPES:
        raise SettingsError(f"dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
    if quantize is None and dtype is None and resolve_device(device).type == "cpu":
        quantize, dtype = source.cpu_defaults.get("quantize"), source.cpu_defaults.get("dtype")
    return (None if quantize in (None, "none") else quantize), (dtype or "fp32")


def load_model(name_or_dir: str | os.PathLike = "hare-mini", *, models_dir: str | os.PathLike | None = None,
               device=None, voices_dirs=(), progress: bool = False, quantize: str | None = None,
               dtype: str | None = None, pack: bool = True, source: ModelSource | None = None):
    """Load a TextToSpeech by registered name or from a folder of model files (`resolve_model`; or the
    `source` a caller has already resolved).

    The default model, `hare-mini`, ships inside the package; `tortoise-v2` is downloaded once from the
    Hugging Face hub. `pack` (on a CPU): pre-pack the float32 linear layers for oneDNN
    (`hare.models.packed`), same results to float rounding, several times faster on CPUs where the default
    BLAS is slow. `quantize="int8"` (CPU): int8 weights for the GPT, the CLVP and (when packed) the diffusion
    decoder, the fast path (`"none"`: float weights); `dtype`: "fp32" (exact), "bf16" or "fp16" for the AR,
    rerank and latent stages (on a CPU with `quantize="int8"`, "bf16" is the GPT's KV cache: the int8 kernels
    read float32; and on a CPU with bf16 matrix hardware the HiFi-GAN generators and the speller run in bf16
    too). Where neither is named, a model's `model.json` may choose them for CPUs (`cpu_defaults`; hare-mini:
    int8 and bf16); name `dtype="fp32"` (or `quantize="none"`) for float32 weights and arithmetic throughout.
    """
    from tqdm.auto import tqdm

    from hare import checkpoints
    from hare.pipeline import TextToSpeech
    from hare.voices import VoiceLibrary

    resolve_device(device)  # an unavailable device fails before any weights are read
    source = source or resolve_model(name_or_dir, models_dir)
    quantize, dtype = load_options(source, device, quantize, dtype)
    models = {kind: source.loader(kind) for kind in tqdm(checkpoints.INFERENCE_KINDS, desc="loading models",
                                                         leave=False, file=sys.stderr, disable=not progress)}
    return TextToSpeech(gpt=models["autoregressive"], clvp=models["clvp2"], diffusion=models["diffusion_decoder"],
                        vocoder=models["vocoder"], voices=VoiceLibrary.default(voices_dirs, source.bundled_voices),
                        model_id=source.model_id, device=device, loader=source.loader, quantize=quantize,
                        dtype=dtype, default_voice=source.default_voice, default_settings=source.settings,
                        pack=pack)
