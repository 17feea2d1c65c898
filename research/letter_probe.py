"""A separate letter recogniser over speech codes: a probe of what a reranker that checks the spelling could gain.

    python research/letter_probe.py train data/mini/train.csv --out runs/letter-probe.pt [--steps 4000]
        [--cache data/mini/cache] [--vqvae hare/weights/hare-mini/vqvae.safetensors]
    python research/letter_probe.py rescore runs/letter-probe.pt runs/eval/oracle-test.json [...] [--weight 1 ...]

`train`: a transformer over codes (4 layers, 192 wide, two convolutions in front, two letter outputs per
code: 2.6 M parameters) learns the letters of each utterance's text (`hare.text.ctc_targets`) from its cached
VQ-VAE codes with CTC (batches of ~2 400 codes drawn from length-sorted buckets, AdamW one-cycle at 1e-3;
seeded; a checkpoint every 1 000 steps as OUT-<step>.pt beside OUT, the last). The model card's figures are the
step-2000 checkpoint of `--steps 4000` on `data/mini/train.csv` (one thread). `rescore`: its letter score (mean log-probability per letter of the
text given the candidate's codes) picks among the candidates a `research/rerank_oracle.py --json` run saved, at
each `--weight` blended with the run's model's own reranking score (`TextToSpeech.rerank_scores` at its
`model.json` settings) keeping the rest; weight 1 is the letter score alone. Prints each pick's
WER (the saved word errors), beside the model's own pick, the mean and the oracle.

This is the experiment that led to hare-mini's speller, which is a Hare network trained with `hare train`
(`hare.models.speller`, `hare/train/configs/speller-mini.yaml`); `research/rerank_oracle.py --rescore F --speller
FILE` scores that one. The model card's "Reranking by spelling" has the numbers of both.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hare.text import CTC_ALPHABET, ctc_targets

CLASSES = len(CTC_ALPHABET) + 1  # the letters and CTC's blank (0)
PAD_CODE = 125  # hare-mini's VQ-VAE's silence code pads a batch


class LetterProbe(nn.Module):
    def __init__(self, n_codes: int = 514, dim: int = 192, layers: int = 4, heads: int = 4, up: int = 2):
        super().__init__()
        self.up = up
        self.emb = nn.Embedding(n_codes, dim)
        self.conv = nn.Sequential(nn.Conv1d(dim, dim, 5, padding=2), nn.GELU(), nn.Conv1d(dim, dim, 5, padding=2),
                                  nn.GELU())
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 4, 0.1, batch_first=True, norm_first=True,
                                           activation="gelu")
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, CLASSES * up)
        self.pos = nn.Parameter(torch.randn(1, 2048, dim) * 0.02)

    def forward(self, codes: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, n) codes, (b,) valid lengths -> (b, n * up, classes) letter log-probabilities, (b,) their lengths."""
        x = self.emb(codes)
        x = x + self.conv(x.transpose(1, 2)).transpose(1, 2)
        b, n, _ = x.shape
        x = self.enc(x + self.pos[:, :n], src_key_padding_mask=torch.arange(n)[None] >= lengths[:, None])
        return self.out(self.norm(x)).reshape(b, n * self.up, -1).log_softmax(-1), lengths * self.up


def _loss(model: LetterProbe, batch: list[tuple[torch.Tensor, list[int]]]) -> torch.Tensor:
    longest = max(len(c) for c, _ in batch)
    codes = torch.full((len(batch), longest), PAD_CODE, dtype=torch.long)
    for i, (c, _) in enumerate(batch):
        codes[i, : len(c)] = c
    logp, lengths = model(codes, torch.tensor([len(c) for c, _ in batch]))
    targets = torch.cat([torch.tensor(t) for _, t in batch])
    n_letters = torch.tensor([len(t) for _, t in batch])
    nll = F.ctc_loss(logp.transpose(0, 1), targets, lengths, n_letters, zero_infinity=True, reduction="sum")
    return nll / n_letters.sum()


def train(manifest: str, out: str, steps: int, cache: str, vqvae: str, threads: int) -> None:
    from hare.train.data import CachedCorpus

    torch.set_num_threads(threads)
    corpus, _ = CachedCorpus.build(manifest, cache, ["codes"], vqvae=vqvae, workers=2)
    items = [(corpus.features(i, ["codes"])["codes"].long().flatten(), ctc_targets(u.text))
             for i, u in enumerate(corpus.utterances)]
    print(f"{len(items)} utterances", flush=True)
    random.seed(0)
    torch.manual_seed(0)
    model = LetterProbe()
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters", flush=True)
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=steps, pct_start=0.05)
    items.sort(key=lambda x: len(x[0]))
    batches, current = [], []
    for item in items:  # ~2 400 codes per batch
        if current and (len(current) + 1) * len(item[0]) > 2400:
            batches.append(current)
            current = []
        current.append(item)
    batches.append(current)
    start = time.time()
    model.train()
    for step in range(steps):
        loss = _loss(model, random.choice(batches))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        if step % 100 == 0:
            print(f"step {step} CTC per letter {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
        if step % 1000 == 999:
            torch.save(model.state_dict(), Path(out).with_name(f"{Path(out).stem}-{step + 1}.pt"))
    torch.save(model.state_dict(), out)


@torch.no_grad()
def letter_scores(model: LetterProbe, candidates: list[list[int]], text: str) -> torch.Tensor:
    """Mean log-probability per letter of `text` given each candidate's codes: (candidates,)."""
    from hare.models.layers import letter_score

    letters = torch.tensor(ctc_targets(text))
    return torch.cat([letter_score(model(torch.tensor(codes)[None], torch.tensor([len(codes)]))[0], letters)
                      for codes in candidates])


def rescore(checkpoint: str, runs: list[str], weights: list[float]) -> None:
    from hare import evaluate
    from hare import rerank as R
    from hare.loading import load_model
    from hare.settings import make_settings

    model = LetterProbe()
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    model.eval()
    for path in runs:
        with open(path) as f:
            run = json.load(f)
        sentences, ratio = run["sentences"], run["settings"]["min_length_ratio"]
        if not sentences or "sampled" not in sentences[0]:
            raise SystemExit(f"{path} holds no candidate codes: write it with rerank_oracle.py --json")
        tts = load_model(run["model"])
        settings = make_settings(run["preset"], **tts.default_settings)  # the model's own reranking, today's
        ar_latent = tts.voice_latents(evaluate.Suite.load(run["suite"]).voices[run["voice"]].ref[0].parent)[0]
        errors = {"model's reranker": 0, **{f"letter score at {w:g}": 0 for w in weights}}
        for s in sentences:
            own_reranker = tts.reranker(settings)
            candidates = own_reranker.candidates(torch.tensor([s["text_tokens"]]), torch.tensor(s["sampled"]),
                                                 ar_latent=ar_latent)
            own = R.Precomputed(own_reranker.scores(candidates))
            letters = R.Precomputed(letter_scores(model, s["codes"], s["text"]))
            for name in errors:
                w = 0.0 if name == "model's reranker" else float(name.rsplit(" ", 1)[1])
                reranker = R.Reranker(own_reranker.layout, own if w < 1 else None, [(w, letters)], ratio)
                errors[name] += s["errors"][int(reranker.ranking(candidates).argmax())]
        total = sum(s["words"] for s in sentences)
        print(f"{path}: {run['model']} {run['voice']} {run['preset']}, {len(sentences)} sentences, {run['asr']} WER "
              f"(mean {run['wer_mean']:.1f} %, oracle {run['wer_oracle']:.1f} %)")
        for name, e in errors.items():
            print(f"  {name}: {100.0 * e / total:.1f} %", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the probe on a manifest's cached codes")
    t.add_argument("manifest")
    t.add_argument("--out", required=True, help="checkpoint file (a state dict)")
    t.add_argument("--steps", type=int, default=4000)
    t.add_argument("--cache", default="data/mini/cache", help="the feature cache of the training runs")
    t.add_argument("--vqvae", default="hare/weights/hare-mini/vqvae.safetensors")
    t.add_argument("--threads", type=int, default=1)
    r = sub.add_parser("rescore", help="pick among saved candidates with the probe's letter score")
    r.add_argument("checkpoint")
    r.add_argument("runs", nargs="+", help="rerank_oracle.py --json files")
    r.add_argument("--weight", type=float, action="append", default=[],
                   help="the letter score's share of the blend (repeatable; default 1 and 1/3)")
    args = ap.parse_args()
    if args.command == "train":
        train(args.manifest, args.out, args.steps, args.cache, args.vqvae, args.threads)
    else:
        rescore(args.checkpoint, args.runs, args.weight or [1.0, 1 / 3])


if __name__ == "__main__":
    main()
