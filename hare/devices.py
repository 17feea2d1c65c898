"""Which torch device a synthesis runs on: the default (CUDA if available, else the CPU) and a user's choice
checked against what this build and machine offer, before any weights are read."""

from __future__ import annotations

import torch

from hare.errors import SettingsError


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device=None) -> torch.device:
    """`device` (None: cuda if available, else cpu) as a torch.device this machine can run on; a device this
    build or machine lacks is a SettingsError naming it, not a traceback from deep inside the first `.to()`."""
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SettingsError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SettingsError(f"device {device!r} is not available: this PyTorch build has no CUDA support or "
                                f"no GPU is visible (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SettingsError(f"device {device!r} is not available: this machine has "
                                f"{torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise SettingsError(f"device {device!r} is not available: MPS needs Apple silicon and a PyTorch "
                                f"build with MPS (use --device cpu)")
    elif dev.type != "cpu":
        raise SettingsError(f"device {device!r} is not supported: use cpu, cuda, cuda:N or mps")
    return dev
