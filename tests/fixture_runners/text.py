"""The text case: token ids per sentence and the long-text split, from meta.json."""

from __future__ import annotations

from hare.text import Tokenizer, split_text

MODELS = ("text",)


def meta_outputs(meta: dict) -> list[str]:
    names = [f"ids:{i}" for i in range(len(meta.get("cases", [])))]
    if "split_input" in meta:
        names.append("split")
    return names


def run(case_dir, meta, inputs):
    tok = Tokenizer()
    out = {}
    for i, case in enumerate(meta.get("cases", [])):
        try:
            got = tok.encode(case["text"])
        except Exception as exc:  # reported as a failure of this sentence, not of the whole case
            got = f"{type(exc).__name__}: {exc}"
        out[f"ids:{i}"] = [] if got == case["ids"] else [f"{case['text']!r}: got {got}, want {case['ids']}"]
    if "split_input" in meta:
        got = split_text(meta["split_input"])
        want = meta["split_output"]
        out["split"] = [] if got == want else [f"split: got {len(got)} chunks {got!r}, want {len(want)} {want!r}"]
    return out
