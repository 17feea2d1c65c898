"""How the `voice_match` equaliser moves a model's clones: one synthesis per sentence and voice, its decoded mel
voiced at each strength, each strength's clips scored for WER and speaker similarity as `hare eval` does.

    python research/voice_match.py data/mini-eval --voice flite-slt --voice flite-awb --strength 0 --strength 1 \\
        [--model hare-mini] [--preset ultra_fast] [--limit N] [--asr pocketsphinx --asr whisper]

Cheaper than one `hare eval --voice-match S` per strength (the sampling and the diffusion run once) and the
same clips: strength S here is what the pipeline makes with `voice_match=S` and the same seeds.
"""

from __future__ import annotations

import argparse

import torch

from hare import audio, evaluate
from hare.loading import load_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("suite")
    p.add_argument("--voice", action="append", required=True, help="suite voice to clone (repeatable)")
    p.add_argument("--strength", type=float, action="append", required=True, help="voice_match value (repeatable)")
    p.add_argument("--model", default="hare-mini")
    p.add_argument("--preset", default="ultra_fast")
    p.add_argument("--limit", type=int, help="only the first N sentences")
    p.add_argument("--asr", action="append", choices=evaluate.ASR_ENGINES, default=[],
                   help="speech recogniser(s) (default pocketsphinx)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first sentence (the next ones add 1)")
    args = p.parse_args(argv)
    if any(not 0 <= s <= 1 for s in args.strength):
        p.error("strengths must be in [0, 1]")
    suite = evaluate.Suite.load(args.suite)
    sentences = suite.sentences[: args.limit] if args.limit else suite.sentences
    tts = load_model(args.model)
    asr = args.asr or ["pocketsphinx"]
    scorer = evaluate.Scorer(suite, sentences, asr)  # what `hare eval` scores with
    decoded = []
    vocode = tts.vocoder.vocode
    tts.vocoder.vocode = lambda mel, **kw: decoded.append(mel.clone()) or vocode(mel, **kw)  # keep each mel
    print("| voice | voice_match | sim. to own voice | closest other voice | "
          + " | ".join(f"WER {a}" for a in asr) + " |")
    print("|---|---|---|---|" + "---|" * len(asr))
    for name in args.voice:
        if name not in suite.voices:
            p.error(f"voice {name!r} is not in the suite")
        folder = suite.voices[name].ref[0].parent
        target = tts.voice_latents(folder).mel_mean
        clips = {s: [] for s in args.strength}
        for i, text in enumerate(sentences):
            decoded.clear()
            tts.tts(text, voice=folder, preset=args.preset, seed=args.seed + i, voice_match=0.0)
            for s in args.strength:
                with torch.inference_mode():
                    wav = vocode(audio.match_mel_means(decoded[0], target.to(decoded[0]), s))
                clips[s].append((wav[0].float().cpu().numpy(), tts.sample_rate))
        for s in args.strength:
            row = scorer.score(args.model, name, args.preset, clips[s], None)
            sims = dict(row.similarity)
            own = sims.pop(name, float("nan"))
            closest = max(sims, key=sims.get)
            print(f"| {name} | {s:g} | {own:.3f} | {closest} {sims[closest]:.3f} | "
                  + " | ".join(f"{100 * row.wer[a]:.1f} %" for a in asr) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
