"""Tortoise v3's fast path streamed: time to first audio and real-time factor for a 3-sentence paragraph.

    python bench/stream.py [--config fp32 --config int8 --config bf16 --config int8-bf16] [--first 16]
                           [--every 32] [--max-codes 60]

Official-size random weights in the official file layout (bench/.cache/official, hifidecoder.pth included),
a synthetic two-clip voice, `decoder="hifigan"` (one candidate, no rerank, no diffusion, no vocoder), each
sentence its own text chunk, each chunk streamed as its codes are sampled (`TextToSpeech.stream`). Random
weights never sample a stop token, so every chunk is `--max-codes` codes. Each configuration runs in its own
process. Prints the machine first, then per configuration: first audio, total, audio length, RTF, the
seconds per stage, and the autoregressive step against its memory roof (weight bytes read per step over the
memory bandwidth measured in the same run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

PARAGRAPH = ("The weather was cold and bright that morning. We walked along the river to the old stone bridge. "
             "Then we sat down and watched the boats go by.")
CONFIGS = {  # name -> load options
    "fp32": {},
    "int8": {"quantize": "int8"},
    "bf16": {"dtype": "bf16"},
    "int8-bf16": {"quantize": "int8", "dtype": "bf16"},  # on bf16 hardware: the HiFi-GAN decoder in bf16 too
}


def one(config: str, first: int, every: int, max_codes: int) -> dict:
    os.environ["HARE_HOME"] = tempfile.mkdtemp(prefix="hare-bench-")
    os.environ.setdefault("HARE_KERNEL_CACHE", str(HERE / ".cache" / "kernels"))
    import hare
    from machine import ar_step_bytes, memory_bandwidth_gbs

    t0 = time.perf_counter()
    tts = hare.load_model(HERE / ".cache" / "official", **CONFIGS[config])
    tts.hifi_decoder()  # loaded before the clock starts, as the other networks
    load_s = time.perf_counter() - t0
    voice = HERE / ".cache" / "voice"
    kw = dict(voice=voice, preset="ultra_fast", seed=0, decoder="hifigan", max_codes=max_codes,
              stream_first_codes=first, stream_every_codes=every, split_desired_length=40, split_max_length=60)
    list(tts.stream("Warm up.", **{**kw, "max_codes": 4}))  # first-call costs (kernels, allocator) not timed
    start = time.perf_counter()
    arrivals, audio_s, timings, chunks = [], 0.0, {}, 0
    for piece in tts.stream(PARAGRAPH, **kw):
        arrivals.append(time.perf_counter() - start)
        audio_s += piece.audio.numel() / piece.sample_rate
        timings, chunks = piece.timings, piece.settings["chunks"]
    total = time.perf_counter() - start
    codes = chunks * max_codes
    bandwidth = memory_bandwidth_gbs()
    step_bytes = ar_step_bytes(tts.gpt)
    return {"config": config, "load_s": load_s, "first_audio_s": arrivals[0], "total_s": total, "audio_s": audio_s,
            "rtf": total / audio_s, "pieces": len(arrivals), "chunks": chunks, "stages": timings,
            "ar_step_ms": 1000 * timings.get("autoregressive", 0.0) / codes,
            "roof_step_ms": 1000 * step_bytes / (bandwidth * 1e9), "weights_mb_per_step": step_bytes / 2**20,
            "bandwidth_gbs": bandwidth}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", choices=sorted(CONFIGS),
                    help="precision configurations (repeatable; default fp32, int8, bf16)")
    ap.add_argument("--first", type=int, default=16, help="codes before the first audio (default 16)")
    ap.add_argument("--every", type=int, default=32, help="codes per later piece (default 32)")
    ap.add_argument("--max-codes", type=int, default=60, help="codes per sentence (default 60, ~2.8 s)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_stream.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # a child run
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.first, args.every, args.max_codes)))
        return 0

    from machine import describe, line
    from pipeline import make_voice
    from random_official import write_all

    info = describe()
    print(line(info), flush=True)
    write_all(HERE / ".cache" / "official")
    if not (HERE / ".cache" / "voice").is_dir():
        make_voice(HERE / ".cache" / "voice")
    results = []
    for config in args.config or ["fp32", "int8", "bf16"]:
        proc = subprocess.run([sys.executable, __file__, "--one", config, "--first", str(args.first), "--every",
                               str(args.every), "--max-codes", str(args.max_codes)], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{config}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        stages = ", ".join(f"{k} {v:.2f}" for k, v in r["stages"].items())
        print(f"{config:5s} first audio {r['first_audio_s']:.2f} s | total {r['total_s']:.2f} s for "
              f"{r['audio_s']:.2f} s of audio (RTF {r['rtf']:.2f}, {r['pieces']} pieces, {r['chunks']} chunks) | "
              f"AR step {r['ar_step_ms']:.1f} ms vs roof {r['roof_step_ms']:.1f} ms "
              f"({r['weights_mb_per_step']:.0f} MB at {r['bandwidth_gbs']:.1f} GB/s) | {stages}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": info, "first_codes": args.first, "every_codes": args.every,
                                    "max_codes": args.max_codes, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
