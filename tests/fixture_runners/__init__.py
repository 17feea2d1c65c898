"""Runners that reproduce reference fixture cases with Hare.

Each module here declares `MODELS` (the `meta.json` "model" names it handles) and
`run(case_dir: Path, meta: dict, inputs: dict[str, Tensor]) -> dict[str, Tensor]`, returning one tensor per
`output.*` name (without the prefix), and may declare `TOLERANCES = {output_name: (atol, rtol)}` or
`EXACT = {output_name, ...}` for outputs that must match exactly (token ids, codes).
Cases without io.safetensors (text) keep expectations in meta.json: the runner then declares
`meta_outputs(meta) -> list[str]` and `run` returns, for each such name, a list of failure messages.
Weights are always loaded with `torch.load(weights_only=True)` and `hare.checkpoints.convert`.
"""

from __future__ import annotations

import importlib
import pkgutil

RUNNERS: dict[str, object] = {}

for _info in pkgutil.iter_modules(__path__):
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _model in getattr(_module, "MODELS", ()):
        RUNNERS[_model] = _module
