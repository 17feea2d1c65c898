"""Where hare-mini's word errors come from: each stage fed the truth, scored with Whisper and pocketsphinx.

    python bench/mini_stages.py data/mini-eval [--voice piper-joe] [--model hare-mini] [--asr whisper --asr pocketsphinx]
                                [--start 0.02 --start 0.1] [--candidates 16] [--limit N]

For every sentence of an evaluation suite (`hare data eval-suite`) and its real recording:
  - `source`: the recording itself;
  - `vocoder`: the recording's HiFi-GAN mel through the model's vocoder (the vocoder's ceiling);
  - `vqvae`: the recording's true speech codes through the VQ-VAE's own decoder, its AR mel mapped to
    HiFi-GAN's by a least-squares fit on the voice's prompt clips (the codes' ceiling);
  - `prior`: the true codes through the diffusion decoder's prior (`predict_mel`) alone;
  - `start=S`: the true codes through shallow diffusion from S (ultra_fast's 30-step schedule);
  - `best of N`: the model's own N candidates (sampled with the model's settings) each through the decoder as
    `hare speak` runs it, the one the first recogniser hears best (an oracle: the reranker's ceiling);
  - `pick+vqvae`: the pipeline's pick (`TextToSpeech.rerank`) through the VQ-VAE path of `vqvae`;
  - `pick`: the reranker's pick through the diffusion decoder (shallow diffusion from the model's own
    `diffusion_start`);
  - `pick+listen` (a model whose settings name `listen_candidates`): the listener's pick among the reranker's
    best `listen_candidates`, through the decoder as `pick`: what `hare speak` makes.
A decoder on GPT latents (`conditioning_input: latents`) reads the GPT's teacher-forced latents of the codes
(true or its own), as the pipeline computes them. Needs a VQ-VAE file beside the model (hare-mini). Prints one
table, a row per stage and a column per recogniser (the first one is the oracle's judge).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hare import audio, checkpoints, evaluate
from hare.loading import load_model
from hare.pipeline import DecoderInput
from hare.settings import make_settings
from hare.rerank import calm_cut, fix_candidates
from hare.sampling import SamplingSettings, sample_codes


def ar_to_hifigan_map(clips: list[torch.Tensor]) -> torch.Tensor:
    """(81, 80) least-squares map from [unnormalised AR mel frame, 1] to a HiFi-GAN mel frame."""
    norms = audio.mel_norms().reshape(80, 1)
    xs, ys = [], []
    for wav in clips:
        a, h = audio.ar_mel(wav).reshape(80, -1) * norms, audio.hifigan_mel(wav).reshape(80, -1)
        n = min(a.shape[1], h.shape[1])
        xs.append(a[:, :n])
        ys.append(h[:, :n])
    x = torch.cat(xs, 1)
    x = torch.cat([x, torch.ones(1, x.shape[1])]).T.double()
    y = torch.cat(ys, 1).T.double()
    return torch.linalg.solve(x.T @ x + 1e-3 * torch.eye(81, dtype=torch.double), x.T @ y).float()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("suite", type=Path)
    p.add_argument("--voice", default="flite-rms")
    p.add_argument("--model", default="hare-mini")
    p.add_argument("--start", type=float, action="append", help="shallow-diffusion starts (default 0.02, 0.1)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--asr", action="append", choices=("whisper", "pocketsphinx"),
                   help="recognisers (repeatable; default whisper and pocketsphinx; the first judges the oracle)")
    p.add_argument("--candidates", type=int, default=16, help="candidates sampled per sentence (default 16)")
    args = p.parse_args(argv)
    tts = load_model(args.model)
    model_dir = Path(args.model) if Path(args.model).is_dir() else checkpoints.package_path("weights/hare-mini")
    vq = checkpoints.load_kind_from_dir(model_dir, "vqvae").eval()
    suite = evaluate.Suite.load(args.suite)
    if args.voice not in suite.voices:
        p.error(f"voice {args.voice!r} is not in the suite (it has: {', '.join(suite.voices)})")
    voice = suite.voices[args.voice]
    sentences = suite.sentences[: args.limit]
    real = voice.real[: len(sentences)]
    mapping = ar_to_hifigan_map([audio.load_audio(c, 22050) for c in voice.ref])
    norms = audio.mel_norms().reshape(80, 1)
    ar_latent, diff_latent, _ = tts.conditioning_latents([audio.load_audio(c, 22050) for c in voice.ref],
                                                         generator=torch.Generator().manual_seed(0))
    names = args.asr or ["whisper", "pocketsphinx"]
    recognisers = {n: evaluate.recognizer(n) for n in names}
    starts = args.start or [0.02, 0.1]
    best_of = f"best of {args.candidates}"
    own = make_settings("ultra_fast", **tts.default_settings)  # the model's own sampling settings
    listens = own.listen_candidates > 1 and tts.listener() is not None
    modes = ["source", "vocoder", "vqvae", "prior", *[f"start={s}" for s in starts], best_of, "pick+vqvae", "pick",
             *(["pick+listen"] if listens else [])]
    heard = {(m, n): [] for m in modes for n in names}
    sampling = SamplingSettings(temperature=own.temperature, top_p=own.top_p, top_k=own.top_k,
                                repetition_penalty=own.repetition_penalty, length_penalty=own.length_penalty,
                                max_codes=tts.gpt.max_codes)

    def vq_path(codes):
        m = vq.decode(codes.clamp(max=vq.config.num_codes - 1))[0] * norms
        return (torch.cat([m, torch.ones(1, m.shape[1])]).T @ mapping).T[None]

    def decoder_input(text, codes, keep):  # what the diffusion decoder reads for these codes
        if tts.diffusion.config.conditioning_input == "codes":
            return codes[:, :keep]
        return tts.gpt.speech_latents(ar_latent, text, codes).float()[:, :keep]

    def diffuse(cond, frames, start):
        st = make_settings("ultra_fast", diffusion_start=start)
        return audio.denormalize_mel(tts.diffuse(DecoderInput(cond, diff_latent, frames), st, g))

    g = torch.Generator().manual_seed(0)
    for sentence, path in zip(sentences, real):
        wav = audio.load_audio(path, 22050)
        with torch.inference_mode():
            text = tts.gpt_text(sentence)
            bpe = tts._text_tensor(tts.tokenizer.encode(sentence))  # what the reranker reads
            codes = vq.encode(audio.ar_mel(wav).reshape(1, 80, -1)).reshape(1, -1)
            frames = tts.mel_format.frames_for_codes(codes.shape[1])
            cond = decoder_input(text, codes, codes.shape[1])
            mels = {"vocoder": audio.hifigan_mel(wav).reshape(1, 80, -1), "vqvae": vq_path(codes),
                    "prior": tts.prior_mel(DecoderInput(cond, diff_latent, frames))}
            for s in starts:
                mels[f"start={s}"] = diffuse(cond, frames, s)
            cands = sample_codes(tts.gpt, ar_latent, text, args.candidates, min(args.candidates, 16), sampling, g)
            gc = tts.gpt.config

            def through_decoder(row):  # a fixed candidate as the pipeline decodes it
                keep = calm_cut(row, calm_code=gc.calm_code)
                return diffuse(decoder_input(text, row[None], keep), tts.mel_format.frames_for_codes(keep),
                               own.diffusion_start)

            best = tts.rerank(bpe, cands, own, gpt_text=text)[0]
            mels["pick+vqvae"] = vq_path(best[None, :calm_cut(best, calm_code=gc.calm_code)])
            mels["pick"] = through_decoder(best)
            if listens:
                top = tts.rerank(bpe, cands, own, k=own.listen_candidates, gpt_text=text)
                latents = tts.gpt.speech_latents(ar_latent.expand(len(top), -1), text.expand(len(top), -1),
                                                 top).float()
                mels["pick+listen"] = through_decoder(top[tts._listen(bpe, top, latents, diff_latent)[0]])
            outs = {m: tts.vocoder.vocode(mels[m], generator=g)[0].float().numpy().reshape(-1) for m in mels}
            judge, judge_name = recognisers[names[0]], names[0]
            fixed = fix_candidates(cands, gc.stop_mel_token, gc.calm_code, gc.tail_codes)
            oracle = None
            for row in fixed:  # the candidate the judge hears best
                out = tts.vocoder.vocode(through_decoder(row), generator=g)[0].float().numpy().reshape(-1)
                errors = evaluate.word_errors(sentence, judge.transcribe(out, tts.sample_rate))[0]
                if oracle is None or errors < oracle[0]:
                    oracle = (errors, out)
            outs[best_of] = oracle[1]
            data, sr = audio.load_audio(path, 22050).numpy(), 22050
            for n, rec in recognisers.items():
                heard[("source", n)].append(rec.transcribe(data, sr))
                for m in modes[1:]:
                    heard[(m, n)].append(rec.transcribe(outs[m], tts.sample_rate))
    print(f"{args.model} / {args.voice}: {len(sentences)} sentences, WER per stage ({best_of}: judged by "
          f"{names[0]})\n")
    print("| stage | " + " | ".join(f"WER {n}" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for m in modes:
        print(f"| {m} | " + " | ".join(f"{100 * evaluate.wer(sentences, heard[(m, n)]):.1f} %" for n in names) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
