from __future__ import annotations

from hare.rerank import fix_candidates

MODELS = ("pipeline",)
EXACT = {"fixed_codes"}


def run(case_dir, meta, inputs):
    return {"fixed_codes": fix_candidates(inputs["codes"])}
