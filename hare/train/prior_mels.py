"""The diffusion decoder prior's mels of a corpus's true codes: what the listener reads at inference.

    python -m hare.train.prior_mels MANIFEST --cache-dir DIR --out DIR [--model hare-mini] [--voice default]

For each utterance: its VQ-VAE codes (the feature cache's, computed with the model's VQ-VAE), the model's GPT
latents of them given its text and the voice's conditioning (teacher forcing, as the pipeline computes the
picked candidate's), the diffusion decoder's mel guess from those latents (its prior: no diffusion step), as a
HiFi-GAN log mel. One `<cache key>.pt` float16 (bands, frames) tensor per utterance in `--out`
(`hare.train.objectives.listener` reads them with `options.prior_dir`); existing files are kept (resumable).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest")
    ap.add_argument("--cache-dir", required=True, help="the training runs' feature cache (codes are added to it)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--model", default="hare-mini")
    ap.add_argument("--voice", default=None, help="voice whose conditioning the GPT and decoder read "
                                                   "(default: the model's default voice)")
    ap.add_argument("--vqvae", default=None, help="the VQ-VAE of the codes (default: hare-mini's)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N utterances")
    args = ap.parse_args(argv)

    from tqdm.auto import tqdm

    import hare
    from hare import checkpoints, loading
    from hare.pipeline import DecoderInput
    from hare.train.data import CachedCorpus, cache_key

    source = loading.resolve_model(args.model)
    tts = hare.load_model(args.model, dtype="fp32", source=source)
    vqvae = args.vqvae or str(checkpoints.package_path("weights/hare-mini") / "vqvae.safetensors")
    corpus, report = CachedCorpus.build(args.manifest, args.cache_dir, ("codes",), vqvae=vqvae,
                                        progress=True)
    if report.num_skipped:
        print(report.summary(), file=sys.stderr)
    cond = tts.voice_latents(args.voice)
    args.out.mkdir(parents=True, exist_ok=True)
    made = 0
    n = len(corpus) if args.limit is None else min(args.limit, len(corpus))
    with torch.inference_mode():
        for i in tqdm(range(n), desc="prior mels", file=sys.stderr):
            u = corpus.utterances[i]
            file = args.out / f"{cache_key(u.path)}.pt"
            if file.is_file():
                continue
            codes = corpus.features(i, ("codes",))["codes"].long().reshape(1, -1).to(tts.device)
            text = tts.gpt_text(u.text)
            latents = tts.gpt.speech_latents(cond.ar, text, codes).float()
            frames = tts.mel_format.frames_for_codes(codes.shape[1])
            mel = tts.prior_mel(DecoderInput(latents, cond.diffusion, frames))[0]
            torch.save(mel.half().cpu(), file)
            made += 1
    print(f"{made} prior mels written to {args.out} ({n - made} already there)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
