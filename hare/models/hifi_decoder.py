"""Tortoise v3's HiFi-GAN latent decoder: the GPT's per-code latents straight to 24 kHz audio (`api_fast`).

The GPT's latents (one per speech code, 1024 samples at 22.05 kHz each) are linearly resampled twice, x4 to
the mel hop and x24000/22050 to the output rate, exactly as the reference does it (`F.interpolate` with
`scale_factor`, so each output frame sits at a fixed position of the source), then a HiFi-GAN V1 generator
(`hare.models.hifigan`) conditioned on the voice's AR conditioning latent makes 256 samples per frame.

`HifiStream` decodes a growing sequence of latents (as the GPT samples them) in bounded windows: each window
holds the frames to emit plus the generator's receptive field on both sides, and only frames whose whole
receptive field is known are emitted, so the streamed audio is the one-shot decode's, seam for seam (within
float rounding), at a cost linear in the length (the reference re-decodes every latent for every chunk).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hare.models.configs import HifiDecoderConfig
from hare.models.hifigan import HiFiGAN


def _source_index(dst: torch.Tensor, scale: float) -> torch.Tensor:
    """Where output index `dst` of `F.interpolate(mode="linear", scale_factor=scale)` reads its source
    (align_corners=False, the scale given: positions do not depend on the lengths), clamped at 0."""
    return ((dst.double() + 0.5) / scale - 0.5).clamp_min(0.0)


def _resample(x: torch.Tensor, scale: float, start: int, stop: int, final_length: bool) -> torch.Tensor:
    """Output indices [start, stop) of `F.interpolate(x, scale_factor=scale, mode="linear")` over x's last axis,
    computed from the source samples they read. With `final_length` False, x may still grow: the last source
    sample is not treated as the end (callers only ask for indices that read below it)."""
    n = x.shape[-1]
    src = _source_index(torch.arange(start, stop, device=x.device), scale)
    lo = src.floor().long()
    hi = (lo + 1).clamp_max(n - 1) if final_length else lo + 1
    if not final_length and int(hi.max()) >= n:
        raise ValueError("asked for resampled frames that need source samples not given yet")
    w = (src - lo).to(x.dtype)
    return x[..., lo] * (1 - w) + x[..., hi] * w


class HifiDecoder(nn.Module):
    def __init__(self, config: HifiDecoderConfig | None = None):
        super().__init__()
        self.config = config = config or HifiDecoderConfig()
        self.generator = HiFiGAN(config.generator())

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.generator.hop_length

    def frames_for(self, num_latents: int) -> int:
        """Resampled frames a decode of `num_latents` latents has (F.interpolate's floor of size x scale)."""
        c = self.config
        return math.floor(math.floor(num_latents * c.code_upsample) * c.rate_ratio)

    def upsample(self, latents: torch.Tensor) -> torch.Tensor:
        """(batch, n, latent_dim) GPT latents -> (batch, latent_dim, frames_for(n)), as the reference."""
        c = self.config
        x = F.interpolate(latents.transpose(1, 2), scale_factor=[c.code_upsample], mode="linear")
        return F.interpolate(x, scale_factor=[c.rate_ratio], mode="linear")

    def upsample_window(self, latents: torch.Tensor, start: int, stop: int, final_length: bool = True) -> torch.Tensor:
        """Frames [start, stop) of `upsample(latents)`, reading only the latents they need; with
        `final_length` False the latents may still grow (then only frames that no later latent changes)."""
        c = self.config
        x = latents.transpose(1, 2)
        if stop <= start:
            return x.new_zeros(x.shape[0], x.shape[1], 0)
        # the first resampling's indices the window reads, then those of the latents
        mid = _source_index(torch.tensor([start, stop - 1]), c.rate_ratio)
        m_lo, m_hi = int(mid[0].floor()), int(mid[1].floor()) + 1
        n1 = math.floor(x.shape[-1] * c.code_upsample)
        m_hi = min(m_hi, n1 - 1) if final_length else m_hi
        first = _resample(x, c.code_upsample, m_lo, m_hi + 1, final_length)
        # `first` holds indices m_lo..m_hi of the first resampling: read it with shifted indices
        if final_length and self.frames_for(latents.shape[1]) == n1:  # F.interpolate copies equal lengths
            return first[..., start - m_lo: stop - m_lo]
        src = _source_index(torch.arange(start, stop), c.rate_ratio)
        lo = src.floor().long()
        hi = (lo + 1).clamp_max(n1 - 1) if final_length else lo + 1
        w = (src - lo).to(first.dtype)
        return first[..., lo - m_lo] * (1 - w) + first[..., hi - m_lo] * w

    def forward(self, latents: torch.Tensor, speaker: torch.Tensor) -> torch.Tensor:
        """latents: (batch, n, latent_dim); speaker: (batch, cond_dim) -> (batch, 1, frames_for(n) * 256)."""
        return self.generator(self.upsample(latents), speaker[..., None])

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, speaker: torch.Tensor) -> torch.Tensor:
        """(batch, n, latent_dim), (batch or 1, cond_dim) -> (batch, samples) float32 audio in [-1, 1]."""
        dtype = self.generator.inp.weight.dtype
        speaker = speaker.expand(latents.shape[0], -1)
        return self.forward(latents.to(dtype), speaker.to(dtype))[:, 0].float()

    def stream(self, speaker: torch.Tensor, first_codes: int = 20, every_codes: int = 20) -> "HifiStream":
        return HifiStream(self, speaker, first_codes, every_codes)


class HifiStream:
    """Audio from a growing sequence of GPT latents (one sequence), in bounded windows.

    `push(latents)` adds (1, m, latent_dim) latents and returns the audio that has become final, once at
    least `first_codes` (then `every_codes`) codes' worth of new audio is final, else an empty tensor;
    `finish()` returns the rest. Concatenated, the pieces equal `decoder.decode(all latents)`.
    """

    def __init__(self, decoder: HifiDecoder, speaker: torch.Tensor, first_codes: int = 20, every_codes: int = 20):
        if first_codes < 1 or every_codes < 1:
            raise ValueError("first_codes and every_codes must be at least 1")
        self.decoder = decoder
        self.speaker = speaker.reshape(1, -1)
        c = decoder.config
        per_code = c.code_upsample * c.rate_ratio
        self.first_frames = max(1, round(first_codes * per_code))
        self.every_frames = max(1, round(every_codes * per_code))
        self.context = decoder.generator.context_frames()
        self.latents: list[torch.Tensor] = []
        self.count = 0
        self.emitted = 0  # frames already returned
        self.done = False

    def _final_frames(self) -> int:
        """Resampled frames that no later latent can change (all of them once finished)."""
        n = self.count
        if n < 3:  # up to 2 latents the reference's second resampling is a copy (equal lengths)
            return 0
        c = self.decoder.config
        # a frame is final when the first resampling's index above it reads latents below the last one
        limit = self.decoder.frames_for(n)
        u = torch.arange(limit)
        v_hi = _source_index(u, c.rate_ratio).floor().long() + 1
        j_hi = _source_index(v_hi, c.code_upsample).floor().long() + 1
        ok = (j_hi <= n - 1).nonzero()
        return int(ok[-1]) + 1 if len(ok) else 0

    def _decode(self, stop: int, final_length: bool) -> torch.Tensor:
        start = max(0, self.emitted - self.context)
        end = stop if final_length else min(stop + self.context, self._final_frames())
        latents = torch.cat(self.latents, dim=1)
        dec = self.decoder
        dtype = dec.generator.inp.weight.dtype
        with torch.inference_mode():
            frames = dec.upsample_window(latents, start, end, final_length).to(dtype)
            wav = dec.generator(frames, self.speaker.to(dtype)[..., None])[0, 0].float()
        hop = dec.hop_length
        piece = wav[(self.emitted - start) * hop: (stop - start) * hop]
        self.emitted = stop
        return piece

    def push(self, latents: torch.Tensor) -> torch.Tensor:
        if self.done:
            raise RuntimeError("the stream is finished")
        if latents.dim() != 3 or latents.shape[0] != 1:
            raise ValueError("push takes (1, m, latent_dim) latents")
        self.latents.append(latents.detach())
        self.count += latents.shape[1]
        ready = self._final_frames() - self.context  # frames whose receptive field is all final
        need = self.first_frames if self.emitted == 0 else self.every_frames
        if ready - self.emitted < need:
            return torch.zeros(0)
        return self._decode(ready, final_length=False)

    def finish(self) -> torch.Tensor:
        if self.done:
            raise RuntimeError("the stream is finished")
        self.done = True
        if not self.count:
            return torch.zeros(0)
        return self._decode(self.decoder.frames_for(self.count), final_length=True)
