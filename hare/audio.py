"""Audio in and out, resampling, and the two mel front ends (written with torch.stft; no torchaudio).

- AR/CLVP mel (22.05 kHz): n_fft 1024, hop 256, 80 HTK-scale bands with Slaney area normalisation,
  0-8 kHz, power spectrum, natural log of max(x, 1e-5), divided per band by the shipped `mel_norms`.
- Vocoder/diffusion mel (24 kHz): n_fft 1024, hop 256, 100 Slaney-scale bands (librosa's filters),
  0-12 kHz, magnitude spectrum, log of max(x, 1e-5); the diffusion model works on it scaled to [-1, 1].
- `resample_sinc` is the windowed-sinc resampler the reference uses (Hann window, 6 zero crossings,
  rolloff 0.99), so conditioning computed here equals the reference's.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F

from hare.errors import AudioError

log = logging.getLogger(__name__)

AR_SAMPLE_RATE = 22050
VOCODER_SAMPLE_RATE = 24000
N_FFT = 1024
HOP = 256
AR_CLIP_SAMPLES = 132300  # 6 s at 22.05 kHz: the AR conditioning window
DIFFUSION_CLIP_SAMPLES = 102400  # ~4.27 s at 24 kHz: the diffusion conditioning window
TACOTRON_MEL_MIN = -11.512925148010254  # ln(1e-5)
TACOTRON_MEL_MAX = 2.3143386840820312
SILENCE_PEAK = 1e-4  # a clip whose peak is below this is treated as silent


# ---------------------------------------------------------------------------------------------------------------
# Loading and saving


def _decode_with_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise AudioError(f"{path}: this format cannot be decoded here; install ffmpeg or convert it to WAV/FLAC")
    proc = subprocess.run([ffmpeg, "-v", "error", "-i", str(path), "-f", "wav", "-acodec", "pcm_f32le", "-"],
                          capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise AudioError(f"{path}: not a readable audio file ({proc.stderr.decode(errors='replace').strip()[:200]})")
    import soundfile

    data, sr = soundfile.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=True)
    return data, sr


def load_audio(source: str | os.PathLike | BinaryIO, sample_rate: int) -> torch.Tensor:
    """Read an audio file (wav/flac/ogg/mp3, others via ffmpeg if installed) as mono float32 at `sample_rate`.

    Channels are averaged (the reference keeps only the first; for ordinary stereo clips this is the same
    voice, without dropping half the signal). Samples are clipped to [-1, 1]. Returns (samples,).
    """
    import soundfile

    name = source if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "<stream>")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise AudioError(f"audio file not found: {path}")
    try:
        data, sr = soundfile.read(source, dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile's errors are RuntimeError/LibsndfileError/TypeError by format
        if isinstance(source, (str, os.PathLike)):
            data, sr = _decode_with_ffmpeg(Path(source))
        else:
            raise AudioError(f"{name}: not a readable audio file ({exc})") from exc
    if data.shape[0] == 0:
        raise AudioError(f"{name}: the file holds no audio samples")
    if not np.isfinite(data).all():
        raise AudioError(f"{name}: the audio contains NaN or infinite samples")
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if sr != sample_rate:
        wav = resample_sinc(wav, sr, sample_rate)
    return wav.clamp(-1.0, 1.0)


def validate_clip(wav: torch.Tensor, sample_rate: int, min_seconds: float = 0.5, name: str = "clip") -> None:
    """Raise AudioError for a clip unusable as a voice reference: empty, silent, too short, non-finite."""
    if wav.numel() == 0:
        raise AudioError(f"{name} is empty")
    if not torch.isfinite(wav).all():
        raise AudioError(f"{name} contains NaN or infinite samples")
    seconds = wav.shape[-1] / sample_rate
    if seconds < min_seconds:
        raise AudioError(f"{name} is too short ({seconds:.2f} s; at least {min_seconds} s, ideally 6-10 s)")
    if float(wav.abs().max()) < SILENCE_PEAK:
        raise AudioError(f"{name} is silent")


def save_audio(target: str | os.PathLike | BinaryIO, wav: torch.Tensor, sample_rate: int,
               format: str | None = None, subtype: str | None = None) -> None:
    """Write mono audio in [-1, 1]. The format follows the file suffix (wav, flac, ogg, mp3), WAV for streams;
    WAV is 16-bit PCM unless `subtype` says otherwise."""
    import soundfile

    data = wav.detach().float().cpu().clamp(-1, 1).reshape(-1).numpy()
    if format is None:
        suffix = Path(target).suffix.lower().lstrip(".") if isinstance(target, (str, os.PathLike)) else ""
        format = {"": "wav", "oga": "ogg", "opus": "ogg"}.get(suffix, suffix)
    format = format.upper()
    if subtype is None:
        subtype = {"WAV": "PCM_16", "FLAC": "PCM_16", "OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}.get(format)
    try:
        soundfile.write(target, data, sample_rate, format=format, subtype=subtype)
    except Exception as exc:
        raise AudioError(f"cannot write {format.lower()} audio: {exc}") from exc


class WavStreamWriter:
    """16-bit mono WAV written piece by piece. A file gets a correct header on close; a stream (stdout, a
    socket) gets a header of open length, which players read until the end of data."""

    def __init__(self, target: str | os.PathLike | BinaryIO, sample_rate: int):
        import soundfile

        self.sample_rate = sample_rate
        self._file = None
        self._stream = None
        if isinstance(target, (str, os.PathLike)):
            self._file = soundfile.SoundFile(str(target), "w", sample_rate, 1, subtype="PCM_16", format="WAV")
        else:
            self._stream = target
            self._stream.write(wav_header(sample_rate))

    def write(self, wav: torch.Tensor) -> None:
        data = wav.detach().float().cpu().clamp(-1, 1).reshape(-1).numpy()
        if self._file is not None:
            self._file.write(data)
            self._file.flush()
        else:
            self._stream.write((data * 32767).round().astype("<i2").tobytes())
            self._stream.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def wav_header(sample_rate: int, channels: int = 1, bits: int = 16, data_bytes: int = 0xFFFFFFFF - 36) -> bytes:
    """A RIFF/WAVE PCM header; the default length marks a stream whose end is not known yet."""
    import struct

    block = channels * bits // 8
    return (b"RIFF" + struct.pack("<I", min(data_bytes + 36, 0xFFFFFFFF)) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block, block, bits)
            + b"data" + struct.pack("<I", data_bytes))


# ---------------------------------------------------------------------------------------------------------------
# Resampling


@functools.lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int, width_zeros: int, rolloff: float, device: str, dtype: torch.dtype):
    base = min(orig, new) * rolloff
    width = math.ceil(width_zeros * orig / base)
    idx = torch.arange(-width, width + orig, dtype=dtype, device=device)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=dtype, device=device)[:, None, None] / new + idx
    t = (t * base).clamp(-width_zeros, width_zeros)
    window = torch.cos(t * math.pi / width_zeros / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), t.sin() / t) * window * (base / orig)
    return kernel, width


def resample_sinc(wav: torch.Tensor, orig_sr: int, new_sr: int, zeros: int = 6, rolloff: float = 0.99) -> torch.Tensor:
    """Band-limited windowed-sinc resampling (same result as torchaudio's default): (..., samples)."""
    if orig_sr == new_sr:
        return wav
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError("sample rates must be positive")
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // g, int(new_sr) // g
    kernel, width = _sinc_kernel(orig, new, zeros, rolloff, str(wav.device), wav.dtype)
    shape = wav.shape
    x = wav.reshape(-1, shape[-1])
    length = x.shape[-1]
    y = F.conv1d(F.pad(x, (width, width + orig))[:, None], kernel, stride=orig)
    y = y.transpose(1, 2).reshape(x.shape[0], -1)
    target = math.ceil(new * length / orig)
    return y[:, :target].reshape(*shape[:-1], -1)


def resample(wav: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """High-quality resampling with soxr (for output audio; CPU)."""
    if orig_sr == new_sr:
        return wav
    import soxr

    out = soxr.resample(wav.detach().cpu().float().numpy().T, orig_sr, new_sr, quality="HQ")
    return torch.from_numpy(np.ascontiguousarray(out.T)).to(wav.device)


# ---------------------------------------------------------------------------------------------------------------
# Filterbanks


def _htk_mel(f):
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _htk_hz(m):
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def _slaney_mel(f):
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log_part, lin)


def _slaney_hz(m):
    m = np.asarray(m, dtype=np.float64)
    lin = m * (200.0 / 3)
    log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
    return np.where(m >= 15.0, log_part, lin)


def _triangles(fft_freqs: np.ndarray, band_edges: np.ndarray) -> np.ndarray:
    """Triangular filters with Slaney area normalisation: (n_bands, n_freqs)."""
    diff = np.diff(band_edges)
    ramps = band_edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / diff[:-1, None]
    upper = ramps[2:] / diff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    return weights * (2.0 / (band_edges[2:] - band_edges[:-2]))[:, None]


@functools.lru_cache(maxsize=None)
def _ar_filterbank() -> np.ndarray:
    # torchaudio's melscale_fbanks(htk, norm="slaney"): frequencies 0..sr//2 in n_fft//2+1 steps (float32 maths)
    freqs = np.linspace(0, AR_SAMPLE_RATE // 2, N_FFT // 2 + 1, dtype=np.float32)
    edges = _htk_hz(np.linspace(_htk_mel(0.0), _htk_mel(8000.0), 80 + 2)).astype(np.float32)
    return _triangles(freqs.astype(np.float64), edges.astype(np.float64)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _vocoder_filterbank() -> np.ndarray:
    # librosa.filters.mel(sr=24000, n_fft=1024, n_mels=100, fmin=0, fmax=12000): Slaney scale and norm
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / VOCODER_SAMPLE_RATE)
    edges = _slaney_hz(np.linspace(_slaney_mel(0.0), _slaney_mel(12000.0), 100 + 2))
    return _triangles(freqs, edges).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _tensors(device: str, dtype: torch.dtype):
    return {
        "window": torch.hann_window(N_FFT, periodic=True, dtype=dtype, device=device),
        "ar_fb": torch.from_numpy(_ar_filterbank()).to(device, dtype),
        "voc_fb": torch.from_numpy(_vocoder_filterbank()).to(device, dtype),
        "mel_norms": mel_norms().to(device, dtype),
    }


@functools.lru_cache(maxsize=1)
def mel_norms() -> torch.Tensor:
    """The 80 per-band normalisers of the AR mel (Tortoise's `mel_norms.pth`)."""
    with resources.as_file(resources.files("hare") / "data" / "mel_norms.pth") as p:
        return torch.load(p, map_location="cpu", weights_only=True).float()


def _spectrum(wav: torch.Tensor, power: float) -> torch.Tensor:
    t = _tensors(str(wav.device), wav.dtype)
    spec = torch.stft(wav, N_FFT, HOP, N_FFT, window=t["window"], center=True, pad_mode="reflect",
                      return_complex=True)
    mag = spec.abs()
    return mag.pow(power) if power != 1 else mag


# ---------------------------------------------------------------------------------------------------------------
# Mel front ends


def ar_mel_unnormalised(wav22: torch.Tensor) -> torch.Tensor:
    """Log power mel (80 HTK bands, 0-8 kHz) of 22.05 kHz audio: (..., samples) -> (..., 80, frames)."""
    t = _tensors(str(wav22.device), wav22.dtype)
    mel = t["ar_fb"] @ _spectrum(wav22, 2.0)
    return torch.log(mel.clamp(min=1e-5))


def ar_mel(wav22: torch.Tensor) -> torch.Tensor:
    """The AR/CLVP/VQ-VAE input: log mel divided by mel_norms: (..., samples) -> (..., 80, frames)."""
    t = _tensors(str(wav22.device), wav22.dtype)
    return ar_mel_unnormalised(wav22) / t["mel_norms"][:, None]


def vocoder_mel(wav24: torch.Tensor) -> torch.Tensor:
    """Log magnitude mel (100 Slaney bands, 0-12 kHz) of 24 kHz audio: (..., samples) -> (..., 100, frames)."""
    t = _tensors(str(wav24.device), wav24.dtype)
    mel = t["voc_fb"] @ _spectrum(wav24.clamp(-1, 1), 1.0)
    return torch.log(mel.clamp(min=1e-5))


def normalize_mel(mel: torch.Tensor) -> torch.Tensor:
    """Vocoder log-mel -> the diffusion model's [-1, 1] range."""
    return 2 * (mel - TACOTRON_MEL_MIN) / (TACOTRON_MEL_MAX - TACOTRON_MEL_MIN) - 1


def denormalize_mel(x: torch.Tensor) -> torch.Tensor:
    """The diffusion model's output -> vocoder log-mel."""
    return (x + 1) / 2 * (TACOTRON_MEL_MAX - TACOTRON_MEL_MIN) + TACOTRON_MEL_MIN


def _fit(wav: torch.Tensor, length: int, generator: torch.Generator | None = None, random_crop: bool = False):
    n = wav.shape[-1]
    if n > length:
        start = 0
        if random_crop:
            start = int(torch.randint(0, n - length + 1, (1,), generator=generator))
        return wav[..., start: start + length]
    return F.pad(wav, (0, length - n))


def format_conditioning(wav22: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A 6 s AR conditioning window: a random crop (drawn from `generator`) of longer clips, zero padding of
    shorter ones. (samples,) -> (132300,)"""
    return _fit(wav22, AR_CLIP_SAMPLES, generator, random_crop=True)


def diffusion_conditioning_mel(wav22: torch.Tensor) -> torch.Tensor:
    """The diffusion decoder's voice input: resampled to 24 kHz, first ~4.27 s (zero padded), unnormalised
    vocoder mel. (samples,) -> (100, 401)"""
    wav24 = resample_sinc(wav22, AR_SAMPLE_RATE, VOCODER_SAMPLE_RATE)
    return vocoder_mel(_fit(wav24, DIFFUSION_CLIP_SAMPLES))
