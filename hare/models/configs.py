"""Hyperparameters of every network, one frozen dataclass each, with the official Tortoise v2 sizes.

Each network's section is owned by its model file; the converter (`hare.convert`) builds these from the
reference constructor arguments.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPTConfig:
    """The autoregressive text+speech decoder (Tortoise's UnifiedVoice)."""

    layers: int = 30
    dim: int = 1024
    heads: int = 16
    max_mel_tokens: int = 604
    max_text_tokens: int = 402
    max_conditioning_inputs: int = 2
    text_vocab: int = 255  # BPE ids; the start-of-text token is `text_vocab` itself
    start_text_token: int = 255
    stop_text_token: int = 0
    mel_vocab: int = 8194  # 8192 codes + start + stop
    start_mel_token: int = 8192
    stop_mel_token: int = 8193
    mel_length_compression: int = 1024  # audio samples (22.05 kHz) per speech code
    n_mels: int = 80
    cond_attn_blocks: int = 6
    layer_norm_eps: float = 1e-5
    dropout: float = 0.1  # GPT-2's attention/residual dropout while training
    # what the VQ-VAE the codes come from emits for silence and for a zero-padded tail (the official dvae's
    # values; a model trained on another VQ-VAE records its own, see `hare.mini.silence_codes`)
    calm_code: int = 83
    tail_codes: tuple[int, ...] = (45, 45, 248)
    # (block, head) pairs whose attention from speech to text was trained to follow the diagonal (the guided
    # attention loss): the reranker can read how well a candidate follows its text there
    # (`GPT.score_candidates`, `Settings.alignment_weight`). Empty for models trained without it (the official).
    alignment_heads: tuple[tuple[int, int], ...] = ()
    # the text front end the GPT reads (`hare.text.tokenizer_for`): "bpe", the official tokenizer (text_vocab
    # 255), or "phonemes-en", English phonemes (`hare.phonemes`, text_vocab its VOCAB_SIZE)
    text_tokenizer: str = "bpe"

    @property
    def text_positions(self) -> int:
        return self.max_text_tokens + 2

    @property
    def mel_positions(self) -> int:
        return self.max_mel_tokens + 2 + self.max_conditioning_inputs


@dataclass(frozen=True)
class CLVPConfig:
    """Contrastive text/speech model (Tortoise's CLVP v2)."""

    text_dim: int = 768
    speech_dim: int = 768
    latent_dim: int = 768
    text_vocab: int = 256
    speech_vocab: int = 8192
    text_depth: int = 20
    speech_depth: int = 20
    text_heads: int = 12
    speech_heads: int = 12
    dim_head: int = 64
    ff_mult: int = 2
    text_seq_len: int = 350
    speech_seq_len: int = 430
    # A Hare extension (0: none, as every official CLVP): a CTC head on the speech encoder that reads the letters
    # (`hare.text.CTC_ALPHABET`, so 1 + 28 classes) off the codes, `ctc_upsample` outputs per code (a speech code
    # is ~46 ms, a letter often shorter). Its score tells the reranker whether a candidate says every word.
    ctc_classes: int = 0
    ctc_upsample: int = 2


@dataclass(frozen=True)
class CVVPConfig:
    """Contrastive voice/speech model (Tortoise's CVVP)."""

    dim: int = 512
    heads: int = 8
    speech_vocab: int = 8192
    cond_depth: int = 8
    speech_depth: int = 8
    n_mels: int = 80
    ff_mult: int = 1


@dataclass(frozen=True)
class DiffusionConfig:
    """The diffusion decoder (Tortoise's DiffusionTts)."""

    channels: int = 1024
    layers: int = 10
    in_channels: int = 100
    out_channels: int = 200
    latent_channels: int = 1024
    num_codes: int = 8193
    heads: int = 16
    dropout: float = 0.0
    unconditioned_percentage: float = 0.0  # training-time conditioning dropout (for cond-free guidance)
    layer_drop: float = 0.0  # training-time probability of skipping a trunk block (never the first or last)
    mel_format: str = "univnet"  # what it produces: "univnet" (100 bands, 24 kHz) or "hifigan" (80, 22.05 kHz)
    conditioning_input: str = "latents"  # what inference feeds it: the GPT's "latents" or the speech "codes"
    prior_layers: int = 0  # residual conv blocks in the auxiliary mel head (`predict_mel`) before its last conv


@dataclass(frozen=True)
class VocoderConfig:
    """The UniVNet generator (c32 configuration by default)."""

    noise_dim: int = 64
    channels: int = 32
    dilations: tuple[int, ...] = (1, 3, 9, 27)
    strides: tuple[int, ...] = (8, 8, 4)
    lrelu_slope: float = 0.2
    kpnet_conv_size: int = 3
    kpnet_hidden: int = 64
    hop_length: int = 256
    n_mels: int = 100


@dataclass(frozen=True)
class RLGConfig:
    """Random latent generator: Gaussian noise -> a conditioning latent."""

    dim: int = 1024
    layers: int = 5
    lr_mul: float = 0.1


@dataclass(frozen=True)
class VQVAEConfig:
    """Discrete VAE over 80-band mels (training only: turns mels into speech codes)."""

    n_mels: int = 80
    num_codes: int = 8192
    hidden: int = 512
    codebook_dim: int = 512
    resblocks: int = 3
    layers: int = 2  # each layer halves the time axis: 2 layers = 4x compression
    commitment: float = 0.25
    ema_decay: float = 0.99
    ema_eps: float = 1e-5  # Laplace smoothing of the EMA cluster sizes
    restart_after: int = 100  # restart a code unused for this many training steps (0: never)


@dataclass(frozen=True)
class HiFiGANConfig:
    """HiFi-GAN V1 generator (Kong et al. 2020): 80-band 22.05 kHz log-mel -> waveform. Hare-mini's vocoder,
    imported from the MIT-licensed "universal" weights (see `hare.convert.hifigan`)."""

    n_mels: int = 80
    initial_channels: int = 512
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2)
    upsample_kernels: tuple[int, ...] = (16, 16, 4, 4)
    resblock_kernels: tuple[int, ...] = (3, 7, 11)
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    sample_rate: int = 22050
    cond_channels: int = 0  # > 0: a global conditioning vector added after the input convolution (1x1 conv)


@dataclass(frozen=True)
class HifiDecoderConfig:
    """Tortoise v3's HiFi-GAN latent decoder (`api_fast`, `hifidecoder.pth`): the GPT's per-code latents,
    linearly resampled to the 24 kHz hop (x`code_upsample`, then x`rate_ratio`), through a HiFi-GAN V1
    generator conditioned on the voice's AR conditioning latent, straight to waveform. Official sizes by
    default (17.8 M parameters)."""

    latent_dim: int = 1024
    cond_dim: int = 1024
    initial_channels: int = 512
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2)
    upsample_kernels: tuple[int, ...] = (16, 16, 4, 4)
    resblock_kernels: tuple[int, ...] = (3, 7, 11)
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    sample_rate: int = 24000
    code_upsample: float = 1024 / 256  # a code covers 1024 samples at 22.05 kHz; the mel hop is 256
    rate_ratio: float = 24000 / 22050  # the codes' 22.05 kHz frame rate to the output's 24 kHz one

    def generator(self) -> HiFiGANConfig:
        return HiFiGANConfig(n_mels=self.latent_dim, initial_channels=self.initial_channels,
                             upsample_rates=self.upsample_rates, upsample_kernels=self.upsample_kernels,
                             resblock_kernels=self.resblock_kernels, resblock_dilations=self.resblock_dilations,
                             sample_rate=self.sample_rate, cond_channels=self.cond_dim)


@dataclass(frozen=True)
class SpellerConfig:
    """A letter recogniser over speech codes (a Hare network, not in Tortoise): reads the letters of what a
    candidate says (`hare.text.CTC_ALPHABET` and CTC's blank) so the reranker can check that it says every
    word of the text (`Settings.ctc_weight`). Two convolutions over the code embeddings, then the CLVP's
    encoder (pre-RMSNorm, rotary positions, gated feed-forwards), then `upsample` letter outputs per code
    (a code is ~46 ms, a letter often shorter)."""

    speech_vocab: int = 8192
    dim: int = 192
    depth: int = 4
    heads: int = 3  # of 64 channels each
    ff_mult: int = 3
    conv_kernel: int = 5
    classes: int = 29
    upsample: int = 2


@dataclass(frozen=True)
class ListenerConfig:
    """A letter recogniser over mels (a Hare network, not in Tortoise): reads the letters (`hare.text.CTC_ALPHABET`
    and CTC's blank) off a candidate's decoded mel, so that the reranker can judge candidates by what the
    listener will hear (`Settings.listen_candidates`), not only by their codes as the speller does. A strided
    convolution front end (`stride` mel frames per step; a frame is ~11.6 ms at 22.05 kHz, hop 256), a second
    convolution, then the CLVP's encoder and one letter output per step."""

    n_mels: int = 80
    dim: int = 192
    depth: int = 4
    heads: int = 3  # of 64 channels each
    ff_mult: int = 3
    conv_kernel: int = 5
    stride: int = 2
    classes: int = 29


@dataclass(frozen=True)
class ClassifierConfig:
    """Tortoise v3's provenance classifier ("is this from Tortoise?", `classifier.pth`): a 1-D convolutional
    encoder over the raw 24 kHz waveform (`depth` stages of `res_blocks` residual blocks, each stage ending in
    a strided convolution that doubles the width), a 1x1 projection to `dim`, `attn_blocks` self-attention
    blocks, and a linear head on the first frame. Official sizes by default (15.2 M parameters)."""

    classes: int = 2  # class 0: made by Tortoise
    in_channels: int = 1
    dim: int = 512
    base_channels: int = 32
    depth: int = 5
    res_blocks: int = 2
    downsample: int = 4  # the stride of each stage's downsampling convolution
    attn_blocks: int = 4
    heads: int = 4
    kernel_size: int = 5  # of the residual blocks' convolutions: 3 or 5
    dropout: float = 0.0
    sample_rate: int = 24000
    max_samples: int = 220000  # the reference judges the first 220 000 samples (~9.2 s) of a clip
