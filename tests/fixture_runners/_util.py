from __future__ import annotations

from pathlib import Path

import torch

from hare import checkpoints


def load_converted(case_dir: Path, meta: dict, kind: str):
    """The case's weights.pth, loaded as an official checkpoint through the converter."""
    state_dict = torch.load(case_dir / "weights.pth", map_location="cpu", weights_only=True)
    return checkpoints.convert(kind, state_dict, meta.get("kwargs"))
