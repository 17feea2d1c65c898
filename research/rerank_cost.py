"""What a reranker costs: the same sentences synthesised with the model's own reranking and with another, and
the rerank stage's and the whole synthesis's seconds side by side (ratios to the first, same run).

    python research/rerank_cost.py [--model hare-mini] [--preset ultra_fast --preset fast]
        [--other ctc_weight=0 --other likelihood_weight=0.3333 --other alignment_weight=0.3333]

`--other NAME=VALUE` (repeatable) are the other reranker's settings, on top of the model's own; the default
is the release before hare-mini's speller (the CLVP, the GPT's likelihood and alignment, a third each). A
warm-up synthesis runs first; the seeds are the same for both, so both rerank the same candidates.
"""

from __future__ import annotations

import argparse

import hare

SENTENCES = ["Please bring the blue box to the kitchen.", "The old man walked slowly along the river bank.",
             "Did you see the bright red kite yesterday?"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="hare-mini")
    ap.add_argument("--preset", action="append", default=[])
    ap.add_argument("--other", action="append", default=[], metavar="NAME=VALUE")
    args = ap.parse_args()
    other = dict(item.split("=", 1) for item in args.other) or {
        "ctc_weight": "0", "likelihood_weight": "0.3333", "alignment_weight": "0.3333"}
    other = {k: float(v) for k, v in other.items()}
    tts = hare.load_model(args.model)
    tts.tts("Warm up first.", preset="ultra_fast", seed=99)
    for preset in args.preset or ["ultra_fast", "fast"]:
        first = None
        for name, settings in [("model's own", {}), ("other " + str(other), other)]:
            rerank = total = audio = 0.0
            for seed, text in enumerate(SENTENCES):
                out = tts.tts(text, preset=preset, seed=seed, **settings)
                rerank += out.timings.get("rerank", 0.0)
                total += sum(out.timings.values())
                audio += out.audio.numel() / out.sample_rate
            first = first or (rerank, total)
            print(f"{preset}, {name}: rerank {rerank:.2f} s ({rerank / first[0]:.2f}x), synthesis {total:.2f} s "
                  f"({total / first[1]:.2f}x), RTF {total / audio:.2f}", flush=True)


if __name__ == "__main__":
    main()
