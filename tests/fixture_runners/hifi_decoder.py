from __future__ import annotations

from ._util import load_converted

MODELS = ("HifiganGenerator",)


def run(case_dir, meta, inputs):
    model = load_converted(case_dir, meta, "hifi_decoder")
    upsampled = model.upsample(inputs["gpt_latents"])
    wav = model.generator(upsampled, inputs["speaker_latent"][..., None])  # (batch, 1, samples) as the reference
    return {"upsampled_latents": upsampled, "wav": wav}
