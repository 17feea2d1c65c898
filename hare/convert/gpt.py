"""autoregressive.pth (UnifiedVoice with its HF GPT-2 backbone) -> hare.models.gpt.GPT.

Official key layout (tortoise/models/autoregressive.py): `conditioning_encoder.{init, attn.N}`,
`text_embedding`, `mel_embedding`, `text_pos_embedding.emb`, `mel_pos_embedding.emb`, `gpt.h.N.{ln_1,
attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj}`, `gpt.ln_f`, `final_norm`, `text_head`, `mel_head`.
GPT-2's Conv1D layers store weights as (in, out): they are transposed into nn.Linear's (out, in).
Files saved with older transformers also hold per-layer causal-mask constants `gpt.h.N.attn.bias` and
`gpt.h.N.attn.masked_bias`: exactly those are dropped. Anything else unknown (e.g. the reference's
`inference_model.*` or `gpt.wte.*`, which a state dict taken after `post_init_gpt2_config` would carry) is
passed through, so the strict load names it.
"""

from __future__ import annotations

import re

from hare.convert._common import attention_block_rules, rename, with_reference_defaults
from hare.models.configs import GPTConfig
from hare.models.gpt import GPT

CONFIG_CLASS = GPTConfig

# UnifiedVoice.__init__'s defaults (tortoise-tts 3.0.0), for arguments a caller did not pass. The stop text
# token is not an argument: the reference fixes it at 0.
_REFERENCE_DEFAULTS = dict(
    layers=8, model_dim=512, heads=8, max_text_tokens=120, max_mel_tokens=250, max_conditioning_inputs=1,
    mel_length_compression=1024, number_text_tokens=256, start_text_token=None, number_mel_codes=8194,
    start_mel_token=8192, stop_mel_token=8193, train_solo_embeddings=False, use_mel_codes_as_input=True,
    checkpointing=True, types=1,
)


def config_from_reference(kwargs: dict) -> GPTConfig:
    k = with_reference_defaults(kwargs, _REFERENCE_DEFAULTS, "UnifiedVoice")
    if k["types"] != 1 or k["train_solo_embeddings"] or not k["use_mel_codes_as_input"]:
        raise TypeError("Hare supports UnifiedVoice with types=1, use_mel_codes_as_input=True, no solo embeddings")
    start_text = k["number_text_tokens"] if k["start_text_token"] is None else k["start_text_token"]
    return GPTConfig(
        layers=k["layers"], dim=k["model_dim"], heads=k["heads"], max_mel_tokens=k["max_mel_tokens"],
        max_text_tokens=k["max_text_tokens"], max_conditioning_inputs=k["max_conditioning_inputs"],
        text_vocab=k["number_text_tokens"], start_text_token=start_text, stop_text_token=0,
        mel_vocab=k["number_mel_codes"], start_mel_token=k["start_mel_token"], stop_mel_token=k["stop_mel_token"],
        mel_length_compression=k["mel_length_compression"],
    )


def build(config: GPTConfig) -> GPT:
    return GPT(config)


_LEGACY_BUFFER = re.compile(r"gpt\.h\.\d+\.attn\.(bias|masked_bias)$")  # old transformers' causal-mask constants
_CONV1D = re.compile(r"blocks\.\d+\.(qkv|attn_out|fc|proj)\.weight$")  # GPT-2 Conv1D stores (in, out)

_RULES = [
    (r"conditioning_encoder\.init\.(weight|bias)", r"cond_in.\1"),
    *attention_block_rules(r"conditioning_encoder\.attn\.(\d+)", r"cond_blocks.\1"),
    (r"text_pos_embedding\.emb\.weight", "text_pos.weight"),
    (r"mel_pos_embedding\.emb\.weight", "mel_pos.weight"),
    (r"gpt\.h\.(\d+)\.ln_1\.(weight|bias)", r"blocks.\1.ln1.\2"),
    (r"gpt\.h\.(\d+)\.ln_2\.(weight|bias)", r"blocks.\1.ln2.\2"),
    (r"gpt\.h\.(\d+)\.attn\.c_attn\.(weight|bias)", r"blocks.\1.qkv.\2"),
    (r"gpt\.h\.(\d+)\.attn\.c_proj\.(weight|bias)", r"blocks.\1.attn_out.\2"),
    (r"gpt\.h\.(\d+)\.mlp\.c_fc\.(weight|bias)", r"blocks.\1.fc.\2"),
    (r"gpt\.h\.(\d+)\.mlp\.c_proj\.(weight|bias)", r"blocks.\1.proj.\2"),
    (r"gpt\.ln_f\.(weight|bias)", r"ln_f.\1"),
    # text_embedding, mel_embedding, final_norm, text_head and mel_head keep their names
]


def map_state_dict(sd: dict, config: GPTConfig) -> dict:
    kept = {k: v for k, v in sd.items() if not _LEGACY_BUFFER.match(k)}
    out = rename(kept, _RULES)
    return {k: (v.t() if _CONV1D.match(k) and v.dim() == 2 else v) for k, v in out.items()}
