from __future__ import annotations

import torch

from hare.sampling import SamplingSettings, generate

from ._util import load_converted

MODELS = ("UnifiedVoice",)
EXACT = {"greedy_codes"}


def run(case_dir, meta, inputs):
    gpt = load_converted(case_dir, meta, "autoregressive")
    text, codes = inputs["text"].long(), inputs["codes"].long()
    cond = gpt.conditioning_latent(inputs["cond_mels"])
    b = text.shape[0]
    text_lengths = torch.full((b,), text.shape[1])
    wav_lengths = torch.full((b,), codes.shape[1] * gpt.config.mel_length_compression)
    out = gpt(cond, text, text_lengths, codes, wav_lengths, clip_inputs=False)
    latents = gpt.speech_latents(cond, text, codes)
    n = inputs.get("greedy_codes", None)
    greedy = generate(gpt, cond[:1], text[:1], 1, SamplingSettings(greedy=True, repetition_penalty=1.0,
                                                                     max_codes=12))
    return {
        "cond_latent": cond,
        "latents": latents,
        "loss_text": out.loss_text.reshape(1),
        "loss_mel": out.loss_mel.reshape(1),
        "mel_logits": out.mel_logits,
        "greedy_codes": greedy,
    }
