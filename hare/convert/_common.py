"""Renaming rules shared by several converters."""

from __future__ import annotations

import re


def rename(sd: dict, rules: list) -> dict:
    """Apply the first matching (regex, replacement) rule to each key; unmatched keys pass through.

    A replacement is a template string (`\\1` refers to groups) or a function of the match.
    """
    compiled = [(re.compile(p + r"$"), r) for p, r in rules]
    out = {}
    for key, value in sd.items():
        for pattern, repl in compiled:
            if pattern.match(key):
                key = pattern.sub(repl, key)
                break
        out[key] = value
    return out


def attention_block_rules(official_prefix: str, hare_prefix: str) -> list[tuple[str, str]]:
    """Tortoise's AttentionBlock (norm, qkv, proj_out, relative bias) -> hare.models.layers.AttentionBlock."""
    p, h = official_prefix, hare_prefix
    g = rf"\{re.compile(p).groups + 1}"  # the (weight|bias) group comes after the prefix's own groups
    return [
        (rf"{p}\.norm\.(weight|bias)", rf"{h}.norm.{g}"),
        (rf"{p}\.qkv\.(weight|bias)", rf"{h}.qkv.{g}"),
        (rf"{p}\.proj_out\.(weight|bias)", rf"{h}.proj.{g}"),
        (rf"{p}\.relative_pos_embeddings\.relative_attention_bias\.weight", rf"{h}.rel_pos.embedding.weight"),
    ]


def with_reference_defaults(kwargs: dict, defaults: dict, reference_class: str) -> dict:
    """The reference constructor's arguments: `kwargs` over the class defaults; unknown names are refused."""
    unknown = set(kwargs) - set(defaults)
    if unknown:
        raise TypeError(f"unknown {reference_class} arguments: {sorted(unknown)}")
    return {**defaults, **kwargs}


def fold_weight_norm(sd: dict) -> dict:
    """w = g * v / ||v||, the norm over every dim but 0 (torch's weight_norm default, also for ConvTranspose)."""
    out = {}
    for key, value in sd.items():
        if key.endswith(".weight_g"):
            continue
        if key.endswith(".weight_v"):
            base = key[: -len("_v")]
            g = sd.get(base + "_g")
            if g is None:
                out[key] = value  # unpaired: left for the strict check to report
                continue
            dims = tuple(range(1, value.dim()))
            out[base] = g * value / value.norm(dim=dims, keepdim=True)
            continue
        out[key] = value
    for key in sd:
        if key.endswith(".weight_g") and key[: -len("_g")] + "_v" not in sd:
            out[key] = sd[key]
    return out
