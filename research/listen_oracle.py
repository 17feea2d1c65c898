"""How well the listener picks among the reranker's best candidates, paired on the same candidates.

    python research/listen_oracle.py data/mini-devday --model DIR [--voice piper-joe] [--top 8] [--limit N]
        [--seed 0] [--asr whisper] [--json OUT.json]

For each sentence of an evaluation suite, the model samples its candidates at `fast` (the seed per sentence as
`hare eval`: seed + index), the reranker keeps its best `--top`, and each of those is decoded as `hare speak`
decodes the pick (shallow diffusion, equaliser, vocoder) and transcribed. Prints the word error rate of the
reranker's pick (its rank 1), of the listener's pick, of blends of the two scores (each standardised over the
top candidates), the mean over the top (a random pick among them) and the oracle (the fewest errors): every
row on the same audio, so their differences are not sampling noise. `DIR` needs a listener network.
"""

from __future__ import annotations

import argparse
import json

import torch

from hare import audio, evaluate
from hare.loading import load_model
from hare.pipeline import _sampling
from hare.rerank import text_letters
from hare.sampling import sample_codes
from hare.settings import make_settings


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite")
    ap.add_argument("--model", required=True)
    ap.add_argument("--voice", default="piper-joe")
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--asr", default="whisper")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    tts = load_model(args.model)
    if tts.listener() is None:
        ap.error(f"{args.model} has no listener network")
    suite = evaluate.Suite.load(args.suite)
    voice = suite.voices[args.voice]
    rec = evaluate.recognizer(args.asr)
    settings = make_settings("fast", **{**tts.default_settings, "listen_candidates": 0})

    clips = [audio.load_audio(c, tts.sample_rate) for c in voice.ref]
    ar, diff = tts.conditioning_latents(clips)[:2]
    mel_mean = tts.voice_mel_mean(clips)
    weights = (0.0, 0.25, 0.5, 0.75, 1.0)  # listener's share of the blend (0: the reranker's order)
    picks = {w: [0, 0] for w in weights}
    mean, oracle, rows = [0.0, 0], [0, 0], []
    sentences = suite.sentences[: args.limit]
    for i, sentence in enumerate(sentences):
        g = torch.Generator().manual_seed(args.seed + i)
        with torch.inference_mode():
            text = tts.gpt_text(sentence)
            bpe = tts._text_tensor(tts.tokenizer.encode(sentence))
            codes = sample_codes(tts.gpt, ar, text, settings.num_candidates, settings.ar_batch_size,
                                 _sampling(settings), g)
            top = tts.rerank(bpe, codes, settings, ar_latent=ar, k=args.top, gpt_text=text)
            latents = tts.gpt.speech_latents(ar.expand(len(top), -1), text.expand(len(top), -1), top).float()
            letters = text_letters(tts.tokenizer, bpe[0, :-1].tolist())
            mels = []
            errors = []
            for j in range(len(top)):
                di = tts.decoder_input(top[j], latents[j: j + 1], diff)
                mels.append(tts.prior_mel(di)[0])
                mel = audio.denormalize_mel(tts.diffuse(di, settings, g))
                mel = audio.match_mel_means(mel, mel_mean, settings.voice_match)
                wav = tts.vocoder.vocode(mel)[0].float().numpy()
                errors.append(evaluate.word_errors(sentence, rec.transcribe(wav, tts.sample_rate)))
            heard = tts.listener().score(letters, mels)
        n = errors[0][1]
        rank = -torch.arange(len(top), dtype=torch.float)  # the reranker's order as a score
        z = lambda s: (s - s.mean()) / s.std().clamp(min=1e-6)  # noqa: E731
        hz = torch.where(torch.isfinite(heard), heard, heard[torch.isfinite(heard)].min() - 1) \
            if torch.isfinite(heard).any() else rank
        for w in weights:
            j = int(((1 - w) * z(rank) + w * z(hz)).argmax())
            picks[w][0] += errors[j][0]
            picks[w][1] += n
        mean[0] += sum(e for e, _ in errors) / len(errors)
        mean[1] += n
        oracle[0] += min(e for e, _ in errors)
        oracle[1] += n
        rows.append({"sentence": sentence, "errors": [e for e, _ in errors], "listener": heard.tolist()})
        print(f"{i + 1}/{len(sentences)} errors {[e for e, _ in errors]} listener "
              f"{[round(float(h), 2) for h in heard]}", flush=True)
    print(f"\n{args.model}, {args.voice}, {len(sentences)} sentences, the reranker's top {args.top}, {args.asr} WER:")
    for w in weights:
        name = "reranker's pick" if w == 0 else "listener's pick" if w == 1 else f"blend, listener {w:g}"
        print(f"  {name:<24} {100 * picks[w][0] / picks[w][1]:.1f} %")
    print(f"  {'mean of the top':<24} {100 * mean[0] / mean[1]:.1f} %")
    print(f"  {'oracle':<24} {100 * oracle[0] / oracle[1]:.1f} %")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
