"""Audio loading errors, formats, resampling and mel sanity (tiny files written into tmp_path by the tests)."""

import io
import math
import sys

import numpy as np
import pytest
import soundfile
import torch

from hare import audio
from hare.errors import AudioError


def _tone(freq=440.0, sr=22050, seconds=1.0, amp=0.5):
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def _peak_hz(wav: torch.Tensor, sr: int) -> float:
    spectrum = torch.fft.rfft(wav.double() * torch.hann_window(wav.shape[-1], dtype=torch.float64)).abs()
    return spectrum.argmax().item() * sr / wav.shape[-1]


# --- errors -----------------------------------------------------------------------------------------------------


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(AudioError, match="not found.*nope.wav"):
        audio.load_audio(tmp_path / "nope.wav", 22050)
    with pytest.raises(AudioError, match="not an audio file"):
        audio.load_audio(tmp_path, 22050)


def test_text_named_wav_and_truncated_file(tmp_path, monkeypatch):
    monkeypatch.setattr(audio.shutil, "which", lambda name: None)  # no ffmpeg fallback: the error must say so
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio at all")
    with pytest.raises(AudioError, match=r"notes\.wav: not a readable audio file.*ffmpeg"):
        audio.load_audio(text, 22050)
    good = tmp_path / "good.wav"
    soundfile.write(good, _tone(), 22050)
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(good.read_bytes()[:30])  # cut inside the header
    with pytest.raises(AudioError, match="truncated.wav"):
        audio.load_audio(truncated, 22050)
    with pytest.raises(AudioError, match="not a readable audio file"):
        audio.load_audio(io.BytesIO(b"RIFF garbage"), 22050)


@pytest.mark.skipif(sys.platform == "win32", reason="the stand-in ffmpeg is a shell script")
def test_ffmpeg_fallback_decodes_what_libsndfile_cannot(tmp_path, monkeypatch):
    # a stand-in ffmpeg that "decodes" anything to a known WAV, to test the plumbing without ffmpeg installed
    decoded = tmp_path / "decoded.wav"
    soundfile.write(decoded, _tone(sr=16000), 16000, subtype="FLOAT")
    fake = tmp_path / "ffmpeg"
    fake.write_text(f"#!/bin/sh\ncat '{decoded}'\n")
    fake.chmod(0o755)
    monkeypatch.setattr(audio.shutil, "which", lambda name: str(fake) if name == "ffmpeg" else None)
    clip = tmp_path / "clip.m4a"
    clip.write_bytes(b"\x00\x00\x00\x20ftypM4A not really")
    wav = audio.load_audio(clip, 16000)
    assert torch.allclose(wav, torch.from_numpy(_tone(sr=16000)))
    assert torch.allclose(audio.load_audio(io.BytesIO(clip.read_bytes()), 16000), wav)
    fake.write_text("#!/bin/sh\necho 'moov atom not found' >&2\nexit 1\n")
    with pytest.raises(AudioError, match="clip.m4a: not a readable audio file \\(ffmpeg: moov atom not found\\)"):
        audio.load_audio(clip, 16000)


def test_empty_file(tmp_path):
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, dtype=np.float32), 22050)
    with pytest.raises(AudioError, match="empty.wav: the file holds no audio samples"):
        audio.load_audio(empty, 22050)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples(tmp_path, bad):
    p = tmp_path / "bad.wav"
    data = _tone()
    data[100] = bad
    soundfile.write(p, data, 22050, subtype="FLOAT")
    with pytest.raises(AudioError, match="bad.wav: the audio contains NaN or infinite"):
        audio.load_audio(p, 22050)
    with pytest.raises(AudioError, match="NaN or infinite"):
        audio.validate_clip(torch.from_numpy(data), 22050)


def test_silent_and_short_files(tmp_path):
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(22050, dtype=np.float32), 22050)
    wav = audio.load_audio(silent, 22050)  # loading a silent file is fine; using it as a voice is not
    with pytest.raises(AudioError, match="silent.wav is silent"):
        audio.validate_clip(wav, 22050, name="silent.wav")
    short = tmp_path / "short.wav"
    soundfile.write(short, _tone(seconds=0.2), 22050)
    wav = audio.load_audio(short, 22050)
    with pytest.raises(AudioError, match=r"too short \(0.20 s; at least 0.5 s"):
        audio.validate_clip(wav, 22050)
    audio.validate_clip(wav, 22050, min_seconds=0.1)
    with pytest.raises(AudioError, match="at least 3 s"):
        audio.validate_clip(torch.from_numpy(_tone(seconds=2.0)), 22050, min_seconds=3)
    with pytest.raises(AudioError, match="empty"):
        audio.validate_clip(torch.zeros(0), 22050)
    audio.validate_clip(torch.from_numpy(_tone()), 22050)


# --- formats, channels, rates -----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["wav", "flac", "ogg", "mp3"])
def test_formats_stereo_and_rate(tmp_path, suffix):
    sr = 44100
    stereo = np.stack([_tone(440, sr), _tone(440, sr, amp=0.25)], axis=1)  # (samples, 2)
    p = tmp_path / f"clip.{suffix}"
    try:
        soundfile.write(p, stereo, sr)
    except Exception as exc:  # a libsndfile built without this encoder
        pytest.skip(f"soundfile cannot write {suffix} here: {exc}")
    wav = audio.load_audio(p, 22050)
    assert wav.dtype == torch.float32 and wav.dim() == 1
    if suffix in ("wav", "flac"):  # lossless: exact length, channels averaged
        assert wav.shape == (22050,)
        assert abs(wav[2000:-2000].abs().max().item() - 0.375) < 2e-3
    else:  # lossy codecs add encoder delay/padding
        assert abs(wav.shape[0] - 22050) < 2000
    assert abs(_peak_hz(wav, 22050) - 440) < 2


def test_reference_resampling_per_format(tmp_path):
    """WAV goes through the torchaudio-equivalent sinc (as in the reference), MP3 through soxr HQ (librosa.load)."""
    data = _tone(1000, 16000)
    p = tmp_path / "clip.wav"
    soundfile.write(p, data, 16000, subtype="FLOAT")
    ref = audio.resample_sinc(torch.from_numpy(data), 16000, 22050)
    assert torch.equal(audio.load_audio(p, 22050), ref)
    soxr_wav = audio.load_audio(p, 22050, resampler="soxr")
    assert soxr_wav.shape == ref.shape and not torch.equal(soxr_wav, ref)
    assert torch.allclose(soxr_wav[500:-500], ref[500:-500], atol=2e-3)
    mp3 = tmp_path / "clip.mp3"
    try:
        soundfile.write(mp3, data, 16000)
    except Exception as exc:
        pytest.skip(f"soundfile cannot write mp3 here: {exc}")
    decoded, _ = soundfile.read(mp3, dtype="float32")
    want = torch.from_numpy(audio._soxr(decoded, 16000, 22050))
    assert torch.equal(audio.load_audio(mp3, 22050), want)
    with pytest.raises(ValueError, match="unknown resampler"):
        audio.load_audio(p, 22050, resampler="best")


def test_integer_pcm_scaling_and_clipping(tmp_path):
    p = tmp_path / "pcm16.wav"
    soundfile.write(p, np.array([0, 16384, -32768, 32767], dtype=np.int16), 22050)
    assert audio.load_audio(p, 22050).tolist() == [0.0, 0.5, -1.0, 32767 / 32768]
    loud = tmp_path / "loud.wav"
    soundfile.write(loud, np.array([0.0, 1.5, -3.0, 0.25], dtype=np.float32), 22050, subtype="FLOAT")
    assert audio.load_audio(loud, 22050).tolist() == [0.0, 1.0, -1.0, 0.25]


def test_load_from_stream():
    buf = io.BytesIO()
    soundfile.write(buf, _tone(), 22050, format="WAV", subtype="FLOAT")
    buf.seek(0)
    assert torch.equal(audio.load_audio(buf, 22050), torch.from_numpy(_tone()))


def test_save_round_trip(tmp_path, monkeypatch):
    x = torch.from_numpy(_tone(sr=24000))
    audio.save_audio(tmp_path / "out.wav", x, 24000)
    assert soundfile.info(tmp_path / "out.wav").subtype == "PCM_16"
    assert torch.allclose(audio.load_audio(tmp_path / "out.wav", 24000), x, atol=1 / 32768)
    audio.save_audio(tmp_path / "float.wav", x, 24000, subtype="FLOAT")
    assert torch.equal(audio.load_audio(tmp_path / "float.wav", 24000), x)
    audio.save_audio(tmp_path / "out.flac", x, 24000)
    assert torch.allclose(audio.load_audio(tmp_path / "out.flac", 24000), x, atol=1 / 32768)
    audio.save_audio(tmp_path / "out.ogg", x, 24000)
    assert abs(_peak_hz(audio.load_audio(tmp_path / "out.ogg", 24000), 24000) - 440) < 2
    audio.save_audio(tmp_path / "batched.wav", x[None], 24000)  # (1, samples) is written as mono
    assert soundfile.info(tmp_path / "batched.wav").channels == 1

    buf = io.BytesIO()
    audio.save_audio(buf, x, 24000)
    assert buf.getvalue()[:4] == b"RIFF"

    class FakeStdout:
        buffer = io.BytesIO()

    monkeypatch.setattr(sys, "stdout", FakeStdout)
    audio.save_audio("-", x, 24000)
    assert not (tmp_path / "-").exists()
    back, sr = soundfile.read(io.BytesIO(FakeStdout.buffer.getvalue()), dtype="float32")
    assert sr == 24000 and np.allclose(back, x.numpy(), atol=1 / 32768)
    with pytest.raises(AudioError, match="cannot write"):
        audio.save_audio(tmp_path / "out.xyz", x, 24000)


# --- resampling -------------------------------------------------------------------------------------------------


def _brute_force_sinc(x: np.ndarray, orig: int, new: int, zeros: int = 6, rolloff: float = 0.99) -> np.ndarray:
    """Windowed-sinc interpolation evaluated directly in float64: output j at time j/new, input i at i/orig."""
    g = math.gcd(orig, new)
    orig, new = orig // g, new // g
    cutoff = min(orig, new) * rolloff
    out_len = math.ceil(new * len(x) / orig)
    i = np.arange(len(x))[None, :]
    j = np.arange(out_len)[:, None]
    t = np.clip((i / orig - j / new) * cutoff, -zeros, zeros)
    taps = np.sinc(t) * np.cos(t * math.pi / zeros / 2) ** 2 * (cutoff / orig)
    return taps @ x


@pytest.mark.parametrize("orig,new", [(22050, 24000), (24000, 22050), (3, 2), (16000, 48000)])
def test_resample_sinc_is_the_windowed_sinc(orig, new):
    x = np.random.default_rng(0).standard_normal(700)
    y = audio.resample_sinc(torch.from_numpy(x), orig, new)  # float64 in, float64 out
    assert y.dtype == torch.float64 and y.shape == (math.ceil(len(x) * new / orig),)
    assert np.allclose(y.numpy(), _brute_force_sinc(x, orig, new), atol=1e-12)


def test_resample_keeps_frequency_batches_and_dtypes():
    x = torch.from_numpy(_tone(1000, 22050))
    y = audio.resample_sinc(x, 22050, 24000)
    assert y.shape == (24000,)
    assert abs(_peak_hz(y, 24000) - 1000) < 1.5
    assert abs(y[1000:-1000].abs().max().item() - 0.5) < 1e-3  # passband gain 1
    batch = torch.stack([x, 0.5 * x])[None]  # (1, 2, samples)
    yb = audio.resample_sinc(batch, 22050, 24000)
    assert yb.shape == (1, 2, 24000) and torch.allclose(yb[0, 0], y, atol=1e-6)
    assert audio.resample_sinc(x.half(), 22050, 24000).dtype == torch.float16
    assert audio.resample_sinc(x, 22050, 22050) is x
    z = audio.resample(x, 22050, 16000)
    assert z.shape == (16000,) and abs(_peak_hz(z, 16000) - 1000) < 1.5
    with pytest.raises(ValueError):
        audio.resample_sinc(x, 0, 24000)


# --- mels -------------------------------------------------------------------------------------------------------


def _htk_band(freq, fmax=8000.0, bands=80):
    mel = lambda f: 2595 * math.log10(1 + f / 700)  # noqa: E731
    return round(mel(freq) / mel(fmax) * (bands + 1)) - 1


def _slaney_band(freq, fmax=12000.0, bands=100):
    mel = lambda f: f / (200 / 3) if f < 1000 else 15 + math.log(f / 1000) / (math.log(6.4) / 27)  # noqa: E731
    return round(mel(freq) / mel(fmax) * (bands + 1)) - 1


@pytest.mark.parametrize("freq", [300.0, 1000.0, 4000.0])
def test_mel_of_tone_peaks_at_right_band(freq):
    mel = audio.ar_mel_unnormalised(torch.from_numpy(_tone(freq, 22050)))
    assert mel.shape == (80, 22050 // 256 + 1)
    assert abs(mel[:, 10:-10].mean(1).argmax().item() - _htk_band(freq)) <= 1
    vm = audio.vocoder_mel(torch.from_numpy(_tone(freq, 24000)))
    assert vm.shape == (100, 24000 // 256 + 1)
    assert abs(vm[:, 10:-10].mean(1).argmax().item() - _slaney_band(freq)) <= 1


@pytest.mark.parametrize("freq,factor", [(500.0, 1.3), (2000.0, 0.8), (1000.0, 1.0)])
def test_frequency_warp_moves_a_tone(freq, factor):
    """A warped mel of a tone at f peaks where the mel of a tone at factor * f peaks; timing is kept."""
    fmt = audio.mel_format("hifigan")
    mel = audio.hifigan_mel(torch.from_numpy(_tone(freq, 22050)))
    warped = audio.warp_mel_frequencies(mel, factor, fmt)
    assert warped.shape == mel.shape
    moved = audio.hifigan_mel(torch.from_numpy(_tone(freq * factor, 22050)))
    assert abs(warped[:, 10:-10].mean(1).argmax().item() - moved[:, 10:-10].mean(1).argmax().item()) <= 1
    batch = torch.stack([mel, mel.flip(-1)])
    torch.testing.assert_close(audio.warp_mel_frequencies(batch, factor, fmt)[1], warped.flip(-1))
    with pytest.raises(ValueError, match="positive"):
        audio.warp_mel_frequencies(mel, 0.0, fmt)
    with pytest.raises(ValueError, match="100 mel bands"):
        audio.warp_mel_frequencies(mel, factor, audio.mel_format("univnet"))


def _voiced(f0: float, formant: float, sr: int = 22050, seconds: float = 1.0) -> np.ndarray:
    """A steady vowel-like sound: harmonics of f0 under one resonance at `formant` Hz (and its octave)."""
    t = np.arange(int(sr * seconds)) / sr
    h = np.arange(1, int(7000 / f0))[:, None]
    amp = np.exp(-((h * f0 - formant) / 300.0) ** 2) + 0.3 * np.exp(-((h * f0 - 2 * formant) / 500.0) ** 2) + 0.01
    return (0.3 * (amp * np.sin(2 * np.pi * h * f0 * t)).sum(0) / amp.sum()).astype(np.float32)


def test_source_filter_warp_moves_pitch_and_formants_separately():
    """The pitch factor moves the harmonics, the formant factor the envelope: the warped mel of one vowel is
    nearer the mel of the vowel really sung at the new pitch (or with the new formant) than to the original."""
    fmt = audio.mel_format("hifigan")

    def mel_of(f0, formant):
        return audio.hifigan_mel(torch.from_numpy(_voiced(f0, formant)))[:, 10:-10].mean(1, keepdim=True)

    base = mel_of(110.0, 700.0)
    torch.testing.assert_close(audio.warp_mel_source_filter(base, 1.0, 1.0, fmt), base, atol=1e-5, rtol=0)
    torch.testing.assert_close(audio.warp_mel_source_filter(base, 1.3, 1.3, fmt),
                               audio.warp_mel_frequencies(base, 1.3, fmt), atol=1e-5, rtol=0)  # one factor: plain warp
    def corr(a, b):  # shape similarity over bands 3-29 (~0.1-1.1 kHz, where the bands resolve harmonics)
        a, b = a[3:30, 0] - a[3:30, 0].mean(), b[3:30, 0] - b[3:30, 0].mean()
        return float((a * b).sum() / (a.norm() * b.norm()))

    def dist(a, b):  # below ~1.6 kHz
        return float((a[:40] - b[:40]).pow(2).mean())

    for f0, pitch in ((110.0, 1.7), (180.0, 0.7)):  # a higher (lower) voice, the same vowel
        b, target = mel_of(f0, 700.0), mel_of(f0 * pitch, 700.0)
        moved = audio.warp_mel_source_filter(b, pitch, 1.0, fmt)
        assert corr(moved, target) > corr(b, target) + 0.3
        assert corr(moved, target) > corr(audio.warp_mel_frequencies(b, pitch, fmt), target)  # formant kept
    for f0, formant in ((110.0, 1.3), (150.0, 0.8)):  # the same voice, another vowel
        b, target = mel_of(f0, 700.0), mel_of(f0, 700.0 * formant)
        moved = audio.warp_mel_source_filter(b, 1.0, formant, fmt)
        assert dist(moved, target) < 0.6 * dist(b, target)
        assert dist(moved, target) < dist(audio.warp_mel_frequencies(b, formant, fmt), target)  # pitch kept
    with pytest.raises(ValueError, match="envelope_coefficients"):
        audio.warp_mel_source_filter(base, 1.0, 1.0, fmt, envelope_coefficients=0)


def test_speech_frames_and_band_means_skip_pauses():
    """A voice's long-term mean log mel counts its speech frames only: a clip with long pauses has the same
    band means as the same speech without them."""
    def faded(seconds):  # 20 ms fades: no clicks, whose broadband energy a pause's edges would add
        wav = _tone(300, 22050, seconds)
        ramp = np.minimum(1, np.minimum(np.arange(len(wav)), np.arange(len(wav))[::-1]) / 441)
        return (wav * ramp).astype(np.float32)

    tone = np.concatenate([faded(0.5), np.zeros(22050, np.float32), faded(0.5)])
    mel = audio.hifigan_mel(torch.from_numpy(tone))
    mask = audio.speech_frame_mask(mel)
    assert 0.3 < mask.float().mean() < 0.7 and not mask[mel.shape[1] // 2]  # the middle second is silent
    dense = audio.hifigan_mel(torch.from_numpy(faded(1.0)))
    torch.testing.assert_close(audio.mel_band_means([mel]), audio.mel_band_means([dense]), atol=0.5, rtol=0)
    assert (mel.mean(1) - audio.mel_band_means([dense])).abs().max() > 2  # what counting the pause would do
    both = audio.mel_band_means([mel, dense])
    assert both.shape == (80,) and both.argmax() == audio.mel_band_means([dense]).argmax()
    with pytest.raises(ValueError, match="no mels"):
        audio.mel_band_means([])


def test_speech_frames_survive_a_click_in_a_quiet_clip():
    """One loud click must not decide what counts as speech: a quiet tone with a 3 ms full-scale pop keeps its
    speech frames and (nearly) its band means."""
    tone = 0.03 * _tone(300, 22050, 2.0)
    clicked = tone.copy()
    clicked[22050: 22050 + 64] = [0.99] * 32 + [-0.99] * 32
    clean, mel = (audio.hifigan_mel(torch.from_numpy(x.astype(np.float32))) for x in (tone, clicked))
    mask = audio.speech_frame_mask(mel)
    assert mask.float().mean() > 0.95 and int(mask.sum()) >= int(audio.speech_frame_mask(clean).sum()) - 1
    assert (audio.mel_band_means([mel]) - audio.mel_band_means([clean])).abs().mean() < 0.3
    loudest = mel.float().logsumexp(-2)  # what keying on the loudest frame would keep
    assert (loudest >= loudest.max() - audio.SPEECH_FRAME_RANGE).float().mean() < 0.2


def test_match_mel_means_equalises_towards_a_voice():
    """Strength 1 gives the mel exactly the target's band means over its speech frames, 0 leaves it as it is,
    between moves part of the way; one gain per band, so the frames keep their differences."""
    low = audio.hifigan_mel(torch.from_numpy(np.concatenate([_tone(200), np.zeros(8000, np.float32)])))
    high = audio.hifigan_mel(torch.from_numpy(_tone(1500, seconds=0.7)))
    target = audio.mel_band_means([high])
    matched = audio.match_mel_means(low, target)
    speech = audio.speech_frame_mask(low)
    torch.testing.assert_close(matched[:, speech].mean(1), target, atol=1e-4, rtol=0)
    delta = matched - low
    torch.testing.assert_close(delta, delta[:, :1].expand_as(delta))  # the same gain in every frame
    assert torch.equal(audio.match_mel_means(low, target, 0.0), low)
    half = audio.match_mel_means(low, target, 0.5)
    torch.testing.assert_close(half, low + delta / 2, atol=1e-5, rtol=0)
    batch = audio.match_mel_means(torch.stack([low, low + 1.0]), target)
    torch.testing.assert_close(batch[0], matched, atol=1e-5, rtol=0)
    torch.testing.assert_close(batch[1], matched, atol=1e-5, rtol=0)  # a louder copy lands on the same means
    with pytest.raises(ValueError, match="strength"):
        audio.match_mel_means(low, target, 1.5)
    with pytest.raises(ValueError, match="bands"):
        audio.match_mel_means(low, target[:40])


def test_mel_levels_silence_and_clipping():
    silence = torch.zeros(8000)
    assert torch.allclose(audio.ar_mel_unnormalised(silence), torch.tensor(math.log(1e-5)))
    assert torch.allclose(audio.vocoder_mel(silence), torch.tensor(audio.TACOTRON_MEL_MIN))
    assert torch.allclose(audio.ar_mel(silence), math.log(1e-5) / audio.mel_norms()[:, None])
    loud = torch.from_numpy(_tone(1000, 24000, amp=4.0))
    assert torch.equal(audio.vocoder_mel(loud), audio.vocoder_mel(loud.clamp(-1, 1)))  # input clipped to [-1, 1]
    vm = audio.vocoder_mel(torch.from_numpy(_tone(1000, 24000)))
    assert torch.allclose(audio.denormalize_mel(audio.normalize_mel(vm)), vm, atol=1e-5)
    assert audio.normalize_mel(torch.tensor(audio.TACOTRON_MEL_MIN)).item() == pytest.approx(-1.0)
    assert audio.normalize_mel(torch.tensor(audio.TACOTRON_MEL_MAX)).item() == pytest.approx(1.0)


def test_mels_batch_and_dtype():
    a, b = torch.from_numpy(_tone(500, 22050, 0.5)), torch.from_numpy(_tone(2000, 22050, 0.5, amp=0.1))
    batch = torch.stack([a, b])  # (2, samples)
    for fn in (audio.ar_mel, audio.ar_mel_unnormalised, audio.vocoder_mel, audio.diffusion_conditioning_mel):
        out = fn(batch)
        for row, single in ((out[0], fn(a)), (out[1], fn(b))):
            # conv1d may pick another kernel for another batch size: float32 rounding (~1e-6 relative to the
            # frame's energy), which the log magnifies in bins near the 1e-5 floor; so compare linear values
            assert torch.allclose(row.exp(), single.exp(), atol=1e-6, rtol=1e-4)
        assert fn(batch[None]).shape == (1, *out.shape)
    assert torch.allclose(audio.ar_mel(a.double()).float(), audio.ar_mel(a), atol=1e-4)
    assert audio.ar_mel(a.double()).dtype == torch.float64
    half = audio.vocoder_mel(a.half())
    assert half.dtype == torch.float16 and torch.isfinite(half).all()


def test_conditioning_windows():
    short = torch.ones(1000)
    padded = audio.format_conditioning(short)
    assert padded.shape == (audio.AR_CLIP_SAMPLES,) and padded[:1000].eq(1).all() and padded[1000:].eq(0).all()
    long = torch.arange(200000).float()
    a = audio.format_conditioning(long, torch.Generator().manual_seed(0))
    b = audio.format_conditioning(long, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (audio.AR_CLIP_SAMPLES,)
    assert torch.equal(a, torch.arange(a[0].item(), a[0].item() + audio.AR_CLIP_SAMPLES).float())  # a contiguous crop
    starts = {audio.format_conditioning(long, torch.Generator().manual_seed(s))[0].item() for s in range(5)}
    assert len(starts) > 1
    assert audio.diffusion_conditioning_mel(torch.from_numpy(_tone())).shape == (100, 401)
    exact = torch.from_numpy(_tone(seconds=10.0))  # longer than the window: the first 102400 samples at 24 kHz
    wav24 = audio.resample_sinc(exact, 22050, 24000)[: audio.DIFFUSION_CLIP_SAMPLES]
    assert torch.equal(audio.diffusion_conditioning_mel(exact), audio.vocoder_mel(wav24))


def test_voice_warp_estimate_finds_the_vocal_tract_factor():
    """Band means of a warped voice, with another level and tilt (a channel), give back the warp's factor
    (within one grid step); the same voice gives 1.0 exactly, a small factor falls in the dead zone."""
    fmt = audio.mel_format("hifigan")
    vowels = [_voiced(f0, formant) for f0, formant in ((110, 500), (120, 900), (100, 1600), (115, 2400))]
    mel = audio.hifigan_mel(torch.from_numpy(np.concatenate(vowels)))
    source = audio.mel_band_means([mel])
    assert audio.estimate_voice_warp(source, source, fmt) == 1.0
    channel = 0.7 - 0.01 * torch.arange(fmt.n_mels, dtype=torch.float32)
    grid = np.geomspace(*audio.VOICE_WARP_RANGE, audio.VOICE_WARP_STEPS)
    step = grid[1] / grid[0]
    for factor in (1.2, 0.85, 1.3):
        target = audio.mel_band_means([audio.warp_mel_frequencies(mel, factor, fmt)]) + channel
        got = audio.estimate_voice_warp(source, target, fmt)
        assert max(got / factor, factor / got) <= step * 1.001, (factor, got)
        back = audio.estimate_voice_warp(target, source, fmt)  # the way back, clamped to the range
        want = min(max(1 / factor, audio.VOICE_WARP_RANGE[0]), audio.VOICE_WARP_RANGE[1])
        assert max(back / want, want / back) <= step * 1.001, (factor, back)
    near = audio.mel_band_means([audio.warp_mel_frequencies(mel, 1.015, fmt)])
    assert audio.estimate_voice_warp(source, near, fmt) == 1.0  # within the dead zone
    with pytest.raises(ValueError, match="bands|band means"):
        audio.estimate_voice_warp(source, source[:40], fmt)
    with pytest.raises(ValueError, match="factor_range"):
        audio.estimate_voice_warp(source, source, fmt, factor_range=(1.1, 1.3))
