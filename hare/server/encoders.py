"""Response audio formats: each format's encoder (soundfile, ffmpeg for AAC) and how its pieces stream (the MP3
frame parser that drops a leading Info frame)."""

import dataclasses
import io
import logging
import shutil
import subprocess
from typing import Callable

import numpy as np

from hare.audio import VOCODER_SAMPLE_RATE as SAMPLE_RATE  # every response is 24 kHz, as OpenAI's

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AudioFormat:
    name: str
    media_type: str
    encode: Callable[[np.ndarray], bytes]  # float32 mono in [-1, 1] -> bytes of a complete file
    stream_header: bytes | None = None  # streams of this format start with these bytes (None: not streamable)
    stream_piece: Callable[[np.ndarray], bytes] | None = None


def _pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).round().astype("<i2").tobytes()


def _soundfile_encoder(fmt: str, subtype: str, **options) -> Callable[[np.ndarray], bytes]:
    def encode(x: np.ndarray) -> bytes:
        import soundfile

        buf = io.BytesIO()
        soundfile.write(buf, np.clip(x, -1, 1).astype(np.float32), SAMPLE_RATE, format=fmt, subtype=subtype,
                        **options)
        return buf.getvalue()

    return encode


def _ffmpeg_encoder(args: list[str]) -> Callable[[np.ndarray], bytes]:
    def encode(x: np.ndarray) -> bytes:
        proc = subprocess.run(["ffmpeg", "-v", "error", "-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", "1",
                               "-i", "-", *args, "-"], input=_pcm16(x), capture_output=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.decode(errors="replace")[:200])
        return proc.stdout

    return encode


_MP3_BITRATES = {  # kbit/s by bitrate index, Layer III
    "1": (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    "2": (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def strip_mp3_info_frame(data: bytes) -> bytes:
    """Drop a leading Xing/Info frame: it states the length of one piece, and decoders that trust it would stop
    there when pieces are sent one after another."""
    if len(data) < 4 or data[0] != 0xFF or (data[1] & 0xE0) != 0xE0:
        return data
    version = (data[1] >> 3) & 3  # 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
    bitrate_index, rate_index, padding = data[2] >> 4, (data[2] >> 2) & 3, (data[2] >> 1) & 1
    if version == 1 or ((data[1] >> 1) & 3) != 1 or bitrate_index in (0, 15) or rate_index == 3:
        return data  # not Layer III, or a header we do not parse
    bitrate = _MP3_BITRATES["1" if version == 3 else "2"][bitrate_index] * 1000
    rate = _MP3_RATES[version][rate_index]
    length = (144 if version == 3 else 72) * bitrate // rate + padding
    if b"Xing" in data[:length] or b"Info" in data[:length]:
        return data[length:]
    return data


def available_formats() -> dict[str, AudioFormat]:
    """The response formats this machine can encode (each is tried once on a short signal)."""
    from hare.audio import wav_header

    probe = (0.1 * np.sin(np.arange(2400) * 0.05)).astype(np.float32)
    candidates = [
        AudioFormat("wav", "audio/wav", _soundfile_encoder("WAV", "PCM_16"), wav_header(SAMPLE_RATE), _pcm16),
        AudioFormat("pcm", "audio/pcm", _pcm16, b"", _pcm16),
        AudioFormat("flac", "audio/flac", _soundfile_encoder("FLAC", "PCM_16")),
        AudioFormat("opus", "audio/ogg; codecs=opus", _soundfile_encoder("OGG", "OPUS")),
    ]
    # constant bit rate (~88 kbit/s): a stream of pieces has no per-piece length header for decoders to trust
    mp3 = _soundfile_encoder("MP3", "MPEG_LAYER_III", bitrate_mode="CONSTANT", compression_level=0.5)
    candidates.append(AudioFormat("mp3", "audio/mpeg", mp3, b"",  # MP3 frames can be concatenated
                                  lambda x: strip_mp3_info_frame(mp3(x))))
    if shutil.which("ffmpeg"):
        aac = _ffmpeg_encoder(["-c:a", "aac", "-b:a", "64k", "-f", "adts"])
        candidates.append(AudioFormat("aac", "audio/aac", aac, b"", aac))  # ADTS frames can be concatenated
    formats = {}
    for fmt in candidates:
        try:
            if fmt.encode(probe):
                formats[fmt.name] = fmt
        except Exception as exc:  # a codec missing from this libsndfile build
            log.info("response format %s unavailable: %s", fmt.name, exc)
    return formats
