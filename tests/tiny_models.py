"""Tiny random-weight networks wired into a TextToSpeech, for fast end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import torch

from hare import checkpoints
from hare.pipeline import TextToSpeech
from hare.voices import VoiceLibrary

GPT_DIM = 32
DIFF_CH = 32

TINY_KWARGS = {
    "autoregressive": dict(layers=1, model_dim=GPT_DIM, heads=2, max_mel_tokens=80, max_text_tokens=200,
                           max_conditioning_inputs=2, number_text_tokens=255, start_text_token=255),
    "clvp2": dict(dim_text=32, dim_speech=32, dim_latent=32, text_enc_depth=1, speech_enc_depth=1, text_heads=2,
                  speech_heads=2, use_xformers=True),
    "diffusion_decoder": dict(model_channels=DIFF_CH, num_layers=1, in_latent_channels=GPT_DIM, num_heads=2,
                              unconditioned_percentage=0),
    "vocoder": dict(channel_size=4),
    "cvvp": dict(model_dim=32, transformer_heads=2, conditioning_enc_depth=1, speech_enc_depth=1, mel_codes=8192),
    "rlg_auto": dict(channels=GPT_DIM),
    "rlg_diffuser": dict(channels=2 * DIFF_CH),
    "hifi_decoder": dict(in_channels=GPT_DIM, cond_channels=GPT_DIM, upsample_initial_channel=16),
}


def tiny_models(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    models = {kind: checkpoints.build(kind, checkpoints.config_for(kind, kw)).eval() for kind, kw in TINY_KWARGS.items()}
    with torch.no_grad():  # make the stop token likely so that candidates end early
        models["autoregressive"].mel_head.bias[8193] += 3.0
    return models


def tiny_tts(voices_dir: Path | None = None, seed: int = 0, models: dict | None = None) -> TextToSpeech:
    m = models or tiny_models(seed)
    return TextToSpeech(
        gpt=m["autoregressive"], clvp=m["clvp2"], diffusion=m["diffusion_decoder"], vocoder=m["vocoder"],
        cvvp=m["cvvp"], rlg_auto=m["rlg_auto"], rlg_diffuser=m["rlg_diffuser"], hifi_decoder=m["hifi_decoder"],
        voices=VoiceLibrary([voices_dir] if voices_dir else []), model_id=f"tiny-{seed}", device="cpu",
    )


def write_voice(folder: Path, seconds: float = 3.0, freq: float = 180.0, clips: int = 2) -> Path:
    """A voice folder of harmonic tone clips with a little noise (a stand-in for speech)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(freq))
    sr = 22050
    t = np.arange(int(sr * seconds)) / sr
    for i in range(clips):
        wav = sum(0.2 / k * np.sin(2 * np.pi * freq * (1 + 0.05 * i) * k * t) for k in range(1, 6))
        wav = wav + 0.01 * rng.standard_normal(t.shape)
        soundfile.write(folder / f"clip{i}.wav", wav.astype(np.float32), sr)
    return folder


def save_official_layout(models: dict, directory: Path) -> Path:
    """Not a real official file: Hare safetensors in a models folder, as `load_model(dir)` reads them."""
    directory.mkdir(parents=True, exist_ok=True)
    for kind, model in models.items():
        checkpoints.save(model, kind, model.config, directory / f"{kind}.safetensors")
    return directory


def tiny_mini_models(seed: int = 0) -> dict:
    """hare-mini's layout at toy size: a codes-conditioned diffusion decoder making HiFi-GAN mels, a HiFi-GAN."""
    from hare.models.configs import DiffusionConfig, GPTConfig, HiFiGANConfig

    torch.manual_seed(seed)
    models = tiny_models(seed)
    gpt_cfg = GPTConfig(layers=1, dim=GPT_DIM, heads=2, max_mel_tokens=80, max_text_tokens=200, mel_vocab=66,
                        start_mel_token=64, stop_mel_token=65, cond_attn_blocks=1, calm_code=3,
                        tail_codes=(3, 3, 5), alignment_heads=((0, 1),))
    models["autoregressive"] = checkpoints.build("autoregressive", gpt_cfg).eval()
    with torch.no_grad():
        models["autoregressive"].mel_head.bias[65] += 3.0
    diff_cfg = DiffusionConfig(channels=DIFF_CH, layers=1, in_channels=80, out_channels=160, latent_channels=GPT_DIM,
                               num_codes=65, heads=2, mel_format="hifigan", conditioning_input="codes")
    models["diffusion_decoder"] = checkpoints.build("diffusion_decoder", diff_cfg).eval()
    voc_cfg = HiFiGANConfig(initial_channels=16, resblock_kernels=(3,), resblock_dilations=((1, 3),))
    models["vocoder"] = checkpoints.build("hifigan", voc_cfg).eval()
    from hare.models.configs import CLVPConfig

    clvp_cfg = CLVPConfig(text_dim=32, speech_dim=32, latent_dim=32, speech_vocab=64, text_depth=1, speech_depth=1,
                          text_heads=2, speech_heads=2)
    models["clvp2"] = checkpoints.build("clvp2", clvp_cfg).eval()
    return models


def save_models_dir(models: dict, directory: Path, kinds=("autoregressive", "clvp2", "diffusion_decoder")) -> Path:
    """Hare safetensors of `models` in a folder as `load_model(dir)` reads it (the vocoder under its slot name)."""
    directory.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        checkpoints.save(models[kind], kind, models[kind].config, directory / kind)
    voc = models["vocoder"]
    voc_kind = "hifigan" if type(voc).__name__ == "HiFiGAN" else "vocoder"
    checkpoints.save(voc, voc_kind, voc.config, directory / "vocoder")
    return directory
