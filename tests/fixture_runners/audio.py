"""The audio front ends against the reference (torchaudio MelSpectrogram, Tacotron STFT, torchaudio's resampler)."""

from __future__ import annotations

from hare import audio

MODELS = ("audio",)

# fixtures/README.md allows front ends atol 1e-3. Hare performs the reference's float32 arithmetic in the same
# order (torchaudio's sinc taps, torch.stft for the AR mel, the float32 torchaudio filterbank, the Tacotron STFT as
# a DFT-basis conv1d, librosa's filter rounding) on tensors of the reference's shapes, and on the shipped case every
# output is bit-identical here (max error 0, also with 1 or 2 threads). The tolerances only leave room for rounding
# noise: 1e-6 on waveforms in [-1, 1], 1e-5 on log-mels. Caveat for other torch builds: if conv1d/FFT kernels sum
# in another order, bins near the 1e-5 floor move by ~1e-3 in log (the log magnifies float32 rounding of a tiny
# magnitude; 3e-3 measured on a pure tone when another batch size makes conv1d pick another kernel): rounding, not
# a formula error, and the reason README allows front ends 1e-3. mel_norms is shipped data: equal.
EXACT = {"mel_norms"}
TOLERANCES = {
    "wav24": (1e-6, 1e-6),
    "ar_cond_mel": (1e-5, 1e-5),
    "ar_mel_unnormalised": (1e-5, 1e-5),
    "univnet_mel": (1e-5, 1e-5),
    "normalize_tacotron_mel": (1e-5, 1e-5),
}


def run(case_dir, meta, inputs):
    wav22 = inputs["wav22"]  # (1, samples) at 22.05 kHz
    univnet = audio.diffusion_conditioning_mel(wav22)[0]  # (100, 401)
    return {
        "wav24": audio.resample_sinc(wav22, audio.AR_SAMPLE_RATE, audio.VOCODER_SAMPLE_RATE),
        "ar_cond_mel": audio.ar_mel(audio.format_conditioning(wav22[0])),  # short clip: zero padded, no crop
        "ar_mel_unnormalised": audio.ar_mel_unnormalised(wav22[0]),
        "mel_norms": audio.mel_norms(),
        "univnet_mel": univnet,
        "normalize_tacotron_mel": audio.normalize_mel(univnet),
    }
