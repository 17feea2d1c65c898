"""One reference (tortoise-tts 3.0.0) synthesis for bench/pipeline.py, run in bench/.venv-ref.

Per-stage times come from wrapping the reference's own stage functions; nothing else is changed.
"""

import argparse
import json
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("--models-dir", required=True)
ap.add_argument("--voice", required=True)
ap.add_argument("--text", required=True)
ap.add_argument("--batch-size", type=int, default=16)
ap.add_argument("--max-codes", type=int, default=100)
args = ap.parse_args()

import torch  # noqa: E402
import tortoise.api as api  # noqa: E402
from tortoise.utils.audio import load_audio  # noqa: E402

timings = defaultdict(float)
# the reference always asks the hub (no network here): point it at the local official-layout files
api.get_model_path = lambda name, models_dir=args.models_dir: str(Path(models_dir) / name)


def timed(stage, fn):
    def wrapper(*a, **k):
        start = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            timings[stage] += time.perf_counter() - start
    return wrapper


t0 = time.perf_counter()
tts = api.TextToSpeech(autoregressive_batch_size=args.batch_size, models_dir=args.models_dir,
                       enable_redaction=False, kv_cache=True, use_deepspeed=False, half=False, device="cpu")
load_s = time.perf_counter() - t0
tts.get_conditioning_latents = timed("conditioning", tts.get_conditioning_latents)
tts.autoregressive.inference_speech = timed("autoregressive", tts.autoregressive.inference_speech)
tts.clvp.forward = timed("rerank", tts.clvp.forward)
ar_forward = tts.autoregressive.forward
tts.autoregressive.forward = timed("latents", ar_forward)
api.do_spectrogram_diffusion = timed("diffusion", api.do_spectrogram_diffusion)
tts.vocoder.inference = timed("vocoder", tts.vocoder.inference)

clips = [load_audio(str(p), 22050) for p in sorted(Path(args.voice).glob("*.wav"))]
start = time.perf_counter()
wav = tts.tts_with_preset(args.text, preset="ultra_fast", voice_samples=clips, use_deterministic_seed=0,
                          max_mel_tokens=args.max_codes, verbose=False)
total = time.perf_counter() - start
print(json.dumps({"stages": dict(timings), "total_s": total, "load_s": load_s,
                  "audio_s": wav.shape[-1] / 24000,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "threads": torch.get_num_threads()}))
sys.stdout.flush()
