"""How far each diffusion speed option lands from the 200-step DDPM output, on the same weights, codes and seed.

    python bench/options.py [--model hare-mini] [--models-dir DIR] [--seed 0] [--start 1.0]

Runs the pipeline once (ultra_fast, fp32) to fix the chosen candidate, then decodes that candidate's mel with
each sampler setting from the same starting noise (a generator seeded the same way) and prints the difference
to `ddpm` with 200 steps: RMS and max of the difference in the decoder's normalised mel units, and RMS relative
to the reference mel's spread; then the same for the fast path's int8 decoder (`quantize="int8"`). Two 200-step DDPM runs with different seeds give the scale of plain sampling
noise. `--start 1.0` runs the full reverse process (as Tortoise); a model's own default (hare-mini's shallow
diffusion) is `--start model`. No timing here: bench/pipeline.py measures speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

TEXT = "The old stone bridge crossed the river just below the village."
OPTIONS = (("ddpm", 80), ("ddpm", 30), ("ddim", 30), ("ddim", 10), ("dpm++2m", 20), ("dpm++2m", 10),
           ("dpm++2m", 5))  # each compared with ddpm at 200 steps
INT8_OPTIONS = (("ddpm", 200), ("dpm++2m", 10))  # the same with quantize="int8" (the fast path's decoder)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="hare-mini")
    ap.add_argument("--models-dir", default=None)
    ap.add_argument("--text", default=TEXT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", default="1.0", help="diffusion start in (0, 1], or 'model' for the model's default")
    args = ap.parse_args(argv)

    import hare

    from hare.settings import make_settings

    tts = hare.load_model(args.model, models_dir=args.models_dir)
    # one quick synthesis for the picked candidate's decoder input (its diffusion is redone below)
    speech = tts.tts(args.text, preset="ultra_fast", seed=args.seed, diffusion_steps=1)
    decoder_input = speech.decoder_inputs[0]
    base = make_settings("ultra_fast", **tts.default_settings)
    start = base.diffusion_start if args.start == "model" else float(args.start)

    def mel(sampler: str, steps: int, seed: int) -> torch.Tensor:
        settings = dataclasses.replace(base, sampler=sampler, diffusion_steps=steps, diffusion_start=start)
        return tts.diffuse(decoder_input, settings, torch.Generator().manual_seed(seed)).float()

    ref = mel("ddpm", 200, args.seed)
    spread = ref.std().item()
    print(f"model {args.model}, {decoder_input.frames} mel frames, diffusion start {start}, seed {args.seed}; "
          f"reference: ddpm 200 steps (mel std {spread:.3f})")
    print(f"{'sampler':<14}{'steps':>6}{'rms diff':>11}{'max diff':>11}{'rms / std':>11}")

    def row(name, steps, m):
        d = m - ref
        rms = d.pow(2).mean().sqrt().item()
        print(f"{name:<14}{steps:>6}{rms:>11.4f}{d.abs().max().item():>11.4f}{rms / spread:>11.3f}")

    row("ddpm*", 200, mel("ddpm", 200, args.seed + 1))
    for sampler, steps in OPTIONS:
        row(sampler, steps, mel(sampler, steps, args.seed))
    # the fast path's int8 diffusion decoder (`quantize="int8"`), on the same decoder input and noise
    tts8 = hare.load_model(args.model, models_dir=args.models_dir, quantize="int8")
    for sampler, steps in INT8_OPTIONS:
        settings = dataclasses.replace(base, sampler=sampler, diffusion_steps=steps, diffusion_start=start)
        row(f"{sampler} int8", steps,
            tts8.diffuse(decoder_input, settings, torch.Generator().manual_seed(args.seed)).float())
    print("* another seed: the spread of plain DDPM sampling noise; int8: the decoder on int8 weights and inputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
