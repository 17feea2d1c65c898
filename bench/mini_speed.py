"""How fast the default model speaks `make demo`'s sentence on this machine: load time, then one synthesis
timed after a first (warm-up) call, per stage, for each precision asked.

    python bench/mini_speed.py [--model hare-mini] [--quantize default --quantize none --quantize int8] [--seed 0]
                               [--repeat N]

Prints the machine first (CPU model, extensions, threads, memory bandwidth), then per configuration the
`load_model()` seconds (after PyTorch's own import), the synthesis seconds for the audio's length (the fastest
of `--repeat` runs), the real-time factor and the pipeline's stage timings, at the model's default preset.
`default`: the load options the model chooses on this CPU (hare-mini's `cpu_defaults`: int8, bf16); `none`:
float32 throughout; `int8`: int8 weights, float32 otherwise.
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
    ap.add_argument("--quantize", action="append", choices=("default", "none", "int8"), default=None)
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per configuration (the fastest is shown)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text", default=TEXT)
    args = ap.parse_args(argv)

    import hare

    print(line(), flush=True)
    for q in args.quantize or ["default"]:
        t0 = time.perf_counter()
        tts = hare.load_model(args.model, quantize=None if q == "default" else q,
                              dtype="fp32" if q in ("none", "int8") else None)
        load = time.perf_counter() - t0
        tts.tts(args.text, seed=args.seed)  # warm-up: kernels, caches, the voice's latents
        total, out = float("inf"), None
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            run = tts.tts(args.text, seed=args.seed)
            elapsed = time.perf_counter() - t0
            if elapsed < total:
                total, out = elapsed, run
        seconds = out.audio.numel() / out.sample_rate
        stages = ", ".join(f"{k} {v:.2f}" for k, v in out.timings.items())
        print(f"{q:<7} ({tts.quantize or 'float'}, {tts.dtype}{', bf16 vocoder' if tts.vocoder_bf16 else ''}) "
              f"load {load:.2f} s | {total:.2f} s for {seconds:.2f} s of audio (RTF {total / seconds:.2f}) | "
              f"{stages}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
