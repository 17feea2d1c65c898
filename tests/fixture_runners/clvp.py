from __future__ import annotations

from ._util import load_converted

MODELS = ("CLVP", "CVVP")


def run(case_dir, meta, inputs):
    if meta["model"] == "CLVP":
        model = load_converted(case_dir, meta, "clvp2")
        return {"similarity": model.similarity(inputs["text"], inputs["speech_codes"])}
    model = load_converted(case_dir, meta, "cvvp")
    return {"similarity": model.similarity(inputs["mel_cond"], inputs["speech_codes"])}
