"""cvvp.pth (CVVP) -> hare.models.clvp.CVVP."""

from __future__ import annotations

from hare.convert._common import attention_block_rules, rename, with_reference_defaults
from hare.convert.clvp import encoder_rules, interleave_layers
from hare.models.clvp import CVVP
from hare.models.configs import CVVPConfig

CONFIG_CLASS = CVVPConfig

_REFERENCE_DEFAULTS = dict(
    model_dim=512, transformer_heads=8, dropout=0.1, conditioning_enc_depth=8, cond_mask_percentage=0,
    mel_channels=80, mel_codes=None, speech_enc_depth=8, speech_mask_percentage=0, latent_multiplier=1,
)


def config_from_reference(kwargs: dict) -> CVVPConfig:
    k = with_reference_defaults(kwargs, _REFERENCE_DEFAULTS, "CVVP")
    if k["mel_codes"] is None or k["latent_multiplier"] != 1:
        raise TypeError("Hare implements CVVP over speech codes (mel_codes set) with latent_multiplier=1")
    return CVVPConfig(dim=k["model_dim"], heads=k["transformer_heads"], speech_vocab=k["mel_codes"],
                      cond_depth=k["conditioning_enc_depth"], speech_depth=k["speech_enc_depth"],
                      n_mels=k["mel_channels"])


def build(config: CVVPConfig) -> CVVP:
    return CVVP(config)


def _collapsing(official: str, hare: str) -> list[tuple[str, str]]:
    return [
        *encoder_rules(official, f"{hare}.encoder", ""),
        (rf"{official}\.pre_combiner\.0\.(weight|bias)", rf"{hare}.proj_in.\1"),
        *attention_block_rules(rf"{official}\.pre_combiner\.1", f"{hare}.attn"),
        (rf"{official}\.pre_combiner\.2\.(weight|bias)", rf"{hare}.proj_out.\1"),
    ]


_RULES = [
    (r"cond_emb\.(0|1)\.(weight|bias)", r"cond_convs.\1.\2"),
    *_collapsing("conditioning_transformer", "cond_encoder"),
    (r"to_conditioning_latent\.weight", "to_cond_latent.weight"),
    (r"speech_emb\.emb\.weight", "speech_emb.weight"),
    *_collapsing("speech_transformer", "speech_encoder"),
]


def map_state_dict(sd: dict, config: CVVPConfig) -> dict:
    return interleave_layers(rename(sd, _RULES), ("cond_encoder.encoder", "speech_encoder.encoder"))
