"""A bounded, self-stopping load test of the server on loopback (bench/server_load.py with the fake model):
32 concurrent requests all answered when the queue can hold them, 503 + Retry-After for the overflow when it
cannot, nothing lost, memory steady. `bench/server_load.py --model tiny` runs the same on the real pipeline."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

BENCH = Path(__file__).resolve().parent.parent / "bench" / "server_load.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("server_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_32_concurrent_requests(monkeypatch, tmp_path):
    monkeypatch.setenv("HARE_HOME", str(tmp_path))
    bench = load_bench()
    report = bench.run("fake", requests=32, workers=2, overload_queue=4, rounds=2, delay=0.02, timeout=60)
    print(json.dumps({k: report[k] for k in ("capacity", "overload", "rss_mb_after_rounds")}, indent=1))
    assert bench.check(report) == []
    cap, over = report["capacity"], report["overload"]
    assert cap["statuses"] == {"200": 32} and cap["pool"]["completed"] >= 33 and cap["pool"]["rejected"] == 0
    assert over["statuses"]["200"] + over["statuses"]["503"] == 32 and over["statuses"]["503"] >= 32 - 6
    assert over["pool"]["rejected"] == over["statuses"]["503"]
    assert cap["p50_s"] <= cap["p95_s"] < 60 and cap["ok_per_s"] > 0
    assert cap["audio_bytes_min"] > 44
