"""vocoder.pth (UnivNetGenerator, under `model_g`, with old-style weight norm) -> hare.models.vocoder.UnivNet."""

from __future__ import annotations

from hare.convert._common import fold_weight_norm as _fold_weight_norm, rename, with_reference_defaults
from hare.models.configs import VocoderConfig
from hare.models.vocoder import UnivNet

CONFIG_CLASS = VocoderConfig

# UnivNetGenerator's own defaults (the official file uses them all)
_REFERENCE_DEFAULTS = dict(noise_dim=64, channel_size=32, dilations=[1, 3, 9, 27], strides=[8, 8, 4],
                           lReLU_slope=0.2, kpnet_conv_size=3, hop_length=256, n_mel_channels=100)


def config_from_reference(kwargs: dict) -> VocoderConfig:
    k = with_reference_defaults(kwargs, _REFERENCE_DEFAULTS, "UnivNetGenerator")
    return VocoderConfig(noise_dim=k["noise_dim"], channels=k["channel_size"], dilations=tuple(k["dilations"]),
                         strides=tuple(k["strides"]), lrelu_slope=k["lReLU_slope"],
                         kpnet_conv_size=k["kpnet_conv_size"], hop_length=k["hop_length"],
                         n_mels=k["n_mel_channels"])


def build(config: VocoderConfig) -> UnivNet:
    return UnivNet(config)


_RULES = [
    (r"conv_pre\.(weight|bias)", r"conv_pre.\1"),
    (r"conv_post\.1\.(weight|bias)", r"conv_post.\1"),
    (r"res_stack\.(\d+)\.convt_pre\.1\.(weight|bias)", r"blocks.\1.upsample.\2"),
    (r"res_stack\.(\d+)\.conv_blocks\.(\d+)\.1\.(weight|bias)", r"blocks.\1.convs.\2.\3"),
    (r"res_stack\.(\d+)\.kernel_predictor\.input_conv\.0\.(weight|bias)", r"blocks.\1.kernel_predictor.inp.\2"),
    (r"res_stack\.(\d+)\.kernel_predictor\.residual_convs\.(\d+)\.1\.(weight|bias)",
     r"blocks.\1.kernel_predictor.residual.\2.0.\3"),
    (r"res_stack\.(\d+)\.kernel_predictor\.residual_convs\.(\d+)\.3\.(weight|bias)",
     r"blocks.\1.kernel_predictor.residual.\2.1.\3"),
    (r"res_stack\.(\d+)\.kernel_predictor\.kernel_conv\.(weight|bias)", r"blocks.\1.kernel_predictor.kernel.\2"),
    (r"res_stack\.(\d+)\.kernel_predictor\.bias_conv\.(weight|bias)", r"blocks.\1.kernel_predictor.bias.\2"),
]


def map_state_dict(sd: dict, config: VocoderConfig) -> dict:
    if "model_g" in sd and isinstance(sd["model_g"], dict):
        sd = sd["model_g"]
    return rename(_fold_weight_norm(sd), _RULES)
