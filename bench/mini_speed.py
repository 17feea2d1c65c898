"""How fast the default model speaks `make demo`'s sentence on this machine: load time, then one synthesis
timed after a first (warm-up) call, per stage, for each precision asked.

    python bench/mini_speed.py [--model hare-mini] [--quantize none --quantize int8] [--seed 0]

Prints the machine first (CPU model, extensions, threads, memory bandwidth), then per configuration the
`load_model()` seconds (after PyTorch's own import), the synthesis seconds for the audio's length, the real-time
factor and the pipeline's stage timings, at the model's default preset.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import line  # noqa: E402

TEXT = "Hello! This is Hare, a small text to speech model that was trained on two processor cores."


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="hare-mini")
    ap.add_argument("--quantize", action="append", choices=("none", "int8"), default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text", default=TEXT)
    args = ap.parse_args(argv)

    import hare

    print(line(), flush=True)
    for q in args.quantize or ["none"]:
        t0 = time.perf_counter()
        tts = hare.load_model(args.model, quantize=None if q == "none" else q)
        load = time.perf_counter() - t0
        tts.tts(args.text, seed=args.seed)  # warm-up: kernels, caches, the voice's latents
        t0 = time.perf_counter()
        out = tts.tts(args.text, seed=args.seed)
        total = time.perf_counter() - t0
        seconds = out.audio.numel() / out.sample_rate
        stages = ", ".join(f"{k} {v:.2f}" for k, v in out.timings.items())
        print(f"{q:<5} load {load:.2f} s | {total:.2f} s for {seconds:.2f} s of audio (RTF {total / seconds:.2f}) | "
              f"{stages}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
