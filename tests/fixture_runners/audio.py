"""The audio front ends against the reference (torchaudio mel, Tacotron STFT, torchaudio's sinc resampler)."""

from __future__ import annotations

from hare import audio

MODELS = ("audio",)

# Front ends may use atol 1e-3 (fixtures/README.md). Hare's resampler and mel code compute the same formulas
# as the reference (same sinc kernel, same filterbanks); what differs is float32 summation order (torch.stft
# versus the reference's conv1d DFT basis). Measured on the shipped case: wav24 9e-8, ar_cond_mel 2e-5,
# ar_mel_unnormalised 1.4e-4, univnet_mel 4.7e-4 (on log values of magnitude ~11, i.e. 4e-5 relative).
# So: waveforms 1e-5; mels 1e-4 absolute plus 1e-4 relative, well inside the README's 1e-3.
TOLERANCES = {
    "wav24": (1e-5, 1e-5),
    "ar_cond_mel": (1e-4, 1e-4),
    "ar_mel_unnormalised": (1e-4, 1e-4),
    "univnet_mel": (1e-4, 1e-4),
    "normalize_tacotron_mel": (1e-4, 1e-4),
    "mel_norms": (0.0, 0.0),
}


def run(case_dir, meta, inputs):
    wav22 = inputs["wav22"][0]
    wav24 = audio.resample_sinc(inputs["wav22"], audio.AR_SAMPLE_RATE, audio.VOCODER_SAMPLE_RATE)
    univnet = audio.diffusion_conditioning_mel(wav22)
    return {
        "wav24": wav24,
        "ar_cond_mel": audio.ar_mel(audio.format_conditioning(wav22)),
        "ar_mel_unnormalised": audio.ar_mel_unnormalised(wav22),
        "mel_norms": audio.mel_norms(),
        "univnet_mel": univnet,
        "normalize_tacotron_mel": audio.normalize_mel(univnet),
    }
