"""UniVNet's discriminators and its auxiliary multi-resolution STFT loss (training the vocoder only).

- Multi-period discriminator (from HiFi-GAN): the waveform folded into (frames, period) grids, 2-D convs
  over time.
- Multi-resolution discriminator: 2-D convs over linear magnitude spectrograms at several STFT sizes.
- `stft_loss`: spectral convergence + L1 log-magnitude distance, averaged over resolutions.
- `feature_matching_loss`: HiFi-GAN's L1 distance between the discriminators' hidden maps of real and fake
  audio (`Discriminator(..., features=True)`), used by the HiFi-GAN latent decoder's objective.

Both discriminators score least-squares GAN style (real -> 1, fake -> 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

STFTResolution = tuple[int, int, int]  # (n_fft, hop, window)


@dataclass(frozen=True)
class DiscriminatorConfig:
    periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    period_channels: tuple[int, ...] = (32, 128, 512, 1024, 1024)
    resolutions: tuple[STFTResolution, ...] = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))
    resolution_channels: int = 32
    lrelu_slope: float = 0.2


class PeriodDiscriminator(nn.Module):
    def __init__(self, period: int, channels: tuple[int, ...], slope: float):
        super().__init__()
        self.period, self.slope = period, slope
        convs, prev = [], 1
        for i, ch in enumerate(channels):
            stride = 1 if i == len(channels) - 1 else 3
            convs.append(weight_norm(nn.Conv2d(prev, ch, (5, 1), (stride, 1), padding=(2, 0))))
            prev = ch
        self.convs = nn.ModuleList(convs)
        self.post = weight_norm(nn.Conv2d(prev, 1, (3, 1), padding=(1, 0)))

    def forward(self, wav: torch.Tensor, features: list | None = None) -> torch.Tensor:
        # wav: (batch, 1, samples) -> scores (batch, cells); hidden maps appended to `features` if given
        b, _, n = wav.shape
        if n % self.period:
            wav = F.pad(wav, (0, self.period - n % self.period), mode="reflect")
        x = wav.view(b, 1, -1, self.period)
        for conv in self.convs:
            x = F.leaky_relu(conv(x), self.slope)
            if features is not None:
                features.append(x)
        return self.post(x).flatten(1)


class ResolutionDiscriminator(nn.Module):
    def __init__(self, resolution: STFTResolution, channels: int, slope: float):
        super().__init__()
        self.n_fft, self.hop, self.win = resolution
        self.slope = slope
        self.convs = nn.ModuleList([
            weight_norm(nn.Conv2d(1, channels, (3, 9), padding=(1, 4))),
            weight_norm(nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1))),
        ])
        self.post = weight_norm(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))

    def forward(self, wav: torch.Tensor, features: list | None = None) -> torch.Tensor:
        # wav: (batch, 1, samples) -> scores (batch, cells); hidden maps appended to `features` if given
        x = stft_magnitude(wav[:, 0], (self.n_fft, self.hop, self.win)).transpose(1, 2).unsqueeze(1)
        for conv in self.convs:
            x = F.leaky_relu(conv(x), self.slope)
            if features is not None:
                features.append(x)
        return self.post(x).flatten(1)


class Discriminator(nn.Module):
    """All period and resolution discriminators: (batch, 1, samples) -> list of score tensors."""

    def __init__(self, config: DiscriminatorConfig = DiscriminatorConfig()):
        super().__init__()
        self.config = config
        s = config.lrelu_slope
        self.period = nn.ModuleList(PeriodDiscriminator(p, config.period_channels, s) for p in config.periods)
        self.resolution = nn.ModuleList(
            ResolutionDiscriminator(tuple(r), config.resolution_channels, s) for r in config.resolutions)

    def forward(self, wav: torch.Tensor, features: bool = False):
        """Scores of every discriminator; with `features`, (scores, their hidden maps)."""
        maps: list | None = [] if features else None
        scores = [d(wav, maps) for d in self.period] + [d(wav, maps) for d in self.resolution]
        return (scores, maps) if features else scores


def stft_magnitude(wav: torch.Tensor, resolution: STFTResolution) -> torch.Tensor:
    """|STFT| in float32: (batch, samples) -> (batch, n_fft // 2 + 1, frames), floored at 1e-7."""
    n_fft, hop, win = resolution
    window = torch.hann_window(win, device=wav.device, dtype=torch.float32)
    spec = torch.stft(wav.float(), n_fft, hop, win, window=window, center=True, return_complex=True)
    return spec.abs().clamp(min=1e-7)


def stft_loss(fake: torch.Tensor, real: torch.Tensor, resolutions) -> tuple[torch.Tensor, torch.Tensor]:
    """(spectral convergence, log-magnitude L1), each averaged over resolutions. fake, real: (batch, samples)."""
    sc, mag = 0.0, 0.0
    for r in resolutions:
        f, t = stft_magnitude(fake, tuple(r)), stft_magnitude(real, tuple(r))
        sc = sc + torch.linalg.norm(t - f) / torch.linalg.norm(t).clamp(min=1e-7)
        mag = mag + F.l1_loss(f.log(), t.log())
    return sc / len(resolutions), mag / len(resolutions)


def generator_adversarial_loss(fake_scores: list[torch.Tensor]) -> torch.Tensor:
    return sum(((1 - s.float()) ** 2).mean() for s in fake_scores) / len(fake_scores)


def discriminator_loss(real_scores: list[torch.Tensor], fake_scores: list[torch.Tensor]) -> torch.Tensor:
    total = 0.0
    for r, f in zip(real_scores, fake_scores):
        total = total + ((1 - r.float()) ** 2).mean() + (f.float() ** 2).mean()
    return total / len(real_scores)


def feature_matching_loss(real_maps: list[torch.Tensor], fake_maps: list[torch.Tensor]) -> torch.Tensor:
    """Mean L1 distance between the discriminators' hidden maps of real (held fixed) and fake audio."""
    return sum((r.detach().float() - f.float()).abs().mean() for r, f in zip(real_maps, fake_maps)) / len(real_maps)
