"""Probe: does warping a clone's decoded mel (pitch and formants, `audio.warp_mel_source_filter`) towards the
target voice bring resemblyzer's verdict to the target? Synthesises each voice's clone once (the equaliser off),
keeps the mels the vocoder would read, then vocodes them under a grid of (pitch, formant) factors, each followed
by the equaliser, and prints each voice's similarity to every suite voice.

    python research/voice_warp.py data/mini-eval-clones --voice flite-slt --voice flite-awb --limit 10
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("suite")
    p.add_argument("--voice", action="append", required=True)
    p.add_argument("--model", default=None)
    p.add_argument("--preset", default="ultra_fast")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--pitch", type=float, action="append")
    p.add_argument("--formant", type=float, action="append")
    p.add_argument("--json")
    a = p.parse_args()

    import hare
    from hare import audio
    from hare.evaluate import Scorer, Suite

    suite = Suite.load(a.suite)
    sentences = suite.sentences[: a.limit]
    scorer = Scorer(suite, sentences, asr=(), similarity=True)
    tts = hare.load_model(a.model) if a.model else hare.load_model()
    fmt = tts.mel_format
    captured: list[torch.Tensor] = []
    vocode = tts.vocoder.vocode

    def capture(mel, **kw):
        captured.append(mel.detach().clone())
        return vocode(mel, **kw)

    results = {}
    for name in a.voice:
        v = suite.voices[name]
        voice_dir = v.ref[0].parent
        mels = []
        tts.vocoder.vocode = capture
        for i, text in enumerate(sentences):
            captured.clear()
            tts.tts(text, voice=voice_dir, preset=a.preset, seed=i, voice_match=0.0)
            mels.append(captured[0])
        tts.vocoder.vocode = vocode
        target = tts.voice_latents(voice_dir).mel_mean
        for pf in a.pitch or [1.0]:
            for ff in a.formant or [1.0]:
                clips = []
                for mel in mels:
                    m = audio.warp_mel_source_filter(mel.float(), pf, ff, fmt) if (pf, ff) != (1, 1) else mel
                    m = audio.match_mel_means(m, target.to(m), 1.0)
                    wav = vocode(m)
                    clips.append((wav[0].float().cpu().numpy(), fmt.sample_rate))
                row = scorer.score("warp", name, a.preset, clips, None)
                sims = {k: round(s, 3) for k, s in sorted(row.similarity.items(), key=lambda kv: -kv[1])}
                results[f"{name} p{pf} f{ff}"] = sims
                print(f"{name:10s} pitch {pf:4.2f} formant {ff:4.2f}  {sims}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
