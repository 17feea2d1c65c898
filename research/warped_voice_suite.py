"""A suite with new voices made from a suite voice by a mel warp: can a model clone a voice it never heard
when the new voice is a warp of one it knows?

    python research/warped_voice_suite.py data/mini-eval data/probe-warp --voice flite-rms --warp 1.3 --warp 0.8 \
        [--pitch P --formant F ...] [--limit 8] [--model hare-mini]
    hare eval data/probe-warp --voice flite-rms-w1.3 --voice flite-rms-w0.8

Copies the suite's first `--limit` sentences and every voice, and adds, per `--warp W`, a voice
`<voice>-wW` whose real and prompt clips are the source voice's with their mel frequency-warped by W
(`hare.audio.warp_mel_frequencies`: pitch and formants together), and per `--pitch P --formant F` pair a voice
`<voice>-pP-fF` warped by source and filter separately (`warp_mel_source_filter`); the warped mels are voiced by
the model's vocoder (so its own recordings carry the vocoder's sound too). `hare eval` then scores a model's
clone of each new voice against it and against every original voice: a decoder trained with the speaker warp
should land on the warped voice; a voice it cannot reach lands on a training voice.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import soundfile
import torch

from hare import audio, evaluate
from hare.loading import load_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("suite", type=Path)
    p.add_argument("out", type=Path, help="the new suite's folder (replaced)")
    p.add_argument("--voice", required=True, help="the suite voice to warp")
    p.add_argument("--warp", type=float, action="append", default=[], help="a joint warp factor (repeatable)")
    p.add_argument("--pitch", type=float, action="append", default=[], help="a pitch factor (with --formant)")
    p.add_argument("--formant", type=float, action="append", default=[], help="a formant factor (with --pitch)")
    p.add_argument("--limit", type=int, default=8, help="the first N sentences (default 8)")
    p.add_argument("--model", default="hare-mini", help="whose vocoder voices the warped mels (HiFi-GAN mels)")
    args = p.parse_args(argv)
    if len(args.pitch) != len(args.formant):
        p.error("give one --formant per --pitch")
    if not args.warp and not args.pitch:
        p.error("give at least one --warp or --pitch/--formant pair")
    suite = evaluate.Suite.load(args.suite)
    if args.voice not in suite.voices or not suite.voices[args.voice].real:
        p.error(f"voice {args.voice!r} is not in the suite with real recordings")
    tts = load_model(args.model)
    if tts.mel_format.name != "hifigan":
        p.error(f"{args.model} does not voice HiFi-GAN mels")
    n = args.limit
    shutil.rmtree(args.out, ignore_errors=True)
    (args.out / "voices").mkdir(parents=True)
    (args.out / "sentences.txt").write_text("\n".join(suite.sentences[:n]) + "\n", encoding="utf-8")
    for name, v in suite.voices.items():
        for kind, files in (("real", v.real[:n]), ("ref", v.ref)):
            (args.out / "voices" / name / kind).mkdir(parents=True)
            for f in files:
                shutil.copy(f, args.out / "voices" / name / kind / f.name)
    source = suite.voices[args.voice]
    warps = [(f"{args.voice}-w{w:g}", w, w) for w in args.warp]
    warps += [(f"{args.voice}-p{pf:g}-f{ff:g}", pf, ff) for pf, ff in zip(args.pitch, args.formant)]
    for name, pitch, formant in warps:
        for kind, files in (("real", source.real[:n]), ("ref", source.ref)):
            folder = args.out / "voices" / name / kind
            folder.mkdir(parents=True)
            for f in files:
                wav = audio.load_audio(f, 22050)  # HiFi-GAN mels are of 22.05 kHz audio
                mel = audio.warp_mel_source_filter(audio.hifigan_mel(wav), pitch, formant, tts.mel_format)
                with torch.inference_mode():
                    out = tts.vocoder.vocode(mel[None].to(tts.device))[0].float().cpu().numpy()
                soundfile.write(folder / f"{f.stem}.wav", out, tts.sample_rate)
        print(f"{name}: pitch x{pitch:g}, formants x{formant:g}")
    print(f"wrote {args.out}: {n} sentences, voices {', '.join(sorted(suite.voices) + [w[0] for w in warps])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
