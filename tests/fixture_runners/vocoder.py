from __future__ import annotations

from ._util import load_converted

MODELS = ("UnivNetGenerator",)


def run(case_dir, meta, inputs):
    model = load_converted(case_dir, meta, "vocoder")
    wav = model.vocode(inputs["mel"], noise=inputs["z"])
    return {"wav": wav.unsqueeze(1)}  # the reference keeps a channel axis: (batch, 1, samples)
