"""classifier.pth (tortoise v3 `AudioMiniEncoderWithClassifierHead`, "is this from Tortoise?") ->
hare.models.classifier.ProvenanceClassifier.

The official encoder keeps its residual blocks and downsampling convolutions in one flat `enc.res` list
(`resnet_blocks` blocks, then a `Downsample`, per stage); Hare groups them per stage. The attention blocks
are Hare's shared `AttentionBlock` (same fused-QKV layout, `proj_out` -> `proj`).
"""

from __future__ import annotations

import re

from hare.convert._common import attention_block_rules, rename, with_reference_defaults
from hare.models.classifier import ProvenanceClassifier
from hare.models.configs import ClassifierConfig

CONFIG_CLASS = ClassifierConfig

_REQUIRED = ("classes", "spec_dim", "embedding_dim")
_DEFAULTS = dict(  # AudioMiniEncoderWithClassifierHead + AudioMiniEncoder defaults
    classes=None, distribute_zero_label=True, spec_dim=None, embedding_dim=None, base_channels=128, depth=2,
    resnet_blocks=2, attn_blocks=4, num_attn_heads=4, dropout=0, downsample_factor=2, kernel_size=3,
)


def config_from_reference(kwargs: dict | None) -> ClassifierConfig:
    """From `AudioMiniEncoderWithClassifierHead(...)`'s arguments (`distribute_zero_label` only shapes the
    training loss and is ignored)."""
    k = with_reference_defaults(dict(kwargs or {}), _DEFAULTS, "AudioMiniEncoderWithClassifierHead")
    missing = [name for name in _REQUIRED if k[name] is None]
    if missing:
        raise TypeError(f"AudioMiniEncoderWithClassifierHead needs {', '.join(missing)}")
    if k["kernel_size"] not in (3, 5):
        raise ValueError(f"kernel_size must be 3 or 5 (got {k['kernel_size']}): the reference pads other "
                         "kernels as if they were 5 wide")
    return ClassifierConfig(
        classes=int(k["classes"]), in_channels=int(k["spec_dim"]), dim=int(k["embedding_dim"]),
        base_channels=int(k["base_channels"]), depth=int(k["depth"]), res_blocks=int(k["resnet_blocks"]),
        downsample=int(k["downsample_factor"]), attn_blocks=int(k["attn_blocks"]), heads=int(k["num_attn_heads"]),
        kernel_size=int(k["kernel_size"]), dropout=float(k["dropout"]))


def build(config: ClassifierConfig) -> ProvenanceClassifier:
    return ProvenanceClassifier(config)


_BLOCK_PARTS = {"in_layers.0": "norm_in", "in_layers.2": "conv_in", "out_layers.0": "norm_out",
                "out_layers.3": "conv_out"}


def _res_rule(config: ClassifierConfig):
    per_stage = config.res_blocks + 1

    def repl(m: re.Match) -> str:
        stage, index = divmod(int(m.group(1)), per_stage)
        part, param = m.group(2), m.group(3)
        if index < config.res_blocks and part in _BLOCK_PARTS:
            return f"stages.{stage}.blocks.{index}.{_BLOCK_PARTS[part]}.{param}"
        if index == config.res_blocks and part == "op":
            return f"stages.{stage}.down.{param}"
        return m.group(0)  # not this layout: left for the strict check to name

    return r"enc\.res\.(\d+)\.(in_layers\.\d+|out_layers\.\d+|op)\.(weight|bias)", repl


def map_state_dict(sd: dict, config: ClassifierConfig) -> dict:
    rules = [
        (r"enc\.init\.0\.(weight|bias)", r"conv_in.\1"),
        _res_rule(config),
        (r"enc\.final\.0\.(weight|bias)", r"final_norm.\1"),
        (r"enc\.final\.2\.(weight|bias)", r"final_proj.\1"),
        *attention_block_rules(r"enc\.attn\.(\d+)", r"attn.\1"),
    ]
    return rename(sd, rules)
