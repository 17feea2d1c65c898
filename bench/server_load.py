"""Load test of `hare serve` on loopback: bounded, self-stopping, loopback only.

Starts the server in this process (uvicorn on 127.0.0.1, a free port) and fires `--requests` concurrent
`POST /v1/audio/speech` requests in three phases:

1. capacity: the queue holds every request; all must answer 200. Reports requests/s and p50/p95 latency.
2. overload: the queue holds `--overload-queue`; the rest must be answered 503 with Retry-After at once.
   Every request is accounted for (200 or 503, nothing lost, no other status, no client error).
3. memory: `--rounds` more capacity rounds; the process's RSS after each (server and clients share it).

    .venv/bin/python bench/server_load.py --model tiny      # the tiny random-weight pipeline (real networks)
    .venv/bin/python bench/server_load.py --model fake      # a sine-wave stand-in: the server's own overhead

Prints a JSON report (also written with --out). Every request has a timeout and the whole run a deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def live_server(app):
    from hare.server import running_server

    return running_server(app, log_level="error")


def fire(url: str, n: int, body: dict, timeout: float) -> dict:
    """`n` concurrent requests (one thread each, released together); their statuses and latencies."""
    import httpx

    results: list[dict] = [{} for _ in range(n)]
    start = threading.Barrier(n + 1)

    def one(i: int):
        with httpx.Client(timeout=timeout) as client:
            start.wait()
            t0 = time.perf_counter()
            try:
                r = client.post(url + "/v1/audio/speech", json={**body, "input": f"{body['input']} Number {i}."})
                results[i] = {"status": r.status_code, "seconds": time.perf_counter() - t0, "bytes": len(r.content),
                              "retry_after": r.headers.get("retry-after"),
                              "code": r.json()["error"]["code"] if r.status_code >= 400 else None}
            except Exception as exc:  # a lost request: reported, never hidden
                results[i] = {"status": None, "seconds": time.perf_counter() - t0, "error": repr(exc)}

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(timeout + 5)
    wall = time.perf_counter() - t0
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r.get("status"))] = statuses.get(str(r.get("status")), 0) + 1
    ok = sorted(r["seconds"] for r in results if r.get("status") == 200)
    return {"requests": n, "wall_s": round(wall, 3), "statuses": statuses,
            "ok_per_s": round(len(ok) / wall, 3) if wall > 0 else None,
            "p50_s": round(statistics.median(ok), 3) if ok else None,
            "p95_s": round(ok[min(len(ok) - 1, int(0.95 * len(ok)))], 3) if ok else None,
            "busy_retry_after": sorted({r["retry_after"] for r in results if r.get("status") == 503}),
            "lost": [r for r in results if r.get("status") not in (200, 503)],
            "audio_bytes_min": min((r["bytes"] for r in results if r.get("status") == 200), default=0)}


def make_tts(kind: str, delay: float):
    """(tts, server overrides) for `fake` (sine per sentence, `delay` s per chunk) or `tiny` (real pipeline)."""
    home = Path(tempfile.mkdtemp(prefix="hare-load-"))
    os.environ["HARE_HOME"] = str(home / "home")
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import write_voice

    write_voice(home / "voices" / "tone")
    if kind == "tiny":
        from tiny_models import tiny_tts

        return tiny_tts(home / "voices"), {}  # the request's preset (ultra_fast: 16 candidates, 30 steps)
    from hare.voices import VoiceLibrary
    from test_server import FakeTTS

    return FakeTTS(VoiceLibrary([home / "voices"]), delay=delay), {}


def run(kind: str = "fake", requests: int = 32, workers: int = 1, overload_queue: int = 4, rounds: int = 3,
        round_requests: int | None = None, delay: float = 0.02, timeout: float = 600.0,
        response_format: str = "wav") -> dict:
    from hare.server import create_app

    tts, overrides = make_tts(kind, delay)
    body = {"input": "Hello there, this is a load test.", "voice": "tone", "response_format": response_format,
            "seed": 1, "preset": "ultra_fast"}
    report: dict = {"model": kind, "workers": workers, "requests": requests, "cpu_count": os.cpu_count()}
    # warm up once (conditioning latents, lazy imports) so that the phases measure steady serving
    app = create_app(tts, workers=workers, max_queue=requests, overrides=overrides)
    with live_server(app) as url:
        fire(url, 1, body, timeout)
        report["rss_mb_start"] = round(rss_mb(), 1)
        report["capacity"] = fire(url, requests, body, timeout)
        report["capacity"]["pool"] = app.state.pool.stats()
        rss = []
        for _ in range(rounds):
            fire(url, round_requests or requests, body, timeout)
            rss.append(round(rss_mb(), 1))
        report["rss_mb_after_rounds"] = rss
    if kind == "fake":  # long enough jobs that the whole burst arrives while the first ones still run
        tts.delay = max(delay, 0.5)
    app = create_app(tts, workers=workers, max_queue=overload_queue, overrides=overrides)
    with live_server(app) as url:
        report["overload"] = fire(url, requests, body, timeout)
        report["overload"]["max_queue"] = overload_queue
        report["overload"]["pool"] = app.state.pool.stats()
    report["rss_mb_end"] = round(rss_mb(), 1)
    return report


def check(report: dict) -> list[str]:
    """What the report must show; an empty list when all is well."""
    problems = []
    cap, over = report["capacity"], report["overload"]
    if cap["statuses"] != {"200": report["requests"]}:
        problems.append(f"capacity phase: not every request succeeded: {cap['statuses']}")
    if cap["lost"] or over["lost"]:
        problems.append(f"lost requests: {cap['lost'] + over['lost']}")
    served = report["workers"] + over["max_queue"]
    if over["statuses"].get("503", 0) < report["requests"] - served or over["statuses"].get("200", 0) < 1:
        problems.append(f"overload phase: expected >= {report['requests'] - served} 503s: {over['statuses']}")
    if over["statuses"].get("503") and not all(v and int(v) >= 1 for v in over["busy_retry_after"]):
        problems.append("503 without a Retry-After")
    rss = report["rss_mb_after_rounds"]
    if len(rss) >= 2 and rss[-1] - rss[0] > 64:
        problems.append(f"memory grew {rss[-1] - rss[0]:.0f} MB over {len(rss)} rounds")
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("fake", "tiny"), default="fake")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--overload-queue", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--round-requests", type=int, default=None, help="requests per memory round (default --requests)")
    p.add_argument("--delay", type=float, default=0.02, help="fake model: seconds per chunk")
    p.add_argument("--timeout", type=float, default=600.0, help="per request")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    report = run(args.model, args.requests, args.workers, args.overload_queue, args.rounds, args.round_requests,
                 args.delay, args.timeout)
    report["problems"] = check(report)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
