"""How much a better reranker could gain: every candidate of a preset voiced and scored, against the CLVP's pick.

    python bench/rerank_oracle.py data/mini-eval [--model hare-mini] [--voice flite-rms] [--preset ultra_fast]
        [--limit N] [--asr pocketsphinx]

For each sentence of an evaluation suite (`hare data eval-suite`) the pipeline runs as `hare eval` runs it
(same seed per sentence) but returns all its candidates (`k` = the preset's candidate count), ordered by the
reranker's score; every one goes through the diffusion decoder and the vocoder and is transcribed. Prints the
word error rate of the candidates at each rank of the reranker's order (rank 1 is what `hare speak` returns),
the mean over all candidates (a random pick), and the oracle (for each sentence, the candidate with the fewest
word errors): the gap between rank 1 and the oracle is what reranking could still win with these candidates;
the gap between the mean and rank 1 is what the reranker wins now. Candidates that `min_length_ratio` rules
out are ranked last, as the pipeline never picks them.
"""

from __future__ import annotations

import argparse
import json

from hare import evaluate
from hare.pipeline import PRESETS, load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("suite")
    ap.add_argument("--model", default="hare-mini")
    ap.add_argument("--voice", default="flite-rms")
    ap.add_argument("--preset", default="ultra_fast", choices=sorted(PRESETS))
    ap.add_argument("--limit", type=int, default=None, help="the first N sentences only")
    ap.add_argument("--asr", default="pocketsphinx", choices=["pocketsphinx", "whisper"])
    ap.add_argument("--seed", type=int, default=0, help="the first sentence's seed, as `hare eval --seed`")
    ap.add_argument("--json", default=None, help="write every candidate's transcript and errors here")
    args = ap.parse_args()

    suite = evaluate.Suite.load(args.suite)
    if args.voice not in suite.voices:
        raise SystemExit(f"voice {args.voice!r} is not in the suite; it has {', '.join(suite.voices)}")
    voice_dir = suite.voices[args.voice].ref[0].parent
    sentences = suite.sentences[: args.limit] if args.limit else suite.sentences
    tts = load_model(args.model)
    n = PRESETS[args.preset]["num_candidates"]
    asr = evaluate.recognizer(args.asr)

    per_sentence = []  # [(reference words, [errors of rank 1, rank 2, ...], [transcripts])]
    for i, text in enumerate(sentences):
        speech = tts.tts(text, voice=voice_dir, preset=args.preset, seed=args.seed + i, k=n)
        hyps = [asr.transcribe(wav.numpy(), speech.sample_rate) for wav in speech.candidates]
        errors = [evaluate.word_errors(text, h) for h in hyps]
        words = errors[0][1]
        per_sentence.append((words, [e for e, _ in errors], hyps))
        print(f"{i:3d} rank-1 {errors[0][0]:2d}/{words}  best {min(e for e, _ in errors):2d}  "
              f"errors by rank {[e for e, _ in errors]}", flush=True)

    total = sum(w for w, _, _ in per_sentence)
    pct = lambda e: 100.0 * e / total  # noqa: E731
    by_rank = [pct(sum(errs[r] for _, errs, _ in per_sentence)) for r in range(n)]
    mean = sum(by_rank) / n
    oracle = pct(sum(min(errs) for _, errs, _ in per_sentence))
    oracle_rank = [errs.index(min(errs)) + 1 for _, errs, _ in per_sentence]
    print(f"\n{args.model} {args.voice} {args.preset}, {len(sentences)} sentences, {n} candidates, {args.asr} WER:")
    print(f"  reranker's pick (rank 1): {by_rank[0]:.1f} %")
    print(f"  mean over candidates (a random pick): {mean:.1f} %")
    print(f"  oracle (best candidate per sentence): {oracle:.1f} %")
    print("  by rank: " + " ".join(f"{w:.0f}" for w in by_rank))
    print(f"  the oracle's candidate's rank per sentence: {oracle_rank}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "voice": args.voice, "preset": args.preset, "asr": args.asr,
                       "wer_by_rank": by_rank, "wer_mean": mean, "wer_oracle": oracle,
                       "sentences": [{"text": t, "words": w, "errors": e, "transcripts": h}
                                     for t, (w, e, h) in zip(sentences, per_sentence)]}, f, indent=1)


if __name__ == "__main__":
    main()
