"""TextToSpeech: conditioning -> AR candidates -> rerank -> GPT latents -> diffusion -> vocoder."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import logging
import secrets
import sys
import time
import warnings
from typing import NamedTuple

import torch

from hare.audio import AR_SAMPLE_RATE as CONDITIONING_RATE  # reference clips are read at this rate
from hare.audio import VOCODER_SAMPLE_RATE as SAMPLE_RATE  # noqa: F401  the Tortoise models' output rate
from hare.devices import resolve_device
from hare.errors import (AudioError, CheckpointError, ModelNotFoundError, SettingsError, TextError, TextTooLongError,
                         VoiceError)
from hare.loading import DTYPES as LOAD_DTYPES
from hare.rerank import MAX_CALM_RUN, calm_cut, fix_candidates  # the candidates' layout (and the reranker)
from hare.settings import PRESETS, Settings, make_settings  # noqa: F401  (PRESETS: part of this module's API)

log = logging.getLogger(__name__)

# the latent cache's name for a voice's mel mean; a new name when its computation (`audio.mel_band_means`,
# `audio.speech_frame_mask`, `TextToSpeech.voice_mel_mean`) changes, so that no cache serves the old values
MEL_MEAN_KEY = "mel_mean.2"  # .2: speech frames measured from the 98th-percentile frame, not the loudest


def diffusion_frames(num_codes: int) -> int:
    """24 kHz mel frames Tortoise's diffusion decoder produces for `num_codes` speech codes."""
    from hare.audio import MEL_FORMATS

    return MEL_FORMATS["univnet"].frames_for_codes(num_codes)


# --------------------------------------------------------------------------------------------------
# The pipeline



class VoiceConditioning(NamedTuple):
    """What a voice gives a synthesis (`TextToSpeech.voice_latents`)."""

    ar: torch.Tensor  # (1, gpt dim): the GPT's voice latent
    diffusion: torch.Tensor  # (1, 2 * diffusion channels): the decoder's
    cvvp_mels: torch.Tensor | None  # (clips, 80, frames): the prompt mels the CVVP reads (None: no clips)
    mel_mean: torch.Tensor | None  # (n_mels,): the clips' long-term mean log mel, for voice_match (None: no clips)


class DecoderInput(NamedTuple):
    """The diffusion decoder's input for one candidate: its conditioning (the GPT's latents cut at the trailing
    silence, (1, codes, dim), or the codes themselves for a decoder on codes), the voice's diffusion latent and
    the number of mel frames to make."""

    latents: torch.Tensor
    diffusion_latent: torch.Tensor
    frames: int


@dataclasses.dataclass
class Speech:
    """What a synthesis returns: 24 kHz mono float audio in [-1, 1] and how it was made."""

    audio: torch.Tensor  # (samples,)
    sample_rate: int
    candidates: list[torch.Tensor]  # the k best candidates' audio (the first is `audio`)
    timings: dict[str, float]  # seconds per stage
    settings: dict
    # what the diffusion decoder read for the best candidate of each text chunk (empty for decoder="hifigan"):
    # feed one back to `TextToSpeech.diffuse` to redo that stage with other settings
    decoder_inputs: list["DecoderInput"] = dataclasses.field(default_factory=list)

    def numpy(self):
        return self.audio.detach().cpu().numpy()


class _Timer:
    def __init__(self, timings: dict[str, float], device: torch.device):
        self.timings = timings
        self.device = device

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start


class ChunkTokens(NamedTuple):
    """One chunk's text ids as the GPT reads them and as the reranker (CLVP, letter scorers) reads them."""

    gpt: list[int]
    rerank: list[int]


DTYPES = {name: getattr(torch, dtype) for name, dtype in LOAD_DTYPES.items()}  # "fp32" -> torch.float32, ...
# the most memory the sampling pass's kept latents may take (`TextToSpeech._harvests_latents`): ultra_fast's 16
# candidates of the official GPT at full length (500 codes x 1024 floats) take 31 MiB; more falls back on a
# teacher-forced pass over the picked candidates
HARVEST_BYTES = 64 << 20
STAGES = ("conditioning", "autoregressive", "rerank", "listen", "latents", "diffusion", "vocoder", "hifigan")


class TextToSpeech:
    """The whole Tortoise inference path. Build it with `hare.load_model(...)`."""

    def __init__(self, *, gpt, clvp, diffusion, vocoder, cvvp=None, rlg_auto=None, rlg_diffuser=None,
                 speller=None, hifi_decoder=None, listener=None, tokenizer=None, voices=None, model_id: str = "custom", device=None, loader=None,
                 quantize: str | None = None, dtype: str = "fp32", default_voice: str = "random",
                 default_settings: dict | None = None, pack: bool = False):
        from hare.text import Tokenizer
        from hare.voices import LatentCache, VoiceLibrary

        self.device = resolve_device(device)
        self.gpt = gpt.to(self.device).eval()
        self.clvp = clvp.to(self.device).eval()
        self.diffusion = diffusion.to(self.device).eval()
        self.vocoder = vocoder.to(self.device).eval()
        from hare import audio

        self.mel_format = audio.mel_format(getattr(diffusion.config, "mel_format", "univnet"))
        voc_mels = getattr(getattr(vocoder, "config", None), "n_mels", self.mel_format.n_mels)
        if voc_mels != self.mel_format.n_mels:
            raise CheckpointError(f"the vocoder reads {voc_mels}-band mels but the diffusion decoder makes "
                                  f"{self.mel_format.n_mels}-band {self.mel_format.name!r} mels")
        self.sample_rate = self.mel_format.sample_rate  # of the output audio
        gc = self.gpt.config
        if not all(0 <= c < gc.start_mel_token for c in (gc.calm_code, *gc.tail_codes)):
            raise CheckpointError(f"the GPT's calm/tail codes {gc.calm_code}/{gc.tail_codes} are not speech codes "
                                  f"(0..{gc.start_mel_token - 1})")
        self._optional = {"cvvp": cvvp, "rlg_auto": rlg_auto, "rlg_diffuser": rlg_diffuser, "speller": speller,
                          "hifi_decoder": hifi_decoder, "listener": listener}
        self._loader = loader  # kind -> module, for optional models loaded on first use
        self.tokenizer = tokenizer or Tokenizer()  # the official BPE: the CLVP's and the letter scorers' text
        self.gpt_tokenizer = self._gpt_tokenizer()  # what the GPT reads: the same, unless it names another
        if hasattr(self.gpt_tokenizer, "start_warm_up"):  # a phoneme front end loads while the models do
            self.gpt_tokenizer.start_warm_up()
        self.voices = voices or VoiceLibrary.default()
        self.latent_cache = LatentCache()
        self.model_id = model_id
        self.default_voice = default_voice  # used when `voice` is None
        # the model's own sampling defaults (a small model may want other values than the presets'); they
        # apply under every preset, and explicit keyword arguments win over them
        self.default_settings = dict(default_settings or {})
        make_settings("fast", **self.default_settings)  # reject unknown or invalid names now
        if dtype not in DTYPES:
            raise SettingsError(f"dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
        self.dtype = dtype
        self.quantize = quantize
        self._gpt_int8_panels = False  # the GPT's linears on Hare's int8 panels (set by _quantize)
        if quantize is not None:
            self._quantize(quantize, panels=pack)
        self.packed = pack and self._pack()
        self.vocoder_bf16 = self._vocoder_bf16()
        if self.device.type == "cpu":  # build (once per machine) or load Hare's CPU kernels now, not mid-synthesis
            from hare import kernels

            kernels.status()
        _return_freed_memory(self.device)  # what loading and packing left behind

    def _gpt_tokenizer(self):
        """The GPT's text front end (`GPTConfig.text_tokenizer`): `self.tokenizer` for a BPE GPT, else the one it
        names (a phoneme GPT), limited to the GPT's text positions; CheckpointError if its vocabulary is not
        the GPT's."""
        from hare.text import front_end_mismatch, tokenizer_for

        gc = self.gpt.config
        if gc.text_tokenizer == "bpe":
            return self.tokenizer
        tok = tokenizer_for(gc.text_tokenizer, max_tokens=gc.max_text_tokens + 2)
        problem = front_end_mismatch(gc, tok)
        if problem:
            raise CheckpointError(f"the GPT's text vocabulary does not fit its front end: {problem}")
        return tok

    def _vocoder_bf16(self) -> bool:
        """With dtype="bf16" on a CPU with bf16 matrix hardware (`hare.kernels.bf16_matmul`), a HiFi-GAN
        vocoder runs in bfloat16, time-major (`_bf16_time_major`). Elsewhere, and for other vocoders, it stays
        float32."""
        from hare.models.hifigan import HiFiGAN

        return isinstance(self.vocoder, HiFiGAN) and self._bf16_time_major(self.vocoder)

    def _bf16_time_major(self, generator) -> bool:
        """A HiFi-GAN generator's weights to bfloat16 in place, and it runs time-major
        (`HiFiGAN.forward_time_major`): its convolutions as matrix products on AMX / AVX-512-bf16. oneDNN's
        bf16 convolutions would compile each new input length on first use (~1.5 s); the time-major products
        have a few fixed shapes, prepared here on one frame. Only with dtype="bf16" on a CPU with bf16 matrix
        hardware (`hare.kernels.bf16_matmul`); False (nothing changed) elsewhere."""
        from hare.models.hifigan import SILENCE

        if not self._cpu_bf16():
            return False
        if not generator.time_major:
            generator.to(torch.bfloat16)
            generator.time_major = True
            cond = torch.zeros(generator.config.cond_channels, 1) if generator.cond is not None else None
            generator.forward_time_major(torch.full((generator.config.n_mels, 1), SILENCE), cond)
        return True

    def _pack(self) -> bool:
        """Packed linears and convolutions on the CPU (`hare.models.packed`), in place: the diffusion decoder
        (float32, or with `quantize="int8"` on Hare's int8 kernel where it is available), and the GPT and CLVP
        when they run float32 (after int8 quantisation, what is left in float: the attention blocks' 1x1
        convolutions). False when nothing was packed."""
        from hare import kernels
        from hare.models.packed import pack_linears, packing_available

        if self.device.type != "cpu" or not packing_available():
            return False
        int8 = (self.quantize == "int8" and kernels.panel_linear_int8() is not None
                and kernels.winograd() is not None)
        packed = pack_linears(self.diffusion, int8=int8, int8_convolutions=int8)
        if self.dtype == "fp32":
            packed += sum(pack_linears(m) for m in (self.gpt, self.clvp))
        return packed > 0

    def _quantize(self, mode: str, panels: bool = True) -> None:
        """int8 weights for the GPT's and CLVP's linear layers (CPU only; activations are quantised per call);
        the diffusion decoder's follow when it is packed (`_pack`).

        The GPT's go on Hare's int8 panels (`hare.kernels.panel_linear_int8`: one scale per output column, each
        row quantised on the fly, exact integer sums; its decode step one fused kernel call per block) where the
        kernels are available (and `panels`: the model is packed), else on PyTorch's dynamic int8 linears; the
        CLVP's (many rows, once per call) on PyTorch's, except where the int8 kernel runs on AMX tiles (there
        Hare's panels are the faster over many rows too). The modules are converted in place (no float copy is
        kept: that would cost memory).
        """
        if mode != "int8":
            raise SettingsError(f"quantize must be 'int8' (got {mode!r})")
        if self.device.type != "cpu":
            raise SettingsError("int8 dynamic quantisation runs on the CPU; on a GPU use dtype='fp16' or 'bf16'")
        from torch.ao.quantization import quantize_dynamic

        from hare import kernels
        from hare.models.packed import pack_linears

        with warnings.catch_warnings():  # torch announces the move of this API to torchao; it still works
            warnings.simplefilter("ignore")
            if panels and self.device.type == "cpu" and kernels.panel_linear_int8() is not None:
                pack_linears(self.gpt, int8=True)
                self._gpt_int8_panels = True
                if self.dtype == "bf16":  # the panels read float32: bf16 goes where it saves bytes, the KV cache
                    self.gpt.kv_cache_dtype = torch.bfloat16
            else:
                self.gpt = quantize_dynamic(self.gpt, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
            if panels and kernels.panel_int8_variants()[:1] == ["amx-int8"]:  # AMX: Hare's beat PyTorch's here too
                pack_linears(self.clvp, int8=True)
            else:
                self.clvp = quantize_dynamic(self.clvp, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)

    def _autocast(self, stage: str):
        """Reduced precision for the AR, rerank and latent stages when asked (the diffusion decoder stays fp32;
        the vocoder too, except a HiFi-GAN's on bf16 hardware, `_vocoder_bf16`).
        With int8 weights the rerank stays float32 (PyTorch's dynamic int8 CLVP layers take float32 only), and so
        do the AR and latent stages where the GPT is on Hare's int8 panels (they read float32; its KV cache is
        bfloat16 under dtype="bf16" instead)."""
        if self.dtype == "fp32" or (stage == "rerank" and self.quantize == "int8"):
            return contextlib.nullcontext()
        if stage in ("autoregressive", "latents") and self._gpt_int8_panels:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.dtype])

    # -- models loaded on demand -------------------------------------------------------------------
    def _optional_model(self, kind: str):
        model = self._optional.get(kind)
        if model is None:
            if self._loader is None:
                raise ModelNotFoundError(f"this model has no {kind} network")
            model = self._loader(kind)
            self._optional[kind] = model
        return model.to(self.device).eval()

    def hifi_decoder(self):
        """The HiFi-GAN latent decoder of `decoder="hifigan"` (loaded on first use); errors name what is missing."""
        try:
            hifi = self._optional_model("hifi_decoder")
        except ModelNotFoundError as exc:
            raise ModelNotFoundError(f"decoder='hifigan' needs the model's HiFi-GAN latent decoder "
                                     f"(hifidecoder.pth or hifi_decoder.safetensors): {exc}") from None
        gc, hc = self.gpt.config, hifi.config
        if hc.latent_dim != gc.dim or hc.cond_dim != gc.dim:
            raise CheckpointError(f"the HiFi-GAN decoder reads {hc.latent_dim}-d latents and a {hc.cond_dim}-d "
                                  f"speaker latent, but the GPT's are {gc.dim}-d")
        self._bf16_time_major(hifi.generator)  # under dtype="bf16" on bf16 hardware, as the vocoder
        return hifi

    def output_rate(self, settings: "Settings") -> int:
        """The sample rate of the audio `settings` make: the HiFi-GAN decoder's, or the vocoder's."""
        return self.hifi_decoder().sample_rate if settings.decoder == "hifigan" else self.sample_rate

    def _optional_or_none(self, kind: str):
        """The model's optional `kind` network (loaded on first use), or None if it has none."""
        if self._optional.get(kind) is False:  # looked for before
            return None
        try:
            return self._optional_model(kind)
        except ModelNotFoundError:
            self._optional[kind] = False
            return None

    def speller(self):
        """The model's speller network (`hare.models.speller`, loaded on first use), or None if it has none."""
        return self._optional_or_none("speller")

    # -- conditioning ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def conditioning_latents(self, clips: list[torch.Tensor], generator: torch.Generator | None = None):
        """(ar_latent (1, gpt dim), diffusion_latent (1, 2*diffusion channels)) from 22.05 kHz mono clips."""
        from hare import audio

        if not clips:
            raise VoiceError("no reference clips given")
        ar_mels = torch.stack([audio.ar_mel(audio.format_conditioning(c, generator=generator)) for c in clips])
        diff_mels = torch.stack([self.mel_format.conditioning_mel(c) for c in clips])
        ar = self.gpt.conditioning_latent(ar_mels.unsqueeze(0).to(self.device))
        diff = self.diffusion.conditioning_latent(diff_mels.unsqueeze(0).to(self.device))
        return ar, diff, ar_mels

    def _clips_of(self, voice) -> list[torch.Tensor]:
        from hare import audio

        clips = []
        for path in voice.clips:
            try:
                wav = audio.load_audio(path, CONDITIONING_RATE)
                audio.validate_clip(wav, CONDITIONING_RATE, name=path.name)
            except AudioError as exc:
                log.warning("skipping clip %s of voice %s: %s", path.name, voice.name, exc)
                continue
            clips.append(wav)
        if not clips:
            raise VoiceError(f"voice {voice.name!r} has no usable audio clip ({len(voice.clips)} unusable)")
        return clips

    def voice_mel_mean(self, clips: list[torch.Tensor]) -> torch.Tensor:
        """The long-term mean log mel (n_mels,) of 22.05 kHz clips in the decoder's mel format (`voice_match`)."""
        from hare import audio

        fmt = self.mel_format
        return audio.mel_band_means([fmt.mel(audio.resample(c, CONDITIONING_RATE, fmt.sample_rate)) for c in clips])

    def voice_latents(self, voice: str | None = None, generator: torch.Generator | None = None) -> VoiceConditioning:
        """The conditioning of a voice spec (`name`, folder, `a&b` mix, or `random`); a voice known only by its
        latents (or `random`) has no `cvvp_mels` nor `mel_mean`. A mix averages each part."""
        from hare.voices import load_latents_file

        voices = self.voices.parse(self.default_voice if voice is None else voice)
        if voices is None:  # random voice from the latent generators
            try:
                rlg_auto = self._optional_model("rlg_auto")
            except (ModelNotFoundError, CheckpointError) as exc:
                raise VoiceError(f"this model cannot make a random voice ({exc}); pick a voice from the library"
                                 + (", e.g. 'default'" if "default" in self.voices.names() else "")) from None
            ar = rlg_auto.generate(1, generator=generator)
            diff = self._optional_model("rlg_diffuser").generate(1, generator=generator)
            return VoiceConditioning(ar.to(self.device), diff.to(self.device), None, None)
        ars, diffs, mels, means = [], [], [], []
        for v in voices:
            if v.latents_file is not None and not v.clips:
                ar, diff = load_latents_file(v.latents_file)
            else:
                def compute(voice_):
                    # a fixed crop seed per voice, so that the cache holds what a fresh run would compute
                    crop = torch.Generator().manual_seed(0)
                    clips = self._clips_of(voice_)
                    a, d, m = self.conditioning_latents(clips, generator=crop)
                    return {"ar": a, "diffusion": d, "ar_mels": m, MEL_MEAN_KEY: self.voice_mel_mean(clips)}

                cached = self.latent_cache.get_or_compute(self.model_id, v, compute, keys=(MEL_MEAN_KEY,))
                ar, diff = cached["ar"], cached["diffusion"]
                mels.append(cached["ar_mels"])
                means.append(cached[MEL_MEAN_KEY])
            ars.append(ar.to(self.device))
            diffs.append(diff.to(self.device))
        ar = torch.stack(ars).mean(0)
        diff = torch.stack(diffs).mean(0)
        # a mix with a latents-only part has no whole mean to match: none rather than a part's
        mean = torch.stack(means).mean(0) if len(means) == len(voices) else None
        return VoiceConditioning(ar, diff, torch.cat(mels) if mels else None, mean)

    def voice_warp_factor(self, mel_mean: torch.Tensor) -> float:
        """The frequency warp (`voice_warp`) from the model's own voice, its default voice's long-term spectrum,
        to a voice whose clips' band means are `mel_mean` (`audio.estimate_voice_warp`): 1.0 for the default
        voice itself, and for a model without a default voice with clips."""
        from hare import audio

        native = getattr(self, "_native_mel_mean", False)
        if native is False:
            native = None
            if self.default_voice is not None and self.default_voice in self.voices.names():
                native = self.voice_latents(self.default_voice).mel_mean
            if native is None:
                log.warning("voice_warp skipped: the model has no default voice with clips to warp from")
            self._native_mel_mean = native
        if native is None:
            return 1.0
        return audio.estimate_voice_warp(native.to(mel_mean), mel_mean, self.mel_format)

    # -- synthesis ------------------------------------------------------------------------------------
    def tts(self, text: str, voice: str | None = None, preset: str = "fast", *, seed: int | None = None,
            progress: bool = False, **overrides) -> Speech:
        """Speak `text` in `voice`; returns the best candidate's audio at `self.sample_rate` (24 kHz for Tortoise)
        and the k best in `.candidates`."""
        chunks, decoder_inputs = [], []
        candidates = None
        result = None
        for result in self._chunks(text, voice, preset, seed, progress, overrides):
            chunks.append(result.audio)
            decoder_inputs += result.decoder_inputs
            candidates = [c for c in result.candidates] if candidates is None else [
                torch.cat([a, b]) for a, b in zip(candidates, result.candidates)]
        assert result is not None
        return Speech(audio=torch.cat(chunks), sample_rate=result.sample_rate, candidates=candidates,
                      timings=result.timings, settings=result.settings, decoder_inputs=decoder_inputs)

    def stream(self, text: str, voice: str | None = None, preset: str = "fast", *, seed: int | None = None,
               progress: bool = False, **overrides):
        """Yield `Speech` pieces as soon as they are ready (timings accumulate across them): one per text chunk,
        or, with `decoder="hifigan"` and one candidate, pieces of each chunk as the GPT samples its codes
        (the first after `stream_first_codes` codes, then every `stream_every_codes`)."""
        yield from self._chunks(text, voice, preset, seed, progress, overrides, streaming=True)

    def _chunks(self, text, voice, preset, seed, progress, overrides, streaming=False):
        from hare.text import split_text

        settings = make_settings(preset, **{**self.default_settings, **overrides})
        self._check_model_settings(settings)  # before sampling: a settings error should not cost minutes
        if not isinstance(text, str) or not text.strip():
            raise TextError("the text is empty: give something to say")
        pieces = split_text(text, settings.split_desired_length, settings.split_max_length)
        if not pieces:
            raise TextError("the text has nothing speakable in it")
        # raise on bad text before any heavy work; a piece too long for the GPT is split further
        token_lists = [t for p in pieces
                       for t in self._fitting_tokens(p, settings.split_desired_length, settings.split_max_length)]
        seed = int(seed) if seed is not None else secrets.randbelow(2**31)  # never touches global RNG state
        generator = torch.Generator(device="cpu").manual_seed(seed)
        timings: dict[str, float] = {}
        timer = _Timer(timings, self.device)
        voice = self.default_voice if voice is None else voice
        with timer("conditioning"):
            cond = self.voice_latents(voice, generator=generator)
        if settings.voice_match > 0 and cond.mel_mean is None:
            log.warning("voice_match %g skipped: voice %r has no clips to match (a latents-only or random voice)",
                        settings.voice_match, voice)
        info = {"preset": preset, "seed": seed, "voice": str(voice),
                "chunks": len(token_lists),
                **dataclasses.asdict(settings)}
        rate = self.output_rate(settings)  # loads the HiFi-GAN decoder now when it is asked for
        for i, tokens in enumerate(token_lists):
            if streaming and settings.decoder == "hifigan" and settings.num_candidates == 1:
                for piece in self._stream_hifigan(tokens.gpt, cond, settings, generator, timer):
                    yield Speech(audio=piece, sample_rate=rate, candidates=[piece], timings=dict(timings),
                                 settings=info)
                continue
            decoder_inputs = []
            audios = self._synthesize(tokens, cond, settings, generator, timer,
                                      progress, desc=f"chunk {i + 1}/{len(token_lists)}", record=decoder_inputs)
            yield Speech(audio=audios[0], sample_rate=rate, candidates=audios, timings=dict(timings),
                         settings=info, decoder_inputs=decoder_inputs)

    def _fitting_tokens(self, piece: str, desired: int, maximum: int) -> list["ChunkTokens"]:
        """`chunk_tokens` of a piece of the split text, or, where it has more tokens than the GPT reads, of the
        pieces `split_text` makes of it at half the lengths (down to single words)."""
        from hare.text import split_text

        try:
            return [self.chunk_tokens(piece)]
        except TextTooLongError:
            smaller = split_text(piece, max(1, desired // 2), max(1, maximum // 2))
            if maximum <= 1 or len(smaller) < 2:
                raise
            return [t for p in smaller for t in self._fitting_tokens(p, max(1, desired // 2), max(1, maximum // 2))]

    def chunk_tokens(self, text: str) -> "ChunkTokens":
        """One chunk's text as the GPT reads it (`gpt_tokenizer`) and as the reranker reads it (`tokenizer`, the
        same ids for a BPE GPT); TextError if the GPT cannot take it (TextTooLongError: more tokens than its
        text positions hold)."""
        gpt = self.gpt_tokenizer.encode(text)
        if len(gpt) > self.gpt.max_text_tokens:
            raise TextTooLongError(f"the text has {len(gpt)} tokens; this model reads at most "
                                   f"{self.gpt.max_text_tokens}: split it into shorter pieces")
        if self.gpt_tokenizer is self.tokenizer:
            return ChunkTokens(gpt, gpt)
        return ChunkTokens(gpt, self.tokenizer.encode(text, check=False))

    def _check_model_settings(self, settings: Settings) -> None:
        """The settings this model cannot honour (`Settings.validate` checks those that are wrong anywhere)."""
        if settings.alignment_weight > 0 and not self.gpt.config.alignment_heads:
            raise SettingsError("alignment_weight needs a GPT trained with guided attention (its config's "
                                "alignment_heads); this model's names none: set alignment_weight to 0")
        if settings.ctc_weight > 0 and not self.clvp.config.ctc_classes and self.speller() is None:
            raise SettingsError("ctc_weight needs a letter recogniser: a speller network (speller.safetensors "
                                "beside the model's other files) or a CLVP trained with a CTC letter head (its "
                                "config's ctc_classes); this model has neither: set ctc_weight to 0")
        if self._listens(settings) and self.listener() is None:
            raise SettingsError("listen_candidates needs a listener network (listener.safetensors beside the "
                                "model's other files); this model has none: set listen_candidates to 0")

    def reranker(self, settings: Settings):
        """The `hare.rerank.Reranker` these settings ask of this model: the CLVP's score (mixed with the CVVP's
        at `cvvp_amount`), blended with the GPT's likelihood and alignment scores (`likelihood_weight`,
        `alignment_weight`; one teacher-forced GPT pass, which needs the voice's `ar_latent`) and the letter
        score (`ctc_weight`: the model's speller if it has one, reading each candidate to its own end, else
        its CLVP's letter head, reading the fixed candidates); `min_length_ratio`'s short-candidate rule."""
        from hare import rerank as R

        self._check_model_settings(settings)
        wl, wa, wc = settings.likelihood_weight, settings.alignment_weight, settings.ctc_weight
        speller = self.speller() if wc > 0 else None
        clvp_letters = wc > 0 and speller is None
        cvvp = (lambda: self._optional_model("cvvp")) if settings.cvvp_amount > 0 else None
        base = R.ClvpScorer(self.clvp, cvvp, settings.cvvp_amount, share_states=clvp_letters)
        parts = []
        if wl > 0 or wa > 0:
            gpt_pass = R.GptPass(self.gpt, settings.ar_batch_size, alignment=wa > 0)
            parts += [(wl, R.LikelihoodScorer(gpt_pass)), (wa, R.AlignmentScorer(gpt_pass))]
        if wc > 0:
            parts.append((wc, R.SpellerScorer(speller, self.tokenizer, self._speller_dtype()) if speller is not None
                          else R.ClvpLetterScorer(self.clvp, self.tokenizer)))
        return R.Reranker(R.Layout.of(self.gpt.config), base, parts, settings.min_length_ratio)

    def _speller_dtype(self) -> torch.dtype | None:
        """bfloat16 for the speller where the rerank stage itself stays float32 only because the CLVP's weights
        are int8 (`_autocast`): dtype="bf16" with int8 weights on a CPU with bf16 matrix hardware (hare-mini's
        default there: its scores within ~0.01 of float32's per letter, ~40 % faster); else None (the stage's
        own precision)."""
        return torch.bfloat16 if self.quantize == "int8" and self._cpu_bf16() else None

    def _cpu_bf16(self) -> bool:
        """dtype="bf16" on a CPU with bf16 matrix hardware (`hare.kernels.bf16_matmul`): where the bf16 paths
        that need those units are taken (the time-major HiFi-GAN generators, the speller beside int8 weights)."""
        from hare import kernels

        return self.dtype == "bf16" and self.device.type == "cpu" and kernels.bf16_matmul()

    @torch.inference_mode()
    def rerank(self, text: torch.Tensor, codes: torch.Tensor, settings: Settings, cond_mels=None,
               ar_latent: torch.Tensor | None = None, k: int | None = None,
               gpt_text: torch.Tensor | None = None) -> torch.Tensor:
        """The `k` (default `settings.k`) best candidates, best first: (n, length) sampled codes -> (k', length)
        fixed codes, by `reranker(settings)`; candidates under `min_length_ratio` of the median length are
        never picked, so k' is k, or fewer where fewer are long enough (at least `settings.k`). `text`: the
        reranker's (BPE) text tensor; `gpt_text`: the GPT's, where it reads another front end."""
        fixed, picked = self._rerank_picks(text, codes, settings, cond_mels, ar_latent, k, gpt_text)
        return fixed[picked]

    def _rerank_picks(self, text, codes, settings: Settings, cond_mels=None, ar_latent=None, k: int | None = None,
                      gpt_text=None) -> tuple[torch.Tensor, torch.Tensor]:
        """`rerank`'s work: ((n, length) every candidate's fixed codes, (k',) the picked ones' indices, best first)."""
        reranker = self.reranker(settings)
        candidates = reranker.candidates(text, codes, ar_latent=ar_latent, cond_mels=cond_mels, gpt_text=gpt_text)
        return candidates.fixed, reranker.pick_indices(candidates, settings.k if k is None else k, min_k=settings.k)

    @torch.inference_mode()
    def rerank_scores(self, text: torch.Tensor, codes: torch.Tensor, settings: Settings, cond_mels=None,
                      ar_latent: torch.Tensor | None = None,
                      gpt_text: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Every candidate's reranking score: (n, length) sampled codes -> ((n, length) fixed codes, (n,) scores),
        before the short-candidate rule."""
        reranker = self.reranker(settings)
        candidates = reranker.candidates(text, codes, ar_latent=ar_latent, cond_mels=cond_mels, gpt_text=gpt_text)
        return candidates.fixed, reranker.scores(candidates)

    @torch.inference_mode()
    def _synthesize(self, tokens, cond: VoiceConditioning, settings: Settings, generator, timer,
                    progress: bool, desc: str, record: list | None = None) -> list[torch.Tensor]:
        from hare import audio
        from hare.sampling import sample_codes

        dev = self.device
        ar_latent, diff_latent = cond.ar, cond.diffusion
        text = self._text_tensor(tokens.gpt)
        rerank_text = text if tokens.rerank is tokens.gpt else self._text_tensor(tokens.rerank)
        gc = self.gpt.config
        needs_latents = settings.decoder == "hifigan" or self.diffusion.config.conditioning_input != "codes"
        harvest = needs_latents and self._harvests_latents(settings)
        with timer("autoregressive"), self._autocast("autoregressive"):
            codes = sample_codes(self.gpt, ar_latent, text, settings.num_candidates, settings.ar_batch_size,
                                 _sampling(settings), generator,
                                 progress=_bar(progress, f"{desc}: autoregressive", settings.num_candidates),
                                 latents=harvest)
            codes, sampled = codes if harvest else (codes, None)
            _return_freed_memory(dev)  # the KV caches
        listen = settings.num_candidates > 1 and self._listens(settings)
        if settings.num_candidates == 1:  # nothing to rank: the fix-up alone (api_fast does the same)
            picked = torch.zeros(1, dtype=torch.long, device=codes.device)
            fixed = fix_candidates(codes, gc.stop_mel_token, gc.calm_code, gc.tail_codes)
        else:  # `rerank`, keeping which candidates it picks
            with timer("rerank"), self._autocast("rerank"):
                fixed, picked = self._rerank_picks(
                    rerank_text, codes, settings, cond.cvvp_mels, ar_latent=ar_latent,
                    k=max(settings.k, settings.listen_candidates) if listen else settings.k, gpt_text=text)
        best = fixed[picked]
        if sampled is not None:  # the sampling pass's own latents, where they are those of the fixed codes
            valid = sampled.valid(codes, fixed, gc.stop_mel_token, gc.calm_code)[picked]
            keeps = torch.tensor([calm_cut(c, calm_code=gc.calm_code) for c in best], device=valid.device)
            sampled = sampled.latents[picked] if bool((keeps <= valid).all()) else None
        if settings.decoder == "hifigan":
            return self._hifigan_audio(text, best, ar_latent, settings, timer, sampled)
        if self.diffusion.config.conditioning_input == "codes":  # a decoder that reads the codes themselves
            latents = best
        else:
            latents = sampled if sampled is not None else self._picked_latents(text, best, ar_latent, settings, timer)
        if listen and len(best) > settings.k:
            with timer("listen"):
                order = self._listen(rerank_text, best, latents, diff_latent)[: settings.k]
            best, latents = best[order], latents[order]
        warp = (self.voice_warp_factor(cond.mel_mean) ** settings.voice_warp
                if settings.voice_warp > 0 and cond.mel_mean is not None else 1.0)  # one voice: one factor
        outputs = []
        for j in range(settings.k):
            decoder_input = self.decoder_input(best[j], latents[j: j + 1], diff_latent)
            if j == 0 and record is not None:
                record.append(decoder_input)
            with timer("diffusion"):
                mel = self.diffuse(decoder_input, settings, generator, progress, desc)
                _return_freed_memory(dev)
            mel = audio.denormalize_mel(mel)
            if warp != 1.0:
                mel = audio.warp_mel_frequencies(mel, warp, self.mel_format)
            if settings.voice_match > 0 and cond.mel_mean is not None:
                mel = audio.match_mel_means(mel, cond.mel_mean.to(mel.device), settings.voice_match)
            with timer("vocoder"):
                wav = self.vocoder.vocode(mel, generator=generator)
            outputs.append(wav[0].float().cpu())
        return outputs

    def listener(self):
        """The model's listener network (`hare.models.listener`, loaded on first use), or None if it has none."""
        return self._optional_or_none("listener")

    def _listens(self, settings: Settings) -> bool:
        """Whether the listener's second look runs under `settings` (`listen_candidates` > 1, the diffusion
        decoder on the GPT's latents)."""
        return (settings.listen_candidates > 1 and settings.decoder == "diffusion"
                and self.diffusion.config.conditioning_input != "codes")

    def _listen(self, text, best, latents, diff_latent) -> torch.Tensor:
        """The listener's order of the reranker's best candidates (best first): each one's GPT latents (cut at
        its trailing silence) through the diffusion decoder's mel guess, read by the listener against the
        letters of `text` (the reranker's text tensor). The reranker's order where the text has no letters."""
        from hare.rerank import text_letters

        letters = text_letters(self.tokenizer, text[0, :-1].tolist())
        if letters is None:
            return torch.arange(len(best), device=best.device)
        mels = [self.prior_mel(self.decoder_input(best[j], latents[j: j + 1], diff_latent))[0]
                for j in range(len(best))]
        scores = self.listener().score(letters, mels)
        return torch.sort(scores, descending=True, stable=True).indices.to(best.device)

    def decoder_input(self, codes: torch.Tensor, latents: torch.Tensor, diff_latent: torch.Tensor) -> DecoderInput:
        """What the diffusion decoder reads for one fixed candidate: its (1, length, width) GPT latents cut at its
        trailing silence (`calm_cut` of its (length,) codes), the voice's latent and the mel frames they span."""
        keep = calm_cut(codes, calm_code=self.gpt.config.calm_code)
        return DecoderInput(latents[:, :keep], diff_latent, self.mel_format.frames_for_codes(keep))

    @torch.inference_mode()
    def prior_mel(self, decoder_input: DecoderInput) -> torch.Tensor:
        """The diffusion decoder's own mel guess for `decoder_input` (its prior: one pass, no diffusion step), as
        the vocoder's log mel: (1, mels, frames)."""
        from hare import audio

        latents, diff_latent, frames = decoder_input
        aligned = self.diffusion.aligned_conditioning(latents, diff_latent, frames)
        return audio.denormalize_mel(self.diffusion.predict_mel(aligned).float())

    def _text_tensor(self, tokens) -> torch.Tensor:
        """A chunk's text tokens as a tensor: (1, n + 1), ending with the stop token (0 for both front ends)."""
        return torch.tensor([list(tokens) + [self.tokenizer.stop_token]], dtype=torch.long, device=self.device)

    def gpt_text(self, text: str) -> torch.Tensor:
        """`text` (one chunk) as the GPT reads it: (1, n + 1) ids of `gpt_tokenizer`, ending with its stop token."""
        return self._text_tensor(self.gpt_tokenizer.encode(text))

    def _harvests_latents(self, settings: Settings) -> bool:
        """Whether the sampling pass keeps its latents for the picked candidates' decoder, instead of a second,
        teacher-forced GPT pass over them (`_picked_latents`; the same latents to float rounding: the same
        network, weights and precision over the same codes, as the streaming path reads them): where its KV
        cache holds what the teacher-forced pass computes (not the bfloat16 cache beside int8 weights, whose
        states differ by more than rounding) and every candidate's latents fit in `HARVEST_BYTES`."""
        if self.gpt.kv_cache_dtype not in (None, self.gpt.ln_f.weight.dtype):
            return False
        width = min(settings.max_codes, self.gpt.max_codes)
        return settings.num_candidates * width * self.gpt.config.dim * 4 <= HARVEST_BYTES

    def _picked_latents(self, text, best, ar_latent, settings, timer) -> torch.Tensor:
        """The picked candidates' GPT latents, teacher-forced on their codes (float32): (k, length, width)."""
        with timer("latents"), self._autocast("latents"):
            return self.gpt.speech_latents(ar_latent.expand(len(best), -1), text.expand(len(best), -1),
                                           best).float()

    def _hifigan_audio(self, text, best, ar_latent, settings, timer, latents=None) -> list[torch.Tensor]:
        """The picked candidates' GPT latents (teacher-forced, or the sampling pass's own `latents` where given;
        cut at their trailing silence as for the diffusion decoder) through the HiFi-GAN latent decoder:
        api_fast's `tts`."""
        hifi = self.hifi_decoder()
        if latents is None:
            latents = self._picked_latents(text, best, ar_latent, settings, timer)
        outputs = []
        for j in range(settings.k):
            keep = calm_cut(best[j], calm_code=self.gpt.config.calm_code)
            with timer("hifigan"):
                outputs.append(hifi.decode(latents[j: j + 1, :keep], ar_latent)[0].cpu())
        return outputs

    @torch.inference_mode()
    def _stream_hifigan(self, tokens, cond: VoiceConditioning, settings: Settings, generator, timer):
        """One chunk, one candidate, as audio pieces while the GPT samples it: each code's latent (from the
        sampling pass itself) goes to a `HifiStream`, which decodes bounded windows. What it yields, joined,
        is `_hifigan_audio`'s output for the same codes (to float rounding): after a stop token the calm codes
        `fix_candidates` puts there are fed in, and the audio ends where `calm_cut` cuts."""
        from hare.sampling import Stepper

        hifi = self.hifi_decoder()
        gc = self.gpt.config
        stream = hifi.stream(cond.ar, settings.stream_first_codes, settings.stream_every_codes)
        calm = torch.full((1,), gc.calm_code, dtype=torch.long, device=self.device)
        with timer("autoregressive"), self._autocast("autoregressive"):
            stepper = Stepper(self.gpt, cond.ar, self._text_tensor(tokens), 1, _sampling(settings), generator,
                              latents=True)
        stopped, run = False, 0
        while not stepper.full:
            with timer("autoregressive"), self._autocast("autoregressive"):
                code, latent = stepper.force(calm) if stopped else stepper.step()
            if not stopped and int(code[0]) == gc.stop_mel_token:  # from here on fix_candidates says calm
                stopped = True
                stepper.amend(calm)
            run = run + 1 if stopped or int(code[0]) == gc.calm_code else 0
            if run > MAX_CALM_RUN:  # calm_cut's rule
                break
            with timer("hifigan"):
                piece = stream.push(latent[:, None].float())
            if piece.numel():
                yield piece.cpu()
        with timer("hifigan"):
            piece = stream.finish()
        if piece.numel():
            yield piece.cpu()

    @torch.inference_mode()
    def diffuse(self, decoder_input: DecoderInput, settings: Settings, generator: torch.Generator | None = None,
                progress: bool = False, desc: str = "") -> torch.Tensor:
        """The diffusion stage alone: a candidate's `DecoderInput` -> its normalised mel (1, mels, frames), by
        the settings' sampler, steps, guidance and shallow-diffusion start."""
        from hare import schedulers

        latents, diff_latent, frames = decoder_input
        aligned = self.diffusion.aligned_conditioning(latents, diff_latent, frames)
        shape = (1, self.diffusion.config.in_channels, frames)
        prior = self.diffusion.predict_mel(aligned).float() if settings.diffusion_start < 1 else None
        return schedulers.sample(
            self.diffusion, aligned, shape, sampler=settings.sampler, steps=settings.diffusion_steps,
            cond_free=settings.cond_free, cond_free_k=settings.cond_free_k,
            temperature=settings.diffusion_temperature, generator=generator,
            progress=_bar(progress, f"{desc}: diffusion", settings.diffusion_steps),
            start=settings.diffusion_start, prior=prior,
        )


def _sampling(settings: Settings):
    from hare.sampling import SamplingSettings

    return SamplingSettings(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k,
                            repetition_penalty=settings.repetition_penalty, length_penalty=settings.length_penalty,
                            max_codes=settings.max_codes)


def _bar(enabled: bool, desc: str, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr)


def _return_freed_memory(device: torch.device) -> None:
    """Hand memory the allocator has freed back to the operating system (CPU, glibc: a few ms).

    glibc keeps freed heap memory mapped, so without this each stage's peak sits on top of what the stages
    before it left behind (the KV caches, loading's transient copies): about 600 MB at official size.
    """
    if device.type == "cpu" and (trim := _malloc_trim()) is not None:
        trim(0)


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
