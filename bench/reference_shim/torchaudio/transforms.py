import torch

from hare import audio


class MelSpectrogram(torch.nn.Module):
    """Only the configuration Tortoise's TorchMelSpectrogram uses (22.05 kHz, 1024/256, 80 mels to 8 kHz)."""

    def __init__(self, n_fft=1024, hop_length=256, win_length=1024, power=2, normalized=False, sample_rate=22050,
                 f_min=0, f_max=8000, n_mels=80, norm="slaney", **_):
        super().__init__()
        expected = (1024, 256, 1024, 2, False, 22050, 0, 8000, 80, "slaney")
        got = (n_fft, hop_length, win_length, power, normalized, sample_rate, f_min, f_max, n_mels, norm)
        if got != expected:
            raise NotImplementedError(f"shim supports only {expected}, got {got}")

    def forward(self, wav):
        return audio.ar_mel_unnormalised(wav).exp()
