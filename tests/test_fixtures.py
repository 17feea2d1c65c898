"""Reproduce every reference fixture case under $HARE_FIXTURES and $HARE_FIXTURES_V3 (`cases/` and `cases-v3/`):
one test per (case, output).

Default tolerances (fixtures/README.md): model outputs atol=rtol=1e-4 in fp32; a runner may state others
with a reason (audio front ends). Token ids and codes must match exactly.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXTURES, FIXTURES_V3
from fixture_runners import RUNNERS


FOLDERS = {"": FIXTURES, "v3/": FIXTURES_V3}  # case-name prefix -> folder


def _case_dirs(folder: Path = FIXTURES) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if (p / "meta.json").is_file())


def _case_path(case_name: str) -> Path:
    prefix = "v3/" if case_name.startswith("v3/") else ""
    return FOLDERS[prefix] / case_name[len(prefix):]


def _params():
    params = []
    for prefix, folder in FOLDERS.items():
        params += _folder_params(prefix, folder)
    return params


def _folder_params(prefix: str, folder: Path):
    params = []
    for case in _case_dirs(folder):
        io_path = case / "io.safetensors"
        if io_path.is_file():
            names = sorted(k[len("output."):] for k in load_file(str(io_path)) if k.startswith("output."))
        else:  # e.g. the text case keeps inputs and outputs in meta.json: the runner names its checks
            meta = json.loads((case / "meta.json").read_text())
            runner = RUNNERS.get(meta["model"])
            names = [f"meta:{n}" for n in runner.meta_outputs(meta)] if runner is not None else ["meta:all"]
        for name in names:
            params.append(pytest.param(prefix + case.name, name, id=f"{prefix}{case.name}-{name}"))
    return params


@lru_cache(maxsize=None)
def _run_case(case_name: str):
    case = _case_path(case_name)
    meta = json.loads((case / "meta.json").read_text())
    runner = RUNNERS.get(meta["model"])
    if runner is None:
        raise AssertionError(f"no fixture runner for model {meta['model']!r} (case {case_name})")
    io_path = case / "io.safetensors"
    tensors = load_file(str(io_path)) if io_path.is_file() else {}
    inputs = {k[len("input."):]: v for k, v in tensors.items() if k.startswith("input.")}
    expected = {k[len("output."):]: v for k, v in tensors.items() if k.startswith("output.")}
    with torch.no_grad():
        got = runner.run(case, meta, inputs)
    return runner, expected, got


def test_fixture_cases_exist():
    assert _case_dirs(), f"no fixture cases found under {FIXTURES}"


def test_v3_fixture_cases_exist():
    names = {p.name for p in _case_dirs(FIXTURES_V3)}
    assert {"hifi_decoder", "classifier"} <= names, f"the v3 fixture cases are missing under {FIXTURES_V3}"


@pytest.mark.parametrize("case_name,output", _params())
def test_fixture(case_name: str, output: str):
    runner, expected, got = _run_case(case_name)
    if output.startswith("meta:"):  # the runner checked meta.json's own expectations: a list of failures
        failures = got[output[len("meta:"):]]
        assert not failures, "\n".join(failures)
        return
    assert output in got, f"runner for {case_name} did not produce output {output!r}"
    want, have = expected[output], got[output].detach().cpu()
    assert tuple(have.shape) == tuple(want.shape), f"{output}: shape {tuple(have.shape)} != {tuple(want.shape)}"
    if output in getattr(runner, "EXACT", ()) or not want.is_floating_point():
        assert torch.equal(have.to(want.dtype), want), f"{output}: {have.tolist()} != {want.tolist()}"
        return
    atol, rtol = getattr(runner, "TOLERANCES", {}).get(output, (1e-4, 1e-4))
    have = have.to(want.dtype)
    err = (have - want).abs().max().item()
    assert torch.allclose(have, want, atol=atol, rtol=rtol), f"{output}: max abs error {err:.3g} (atol {atol}, rtol {rtol})"
