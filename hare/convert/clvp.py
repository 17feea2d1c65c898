"""clvp2.pth (CLVP with x-transformers encoders) -> hare.models.clvp.CLVP."""

from __future__ import annotations

from hare.convert._common import rename, with_reference_defaults
from hare.models.clvp import CLVP
from hare.models.configs import CLVPConfig

CONFIG_CLASS = CLVPConfig

_REFERENCE_DEFAULTS = dict(
    dim_text=512, dim_speech=512, dim_latent=512, num_text_tokens=256, text_enc_depth=6, text_seq_len=120,
    text_heads=8, num_speech_tokens=8192, speech_enc_depth=6, speech_heads=8, speech_seq_len=250,
    text_mask_percentage=0, voice_mask_percentage=0, wav_token_compression=1024, use_xformers=False,
)


def config_from_reference(kwargs: dict) -> CLVPConfig:
    k = with_reference_defaults(kwargs, _REFERENCE_DEFAULTS, "CLVP")
    if not k["use_xformers"]:
        raise TypeError("Hare implements CLVP v2 (use_xformers=True), the layout of clvp2.pth")
    return CLVPConfig(
        text_dim=k["dim_text"], speech_dim=k["dim_speech"], latent_dim=k["dim_latent"],
        text_vocab=k["num_text_tokens"], speech_vocab=k["num_speech_tokens"], text_depth=k["text_enc_depth"],
        speech_depth=k["speech_enc_depth"], text_heads=k["text_heads"], speech_heads=k["speech_heads"],
        text_seq_len=k["text_seq_len"], speech_seq_len=k["speech_seq_len"],
    )


def build(config: CLVPConfig) -> CLVP:
    return CLVP(config)


def encoder_rules(official: str, hare: str, wrap: str) -> list[tuple[str, str]]:
    """x-transformers Encoder keys (layers alternate attention/feed-forward) -> hare.models.clvp.Encoder.

    `wrap` is "wrap\\." where the reference wrapped each block in a checkpointing layer, else "".
    Layer j of the reference is (j // 2)'s attention (even j) or feed-forward (odd j): handled by
    `interleave_layers` after renaming.
    """
    p = rf"{official}\.transformer\.attn_layers"
    return [
        (rf"{p}\.layers\.(\d+)\.0\.0\.g", rf"{hare}.layers.\1.norm.g"),
        (rf"{p}\.layers\.(\d+)\.1\.{wrap}to_(q|k|v|out)\.(weight|bias)", rf"{hare}.layers.\1.attn.to_\2.\3"),
        (rf"{p}\.layers\.(\d+)\.1\.{wrap}net\.0\.proj\.(weight|bias)", rf"{hare}.layers.\1.ff.proj_in.\2"),
        (rf"{p}\.layers\.(\d+)\.1\.{wrap}net\.3\.(weight|bias)", rf"{hare}.layers.\1.ff.proj_out.\2"),
        (rf"{p}\.rotary_pos_emb\.inv_freq", rf"{hare}.rotary.inv_freq"),
        (rf"{official}\.transformer\.norm\.(weight|bias)", rf"{hare}.norm.\1"),
    ]


def interleave_layers(sd: dict, hare_prefixes: tuple[str, ...]) -> dict:
    """`<prefix>.layers.<j>.norm.g` -> attention (j even) or feed-forward (j odd) norm of layer j // 2."""
    out = {}
    for key, value in sd.items():
        for prefix in hare_prefixes:
            head = f"{prefix}.layers."
            if key.startswith(head):
                j_text, rest = key[len(head):].split(".", 1)
                j = int(j_text)
                if rest == "norm.g":
                    rest = ("attn_norm.g" if j % 2 == 0 else "ff_norm.g")
                key = f"{head}{j // 2}.{rest}"
                break
        out[key] = value
    return out


_RULES = [
    *encoder_rules("text_transformer", "text_encoder", r"wrap\."),
    *encoder_rules("speech_transformer", "speech_encoder", r"wrap\."),
]


def map_state_dict(sd: dict, config: CLVPConfig) -> dict:
    return interleave_layers(rename(sd, _RULES), ("text_encoder", "speech_encoder"))
