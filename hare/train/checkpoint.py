"""The training checkpoint format: `<out_dir>/checkpoints/step_XXXXXXXX.pt` written atomically with a SHA-256
beside it, read back only when the checksum and the format match, listed newest first, and exported to Hare
safetensors; and a fingerprint of a model's weights.

A checkpoint holds the models, optimisers, schedulers, EMA, AMP scaler, every rank's random generators (python,
numpy, torch, cuda) and the data position (epoch, batches consumed). It is written to a temporary file and
renamed, the `.sha256` first, so a killed run never leaves a half-written checkpoint that looks valid; one that
fails its checksum or cannot be read is reported and not loaded.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from hare.errors import CheckpointError
from hare.paths import sha256_file
from hare.train import TrainingError
from hare.train.objectives import make_objective


CHECKPOINT_FORMAT = "hare-train-checkpoint"
CHECKPOINT_VERSION = 1
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 over a model's state (names, dtypes, shapes and bytes): equal only for identical weights."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def write_checkpoint(state: Mapping, path: Path) -> Path:
    """torch.save to a temporary file, then rename; a `.sha256` beside it is renamed in place first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(dict(state), f)
        f.flush()
        os.fsync(f.fileno())
    digest = sha256_file(tmp)
    side = path.with_name(path.name + ".sha256")
    side_tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")
    side_tmp.write_text(f"{digest}  {path.name}\n")
    os.replace(side_tmp, side)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a training checkpoint after checking its SHA-256; CheckpointError (not loaded) if it is corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    side = path.with_name(path.name + ".sha256")
    if not side.is_file():
        raise CheckpointError(f"checkpoint {path} has no checksum file ({side.name}); it was not written "
                              "completely and is not loaded")
    expected = side.read_text().split()[0] if side.read_text().strip() else ""
    actual = sha256_file(path)
    if actual != expected:
        raise CheckpointError(f"checkpoint {path} is corrupt (SHA-256 {actual[:12]}... does not match the recorded "
                              f"{expected[:12]}...); not loaded")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc.__class__.__name__}: {exc}); not loaded") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a Hare training checkpoint; not loaded")
    return state


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of the step_*.pt files in `directory`, newest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_FILE.match(p.name))]
    return sorted(found, reverse=True)


def export_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, ema: bool = True) -> Path:
    """A training checkpoint (`checkpoints/step_*.pt`) -> Hare safetensors of its main network in `out_dir`
    (the EMA weights when the run keeps them), as `export` writes at the end of training."""
    from hare import checkpoints
    from hare.checkpoints import load_strict

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        cfg = state["config"]
        # the network's own config as trained (with `train.init` it differs from the config file's model section)
        obj = make_objective(state["objective"], state.get("model_config") or cfg.get("model"), cfg.get("options"))
    except (OSError, KeyError, RuntimeError, pickle.UnpicklingError) as exc:
        raise TrainingError(f"cannot read training checkpoint {checkpoint}: {exc}") from None
    models = obj.build_models()
    obj.prepare_for_training(models)
    for name, module in models.items():
        load_strict(module, state["models"][name], what=f"checkpoint {checkpoint} ({name})")
    if ema and state.get("ema"):
        main = models[obj.main_model()]
        own = main.state_dict()
        main.load_state_dict({k: v.to(own[k].dtype) for k, v in state["ema"]["shadow"].items()})
    module, kind, config = obj.export(models)
    return checkpoints.save(module, kind, config, Path(out_dir) / kind)
