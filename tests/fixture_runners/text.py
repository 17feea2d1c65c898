"""The text case: token ids per sentence and the long-text split, both kept in meta.json.

meta.json: `cases` = [{"text": ..., "ids": [...]}, ...] (the reference's `VoiceBpeTokenizer().encode`), and
`split_input` / `split_output` (its `split_and_recombine_text`; optional `split_desired_length` /
`split_max_length`, default 200 / 300).
"""

from __future__ import annotations

from hare.errors import TextError
from hare.text import Tokenizer, split_text

MODELS = ("text",)


def meta_outputs(meta: dict) -> list[str]:
    names = [f"ids:{i}" for i in range(len(meta.get("cases", [])))]
    if "split_input" in meta:
        names.append("split")
    return names


def _check_ids(tok: Tokenizer, text: str, want: list[int]) -> list[str]:
    try:
        got = tok.encode(text, check=False)  # the reference's ids, whatever Hare's policy on refusing text
    except Exception as exc:  # reported as a failure of this sentence, not of the whole case
        return [f"{text!r}: {type(exc).__name__}: {exc}"]
    if got != want:
        return [f"{text!r}: got {got}, want {want}"]
    # Hare may refuse only what cannot be spoken or does not fit; anything else must pass the checked path too
    if tok.is_speakable(want) and len(want) + 1 < tok.max_tokens:
        try:
            tok.encode(text)
        except TextError as exc:
            return [f"{text!r}: refused although the reference speaks it: {exc}"]
    return []


def run(case_dir, meta, inputs):
    tok = Tokenizer()
    out = {f"ids:{i}": _check_ids(tok, case["text"], case["ids"]) for i, case in enumerate(meta.get("cases", []))}
    if "split_input" in meta:
        want = meta["split_output"]
        try:
            got = split_text(meta["split_input"], meta.get("split_desired_length", 200),
                             meta.get("split_max_length", 300))
        except Exception as exc:
            out["split"] = [f"split: {type(exc).__name__}: {exc}"]
        else:
            if got == want:
                out["split"] = []
            else:
                first = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
                out["split"] = [f"split: got {len(got)} chunks, want {len(want)}; first difference at chunk {first}: "
                                f"got {got[first] if first < len(got) else None!r}, "
                                f"want {want[first] if first < len(want) else None!r}"]
    return out
