"""How much a better reranker could gain: every candidate of a preset voiced and scored, against the CLVP's pick.

    python research/rerank_oracle.py data/mini-eval [--model hare-mini] [--voice flite-rms] [--preset ultra_fast]
        [--limit N] [--asr pocketsphinx] [--json OUT.json]
    python research/rerank_oracle.py --rescore OUT.json [--clvp CLVP.safetensors ...] [--likelihood-weight W ...]
        [--alignment-weight W ...] [--ctc-weight W ...] [--speller SPELLER.safetensors]

For each sentence of an evaluation suite (`hare data eval-suite`) the pipeline runs as `hare eval` runs it
(same seed per sentence) but returns all its candidates (`k` = the preset's candidate count), ordered by the
reranker's score; every one goes through the diffusion decoder and the vocoder and is transcribed. Prints the
word error rate of the candidates at each rank of the reranker's order (rank 1 is what `hare speak` returns),
the mean over all candidates (a random pick), and the oracle (for each sentence, the candidate with the fewest
word errors): the gap between rank 1 and the oracle is what reranking could still win with these candidates;
the gap between the mean and rank 1 is what the reranker wins now. Candidates that `min_length_ratio` rules
out are ranked last, as the pipeline never picks them.

`--json` keeps every candidate's codes, transcript and errors. `--rescore` then needs no audio: each given
CLVP (Hare safetensors or an official clvp2.pth; the run's own model's when none is given) scores the saved
candidates, blended with the GPT's likelihood at each `--likelihood-weight`, its alignment score at each
`--alignment-weight` and the letter score at each `--ctc-weight` (from `--speller`, a speller network, or else
from the CLVP's CTC head): the pipeline's settings, every combination whose sum is at most 1 (the run's model
and voice compute the GPT's). The speller reads the candidates as the pipeline hands them over
(`--speller-calm-run`).
Each pick's WER is printed beside the saved reranker's, the mean and the oracle (the same candidates, so the
same word errors), with its rank agreement: how well the scores order all of a sentence's candidates by their
word errors (Spearman's correlation, the mean over sentences; steadier than the pick's WER).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from hare import evaluate
from hare.loading import load_model
from hare.settings import PRESETS, make_settings
from hare.rerank import LetterScorer, fix_candidates
from hare.text import Tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("suite", nargs="?", help="an evaluation suite folder (not with --rescore)")
    ap.add_argument("--model", default="hare-mini")
    ap.add_argument("--voice", default="flite-rms")
    ap.add_argument("--preset", default="ultra_fast", choices=sorted(PRESETS))
    ap.add_argument("--limit", type=int, default=None, help="the first N sentences only")
    ap.add_argument("--asr", default="pocketsphinx", choices=["pocketsphinx", "whisper"])
    ap.add_argument("--seed", type=int, default=0, help="the first sentence's seed, as `hare eval --seed`")
    ap.add_argument("--json", default=None, help="write every candidate's codes, transcript and errors here")
    ap.add_argument("--rescore", metavar="JSON", default=None,
                    help="score the candidates a --json run saved with each --clvp file")
    ap.add_argument("--clvp", action="append", default=[], help="a CLVP weight file for --rescore (repeatable)")
    ap.add_argument("--likelihood-weight", type=float, action="append", default=[],
                    help="with --rescore: also blend in the GPT's likelihood at this weight (repeatable)")
    ap.add_argument("--alignment-weight", type=float, action="append", default=[],
                    help="with --rescore: also blend in the GPT's alignment score at this weight (repeatable)")
    ap.add_argument("--speller", default=None, help="a speller weight file: --ctc-weight's letter score (else the "
                    "CLVP's CTC head's)")
    ap.add_argument("--speller-calm-run", type=int, default=None,
                    help="with --speller: the calm codes it reads after each candidate's speech (default: the "
                    "pipeline's, hare.pipeline.SPELLER_CALM_RUN); 0: every candidate padded to the longest instead")
    ap.add_argument("--ctc-weight", type=float, action="append", default=[],
                    help="with --rescore: also blend in the CLVP's CTC letter score at this weight (repeatable)")
    args = ap.parse_args()
    if args.rescore:
        if args.suite:
            ap.error("--rescore takes a saved JSON, no suite")
        return rescore(args.rescore, args.clvp, args.likelihood_weight, args.alignment_weight, args.ctc_weight,
                       args.speller, args.speller_calm_run)
    rescore_only = (args.speller, args.speller_calm_run is not None, args.clvp, args.likelihood_weight,
                    args.alignment_weight, args.ctc_weight)
    if any(rescore_only) or not args.suite:
        ap.error("give a suite folder (or --rescore JSON [--clvp FILE] [--likelihood-weight W])")

    suite = evaluate.Suite.load(args.suite)
    if args.voice not in suite.voices:
        raise SystemExit(f"voice {args.voice!r} is not in the suite; it has {', '.join(suite.voices)}")
    voice_dir = suite.voices[args.voice].ref[0].parent
    sentences = suite.sentences[: args.limit] if args.limit else suite.sentences
    tts = load_model(args.model)
    n = PRESETS[args.preset]["num_candidates"]
    asr = evaluate.recognizer(args.asr)
    ranked = {}
    pipeline_rerank = tts.rerank
    gc = tts.gpt.config

    def recording_rerank(text, codes, settings, *args, **kwargs):  # keep the text and the ranked candidates
        best = pipeline_rerank(text, codes, settings, *args, **kwargs)
        fixed, order = fix_candidates(codes, gc.stop_mel_token, gc.calm_code, gc.tail_codes).tolist(), []
        for row in best.tolist():  # each ranked (fixed) candidate's row among the sampled ones
            order.append(next(j for j, f in enumerate(fixed) if f == row and j not in order))
        ranked.update(text=text[0].tolist(), codes=best.tolist(), sampled=codes[order].tolist())
        return best

    tts.rerank = recording_rerank
    per_sentence = []  # [(words, [errors of rank 1, rank 2, ...], [transcripts], text tokens, codes, sampled)]
    for i, text in enumerate(sentences):
        speech = tts.tts(text, voice=voice_dir, preset=args.preset, seed=args.seed + i, k=n)
        hyps = [asr.transcribe(wav.numpy(), speech.sample_rate) for wav in speech.candidates]
        errors = [evaluate.word_errors(text, h) for h in hyps]
        words = errors[0][1]
        per_sentence.append((words, [e for e, _ in errors], hyps, ranked["text"], ranked["codes"], ranked["sampled"]))
        print(f"{i:3d} rank-1 {errors[0][0]:2d}/{words}  best {min(e for e, _ in errors):2d}  "
              f"errors by rank {[e for e, _ in errors]}", flush=True)

    total = sum(p[0] for p in per_sentence)
    pct = lambda e: 100.0 * e / total  # noqa: E731
    by_rank = [pct(sum(p[1][r] for p in per_sentence)) for r in range(n)]
    mean = sum(by_rank) / n
    oracle = pct(sum(min(p[1]) for p in per_sentence))
    oracle_rank = [p[1].index(min(p[1])) + 1 for p in per_sentence]
    print(f"\n{args.model} {args.voice} {args.preset}, {len(sentences)} sentences, {n} candidates, {args.asr} WER:")
    print(f"  reranker's pick (rank 1): {by_rank[0]:.1f} %")
    print(f"  mean over candidates (a random pick): {mean:.1f} %")
    print(f"  oracle (best candidate per sentence): {oracle:.1f} %")
    print("  by rank: " + " ".join(f"{w:.0f}" for w in by_rank))
    print(f"  the oracle's candidate's rank per sentence: {oracle_rank}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "suite": args.suite, "voice": args.voice, "preset": args.preset,
                       "asr": args.asr, "settings": dataclasses.asdict(make_settings(args.preset,
                                                                                    **tts.default_settings)),
                       "calm_code": gc.calm_code, "wer_by_rank": by_rank, "wer_mean": mean, "wer_oracle": oracle,
                       "sentences": [{"text": t, "words": w, "errors": e, "transcripts": h, "text_tokens": tok,
                                      "codes": codes, "sampled": sampled}
                                     for t, (w, e, h, tok, codes, sampled) in zip(sentences, per_sentence)]}, f)


class PaddedSpeller(LetterScorer):
    """The speller reading the fixed candidates, each padded to the longest (--speller-calm-run 0): a probe of
    the layout the speller did not train on."""

    def __init__(self, speller, tokenizer):
        super().__init__(tokenizer)
        self.speller = speller

    def read(self, letters, candidates):
        return self.speller.score(letters, candidates.fixed)


def rescore(path: str, clvp_files: list[str], likelihood_weights: list[float],
            alignment_weights: list[float], ctc_weights: list[float] = (), speller_file: str | None = None,
            speller_calm_run: int | None = None) -> None:
    """Each CLVP's pick (blended with the GPT's likelihood and alignment scores at each pair of weights) among a
    --json run's saved candidates, and its WER (the saved errors)."""
    from hare import checkpoints, evaluate
    from hare import rerank as R

    with open(path) as f:
        run = json.load(f)
    sentences = run["sentences"]
    if not sentences or "sampled" not in sentences[0]:
        raise SystemExit(f"{path} holds no candidate codes: write it with this script's --json")
    total = sum(s["words"] for s in sentences)
    ratio = run["settings"]["min_length_ratio"]
    print(f"{path}: {run['model']} {run['voice']} {run['preset']}, {len(sentences)} sentences, {run['asr']} WER")
    print(f"  saved reranker's pick: {run['wer_by_rank'][0]:.1f} %   mean: {run['wer_mean']:.1f} %   "
          f"oracle: {run['wer_oracle']:.1f} %")
    need_gpt = bool(likelihood_weights or alignment_weights)
    tts = load_model(run["model"]) if need_gpt or not clvp_files or speller_file else None
    calm_run = R.SPELLER_CALM_RUN if speller_calm_run is None else speller_calm_run
    gpt_scores = []
    if need_gpt:
        voice = evaluate.Suite.load(run["suite"]).voices[run["voice"]].ref[0].parent
        ar_latent = tts.voice_latents(voice)[0]
        with torch.inference_mode():
            gpt_scores = [tts.gpt.score_candidates(ar_latent, torch.tensor([s["text_tokens"]]),
                                                   torch.tensor(s["sampled"]), alignment=bool(alignment_weights))
                          for s in sentences]
    weights = [(wl, wa, wc) for wl in [0.0] + likelihood_weights for wa in [0.0] + alignment_weights
               for wc in [0.0] + list(ctc_weights) if wl + wa + wc <= 1 + 1e-9]
    tokenizer = Tokenizer()
    clvps = [(file, checkpoints.load(file)) for file in clvp_files] or [(f"{run['model']}'s CLVP",
                                                                       (tts.clvp, "clvp2", None))]
    speller = None
    layout = R.Layout(calm_code=run["calm_code"])
    if speller_file is not None:
        speller, kind, _ = checkpoints.load(speller_file)
        if kind != "speller":
            raise SystemExit(f"{speller_file} holds a {kind} model, not a speller")
        gc = tts.gpt.config
        layout = R.Layout(gc.stop_mel_token, gc.calm_code, tuple(gc.tail_codes), calm_run or 1)
        print(f"  letter scores from {speller_file}, "
              + (f"{calm_run} calm codes after each candidate" if calm_run else "candidates padded to the longest"))
    candidates = [R.Candidates(torch.tensor([s["text_tokens"]]), torch.tensor(s["sampled"]), torch.tensor(s["codes"]),
                               layout) for s in sentences]
    for name, (model, kind, _) in clvps:
        if kind != "clvp2":
            raise SystemExit(f"{name} holds a {kind} model, not a CLVP")
        model.eval()
        spells = speller is not None or model.config.ctc_classes
        if ctc_weights and not spells:
            print(f"  {name} has no CTC head (and no --speller): its --ctc-weight rows are skipped")
        clvp_score = R.ClvpScorer(model, share_states=speller is None)
        letter_scorer = None
        if ctc_weights and spells:
            letter_scorer = (R.ClvpLetterScorer(model, tokenizer) if speller is None
                             else R.SpellerScorer(speller, tokenizer) if calm_run else PaddedSpeller(speller, tokenizer))
        with torch.inference_mode():  # each sentence's scores once; the weights only blend them
            own, letter = [], []
            for c in candidates:
                c.shared.clear()
                own.append(clvp_score.score(c).float())
                letter.append(None if letter_scorer is None else letter_scorer.score(c))
        for wl, wa, wc in weights:
            if wc > 0 and not spells:
                continue
            errors, agreement = 0, []
            for i, s in enumerate(sentences):
                parts = []
                if wl > 0 or wa > 0:  # the GPT's pass was only made when some weight asks for it
                    g = gpt_scores[i]
                    parts += [(wl, R.Precomputed(g.log_likelihood)), (wa, R.Precomputed(g.alignment))]
                parts.append((wc, R.Precomputed(letter[i])))
                reranker = R.Reranker(layout, R.Precomputed(own[i]), parts, min_length_ratio=ratio)
                scores = reranker.ranking(candidates[i])
                errors += s["errors"][int(scores.argmax())]
                agreement.append(rank_agreement(scores, s["errors"]))
            agreement = [a for a in agreement if a == a]  # NaN: every candidate had the same errors
            mean = sum(agreement) / len(agreement) if agreement else float("nan")
            print(f"  {name}, likelihood weight {wl:g}, alignment weight {wa:g}, ctc weight {wc:g}: "
                  f"{100.0 * errors / total:.1f} %  (rank agreement {mean:+.3f})", flush=True)


def rank_agreement(scores: torch.Tensor, errors: list[int]) -> float:
    """Spearman correlation between the scores and the fewness of word errors over one sentence's candidates:
    +1 when the reranker orders every candidate as the recogniser's errors do, 0 for chance. Unlike the pick's
    WER it uses every candidate, so it moves less with a few sentences. Ties take their mean rank; candidates
    the reranker rules out (-inf) rank below all others. NaN when every candidate has the same errors."""
    def ranks(x: torch.Tensor) -> torch.Tensor:
        order = x.argsort()
        r = torch.empty(len(x), dtype=torch.float64)
        r[order] = torch.arange(len(x), dtype=torch.float64)
        for v in x.unique():  # ties: mean rank
            tied = x == v
            r[tied] = r[tied].mean()
        return r

    finite = scores.float().cpu().nan_to_num(neginf=-1e30)
    a, b = ranks(finite), ranks(-torch.tensor(errors, dtype=torch.float64))
    a, b = a - a.mean(), b - b.mean()
    denominator = float((a.square().sum() * b.square().sum()).sqrt())
    return float((a * b).sum()) / denominator if denominator > 0 else float("nan")


if __name__ == "__main__":
    main()
