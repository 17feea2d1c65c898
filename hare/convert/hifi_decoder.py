"""Tortoise v3's HiFi-GAN latent decoder (`hifidecoder.pth`, `HifiganGenerator` of `api_fast`) ->
hare.models.hifi_decoder.HifiDecoder.

The file is a plain HiFi-GAN V1 generator state dict (conv_pre / ups / resblocks / conv_post with weight
norm, as in `hare.convert.hifigan`) plus `cond_layer`, the 1x1 convolution of the speaker latent. Weight norm
is folded into plain weights. The reference loads the file with `strict=False`; Hare loads it strictly (the
official-size key list in the fixtures' manifest holds nothing else).
"""

from __future__ import annotations

from hare.convert import hifigan
from hare.convert._common import with_reference_defaults
from hare.models.configs import HifiDecoderConfig
from hare.models.hifi_decoder import HifiDecoder

CONFIG_CLASS = HifiDecoderConfig

_DEFAULTS = dict(in_channels=1024, out_channels=1, resblock_type="1", resblock_dilation_sizes=[[1, 3, 5]] * 3,
                 resblock_kernel_sizes=[3, 7, 11], upsample_kernel_sizes=[16, 16, 4, 4],
                 upsample_initial_channel=512, upsample_factors=[8, 8, 2, 2], inference_padding=5,
                 cond_channels=1024, conv_pre_weight_norm=True, conv_post_weight_norm=True, conv_post_bias=True)


def config_from_reference(kwargs: dict | None) -> HifiDecoderConfig:
    """From `HifiganGenerator(...)`'s arguments (the official api_fast values when None)."""
    k = with_reference_defaults(dict(kwargs or {}), _DEFAULTS, "HifiganGenerator")
    if str(k["resblock_type"]) != "1" or k["out_channels"] != 1 or not k["conv_post_bias"]:
        raise ValueError("only the api_fast layout is supported: resblock_type '1', one output channel, "
                         "conv_post with a bias")
    if k["cond_channels"] <= 0:
        raise ValueError("the latent decoder needs the speaker conditioning (cond_channels > 0)")
    return HifiDecoderConfig(
        latent_dim=k["in_channels"], cond_dim=k["cond_channels"], initial_channels=k["upsample_initial_channel"],
        upsample_rates=tuple(k["upsample_factors"]), upsample_kernels=tuple(k["upsample_kernel_sizes"]),
        resblock_kernels=tuple(k["resblock_kernel_sizes"]),
        resblock_dilations=tuple(tuple(d) for d in k["resblock_dilation_sizes"]))


def build(config: HifiDecoderConfig) -> HifiDecoder:
    return HifiDecoder(config)


def map_state_dict(sd: dict, config: HifiDecoderConfig) -> dict:
    sd = dict(sd)
    cond = {k: sd.pop(k) for k in list(sd) if k.startswith("cond_layer.")}
    mapped = hifigan.map_state_dict(sd, config.generator())
    out = {f"generator.{k}": v for k, v in mapped.items()}
    for k, v in cond.items():
        out[f"generator.cond.{k[len('cond_layer.'):]}"] = v
    return out
