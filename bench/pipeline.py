"""Hare against the reference on the same official-size (random) weights, settings and machine, in one run.

    python bench/pipeline.py [--skip-reference] [--repeat N] [--only NAME] [--out runs/bench_pipeline.json]

Builds random official-size weights in the official file layout once (bench/.cache/official), a
two-clip synthetic voice, then runs, each in its own process (so peak memory is per run):
  - the reference, tortoise-tts 3.0.0, at `ultra_fast` with batch 16 and its KV cache (if bench/.venv-ref
    exists: run bench/setup_reference.sh once);
  - Hare's exact path: `--sampler ddpm --steps 30`, fp32;
  - Hare's fast path: `--sampler dpm++2m --steps 10 --quantize int8`.
  - on a CPU with bf16 matrix hardware (AMX or AVX-512-bf16), also `hare_bf16`: the fast path with
    `--dtype bf16` (reduced precision for the stages autocast reaches; int8 GPT and CLVP weights).
All at 16 candidates and 100 codes on a fixed sentence. Prints the machine first (CPU model, extensions,
threads, memory bandwidth measured now), per-stage seconds and ratios to the reference measured in this same
run, then each Hare run's autoregressive stage against its memory roof: 100 steps x the GPT weight bytes a
step reads, as loaded (`machine.ar_step_bytes`), over the measured bandwidth. The weights are random, so the
audio is noise: this measures speed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from random_official import write_all  # noqa: E402

TEXT = "The expressiveness of autoregressive transformers is literally nuts! I absolutely adore them."
STAGES = ("conditioning", "autoregressive", "rerank", "latents", "diffusion", "vocoder")


def make_voice(folder: Path) -> Path:
    """Two ~6 s clips of a harmonic tone with noise: the benchmark measures speed, not voice quality."""
    import soundfile

    folder.mkdir(parents=True, exist_ok=True)
    sr, rng = 22050, np.random.default_rng(0)
    t = np.arange(sr * 6) / sr
    for i in range(2):
        wav = sum(0.15 / k * np.sin(2 * np.pi * 140 * (1 + 0.03 * i) * k * t) for k in range(1, 8))
        soundfile.write(folder / f"{i}.wav", (wav + 0.01 * rng.standard_normal(t.shape)).astype(np.float32), sr)
    return folder


def run(python: Path, script: str, args: list[str]) -> dict:
    proc = subprocess.run([str(python), str(HERE / script), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{script} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_pipeline.json")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each configuration N times (interleaved) and keep each one's fastest run")
    ap.add_argument("--only", action="append", default=None, metavar="NAME",
                    help="run only these configurations (reference, hare_exact, hare_fast, hare_bf16); repeatable")
    args = ap.parse_args(argv)

    from machine import describe, line as machine_line

    info = describe()
    print(machine_line(info), flush=True)
    weights = write_all(HERE / ".cache" / "official")
    voice = make_voice(HERE / ".cache" / "voice")
    common = ["--models-dir", str(weights), "--voice", str(voice), "--text", TEXT]
    configs = {}
    ref_python = HERE / ".venv-ref" / "bin" / "python"
    if not args.skip_reference and ref_python.exists():
        configs["reference"] = (ref_python, "_run_reference.py", common + ["--batch-size", "16"])
    elif not args.skip_reference:
        print("bench/.venv-ref missing: run bench/setup_reference.sh to compare with the reference",
              file=sys.stderr)
    configs["hare_exact"] = (Path(sys.executable), "_run_hare.py", common + ["--sampler", "ddpm", "--steps", "30"])
    configs["hare_fast"] = (Path(sys.executable), "_run_hare.py",
                            common + ["--sampler", "dpm++2m", "--steps", "10", "--quantize", "int8"])
    if {"amx_bf16", "avx512_bf16"} & set(info["flags"]):
        configs["hare_bf16"] = (Path(sys.executable), "_run_hare.py",
                                common + ["--sampler", "dpm++2m", "--steps", "10", "--quantize", "int8", "--dtype", "bf16"])
    if args.only:
        unknown = set(args.only) - set(configs)
        if unknown:
            ap.error(f"--only: no configuration {', '.join(sorted(unknown))} here (have {', '.join(configs)})")
        configs = {name: c for name, c in configs.items() if name in args.only}
    results: dict[str, dict] = {}
    for round_ in range(args.repeat):
        for name, (python, script, cmd) in configs.items():
            print(f"[{round_ + 1}/{args.repeat}] {name} ...", file=sys.stderr)
            r = run(python, script, cmd)
            if name not in results or r["total_s"] < results[name]["total_s"]:
                results[name] = r

    base = results.get("reference")
    header = f"{'stage':<15}" + "".join(f"{name:>14}" for name in results)
    if base:
        header += "".join(f"{'x ' + name:>18}" for name in results if name != "reference")
    print(header)
    for stage in (*STAGES, "total_s", "peak_rss_mb"):
        def value(r):
            return r["stages"].get(stage, 0.0) if stage in STAGES else r[stage]

        line = f"{stage:<15}" + "".join(f"{value(r):>14.2f}" for r in results.values())
        if base:
            for name, r in results.items():
                if name != "reference":
                    # a stage Hare skips (0 s: the latents the sampling pass kept) has no ratio
                    line += f"{value(base) / value(r):>18.2f}" if value(r) > 0 else f"{'-':>18}"
        print(line)
    # the machine's bandwidth: the best of the measurements (at the start and after each run), since one taken
    # while something else reads memory is low
    info["bandwidth_gbs"] = max([info["bandwidth_gbs"], *(r.get("bandwidth_gbs", 0.0) for r in results.values())])
    bandwidth = info["bandwidth_gbs"] * 1e9
    for name, r in results.items():
        if "ar_step_bytes" in r:
            roof = r["ar_steps"] * r["ar_step_bytes"] / bandwidth
            ar = r["stages"].get("autoregressive", 0.0)
            print(f"{name}: autoregressive {ar:.2f} s vs roof {roof:.2f} s ({r['ar_steps']} steps x "
                  f"{r['ar_step_bytes'] / 2**20:.0f} MB at {info['bandwidth_gbs']:.1f} GB/s) = {ar / roof:.2f}x the roof")
            r["ar_roof_s"] = roof
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": info, "runs": results}, indent=2) + "\n")
    print(f"(ratios: reference seconds / Hare seconds; json in {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
