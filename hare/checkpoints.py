"""Checkpoints: official Tortoise state dicts -> Hare modules (strict), and Hare's own safetensors format.

`convert(kind, state_dict, reference_kwargs=None)` is the only way official weights enter Hare. The key
mapping for each kind lives in `hare.convert.<module>`; this file adds the strict check (every key used,
none missing, shapes equal) and the error that names the offending keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from hare.convert import KIND_MODULES
from hare.paths import hare_home, sha256_file
from hare.errors import CheckpointError
from hare.errors import ModelNotFoundError as ModelNotFound

log = logging.getLogger(__name__)

KINDS = tuple(KIND_MODULES)

# The constructor arguments the reference uses for the official v2 files (TORTOISE.md).
OFFICIAL_KWARGS: dict[str, dict[str, Any]] = {
    "autoregressive": dict(
        layers=30, model_dim=1024, heads=16, max_mel_tokens=604, max_text_tokens=402,
        max_conditioning_inputs=2, number_text_tokens=255, start_text_token=255,
        number_mel_codes=8194, start_mel_token=8192, stop_mel_token=8193, mel_length_compression=1024,
    ),
    "diffusion_decoder": dict(
        model_channels=1024, num_layers=10, in_channels=100, out_channels=200, in_latent_channels=1024,
        in_tokens=8193, dropout=0, use_fp16=False, num_heads=16, layer_drop=0, unconditioned_percentage=0,
    ),
    "clvp2": dict(
        dim_text=768, dim_speech=768, dim_latent=768, num_text_tokens=256, text_enc_depth=20,
        text_seq_len=350, text_heads=12, num_speech_tokens=8192, speech_enc_depth=20, speech_heads=12,
        speech_seq_len=430, use_xformers=True,
    ),
    "cvvp": dict(
        model_dim=512, transformer_heads=8, dropout=0, mel_codes=8192, conditioning_enc_depth=8,
        cond_mask_percentage=0, speech_enc_depth=8, speech_mask_percentage=0, latent_multiplier=1,
    ),
    "vocoder": dict(
        noise_dim=64, channel_size=32, dilations=[1, 3, 9, 27], strides=[8, 8, 4], lReLU_slope=0.2,
        kpnet_conv_size=3, hop_length=256, n_mel_channels=100,
    ),
    "rlg_auto": dict(channels=1024),
    "rlg_diffuser": dict(channels=2048),
    # tortoise-tts 3.0.0 (api_fast.py, is_this_from_tortoise.py)
    "hifi_decoder": dict(
        in_channels=1024, out_channels=1, resblock_type="1", resblock_dilation_sizes=[[1, 3, 5]] * 3,
        resblock_kernel_sizes=[3, 7, 11], upsample_kernel_sizes=[16, 16, 4, 4], upsample_initial_channel=512,
        upsample_factors=[8, 8, 2, 2], cond_channels=1024,
    ),
    "classifier": dict(
        classes=2, spec_dim=1, embedding_dim=512, depth=5, downsample_factor=4, resnet_blocks=2, attn_blocks=4,
        num_attn_heads=4, base_channels=32, dropout=0, kernel_size=5, distribute_zero_label=False,
    ),
}

# Official file name of each kind (Hugging Face repo `Manmay/tortoise-tts`).
OFFICIAL_FILES: dict[str, str] = {
    "autoregressive": "autoregressive.pth",
    "diffusion_decoder": "diffusion_decoder.pth",
    "clvp2": "clvp2.pth",
    "cvvp": "cvvp.pth",
    "vocoder": "vocoder.pth",
    "rlg_auto": "rlg_auto.pth",
    "rlg_diffuser": "rlg_diffuser.pth",
    "hifi_decoder": "hifidecoder.pth",
    "classifier": "classifier.pth",
}


def _kind_module(kind: str):
    if kind not in KIND_MODULES:
        raise CheckpointError(f"unknown checkpoint kind {kind!r}; expected one of {', '.join(KINDS)}")
    return importlib.import_module(KIND_MODULES[kind])


def config_for(kind: str, reference_kwargs: Mapping[str, Any] | None = None):
    """Hare's config dataclass for `kind`, from reference constructor arguments (None = official sizes)."""
    kwargs = dict(OFFICIAL_KWARGS.get(kind, {}) if reference_kwargs is None else reference_kwargs)
    return _kind_module(kind).config_from_reference(kwargs)


def build(kind: str, config) -> nn.Module:
    """A freshly initialised Hare module of `kind` with `config`."""
    return _kind_module(kind).build(config)


def _describe(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = "checkpoint",
                assign: bool = False, fresh: tuple[str, ...] = ()) -> None:
    """Load `state_dict` into `model`, refusing any missing, unexpected or mis-shaped key (all are listed).

    With `assign`, the checkpoint's tensors become the model's (cast to the model's dtype): used with a
    model built by `_build_empty` (uninitialised), so no time goes into an initialisation that is overwritten.
    `fresh`: key prefixes of parameters the checkpoint may lack (a head the model adds to it); the model's own
    initial values stay in them (not with `assign`).
    """
    if fresh and assign:
        raise ValueError("fresh parameters need the model's own initial values: not with assign")
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state_dict and not (fresh and k.startswith(fresh)))
    unexpected = sorted(k for k in state_dict if k not in own)
    bad_shape = sorted(
        f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(own[k].shape)})"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_describe(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_describe(unexpected)}")
    if bad_shape:
        problems.append(f"wrong shapes: {_describe(bad_shape)}")
    if problems:
        raise CheckpointError(f"{what} does not match the model: " + "; ".join(problems))
    if assign:
        state_dict = {k: (v.to(own[k].dtype) if v.is_floating_point() else v).contiguous()
                      for k, v in state_dict.items()}
    model.load_state_dict(dict(state_dict), strict=not fresh, assign=assign)


def _check_tensor_dict(state_dict: Any, kind: str) -> dict[str, torch.Tensor]:
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"{kind} checkpoint is not a state dict (got {type(state_dict).__name__})")
    wrapper = {"vocoder": "model_g", "hifigan": "generator"}.get(kind)  # training files nest the generator
    if wrapper is not None and wrapper in state_dict:
        state_dict = state_dict[wrapper]
        if not isinstance(state_dict, Mapping):
            raise CheckpointError(f"{kind} checkpoint's {wrapper!r} entry is not a state dict")
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{kind} checkpoint holds non-tensor entries: {_describe(sorted(map(str, not_tensors)))}")
    return dict(state_dict)


def convert(kind: str, state_dict: Mapping[str, Any], reference_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Build Hare's module for an official Tortoise checkpoint and load it strictly; returns it in eval mode.

    `state_dict` is what `torch.load(path, weights_only=True)` returns for the official file (the vocoder's
    may still be wrapped as {"model_g": ...} and carry weight-norm `weight_g`/`weight_v` pairs).
    `reference_kwargs` are the reference constructor arguments; None means the official sizes.
    """
    module = _kind_module(kind)
    config = config_for(kind, reference_kwargs)
    tensors = _check_tensor_dict(state_dict, kind)
    mapped = module.map_state_dict(tensors, config)
    model = _build_empty(module, config)
    load_strict(model, mapped, what=f"{kind} checkpoint", assign=True)
    return model.eval()


def _build_empty(module, config) -> nn.Module:
    """The module with uninitialised parameters, to be filled by `load_strict(assign=True)`: no time goes into a
    random initialisation that is overwritten. Built on the CPU with `torch.nn.init`'s functions skipped, not on
    the meta device: a meta tensor's arithmetic (a rotary table's buffer, `normal_`) runs PyTorch's Python
    reference ops, whose first use imports torch._dynamo (1.5-2.5 s of every load)."""
    with torch.device("cpu"), _skipped_init():
        return module.build(config)


_SKIP_INIT = threading.local()  # set while this thread builds an empty module
_INIT_LOCK = threading.Lock()
_INIT_NAMES = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
               "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")
_init_users = 0


def _skipping(original):
    @functools.wraps(original)
    def init(tensor, *args, **kwargs):
        if getattr(_SKIP_INIT, "on", False):
            return tensor
        return original(tensor, *args, **kwargs)
    init.hare_original = original
    return init


@contextlib.contextmanager
def _skipped_init():
    """`torch.nn.init`'s in-place initialisers do nothing in this thread for the duration (any other thread's
    calls initialise as usual); installed while at least one thread builds, then the originals are back."""
    global _init_users
    with _INIT_LOCK:
        if _init_users == 0:
            for name in _INIT_NAMES:
                if hasattr(nn.init, name):
                    setattr(nn.init, name, _skipping(getattr(nn.init, name)))
        _init_users += 1
    previous = getattr(_SKIP_INIT, "on", False)
    _SKIP_INIT.on = True
    try:
        yield
    finally:
        _SKIP_INIT.on = previous
        with _INIT_LOCK:
            _init_users -= 1
            if _init_users == 0:
                for name in _INIT_NAMES:
                    patched = getattr(nn.init, name, None)
                    if patched is not None and hasattr(patched, "hare_original"):
                        setattr(nn.init, name, patched.hare_original)


def load_official_file(kind: str, path: str | os.PathLike, reference_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """`convert` applied to an official `.pth` file, with a clear error for an unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        first = (str(exc).strip().splitlines() or [""])[0][:200]  # torch's unpickling errors run to pages
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.__class__.__name__}: {first} (a corrupt, "
                              f"truncated or foreign file: download it again)") from exc
    return convert(kind, state_dict, reference_kwargs)


# --------------------------------------------------------------------------------------------------
# Hare's own format: <name>.safetensors (weights, Hare key names) + <name>.json (kind and config)


def _config_to_json(config) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def _config_from_json(config_cls, values: Mapping[str, Any]):
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise CheckpointError(f"config has unknown fields for {config_cls.__name__}: {', '.join(unknown)}")
    def frozen(v):  # JSON lists back to (nested) tuples
        return tuple(frozen(x) for x in v) if isinstance(v, list) else v

    return config_cls(**{k: frozen(v) for k, v in values.items()})


INT8_SCALE = ":int8_scale"  # suffix of the key holding an int8-stored tensor's scales


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one float16 scale per vector along the last axis (a matrix's rows, a convolution's
    kernels): weight (..., n) -> (int8 values (..., n), float16 scales (...)). `dequantize_int8` inverts it
    to within half a step, the step being each vector's largest magnitude / 127 (at least 2^-24)."""
    w = weight.detach().float()
    largest = w.abs().amax(dim=-1)
    scale = (largest / 127).half()  # the rounded scale is the one the values are computed with
    # a tiny vector whose scale float16 flushes to 0 gets float16's smallest step (2^-24) instead
    scale = torch.where((scale == 0) & (largest > 0), torch.tensor(2.0**-24, dtype=torch.float16), scale)
    divisor = torch.where(scale > 0, scale.float(), torch.ones_like(scale, dtype=torch.float32))[..., None]
    return (w / divisor).round().clamp(-127, 127).to(torch.int8), scale


def dequantize_int8(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return values.float() * scale.float()[..., None]


def save(model: nn.Module, kind: str, config, path: str | os.PathLike, dtype: torch.dtype | None = None,
         int8: bool = False) -> Path:
    """Write `model` as `path` (.safetensors) plus a JSON config beside it; returns the weights path.

    `dtype` (e.g. torch.float16) stores the floating-point tensors smaller; `int8` stores every floating-point
    weight of two or more axes as int8 with a float16 scale per vector along its last axis (`quantize_int8`;
    about half of float16's size for convolution kernels of 7 taps or more), the rest in `dtype`. `load`
    returns float32 models either way.
    """
    from safetensors.torch import save_file

    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if int8:
        for key in [k for k, v in tensors.items() if v.is_floating_point() and v.dim() >= 2]:
            tensors[key], tensors[key + INT8_SCALE] = quantize_int8(tensors[key])
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() and not k.endswith(INT8_SCALE) else v
                   for k, v in tensors.items()}
    meta = {"kind": kind, "config_class": type(config).__name__, "config": _config_to_json(config)}
    tmp = path.with_suffix(".safetensors.tmp")
    save_file(tensors, str(tmp), metadata={"hare": json.dumps(meta)})
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[nn.Module, str, Any]:
    """Load a Hare safetensors checkpoint written by `save`; returns (model in eval mode, kind, config)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path).with_suffix(".safetensors")
    cfg_path = path.with_suffix(".json")
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if not cfg_path.is_file():
        raise CheckpointError(f"config file not found beside the weights: {cfg_path}")
    try:
        meta = json.loads(cfg_path.read_text())
        kind = meta["kind"]
        module = _kind_module(kind)
        config = _config_from_json(module.CONFIG_CLASS, meta["config"])
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"invalid config file {cfg_path}: {exc}") from exc
    try:
        tensors = load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    tensors = _dequantized(tensors, path)
    # weights stored in half precision (bundled models) are computed in float32
    tensors = {k: v.float() if v.is_floating_point() and v.dtype != torch.float32 else v for k, v in tensors.items()}
    model = _build_empty(module, config)
    load_strict(model, tensors, what=str(path), assign=True)
    return model.eval(), kind, config


def _dequantized(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """int8-stored tensors (`save(..., int8=True)`) back to float32, their scale entries removed."""
    out = {}
    for key, value in tensors.items():
        if key.endswith(INT8_SCALE):
            if key[: -len(INT8_SCALE)] not in tensors:
                raise CheckpointError(f"{path}: int8 scales {key!r} belong to no tensor")
            continue
        scale = tensors.get(key + INT8_SCALE)
        if scale is not None:
            if value.dtype != torch.int8 or scale.shape != value.shape[:-1]:
                raise CheckpointError(f"{path}: {key!r} is not int8 values of shape (..., n) for scales of shape "
                                      f"{tuple(scale.shape)} (got {value.dtype} {tuple(value.shape)})")
            value = dequantize_int8(value, scale)
        out[key] = value
    return out


# --------------------------------------------------------------------------------------------------
# Model registry, hub download with cache and checksums, one-time conversion to safetensors

INFERENCE_KINDS = ("autoregressive", "clvp2", "diffusion_decoder", "vocoder")  # always needed
# loaded when asked for (cvvp rerank, random voice, the letter score of ctc_weight, listen_candidates' ear)
OPTIONAL_KINDS = ("cvvp", "rlg_auto", "rlg_diffuser", "speller", "hifi_decoder", "listener")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A named model: where its files come from."""

    name: str
    description: str
    repo_id: str | None = None  # Hugging Face repo holding official-layout .pth files
    revision: str | None = None  # pin a commit for reproducible downloads (None = main)
    files: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(OFFICIAL_FILES))
    package_dir: str | None = None  # a folder inside the `hare` package holding Hare safetensors
    default_voice: str = "random"  # the voice used when none is asked for


REGISTRY: dict[str, ModelSpec] = {
    "tortoise-v2": ModelSpec(
        name="tortoise-v2",
        description="The official Tortoise TTS v2 weights (Hugging Face Manmay/tortoise-tts), converted once to safetensors.",
        repo_id="Manmay/tortoise-tts",
    ),
    "hare-mini": ModelSpec(
        name="hare-mini",
        description="Hare's small model trained from scratch on CPU (ships inside the package; see its model card).",
        package_dir="weights/hare-mini",
        default_voice="default",
    ),
}
DEFAULT_MODEL = "hare-mini"



class HubSource:
    """Downloads official files with huggingface_hub (its own cache under $HARE_HOME/hub)."""

    def __init__(self, repo_id: str, revision: str | None = None, cache_dir: Path | None = None):
        self.repo_id = repo_id
        self.revision = revision
        self.cache_dir = cache_dir or hare_home() / "hub"

    def url(self, filename: str) -> str:
        return f"https://huggingface.co/{self.repo_id}/resolve/{self.revision or 'main'}/{filename}"

    def download(self, filename: str) -> Path:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(self.repo_id, filename, revision=self.revision, cache_dir=str(self.cache_dir)))

    def sha256(self, filename: str) -> str | None:
        """The LFS sha256 the hub publishes for `filename` (None when it cannot be asked, e.g. offline)."""
        try:
            from huggingface_hub import HfApi

            infos = HfApi().get_paths_info(self.repo_id, [filename], revision=self.revision, expand=True)
            lfs = getattr(infos[0], "lfs", None) if infos else None
            return getattr(lfs, "sha256", None)
        except Exception as exc:  # offline or hub unreachable: the hub cache was verified when filled
            log.info("cannot ask the hub for the checksum of %s: %s", filename, exc)
            return None


def _converted_path(root: Path, kind: str) -> Path:
    return root / f"{kind}.safetensors"


def fetch(kind: str, spec: ModelSpec, source: HubSource | None = None, models_root: Path | None = None) -> Path:
    """Path of `kind`'s Hare safetensors for `spec`, downloading, verifying and converting it on first use."""
    root = (models_root or hare_home() / "models") / spec.name
    target = _converted_path(root, kind)
    if target.is_file() and target.with_suffix(".json").is_file():
        return target
    if spec.package_dir is not None:
        bundled = _converted_path(package_path(spec.package_dir), kind)
        if bundled.is_file() and bundled.with_suffix(".json").is_file():
            return bundled
        raise ModelNotFound(f"model {spec.name!r} ships no {kind} weights in the package "
                            f"({package_path(spec.package_dir)})")
    if spec.repo_id is None:
        raise ModelNotFound(f"model {spec.name!r} has no download source for {kind}")
    filename = spec.files.get(kind)
    if filename is None:
        raise ModelNotFound(f"model {spec.name!r} has no {kind} network")
    source = source or HubSource(spec.repo_id, spec.revision)
    try:
        downloaded = source.download(filename)
    except Exception as exc:
        raise ModelNotFound(
            f"{filename} for model {spec.name!r} is not cached and cannot be downloaded ({exc.__class__.__name__}). "
            f"Download {source.url(filename)} and put it in a folder passed with --models-dir DIR "
            f"(or set HARE_HOME; converted files live in {root})"
        ) from exc
    expected = source.sha256(filename)
    if expected is not None:
        actual = sha256_file(downloaded)
        if actual != expected:
            raise CheckpointError(
                f"checksum mismatch for {filename}: got sha256 {actual}, the hub says {expected}; "
                f"delete {downloaded} and try again"
            )
    log.info("converting %s to %s", downloaded, target)
    model = load_official_file(kind, downloaded)
    save(model, kind, _model_config(model), target)
    return target


def _model_config(model: nn.Module):
    config = getattr(model, "config", None)
    if config is None or not dataclasses.is_dataclass(config):
        raise TypeError(f"{type(model).__name__} must keep its config dataclass as `.config`")
    return config


def find_in_dir(directory: str | os.PathLike, kind: str) -> Path | None:
    """A model file for `kind` in a user folder: Hare safetensors (`<kind>.safetensors`) or the official .pth."""
    directory = Path(directory)
    own = _converted_path(directory, kind)
    if own.is_file():
        return own
    official = directory / OFFICIAL_FILES.get(kind, f"{kind}.pth")
    return official if official.is_file() else None


SUBSTITUTES = {"vocoder": ("hifigan",)}  # other networks that can fill a pipeline slot


def load_kind_from_dir(directory: str | os.PathLike, kind: str) -> nn.Module:
    """Load `kind` from a folder of Hare safetensors or official-layout .pth files (official sizes)."""
    path = find_in_dir(directory, kind)
    if path is None:
        raise ModelNotFound(
            f"no {kind} model in {directory}: expected {kind}.safetensors (Hare) or "
            f"{OFFICIAL_FILES.get(kind, kind + '.pth')} (official Tortoise layout)"
        )
    if path.suffix == ".safetensors":
        model, found_kind, _ = load(path)
        if found_kind != kind and found_kind not in SUBSTITUTES.get(kind, ()):
            raise CheckpointError(f"{path} holds a {found_kind} model, not {kind}")
        return model
    return load_official_file(kind, path)


def files_digest(directory: Path, pattern: str = "*.safetensors") -> str:
    """A short digest of the model files in `directory` (names and contents)."""
    h = hashlib.sha256()
    for f in sorted(Path(directory).glob(pattern)):
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()[:12]


def files_stamp(directory: Path) -> str:
    """A short, cheap key of the files at the top of `directory` (names, sizes, modification times): it
    changes whenever a model file is replaced or added, without reading gigabytes of weights."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(directory).iterdir() if p.is_file()):
        st = f.stat()
        h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


def package_path(relative: str) -> Path:
    """A folder inside the installed `hare` package (bundled models and voices)."""
    return Path(__file__).resolve().parent / relative
