"""Audio in and out, resampling, and the two mel front ends (torch only: no torchaudio, no librosa).

- AR/CLVP/VQ-VAE mel (22.05 kHz): n_fft 1024, hop 256, periodic Hann, centre reflect padding, power spectrum,
  80 HTK-scale bands with Slaney area normalisation over 0-8 kHz, natural log of max(x, 1e-5), divided per band
  by the shipped `mel_norms` (torchaudio's `MelSpectrogram(norm="slaney")` as Tortoise configures it).
- Vocoder/diffusion mel (24 kHz): the Tacotron STFT: the same framing, *magnitude* spectrum, 100 Slaney-scale
  bands with Slaney normalisation over 0-12 kHz (librosa's filter defaults), log of max(x, 1e-5); the
  diffusion model works on it scaled to [-1, 1] (`normalize_mel`).
- `resample_sinc` is torchaudio's default windowed-sinc resampler (Hann window, 6 zero crossings, rolloff
  0.99), which the reference uses for its 22.05 -> 24 kHz conditioning path and for loading WAV files.

Both mels compute the same float32 arithmetic as the reference (filterbanks built in the same precision, the
Tacotron STFT as a DFT-basis convolution, products in the same orientation), so they agree with it to float
rounding of the convolution/FFT kernels, not merely to a tolerance.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import math
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hare.errors import AudioError

log = logging.getLogger(__name__)

AR_SAMPLE_RATE = 22050
VOCODER_SAMPLE_RATE = 24000
N_FFT = 1024
HOP = 256
AR_MELS = 80
VOCODER_MELS = 100
AR_CLIP_SAMPLES = 132300  # 6 s at 22.05 kHz: the AR conditioning window
DIFFUSION_CLIP_SAMPLES = 102400  # ~4.27 s at 24 kHz: the diffusion conditioning window
TACOTRON_MEL_MIN = -11.512925148010254  # ln(1e-5)
TACOTRON_MEL_MAX = 2.3143386840820312
SILENCE_PEAK = 1e-4  # a clip whose peak is below this (-80 dBFS) is treated as silent
RESAMPLERS = ("reference", "sinc", "soxr")


# ---------------------------------------------------------------------------------------------------------------
# Loading and saving


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return str(getattr(source, "name", "<audio stream>"))


def _decode_with_ffmpeg(source, name: str) -> tuple[np.ndarray, int]:
    """Decode anything ffmpeg reads (m4a, aac, wma, ...) to float32 WAV in memory: (samples, channels), rate."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise AudioError(f"{name}: not a readable audio file for libsndfile (which reads WAV, FLAC, OGG/Opus "
                         "and MP3); if it is audio in another format, install ffmpeg or convert it to WAV")
    if isinstance(source, (str, os.PathLike)):
        args, stdin = ["-nostdin", "-i", str(source)], None
    else:
        args, stdin = ["-i", "pipe:0"], source.read()
    proc = subprocess.run([ffmpeg, "-v", "error", *args, "-f", "wav", "-acodec", "pcm_f32le", "pipe:1"],
                          input=stdin, capture_output=True, check=False)
    if proc.returncode != 0 or len(proc.stdout) <= 44:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise AudioError(f"{name}: not a readable audio file (ffmpeg: {detail[-1] if detail else 'no audio'})")
    import soundfile

    return soundfile.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=True)


def _read(source, name: str) -> tuple[np.ndarray, int]:
    """(samples, channels) float32 in the file's own scale, and the file's sample rate."""
    import soundfile

    try:
        start = source.tell() if hasattr(source, "tell") else None
    except OSError:  # a pipe: no going back for a second decoder
        start = None
    try:
        return soundfile.read(source, dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile reports by format: LibsndfileError, RuntimeError, TypeError, ...
        log.debug("libsndfile cannot read %s (%s); trying ffmpeg", name, exc)
    if start is not None:
        source.seek(start)
    return _decode_with_ffmpeg(source, name)


def _soxr(wav: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """soxr high quality, trimmed/padded to ceil(n * new/orig) samples like librosa.resample: (..., samples)."""
    import soxr

    length = math.ceil(wav.shape[-1] * (float(new_sr) / orig_sr))
    out = np.ascontiguousarray(soxr.resample(np.ascontiguousarray(wav.T), orig_sr, new_sr, quality="HQ").T)
    if out.shape[-1] < length:
        out = np.pad(out, [(0, 0)] * (out.ndim - 1) + [(0, length - out.shape[-1])])
    return out[..., :length]


def load_audio(source: str | os.PathLike | BinaryIO, sample_rate: int, resampler: str = "reference") -> torch.Tensor:
    """Read an audio file (WAV, FLAC, OGG/Opus, MP3; anything else through ffmpeg when it is installed) as mono
    float32 at `sample_rate`, clipped to [-1, 1]. Returns (samples,).

    Multi-channel audio is averaged to mono. (The reference averages MP3s but keeps only the first channel of a
    WAV; averaging keeps a voice recorded on either side of a stereo file, and equals the reference for mono
    files and for stereo files whose channels match.)

    `resampler`: "reference" (default) resamples as Tortoise does, so that a clip conditions the models exactly as
    in the reference: MP3s with soxr HQ (the reference decodes them with `librosa.load(sr=...)`, whose default
    resampler is soxr HQ), everything else with the torchaudio-equivalent windowed sinc (`resample_sinc`);
    "sinc" or "soxr" force one of them (soxr is the better resampler in general).

    Raises AudioError (naming the file) for a missing, unreadable, empty or non-finite file. Silence and length
    are judged by `validate_clip`, since a quiet or short file may be fine for other uses.
    """
    if resampler not in RESAMPLERS:
        raise ValueError(f"unknown resampler {resampler!r} (choose from {', '.join(RESAMPLERS)})")
    name = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise AudioError(f"audio file not found: {path}")
        if not path.is_file():
            raise AudioError(f"not an audio file (a folder or device): {path}")
    data, sr = _read(source, name)  # (samples, channels)
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioError(f"{name}: the file holds no audio samples")
    if not np.isfinite(data).all():
        raise AudioError(f"{name}: the audio contains NaN or infinite samples")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if sr != sample_rate:
        suffix = Path(name).suffix.lower()
        if resampler == "soxr" or (resampler == "reference" and suffix == ".mp3"):
            mono = _soxr(mono, sr, sample_rate)
            wav = torch.from_numpy(mono.astype(np.float32, copy=False))
        else:
            wav = resample_sinc(torch.from_numpy(np.ascontiguousarray(mono)), sr, sample_rate)
    else:
        wav = torch.from_numpy(np.ascontiguousarray(mono))
    peak = float(wav.abs().max())
    if peak > 1.0:
        log.warning("%s: samples reach %.2f, beyond [-1, 1]; clipping them", name, peak)
    return wav.clamp_(-1.0, 1.0)


def validate_clip(wav: torch.Tensor, sample_rate: int, min_seconds: float = 0.5, name: str = "clip") -> None:
    """Raise AudioError for a clip unusable as a voice reference: empty, non-finite, shorter than
    `min_seconds`, or silent (peak below SILENCE_PEAK). `wav`: (..., samples)."""
    if wav.numel() == 0:
        raise AudioError(f"{name} is empty")
    if not torch.isfinite(wav).all():
        raise AudioError(f"{name} contains NaN or infinite samples")
    seconds = wav.shape[-1] / sample_rate
    if seconds < min_seconds:
        raise AudioError(f"{name} is too short ({seconds:.2f} s; at least {min_seconds:g} s, ideally 6-10 s)")
    if float(wav.abs().max()) < SILENCE_PEAK:
        raise AudioError(f"{name} is silent (peak below {SILENCE_PEAK:g})")


_DEFAULT_SUBTYPE = {"WAV": "PCM_16", "FLAC": "PCM_16", "OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}


def save_audio(target: str | os.PathLike | BinaryIO, wav: torch.Tensor, sample_rate: int,
               format: str | None = None, subtype: str | None = None) -> None:
    """Write mono audio in [-1, 1] (samples are clipped) to a file, a binary stream, or "-" for stdout.

    The format follows the file suffix (wav, flac, ogg/oga/opus, mp3) or `format`; WAV for streams. WAV and FLAC
    are 16-bit PCM unless `subtype` says otherwise ("FLOAT" gives 32-bit float WAV, "PCM_24" 24-bit).
    """
    import soundfile

    data = wav.detach().float().cpu().reshape(-1).clamp(-1, 1).numpy()
    if isinstance(target, (str, os.PathLike)) and str(target) == "-":
        target = sys.stdout.buffer
    if format is None:
        suffix = Path(target).suffix.lower().lstrip(".") if isinstance(target, (str, os.PathLike)) else ""
        format = {"": "wav", "oga": "ogg", "opus": "ogg"}.get(suffix, suffix)
    format = format.upper()
    if subtype is None:
        opus = isinstance(target, (str, os.PathLike)) and Path(target).suffix.lower() == ".opus"
        subtype = "OPUS" if opus else _DEFAULT_SUBTYPE.get(format)
    try:
        soundfile.write(target, data, sample_rate, format=format, subtype=subtype)
    except Exception as exc:
        raise AudioError(f"cannot write {format.lower()} audio to {_describe(target)}: {exc}") from exc
    if hasattr(target, "flush"):
        target.flush()


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


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Front ends run in float32 for half/bfloat16/integer input (the log-mel needs the range), else as given."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _restore(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Results come back in the input's floating dtype (float32 for integer input)."""
    return x.to(dtype) if dtype.is_floating_point else x


@functools.lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int, zero_crossings: int, rolloff: float, device: torch.device,
                 dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """Polyphase windowed-sinc kernel: (new phases, 1, taps) and the padding width, for gcd-reduced rates."""
    cutoff = min(orig, new) * rolloff  # in units of the reduced rates
    width = math.ceil(zero_crossings * orig / cutoff)
    taps = torch.arange(-width, width + orig, dtype=dtype, device=device)[None, None] / orig
    phases = torch.arange(0, -new, -1, dtype=dtype, device=device)[:, None, None] / new
    t = ((phases + taps) * cutoff).clamp(-zero_crossings, zero_crossings)
    # float32 operations in torchaudio's order, so that the taps round identically
    window = torch.cos(t * math.pi / zero_crossings / 2) ** 2  # Hann over +-zero_crossings
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    return sinc * (window * (cutoff / orig)), width


def resample_sinc(wav: torch.Tensor, orig_sr: int, new_sr: int, zero_crossings: int = 6,
                  rolloff: float = 0.99) -> torch.Tensor:
    """Band-limited windowed-sinc resampling, numerically torchaudio's `functional.resample` default:
    (..., samples) -> (..., ceil(samples * new_sr / orig_sr))."""
    if int(orig_sr) != orig_sr or int(new_sr) != new_sr or orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive integers, not {orig_sr} and {new_sr}")
    if orig_sr == new_sr:
        return wav
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // g, int(new_sr) // g
    dtype = _compute_dtype(wav.dtype)
    kernel, width = _sinc_kernel(orig, new, zero_crossings, float(rolloff), wav.device, dtype)
    shape = wav.shape
    x = wav.reshape(-1, shape[-1]).to(dtype)  # (signals, samples)
    length = x.shape[-1]
    y = F.conv1d(F.pad(x, (width, width + orig))[:, None], kernel, stride=orig)  # (signals, new, blocks)
    y = y.transpose(1, 2).reshape(x.shape[0], -1)[:, :math.ceil(new * length / orig)]
    return _restore(y.reshape(*shape[:-1], -1), wav.dtype)


def resample(wav: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """High-quality resampling with soxr (CPU; the result returns to wav's device): (..., samples)."""
    if orig_sr == new_sr:
        return wav
    flat = wav.detach().cpu().float().reshape(-1, wav.shape[-1]).numpy()
    out = torch.from_numpy(_soxr(flat, int(orig_sr), int(new_sr)))
    return _restore(out.reshape(*wav.shape[:-1], -1).to(wav.device), wav.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Filterbanks and STFT bases (built once per device and dtype)


def _ar_filterbank() -> torch.Tensor:
    """HTK-scale triangles with Slaney area normalisation, in float32 like torchaudio's melscale_fbanks:
    (n_freqs, 80)."""
    freqs = torch.linspace(0, AR_SAMPLE_RATE // 2, N_FFT // 2 + 1)
    mel_max = 2595.0 * math.log10(1.0 + 8000.0 / 700.0)
    edges = 700.0 * (10.0 ** (torch.linspace(0.0, mel_max, AR_MELS + 2) / 2595.0) - 1.0)  # (82,) Hz
    gaps = edges[1:] - edges[:-1]
    offsets = edges[None, :] - freqs[:, None]  # (n_freqs, 82)
    rising = -offsets[:, :-2] / gaps[:-1]
    falling = offsets[:, 2:] / gaps[1:]
    triangles = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return triangles * (2.0 / (edges[2:] - edges[:-2]))[None, :]


def _slaney_hz_to_mel(f: np.ndarray) -> np.ndarray:
    # linear (200/3 Hz per mel) below 1 kHz, logarithmic (27 mels per factor 6.4) above
    log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log_part, f / (200.0 / 3))


def _slaney_mel_to_hz(m: np.ndarray) -> np.ndarray:
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * (200.0 / 3))


def _slaney_band_edges(n_mels: int, fmax: float) -> np.ndarray:
    """The Slaney-scale bands' edges in Hz from 0 Hz to `fmax`, evenly spaced in mels: (n_mels + 2,); band i
    rises from edge i, peaks at edge i + 1 (its centre) and falls to edge i + 2."""
    return _slaney_mel_to_hz(np.linspace(_slaney_hz_to_mel(np.float64(0.0)), _slaney_hz_to_mel(np.float64(fmax)),
                                         n_mels + 2))


def _slaney_filterbank(sample_rate: int, n_mels: int, fmax: float) -> torch.Tensor:
    """Slaney-scale triangles with Slaney normalisation from 0 Hz to `fmax`, rounded as librosa.filters.mel
    rounds them (triangles stored as float32, then scaled): (n_mels, n_freqs)."""
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / sample_rate)
    edges = _slaney_band_edges(n_mels, fmax)
    gaps = np.diff(edges)
    offsets = edges[:, None] - freqs[None, :]  # (n_mels + 2, n_freqs)
    triangles = np.maximum(0.0, np.minimum(-offsets[:-2] / gaps[:-1, None], offsets[2:] / gaps[1:, None]))
    triangles = triangles.astype(np.float32)
    return torch.from_numpy((triangles * (2.0 / (edges[2:] - edges[:-2]))[:, None]).astype(np.float32))


def _vocoder_filterbank() -> torch.Tensor:
    """UnivNet's 100 bands, 0-12 kHz at 24 kHz."""
    return _slaney_filterbank(VOCODER_SAMPLE_RATE, VOCODER_MELS, MEL_FORMATS["univnet"].fmax)


def _dft_basis() -> torch.Tensor:
    """The Tacotron STFT as a convolution: Hann-windowed DFT rows, real parts then imaginary parts, rounded to
    float32 before windowing as the reference does: (2 * n_freqs, 1, n_fft)."""
    n_freqs = N_FFT // 2 + 1
    dft = np.fft.fft(np.eye(N_FFT))[:n_freqs]
    basis = torch.from_numpy(np.concatenate([dft.real, dft.imag])).float()
    window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float64).float()
    return (basis * window)[:, None, :]


@functools.lru_cache(maxsize=8)
def _tensors(device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {
        "window": torch.hann_window(N_FFT, periodic=True, dtype=dtype, device=device),  # as torchaudio builds it
        "ar_fb": _ar_filterbank().to(device, dtype),
        "voc_fb": _vocoder_filterbank().to(device, dtype),
        "hifi_fb": _slaney_filterbank(AR_SAMPLE_RATE, AR_MELS, MEL_FORMATS["hifigan"].fmax).to(device, dtype),
        "dft": _dft_basis().to(device, dtype),
        "mel_norms": mel_norms().to(device, dtype),
    }


@functools.lru_cache(maxsize=1)
def _mel_norms() -> torch.Tensor:
    with resources.as_file(resources.files("hare") / "data" / "mel_norms.pth") as p:
        return torch.load(p, map_location="cpu", weights_only=True).float()


def mel_norms() -> torch.Tensor:
    """The 80 per-band normalisers of the AR mel (Tortoise's `mel_norms.pth`): (80,). A fresh copy."""
    return _mel_norms().clone()


def _flatten(wav: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
    """(..., samples) -> (signals, samples) in the compute dtype, and the leading shape."""
    if wav.dim() == 0:
        raise ValueError("expected audio of shape (..., samples), got a scalar")
    return wav.reshape(-1, wav.shape[-1]).to(_compute_dtype(wav.dtype)), wav.shape[:-1]


# ---------------------------------------------------------------------------------------------------------------
# Mel front ends


def ar_mel_unnormalised(wav22: torch.Tensor) -> torch.Tensor:
    """Log power mel (80 HTK bands, 0-8 kHz) of 22.05 kHz audio: (..., samples) -> (..., 80, frames),
    frames = samples // 256 + 1."""
    x, lead = _flatten(wav22)
    t = _tensors(x.device, x.dtype)
    spec = torch.stft(x, N_FFT, HOP, N_FFT, window=t["window"], center=True, pad_mode="reflect",
                      return_complex=True).abs().pow(2)  # (signals, n_freqs, frames)
    mel = torch.matmul(spec.transpose(-1, -2), t["ar_fb"]).transpose(-1, -2)  # (signals, 80, frames)
    return _restore(torch.log(mel.clamp(min=1e-5)).reshape(*lead, AR_MELS, -1), wav22.dtype)


def ar_mel(wav22: torch.Tensor) -> torch.Tensor:
    """The AR/CLVP/VQ-VAE input: log mel divided by mel_norms: (..., samples) -> (..., 80, frames)."""
    mel = ar_mel_unnormalised(wav22)
    return mel / _tensors(mel.device, mel.dtype)["mel_norms"][:, None]


def vocoder_mel(wav24: torch.Tensor) -> torch.Tensor:
    """Log magnitude mel (100 Slaney bands, 0-12 kHz) of 24 kHz audio, input clipped to [-1, 1]:
    (..., samples) -> (..., 100, frames), frames = samples // 256 + 1."""
    x, lead = _flatten(wav24)
    t = _tensors(x.device, x.dtype)
    x = F.pad(x.clamp(-1, 1)[:, None], (N_FFT // 2, N_FFT // 2), mode="reflect")  # (signals, 1, padded)
    parts = F.conv1d(x, t["dft"], stride=HOP)  # (signals, 2 * n_freqs, frames): real then imaginary
    real, imag = parts.chunk(2, dim=1)
    mel = torch.matmul(t["voc_fb"], torch.sqrt(real ** 2 + imag ** 2))  # (signals, 100, frames)
    return _restore(torch.log(mel.clamp(min=1e-5)).reshape(*lead, VOCODER_MELS, -1), wav24.dtype)


def hifigan_mel(wav22: torch.Tensor) -> torch.Tensor:
    """HiFi-GAN's log magnitude mel (80 Slaney bands, 0-8 kHz) of 22.05 kHz audio, as its training code makes
    it: reflect padding of (n_fft - hop) / 2 on each side, no centring, input clipped to [-1, 1].
    (..., samples) -> (..., 80, frames), frames = samples // 256 (exactly 4 per speech code)."""
    x, lead = _flatten(wav22)
    t = _tensors(x.device, x.dtype)
    pad = (N_FFT - HOP) // 2
    x = x.clamp(-1, 1)[:, None]
    if x.shape[-1] <= pad:  # reflect padding needs more samples than the pad
        x = F.pad(x, (0, pad + 1 - x.shape[-1]))
    x = F.pad(x, (pad, pad), mode="reflect")
    parts = F.conv1d(x, t["dft"], stride=HOP)
    real, imag = parts.chunk(2, dim=1)
    mel = torch.matmul(t["hifi_fb"], torch.sqrt(real ** 2 + imag ** 2 + 1e-9))
    return _restore(torch.log(mel.clamp(min=1e-5)).reshape(*lead, AR_MELS, -1), wav22.dtype)


@dataclasses.dataclass(frozen=True)
class MelFormat:
    """What a diffusion decoder produces and its vocoder reads: the Tortoise format (`univnet`: 100 bands at
    24 kHz) or HiFi-GAN's (`hifigan`: 80 bands at 22.05 kHz). Both are log mels, normalised to [-1, 1] with
    `normalize_mel` for the diffusion model."""

    name: str
    sample_rate: int
    n_mels: int
    conditioning_samples: int  # the voice clip length the diffusion conditioning sees (at `sample_rate`)
    fmax: float  # top of the (Slaney) mel scale, Hz

    def frames_for_codes(self, num_codes: int) -> int:
        """Mel frames spanned by `num_codes` speech codes (1024 samples of 22.05 kHz audio each)."""
        return num_codes * 4 * self.sample_rate // AR_SAMPLE_RATE

    @property
    def frames_per_code(self) -> float:
        return 4 * self.sample_rate / AR_SAMPLE_RATE

    def mel(self, wav: torch.Tensor) -> torch.Tensor:
        """Unnormalised log mel of audio at `sample_rate`."""
        return vocoder_mel(wav) if self.name == "univnet" else hifigan_mel(wav)

    def conditioning_mel(self, wav22: torch.Tensor) -> torch.Tensor:
        """The diffusion decoder's voice input from a 22.05 kHz clip (first ~4.3 s, zero padded)."""
        if self.name == "univnet":
            return diffusion_conditioning_mel(wav22)
        return hifigan_mel(pad_or_truncate(wav22, self.conditioning_samples))


MEL_FORMATS = {
    "univnet": MelFormat("univnet", VOCODER_SAMPLE_RATE, VOCODER_MELS, DIFFUSION_CLIP_SAMPLES, 12000.0),
    "hifigan": MelFormat("hifigan", AR_SAMPLE_RATE, AR_MELS, 94208, 8000.0),  # 368 frames, ~4.27 s as Tortoise's
}


def mel_format(name: str) -> MelFormat:
    if name not in MEL_FORMATS:
        raise ValueError(f"unknown mel format {name!r}; known: {', '.join(MEL_FORMATS)}")
    return MEL_FORMATS[name]


def warp_mel_frequencies(mel: torch.Tensor, factor: float, fmt: MelFormat) -> torch.Tensor:
    """Scale every frequency of a log mel spectrogram by `factor` (> 1 moves the spectrum up: higher pitch
    and formants, a "shorter vocal tract"; < 1 down), keeping its timing: a speaker augmentation (VTLP)
    done on the mel itself. Each band reads the input at its centre frequency / factor, interpolated
    linearly between band centres (bands past the input's top repeat its top band).
    (..., fmt.n_mels, frames) -> same shape."""
    if factor <= 0:
        raise ValueError(f"frequency warp factor must be positive (got {factor})")
    if mel.shape[-2] != fmt.n_mels:
        raise ValueError(f"expected {fmt.n_mels} mel bands for format {fmt.name!r}, got {mel.shape[-2]}")
    if factor == 1.0:
        return mel
    centres = _slaney_band_edges(fmt.n_mels, fmt.fmax)[1:-1]
    source = np.interp(centres / factor, centres, np.arange(fmt.n_mels, dtype=np.float64))
    low = np.floor(source).astype(np.int64)
    high = np.minimum(low + 1, fmt.n_mels - 1)
    frac = torch.from_numpy(source - low).to(mel.device, mel.dtype)[:, None]
    low, high = torch.from_numpy(low).to(mel.device), torch.from_numpy(high).to(mel.device)
    return mel.index_select(-2, low) * (1 - frac) + mel.index_select(-2, high) * frac


def warp_mel_source_filter(mel: torch.Tensor, pitch_factor: float, formant_factor: float, fmt: MelFormat,
                           envelope_coefficients: int = 12) -> torch.Tensor:
    """Scale a log mel spectrogram's pitch and its formants by separate factors: a source-filter speaker
    augmentation done on the mel itself. The spectral envelope is the log mel smoothed across bands (its first
    `envelope_coefficients` DCT coefficients over the band axis, per frame); the rest is the fine structure, the
    harmonics of the voice's pitch where the bands resolve them (below ~1 kHz). The envelope is frequency-warped
    by `formant_factor` and the fine structure by `pitch_factor` (`warp_mel_frequencies`), and the two summed:
    equal factors are `warp_mel_frequencies` itself, 1 and 1 the input. (..., fmt.n_mels, frames) -> same shape."""
    n = fmt.n_mels
    if mel.shape[-2] != n:
        raise ValueError(f"expected {n} mel bands for format {fmt.name!r}, got {mel.shape[-2]}")
    if not 1 <= envelope_coefficients <= n:
        raise ValueError(f"envelope_coefficients must be in 1..{n} (got {envelope_coefficients})")
    k = np.arange(n, dtype=np.float64)
    basis = np.cos(np.pi / n * (k[None] + 0.5) * k[:, None]) * np.sqrt(2.0 / n)  # orthonormal DCT-II rows
    basis[0] /= np.sqrt(2.0)
    smooth = basis[:envelope_coefficients].T @ basis[:envelope_coefficients]  # (bands, bands) projection
    smooth = torch.from_numpy(smooth).to(mel.device, mel.dtype)
    envelope = torch.einsum("ij,...jt->...it", smooth, mel)
    return (warp_mel_frequencies(envelope, formant_factor, fmt)
            + warp_mel_frequencies(mel - envelope, pitch_factor, fmt))


VOICE_WARP_RANGE = (0.8, 1.35)  # the frequency-warp factors `estimate_voice_warp` chooses among (its grid's ends)
VOICE_WARP_STEPS = 23  # grid points, evenly spaced in log factor
VOICE_WARP_BAND = (250.0, 5000.0)  # Hz: the formants' region, where the shapes are compared
VOICE_WARP_DEAD_ZONE = 1.03  # a factor within 3 % of 1 is taken as 1 (the same voice read from other clips)


def _formant_shape(means: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Band means (n_mels,) within the formant band, less their best straight line over the bands: the
    long-term spectrum's shape without its level or tilt (a microphone's, a channel's, a loudness's)."""
    v = means.float()[keep]
    x = torch.arange(len(means), dtype=torch.float32, device=v.device)[keep]
    design = torch.stack([x, torch.ones_like(x)], 1)
    coef = torch.linalg.lstsq(design, v[:, None]).solution
    return v - (design @ coef)[:, 0]


def estimate_voice_warp(source: torch.Tensor, target: torch.Tensor, fmt: MelFormat,
                        factor_range: tuple[float, float] = VOICE_WARP_RANGE, steps: int = VOICE_WARP_STEPS,
                        dead_zone: float = VOICE_WARP_DEAD_ZONE) -> float:
    """The frequency-warp factor (`warp_mel_frequencies`) that makes the voice whose long-term band means are
    `source` (n_mels,; `mel_band_means`) sound nearest the voice of `target`: a longer or shorter vocal tract
    moves every formant by about one factor, which one gain per band (`match_mel_means`) cannot do. The factor
    on a grid over `factor_range` (log-spaced) whose warp of `source` has the shape nearest (least squares)
    the target's, shapes compared between 250 Hz and 5 kHz without level or tilt (`_formant_shape`); a factor
    within `dead_zone` of 1 is 1. -> the factor."""
    lo, hi = factor_range
    if not 0 < lo <= 1 <= hi or steps < 2:
        raise ValueError(f"factor_range must be positive and hold 1.0, steps >= 2 (got {factor_range}, {steps})")
    if source.shape != target.shape or source.shape[-1] != fmt.n_mels:
        raise ValueError(f"expected two ({fmt.n_mels},) band means, got {tuple(source.shape)} and {tuple(target.shape)}")
    centres = _slaney_band_edges(fmt.n_mels, fmt.fmax)[1:-1]
    keep = torch.from_numpy((centres >= VOICE_WARP_BAND[0]) & (centres <= VOICE_WARP_BAND[1])).to(source.device)
    goal = _formant_shape(target.to(source.device), keep)
    best, best_err = 1.0, float("inf")
    for factor in np.geomspace(lo, hi, steps):
        warped = warp_mel_frequencies(source.float()[:, None], float(factor), fmt)[:, 0]
        err = float((_formant_shape(warped, keep) - goal).pow(2).sum())
        if err < best_err:
            best, best_err = float(factor), err
    return 1.0 if max(best, 1 / best) < dead_zone else best


SPEECH_FRAME_RANGE = 4.0  # nats of log mel: a frame counts as speech within this of its clip's loud frames
SPEECH_FRAME_LOUD = 0.98  # quantile of the frames' log energy that stands for "loud": a click is not the speech


def speech_frame_mask(mel: torch.Tensor, floor: float = SPEECH_FRAME_RANGE,
                      loud: float = SPEECH_FRAME_LOUD) -> torch.Tensor:
    """Which frames of a log mel (n_mels, frames) are speech rather than pause: those whose log energy (the
    log of the bands' summed mel magnitude) is within `floor` nats (~35 dB at 4) of the clip's loud level, the
    `loud` quantile of its frames' energies (not the loudest frame: one click or pop in a quiet recording
    would leave a handful of frames). -> (frames,) bool."""
    energy = mel.float().logsumexp(-2)
    return energy >= torch.quantile(energy, loud) - floor


def mel_band_means(mels: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean log mel of each band over the speech frames of all `mels` ((n_mels, frames) each): a voice's
    long-term spectral envelope (its timbre and recording channel, averaged over what it says). -> (n_mels,)"""
    if not mels:
        raise ValueError("no mels to average")
    frames = torch.cat([m[:, speech_frame_mask(m)] for m in mels], dim=-1)
    return frames.float().mean(-1)


def match_mel_means(mel: torch.Tensor, target: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Shift each band of a log mel (..., n_mels, frames) by `strength` times the gap between `target`
    (n_mels,), a voice's `mel_band_means`, and the mel's own band means over its speech frames: an
    equaliser (one gain per band, the same for every frame) that gives the audio the voice's long-term
    spectrum. Pauses move with the speech; timing, pitch and the frame-to-frame detail are unchanged."""
    if not 0 <= strength <= 1:
        raise ValueError(f"strength must be in [0, 1] (got {strength})")
    if target.shape[-1] != mel.shape[-2]:
        raise ValueError(f"target has {target.shape[-1]} bands, the mel {mel.shape[-2]}")
    if strength == 0:
        return mel
    flat = mel.reshape(-1, *mel.shape[-2:])
    gap = torch.stack([target.to(m) - mel_band_means([m]).to(m) for m in flat])  # (batch, n_mels)
    return (flat + strength * gap[..., None]).reshape(mel.shape)


def normalize_mel(mel: torch.Tensor) -> torch.Tensor:
    """Vocoder log-mel -> the diffusion model's [-1, 1] range."""
    return 2 * ((mel - TACOTRON_MEL_MIN) / (TACOTRON_MEL_MAX - TACOTRON_MEL_MIN)) - 1


def denormalize_mel(x: torch.Tensor) -> torch.Tensor:
    """The diffusion model's output -> vocoder log-mel."""
    return (x + 1) / 2 * (TACOTRON_MEL_MAX - TACOTRON_MEL_MIN) + TACOTRON_MEL_MIN


def pad_or_truncate(wav: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad at the end or cut to `length` samples: (..., samples) -> (..., length)."""
    n = wav.shape[-1]
    return wav[..., :length] if n >= length else F.pad(wav, (0, length - n))


def format_conditioning(wav22: torch.Tensor, generator: torch.Generator | None = None,
                        length: int = AR_CLIP_SAMPLES) -> torch.Tensor:
    """The AR conditioning window (6 s): a random crop of longer clips, its start drawn uniformly from
    `generator` (torch's default generator if None), or zero padding of shorter ones.
    (..., samples) -> (..., length); a batch shares one crop start."""
    gap = wav22.shape[-1] - length
    if gap <= 0:
        return pad_or_truncate(wav22, length)
    device = generator.device if generator is not None else "cpu"
    start = int(torch.randint(0, gap + 1, (1,), generator=generator, device=device))
    return wav22[..., start:start + length]


def diffusion_conditioning_mel(wav22: torch.Tensor) -> torch.Tensor:
    """The diffusion decoder's voice input: 22.05 kHz audio resampled to 24 kHz with the reference's sinc
    resampler, first 102400 samples (zero padded), unnormalised vocoder mel. (..., samples) -> (..., 100, 401)"""
    wav24 = resample_sinc(wav22, AR_SAMPLE_RATE, VOCODER_SAMPLE_RATE)
    return vocoder_mel(pad_or_truncate(wav24, DIFFUSION_CLIP_SAMPLES))


def time_stretch(wav: torch.Tensor, speed: float, n_fft: int = 1024, hop: int = 256) -> torch.Tensor:
    """Play `wav` `speed` times faster at the same pitch (phase vocoder): (samples,) -> (~samples / speed,).

    Frames of the STFT are read at `speed` times the hop, magnitudes interpolated between neighbouring frames,
    phases advanced by each bin's measured instantaneous frequency; speech keeps its pitch, with the slight
    phasiness typical of a phase vocoder at large factors.
    """
    # wav: (samples,)
    if speed == 1.0 or wav.numel() == 0:
        return wav
    length = wav.shape[-1]
    out_length = max(1, round(length / speed))
    x = torch.nn.functional.pad(wav.float(), (0, max(0, n_fft - length)))
    window = torch.hann_window(n_fft, dtype=x.dtype, device=x.device)
    spec = torch.stft(x, n_fft, hop, window=window, return_complex=True)  # (bins, frames)
    spec = torch.nn.functional.pad(spec, (0, 2))  # two silent frames so that every step has a right neighbour
    steps = torch.arange(0, spec.shape[-1] - 2, speed, dtype=x.dtype, device=x.device)
    left_i = steps.floor().long()
    frac = (steps - left_i)[None]
    left, right = spec[:, left_i], spec[:, left_i + 1]
    mag = (1 - frac) * left.abs() + frac * right.abs()
    expected = 2 * math.pi * hop * torch.arange(spec.shape[0], dtype=x.dtype, device=x.device)[:, None] / n_fft
    delta = right.angle() - left.angle() - expected
    delta = delta - 2 * math.pi * torch.round(delta / (2 * math.pi))
    phase = torch.cat([spec[:, :1].angle(), (expected + delta)[:, :-1]], dim=1).cumsum(dim=1)
    out = torch.polar(mag, phase)
    y = torch.istft(out, n_fft, hop, window=window, length=out_length)
    return y.clamp(-1, 1).to(wav.dtype)
