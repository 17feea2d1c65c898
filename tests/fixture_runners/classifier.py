from __future__ import annotations

from ._util import load_converted

MODELS = ("AudioMiniEncoderWithClassifierHead",)


def run(case_dir, meta, inputs):
    model = load_converted(case_dir, meta, "classifier")
    clip = inputs["clip24"]  # (1, 220000): load_audio(path, 24000)[:, :220000], as is_this_from_tortoise.py
    logits = model(clip[None])  # the reference's classify_audio_clip: clip.unsqueeze(0) -> (1, 1, samples)
    return {"logits": logits, "prob_tortoise": model.prob_tortoise(clip[None])}
