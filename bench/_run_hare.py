"""One Hare synthesis for bench/pipeline.py; prints a JSON line with stage timings and peak memory."""

import argparse
import json
import resource
import sys
import tempfile
import time
import os

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ap = argparse.ArgumentParser()
ap.add_argument("--models-dir", required=True)
ap.add_argument("--voice", required=True)
ap.add_argument("--text", required=True)
ap.add_argument("--sampler", default="ddpm")
ap.add_argument("--steps", type=int, default=30)
ap.add_argument("--quantize", default=None)
ap.add_argument("--dtype", default="fp32")
ap.add_argument("--candidates", type=int, default=16)
ap.add_argument("--max-codes", type=int, default=100)
args = ap.parse_args()

os.environ["HARE_HOME"] = tempfile.mkdtemp(prefix="hare-bench-")  # no latent cache from earlier runs
# Hare's compiled CPU kernel (hare.kernels): built once, by the first run, during loading (not timed)
os.environ.setdefault("HARE_KERNEL_CACHE", os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache", "kernels"))
import torch  # noqa: E402
from pathlib import Path  # noqa: E402

import hare  # noqa: E402
from machine import ar_step_bytes, memory_bandwidth_gbs  # noqa: E402

t0 = time.perf_counter()
tts = hare.load_model(args.models_dir, quantize=args.quantize, dtype=args.dtype)
load_s = time.perf_counter() - t0
out = tts.tts(args.text, voice=Path(args.voice), preset="ultra_fast", seed=0, sampler=args.sampler,
              diffusion_steps=args.steps, num_candidates=args.candidates, batch_size=16, max_codes=args.max_codes)
print(json.dumps({"stages": out.timings, "total_s": sum(out.timings.values()), "load_s": load_s,
                  "audio_s": out.audio.numel() / out.sample_rate,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "threads": torch.get_num_threads(), "ar_steps": args.max_codes,  # random weights never stop
                  "ar_step_bytes": ar_step_bytes(tts.gpt), "bandwidth_gbs": memory_bandwidth_gbs()}))
sys.stdout.flush()
