"""UnifiedVoice: conditioning latent, teacher-forced losses/logits/latents, and greedy codes via the KV cache."""

from __future__ import annotations

import re

import torch

from hare.sampling import SamplingSettings, generate

from ._util import load_converted

MODELS = ("UnifiedVoice",)
EXACT = {"greedy_codes"}


def _max_generate_length(meta) -> int:
    """`max_generate_length` of the reference call that made greedy_codes (as written in meta.json)."""
    found = re.search(r"max_generate_length=(\d+)", meta["calls"]["greedy_codes"])
    if found is None:
        raise ValueError("meta.json does not say the greedy call's max_generate_length")
    return int(found.group(1))


def run(case_dir, meta, inputs):
    gpt = load_converted(case_dir, meta, "autoregressive")
    text, codes = inputs["text"].long(), inputs["codes"].long()
    with torch.no_grad():
        cond = gpt.conditioning_latent(inputs["cond_mels"])
        b = text.shape[0]
        text_lengths = torch.full((b,), text.shape[1])
        wav_lengths = torch.full((b,), codes.shape[1] * gpt.config.mel_length_compression)
        out = gpt(cond, text, text_lengths, codes, wav_lengths, clip_inputs=False)
        latents = gpt(cond, text, text_lengths, codes, wav_lengths, clip_inputs=False, return_latent=True)
    # reference: inference_speech(..., do_sample=False): HF greedy search with its default (neutral)
    # repetition penalty, through Hare's cached prefill/decode_step
    greedy = generate(gpt, cond[:1], text[:1], 1,
                      SamplingSettings(greedy=True, repetition_penalty=1.0, max_codes=_max_generate_length(meta)))
    return {
        "cond_latent": cond,
        "latents": latents,
        "loss_text": out.loss_text.reshape(1),
        "loss_mel": out.loss_mel.reshape(1),
        "mel_logits": out.mel_logits,
        "greedy_codes": greedy,
    }
