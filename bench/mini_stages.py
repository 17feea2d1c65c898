"""Where hare-mini's word errors come from: each stage fed the truth, scored with pocketsphinx.

    python bench/mini_stages.py data/mini-eval [--voice flite-rms] [--model hare-mini] [--start 0.02 --start 0.1]

For every sentence of an evaluation suite (`hare data eval-suite`) and its real recording:
  - `real`: the recording's HiFi-GAN mel through the model's vocoder (the vocoder's ceiling);
  - `vqvae`: the recording's true speech codes through the VQ-VAE's own decoder, its AR mel mapped to
    HiFi-GAN's by a least-squares fit on the voice's prompt clips (the codes' ceiling);
  - `prior`: the true codes through the diffusion decoder's prior (`predict_mel`) alone;
  - `start=S`: the true codes through shallow diffusion from S (ultra_fast's 30-step schedule);
  - `gpt`: the model's own codes (16 candidates sampled with the model's settings, the pipeline's pick:
    `TextToSpeech.rerank`) through the VQ-VAE path of `vqvae`;
  - `gpt+decoder`: the same codes through the diffusion decoder (shallow diffusion from the model's own
    `diffusion_start`, as `hare speak` runs it).
A decoder on GPT latents (`conditioning_input: latents`) reads the GPT's teacher-forced latents of the codes
(true or its own), as the pipeline computes them. Needs a VQ-VAE file beside the model (hare-mini).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hare import audio, checkpoints, evaluate
from hare.pipeline import calm_cut, load_model, make_settings
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
    asr = evaluate.recognizer("pocketsphinx")
    starts = args.start or [0.02, 0.1]
    modes = ["real", "vqvae", "prior", *[f"start={s}" for s in starts], "gpt", "gpt+decoder"]
    heard = {m: [] for m in modes}
    own = make_settings("ultra_fast", **tts.default_settings)  # the model's own sampling settings
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
        return audio.denormalize_mel(tts._diffuse(cond, diff_latent, frames, st, g, False, ""))

    g = torch.Generator().manual_seed(0)
    for sentence, path in zip(sentences, real):
        wav = audio.load_audio(path, 22050)
        with torch.inference_mode():
            text = torch.tensor([tts.tokenizer.encode(sentence) + [tts.tokenizer.stop_token]])
            codes = vq.encode(audio.ar_mel(wav).reshape(1, 80, -1)).reshape(1, -1)
            frames = tts.mel_format.frames_for_codes(codes.shape[1])
            cond = decoder_input(text, codes, codes.shape[1])
            aligned = tts.diffusion.aligned_conditioning(cond, diff_latent, frames)
            mels = {"real": audio.hifigan_mel(wav).reshape(1, 80, -1), "vqvae": vq_path(codes),
                    "prior": audio.denormalize_mel(tts.diffusion.predict_mel(aligned).float())}
            for s in starts:
                mels[f"start={s}"] = diffuse(cond, frames, s)
            cands = sample_codes(tts.gpt, ar_latent, text, 16, 16, sampling, g)
            best = tts.rerank(text, cands, own)[0]
            keep = calm_cut(best, calm_code=tts.gpt.config.calm_code)
            mels["gpt"] = vq_path(best[None, :keep])
            mels["gpt+decoder"] = diffuse(decoder_input(text, best[None], keep),
                                          tts.mel_format.frames_for_codes(keep), own.diffusion_start)
            for m in modes:
                out = tts.vocoder.vocode(mels[m], generator=g)[0].float().numpy().reshape(-1)
                heard[m].append(asr.transcribe(out, tts.sample_rate))
    print(f"{args.model} / {args.voice}: {len(sentences)} sentences, pocketsphinx WER per stage")
    for m in modes:
        print(f"  {m:12s} {100 * evaluate.wer(sentences, heard[m]):5.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
