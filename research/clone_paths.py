"""Where a clone's speaker identity comes from: the GPT's voice latent or the diffusion decoder's voice clip.

    python research/clone_paths.py data/mini-eval --voice flite-slt --other flite-rms [--model hare-mini] [--limit 8]

Speaks the suite's first sentences four times, with each conditioning path (the GPT's voice latent, the
diffusion decoder's latent) taken from the voice under test or from another voice (a training voice, say),
and prints each run's resemblyzer similarity to both voices' real recordings. If swapping a path changes
nothing, that path carries no identity; if no combination comes near the voice's own recordings, the model
cannot make that voice. Voices are passed to the pipeline as latents-only voice folders (`latents.safetensors`).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from hare import audio, evaluate
from hare.loading import load_model
from hare.voices import LATENTS_FILE


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("suite", type=Path)
    p.add_argument("--voice", required=True, help="the voice to clone")
    p.add_argument("--other", required=True, help="the voice to swap each path with")
    p.add_argument("--model", default="hare-mini")
    p.add_argument("--preset", default="ultra_fast")
    p.add_argument("--limit", type=int, default=8)
    args = p.parse_args(argv)
    suite = evaluate.Suite.load(args.suite)
    for name in (args.voice, args.other):
        if name not in suite.voices:
            p.error(f"voice {name!r} is not in the suite (it has: {', '.join(suite.voices)})")
    tts = load_model(args.model)
    encoder = evaluate.SpeakerEncoder()
    sentences = suite.sentences[: args.limit]

    def clips(paths):
        return [audio.load_audio(c, 22050) for c in paths]

    real = {v: encoder.embed([(w.numpy().reshape(-1), 22050) for w in clips(suite.voices[v].real[:10])])
            for v in (args.voice, args.other)}
    latents = {v: tts.conditioning_latents(clips(suite.voices[v].ref), generator=torch.Generator().manual_seed(0))
               for v in (args.voice, args.other)}
    print(f"{args.model}: GPT voice / decoder voice -> similarity to {args.voice} / {args.other} "
          f"({len(sentences)} sentences, {args.preset})")
    with tempfile.TemporaryDirectory() as tmp:
        for gpt_voice, decoder_voice in [(args.voice, args.voice), (args.other, args.voice),
                                         (args.voice, args.other), (args.other, args.other)]:
            folder = Path(tmp) / f"{gpt_voice}+{decoder_voice}"
            folder.mkdir()
            save_file({"ar": latents[gpt_voice][0].cpu().contiguous(),
                       "diffusion": latents[decoder_voice][1].cpu().contiguous()}, str(folder / LATENTS_FILE))
            outs = [(tts.tts(s, voice=folder, preset=args.preset, seed=i).audio.numpy().reshape(-1), tts.sample_rate)
                    for i, s in enumerate(sentences)]
            e = encoder.embed(outs)
            print(f"  {gpt_voice:>12} / {decoder_voice:<12} {float(e @ real[args.voice]):.3f} / "
                  f"{float(e @ real[args.other]):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
