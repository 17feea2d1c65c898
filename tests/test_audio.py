"""Audio loading errors, formats, resampling and mel sanity (tiny files written into tmp_path)."""

import math

import numpy as np
import pytest
import soundfile
import torch

from hare import audio
from hare.errors import AudioError


def _tone(freq=440.0, sr=22050, seconds=1.0, amp=0.5):
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def test_missing_corrupt_and_non_audio(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        audio.load_audio(tmp_path / "nope.wav", 22050)
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio")
    with pytest.raises(AudioError, match="not a readable audio file|cannot be decoded"):
        audio.load_audio(text, 22050)
    good = tmp_path / "good.wav"
    soundfile.write(good, _tone(), 22050)
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(good.read_bytes()[:30])
    with pytest.raises(AudioError):
        audio.load_audio(truncated, 22050)


def test_empty_file(tmp_path):
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, dtype=np.float32), 22050)
    with pytest.raises(AudioError, match="no audio samples"):
        audio.load_audio(empty, 22050)


def test_nan_samples(tmp_path):
    p = tmp_path / "nan.wav"
    data = _tone()
    data[100] = np.nan
    soundfile.write(p, data, 22050, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        audio.load_audio(p, 22050)


def test_validate_clip():
    audio.validate_clip(torch.from_numpy(_tone()), 22050)
    with pytest.raises(AudioError, match="silent"):
        audio.validate_clip(torch.zeros(22050), 22050)
    with pytest.raises(AudioError, match="too short"):
        audio.validate_clip(torch.from_numpy(_tone(seconds=0.1)), 22050)
    with pytest.raises(AudioError, match="empty"):
        audio.validate_clip(torch.zeros(0), 22050)


@pytest.mark.parametrize("suffix", ["wav", "flac", "ogg", "mp3"])
def test_formats_stereo_and_rate(tmp_path, suffix):
    sr = 44100
    left = _tone(440, sr)
    stereo = np.stack([left, left], axis=1)
    p = tmp_path / f"clip.{suffix}"
    try:
        soundfile.write(p, stereo, sr)
    except Exception as exc:  # libsndfile builds without an encoder for this format
        pytest.skip(f"soundfile cannot write {suffix} here: {exc}")
    wav = audio.load_audio(p, 22050)
    assert wav.dim() == 1 and abs(wav.shape[0] - 22050) < 2000  # mp3 adds encoder padding
    spectrum = np.abs(np.fft.rfft(wav.numpy()))
    peak_hz = spectrum.argmax() * 22050 / wav.shape[0]
    assert abs(peak_hz - 440) < 5


def test_resample_keeps_frequency_and_length():
    x = torch.from_numpy(_tone(1000, 22050))
    y = audio.resample_sinc(x, 22050, 24000)
    assert y.shape[0] == math.ceil(22050 * 24000 / 22050)
    spectrum = torch.fft.rfft(y).abs()
    assert abs(spectrum.argmax().item() * 24000 / y.shape[0] - 1000) < 2
    z = audio.resample(x, 22050, 16000)
    assert abs(z.shape[0] - 16000) <= 1


def test_mel_of_tone_peaks_at_right_band():
    wav = torch.from_numpy(_tone(1000, 22050))
    mel = audio.ar_mel_unnormalised(wav)
    assert mel.shape[0] == 80
    band = mel[:, 10:-10].mean(1).argmax().item()
    # HTK mel of 1 kHz over 0-8 kHz in 80 bands: 1000 Hz -> mel 1000 of 2840 max -> band ~27
    assert 25 <= band <= 29
    vm = audio.vocoder_mel(torch.from_numpy(_tone(1000, 24000)))
    assert vm.shape[0] == 100
    assert torch.allclose(audio.denormalize_mel(audio.normalize_mel(vm)), vm, atol=1e-5)


def test_conditioning_windows():
    short = torch.ones(1000)
    assert audio.format_conditioning(short).shape == (audio.AR_CLIP_SAMPLES,)
    long = torch.arange(200000).float()
    a = audio.format_conditioning(long, torch.Generator().manual_seed(0))
    b = audio.format_conditioning(long, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (audio.AR_CLIP_SAMPLES,)
    assert audio.diffusion_conditioning_mel(torch.from_numpy(_tone())).shape == (100, 401)


def test_save_round_trip(tmp_path):
    x = torch.from_numpy(_tone(sr=24000))
    for name in ("out.wav", "out.flac"):
        audio.save_audio(tmp_path / name, x, 24000)
        back = audio.load_audio(tmp_path / name, 24000)
        assert torch.allclose(back, x, atol=1e-3)
    import io

    buf = io.BytesIO()
    audio.save_audio(buf, x, 24000)
    assert buf.getvalue()[:4] == b"RIFF"
