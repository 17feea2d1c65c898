"""UniVNet generator (the "c32" vocoder Tortoise ships): 100-band 24 kHz log-mel -> waveform.

Noise is upsampled by transposed convolutions; at each resolution a kernel predictor reads the mel and
emits, per mel frame, the kernels of a location-variable convolution (LVC) applied after each dilated conv,
with a gated update x += sigmoid(a) * tanh(b).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hare import kernels
from hare.kernels.reference import check_lvc_length, location_variable_conv_reference
from hare.models.configs import VocoderConfig

SILENCE_LOG_MEL = -11.5129  # ln(1e-5): the padding value the reference appends before vocoding
PAD_FRAMES = 10


class KernelPredictor(nn.Module):
    """Mel frames -> per-frame LVC kernels and biases for every conv layer of one block."""

    def __init__(self, config: VocoderConfig, channels: int, layers: int):
        super().__init__()
        hidden, k = config.kpnet_hidden, config.kpnet_conv_size
        self.channels, self.layers, self.kernel_size = channels, layers, 3
        self.slope = config.lrelu_slope
        self.inp = nn.Conv1d(config.n_mels, hidden, 5, padding=2)
        self.residual = nn.ModuleList(
            nn.ModuleList([nn.Conv1d(hidden, hidden, k, padding=(k - 1) // 2),
                           nn.Conv1d(hidden, hidden, k, padding=(k - 1) // 2)])
            for _ in range(3)
        )
        self.dropout = nn.Dropout(0.0)
        self.kernel = nn.Conv1d(hidden, channels * 2 * channels * self.kernel_size * layers, k, padding=(k - 1) // 2)
        self.bias = nn.Conv1d(hidden, 2 * channels * layers, k, padding=(k - 1) // 2)

    def forward(self, mel: torch.Tensor):
        # mel: (batch, n_mels, frames) -> kernels (batch, layers, in, out, 3, frames), biases (batch, layers, out, frames)
        b, _, frames = mel.shape
        h = F.leaky_relu(self.inp(mel), self.slope)
        for conv1, conv2 in self.residual:
            r = F.leaky_relu(conv1(self.dropout(h)), self.slope)
            h = h + F.leaky_relu(conv2(r), self.slope)
        kernels = self.kernel(h).view(b, self.layers, self.channels, 2 * self.channels, self.kernel_size, frames)
        biases = self.bias(h).view(b, self.layers, 2 * self.channels, frames)
        return kernels, biases


def location_variable_conv(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor, hop: int) -> torch.Tensor:
    """Convolve each `hop`-sample segment of x with its own kernel (size 3, padding 1).

    x: (batch, in, frames*hop); kernel: (batch, in, out, 3, frames); bias: (batch, out, frames)
    -> (batch, out, frames*hop). Float32 CPU inference runs Hare's compiled kernel when it is available
    (`hare.kernels.location_variable_conv`: no unfolded copy of x); otherwise, as the reference, an einsum.
    """
    inference = not kernels.autograd_records(x, kernel, bias)
    cpu32 = all(t.device.type == "cpu" and t.dtype == torch.float32 for t in (x, kernel, bias))
    op = kernels.location_variable_conv() if inference and cpu32 and kernel.shape[3] == 3 else None
    if op is None:
        return location_variable_conv_reference(x, kernel, bias, hop)
    check_lvc_length(x, kernel, hop)
    return op(x, kernel, bias, hop)


class LVCBlock(nn.Module):
    def __init__(self, config: VocoderConfig, stride: int, cond_hop: int):
        super().__init__()
        c = config.channels
        self.slope = config.lrelu_slope
        self.cond_hop = cond_hop
        self.upsample = nn.ConvTranspose1d(c, c, 2 * stride, stride=stride, padding=stride // 2 + stride % 2,
                                           output_padding=stride % 2)
        self.convs = nn.ModuleList(nn.Conv1d(c, c, 3, padding=d, dilation=d) for d in config.dilations)
        self.kernel_predictor = KernelPredictor(config, c, len(config.dilations))

    def forward(self, x: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        # x: (batch, channels, length) -> (batch, channels, length * stride); mel: (batch, n_mels, frames)
        c = x.shape[1]
        x = self.upsample(F.leaky_relu(x, self.slope))
        kernels, biases = self.kernel_predictor(mel)
        for i, conv in enumerate(self.convs):
            h = F.leaky_relu(conv(F.leaky_relu(x, self.slope)), self.slope)
            h = location_variable_conv(h, kernels[:, i], biases[:, i], self.cond_hop)
            x = x + torch.sigmoid(h[:, :c]) * torch.tanh(h[:, c:])
        return x


class UnivNet(nn.Module):
    def __init__(self, config: VocoderConfig):
        super().__init__()
        self.config = config
        blocks, hop = [], 1
        for stride in config.strides:
            hop *= stride
            blocks.append(LVCBlock(config, stride, hop))
        self.blocks = nn.ModuleList(blocks)
        self.conv_pre = nn.Conv1d(config.noise_dim, config.channels, 7, padding=3, padding_mode="reflect")
        self.conv_post = nn.Conv1d(config.channels, 1, 7, padding=3, padding_mode="reflect")

    def forward(self, mel: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        # mel: (batch, n_mels, frames), noise: (batch, noise_dim, frames) -> (batch, 1, frames * hop)
        x = self.conv_pre(noise)
        for block in self.blocks:
            x = block(x, mel)
        return torch.tanh(self.conv_post(F.leaky_relu(x, self.config.lrelu_slope)))

    def vocode(self, mel: torch.Tensor, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Waveform in [-1, 1] for a log-mel: (batch, n_mels, frames) -> (batch, frames * hop).

        As the reference: 10 frames of silence are appended (and their audio dropped) so the end is clean;
        `noise`, if given, covers the padded length: (batch, noise_dim, frames + 10). Otherwise it is drawn
        on the generator's device, or (like the reference) from the global CPU generator, then moved.
        """
        b = mel.shape[0]
        pad = torch.full((b, mel.shape[1], PAD_FRAMES), SILENCE_LOG_MEL, dtype=mel.dtype, device=mel.device)
        mel = torch.cat([mel, pad], dim=2)
        if noise is None:
            gen_device = generator.device if generator is not None else torch.device("cpu")
            noise = torch.randn(b, self.config.noise_dim, mel.shape[2], generator=generator, device=gen_device)
        elif noise.shape != (b, self.config.noise_dim, mel.shape[2]):
            raise ValueError(f"noise must be (batch, {self.config.noise_dim}, frames + {PAD_FRAMES}) = "
                             f"{(b, self.config.noise_dim, mel.shape[2])}, got {tuple(noise.shape)}")
        wav = self(mel, noise.to(mel.device, mel.dtype))[:, 0, : -(self.config.hop_length * PAD_FRAMES)]
        return wav.clamp(-1.0, 1.0)

    def apply_weight_norm(self) -> "UnivNet":
        """Re-parametrise every conv with weight norm (as UniVNet is trained); fold back with `remove_weight_norm`."""
        from hare.models.layers import apply_weight_norm

        return apply_weight_norm(self)

    def remove_weight_norm(self) -> "UnivNet":
        from torch.nn.utils import parametrize

        for m in self.modules():
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        return self
