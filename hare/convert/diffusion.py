"""diffusion_decoder.pth (DiffusionTts) -> hare.models.diffusion.DiffusionDecoder."""

from __future__ import annotations

import re

from hare.convert._common import attention_block_rules, rename, with_reference_defaults
from hare.models.configs import DiffusionConfig
from hare.models.diffusion import DiffusionDecoder

CONFIG_CLASS = DiffusionConfig

_REFERENCE_DEFAULTS = dict(
    model_channels=512, num_layers=8, in_channels=100, in_latent_channels=512, in_tokens=8193, out_channels=200,
    dropout=0, use_fp16=False, num_heads=16, layer_drop=0.1, unconditioned_percentage=0.1,
)


def config_from_reference(kwargs: dict) -> DiffusionConfig:
    k = with_reference_defaults(kwargs, _REFERENCE_DEFAULTS, "DiffusionTts")
    return DiffusionConfig(
        channels=k["model_channels"], layers=k["num_layers"], in_channels=k["in_channels"],
        out_channels=k["out_channels"], latent_channels=k["in_latent_channels"], num_codes=k["in_tokens"],
        heads=k["num_heads"], dropout=float(k["dropout"]), unconditioned_percentage=float(k["unconditioned_percentage"]),
        layer_drop=float(k["layer_drop"]),
    )


def build(config: DiffusionConfig) -> DiffusionDecoder:
    return DiffusionDecoder(config)


def _resblock_rules(official: str, hare: str) -> list:
    g = rf"\{re.compile(official).groups + 1}"
    return [
        (rf"{official}\.in_layers\.0\.(weight|bias)", rf"{hare}.norm_in.{g}"),
        (rf"{official}\.in_layers\.2\.(weight|bias)", rf"{hare}.conv_in.{g}"),
        (rf"{official}\.emb_layers\.1\.(weight|bias)", rf"{hare}.emb.{g}"),
        (rf"{official}\.out_layers\.0\.(weight|bias)", rf"{hare}.norm_out.{g}"),
        (rf"{official}\.out_layers\.3\.(weight|bias)", rf"{hare}.conv_out.{g}"),
    ]


def _shift(offset: int, template: str):
    """Replacement function: group 1 is an index to shift by -offset, group 2 the rest of the key."""
    return lambda m: template.format(int(m.group(1)) - offset, m.group(2))


def map_state_dict(sd: dict, config: DiffusionConfig) -> dict:
    n = config.layers
    rules = [
        (r"inp_block\.(weight|bias)", r"inp.\1"),
        (r"time_embed\.0\.(weight|bias)", r"time_in.\1"),
        (r"time_embed\.2\.(weight|bias)", r"time_out.\1"),
        *attention_block_rules(r"code_converter\.(\d+)", r"code_blocks.\1"),
        (r"latent_conditioner\.0\.(weight|bias)", r"latent_in.\1"),
        (r"contextual_embedder\.([01])\.(weight|bias)", r"context_convs.\1.\2"),
        (r"unconditioned_embedding", "unconditioned"),
        *_resblock_rules(r"conditioning_timestep_integrator\.(\d+)\.resblk", r"cond_layers.\1.res"),
        *attention_block_rules(r"conditioning_timestep_integrator\.(\d+)\.attn", r"cond_layers.\1.attn"),
        (r"integrating_conv\.(weight|bias)", r"merge.\1"),
        *_resblock_rules(r"layers\.(\d+)\.resblk", r"layers.\1.res"),
        *attention_block_rules(r"layers\.(\d+)\.attn", r"layers.\1.attn"),
        (r"out\.0\.(weight|bias)", r"out_norm.\1"),
        (r"out\.2\.(weight|bias)", r"out_conv.\1"),
    ]
    out = rename(sd, rules)
    # index shifts: the reference keeps some blocks in one Sequential with a leading conv, or appends the
    # three plain ResBlocks to `layers`
    shifted = [
        (r"latent_conditioner\.(\d+)\.(.+)", 1, "latent_blocks.{}.{}"),
        (r"contextual_embedder\.(\d+)\.(.+)", 2, "context_blocks.{}.{}"),
        (r"layers\.(\d+)\.((?:in|emb|out)_layers.+)", n, "res_layers.{}.{}"),
    ]
    out = rename(out, [(p, _shift(off, t)) for p, off, t in shifted])
    # the shifted blocks still carry the reference's inner names
    return rename(out, [
        *attention_block_rules(r"latent_blocks\.(\d+)", r"latent_blocks.\1"),
        *attention_block_rules(r"context_blocks\.(\d+)", r"context_blocks.\1"),
        *_resblock_rules(r"res_layers\.(\d+)", r"res_layers.\1"),
    ])
