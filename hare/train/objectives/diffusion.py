"""The diffusion decoder objective: epsilon MSE + the learned-variance VLB term on VQ-VAE codes or a frozen GPT's
latents, conditioning dropped at random for conditioning-free guidance; optional auxiliary mel loss, shallow
training and speaker augmentation.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hare.audio import MEL_FORMATS
from hare.models.configs import DiffusionConfig
from hare.train import TrainingError
from hare.train.data import AR_RATE, CODE_SAMPLES, random_crop
from hare.train.objectives.base import Objective, as_long
from hare.train.objectives.gpt import (ar_conditioning_clips, frozen_gpt_latents, load_frozen_gpt,
                                       other_speaker_utterance)

log = logging.getLogger(__name__)

DIFFUSION_FRAMES_PER_CODE = MEL_FORMATS["univnet"].frames_per_code  # 4.3537... (Tortoise's 24 kHz mel)


@dataclass(frozen=True)
class DiffusionOptions:
    max_codes: int = 220  # speech codes per training window (~10 s); the target mel follows at 4.35 frames/code
    cond_frames: int = 401  # 24 kHz mel frames of the voice clip (~4.27 s, as Tortoise's inference)
    cond_from: str = "speaker"  # "speaker": another utterance of the same speaker; "self": the target clip
    vlb_weight: float = 1.0
    aux_mel_weight: float = 0.0  # MSE of `mel_head` on the aligned conditioning (0 = off)
    trained_steps: int = 4000
    # train the denoiser only on the first fraction of the schedule (t < fraction * trained_steps): for a model
    # sampled with shallow diffusion (`diffusion_start` <= this fraction), all capacity goes to the steps it runs
    max_t_fraction: float = 1.0
    min_seconds: float = 0.5
    # a trained GPT (Hare safetensors): the decoder trains on its latents (model.conditioning_input "latents",
    # Tortoise's) instead of the codes. Frozen, it turns each utterance's text and true codes into latents
    # exactly as the pipeline does at inference (teacher forcing; voice latent from `gpt_cond_clips` other
    # clips of the speaker). Unset: the decoder trains on the codes whatever conditioning_input says.
    gpt: str | None = None
    gpt_cond_clips: int = 2
    gpt_cond_frames: int = 517
    # with this probability the GPT's voice clips come from another speaker of the corpus: the latents then carry
    # a wrong voice, which the decoder learns to overrule with its own voice clip (cloning a new voice, the GPT
    # maps it to a training voice's latents)
    gpt_cond_other_speaker: float = 0.0
    # speaker augmentation: with probability `speaker_warp_prob` an example's target mel and its voice clip
    # are both frequency-warped by one factor drawn log-uniformly from `speaker_warp` ([low, high], e.g.
    # [0.85, 1.3]): a new "speaker" whose timbre only the voice clip tells (the GPT's inputs stay as recorded),
    # so the decoder learns to take the timbre from the clip rather than from a few training voices.
    speaker_warp: tuple[float, float] | None = None
    speaker_warp_prob: float = 0.5
    # with `speaker_pitch` ([low, high]) an augmented example's pitch gets its own factor, drawn the same way,
    # and the `speaker_warp` factor moves only the spectral envelope (formants): `audio.warp_mel_source_filter`.
    # Voices differ in pitch far more than in formants (a woman's ~1.7x a man's, her formants ~1.15x), which one
    # factor for both cannot make.
    speaker_pitch: tuple[float, float] | None = None

    def __post_init__(self):
        for name in ("speaker_warp", "speaker_pitch"):
            w = getattr(self, name)
            if w is None:
                continue
            if (not isinstance(w, (list, tuple)) or len(w) != 2
                    or not all(isinstance(x, (int, float)) and x > 0 for x in w) or w[0] > w[1]):
                raise TrainingError(f"options.{name} must be [low, high] with 0 < low <= high (got {w!r})")
            object.__setattr__(self, name, (float(w[0]), float(w[1])))
        if self.speaker_pitch is not None and self.speaker_warp is None:
            raise TrainingError("options.speaker_pitch needs options.speaker_warp (the formant range; [1, 1] for "
                                "pitch alone)")
        if not 0 <= self.speaker_warp_prob <= 1:
            raise TrainingError(f"options.speaker_warp_prob must be in [0, 1] (got {self.speaker_warp_prob})")
        if not 0 <= self.gpt_cond_other_speaker <= 1:
            raise TrainingError(f"options.gpt_cond_other_speaker must be in [0, 1] (got {self.gpt_cond_other_speaker})")


class DiffusionObjective(Objective):
    name, kind = "diffusion", "diffusion_decoder"
    config_class, options_class = DiffusionConfig, DiffusionOptions
    default_ema = 0.999
    find_unused_parameters = True  # one of the two conditioning paths (codes, GPT latents) is idle

    def __init__(self, config=None, options=None):
        super().__init__(config, options)
        if self.options.cond_from not in ("speaker", "self"):
            raise TrainingError(f"options.cond_from must be 'speaker' or 'self', not {self.options.cond_from!r}")
        if not 0 < self.options.max_t_fraction <= 1:
            raise TrainingError(f"options.max_t_fraction must be in (0, 1] (got {self.options.max_t_fraction})")
        from hare import audio

        try:
            self.mel_format = audio.mel_format(self.config.mel_format)
        except ValueError as exc:
            raise TrainingError(f"model.mel_format: {exc}") from None
        if self.config.in_channels != self.mel_format.n_mels:
            raise TrainingError(f"model.in_channels must be {self.mel_format.n_mels} for mel_format "
                                f"{self.mel_format.name!r} (got {self.config.in_channels})")
        if self.config.conditioning_input not in ("latents", "codes"):
            raise TrainingError("model.conditioning_input must be 'latents' or 'codes'")
        self._check_input()
        if self.config.conditioning_input == "latents" and not self.on_latents:
            log.warning("diffusion: model.conditioning_input is 'latents' but options.gpt is not set, so this "
                        "run trains on VQ-VAE codes; the latent path stays untrained until a fine-tune with "
                        "options.gpt (Tortoise's second stage)")
        self._gpt = None
        # the target mel feature in the cache
        self.mel_feature = "diff_mel" if self.mel_format.name == "univnet" else "hifi_mel"

    @property
    def on_latents(self) -> bool:
        """Trains on a frozen GPT's latents (options.gpt) instead of the codes."""
        return bool(self.options.gpt)

    def _check_input(self) -> None:
        # (again in `limits`: a run started from other weights replaces the config)
        if self.on_latents and self.config.conditioning_input != "latents":
            raise TrainingError("options.gpt trains the decoder on GPT latents: model.conditioning_input must be "
                                f"'latents' (got {self.config.conditioning_input!r})")

    @property
    def features(self) -> tuple[str, ...]:
        return (self.mel_feature, "codes") + (("ar_mel",) if self.on_latents else ())

    def __getstate__(self):  # data-loader workers never run the GPT
        state = super().__getstate__()
        state["_gpt"] = None
        return state

    def gpt(self, device=None):
        """The frozen GPT of `options.gpt` (loaded once, eval mode, no gradients)."""
        if self._gpt is None:
            self._gpt = load_frozen_gpt(self.options.gpt, self.config.latent_channels, "model.latent_channels")
        if device is not None:
            self._gpt = self._gpt.to(device)
        return self._gpt

    def text_tokenizer_name(self) -> str:
        return self.gpt().config.text_tokenizer if self.on_latents else "bpe"

    def gpt_latents(self, batch) -> torch.Tensor:
        """(batch, max_codes, latent_channels) GPT latents of each row's window, zero past its end."""
        return frozen_gpt_latents(self.gpt(batch["codes"].device), batch, self.options.max_codes)[0]

    @property
    def frames(self) -> int:
        return int(self.options.max_codes * self.mel_format.frames_per_code)

    def limits(self):
        limits = {**super().limits(), "min_seconds": self.options.min_seconds}
        self._check_input()
        if self.on_latents:  # the GPT reads the text and the whole utterance
            c = self.gpt().config
            limits.update(needs_text=True, max_text_tokens=c.max_text_tokens,
                          max_seconds=(c.max_mel_tokens - 1) * CODE_SAMPLES / AR_RATE)
        return limits

    def example(self, corpus, index, rng):
        from hare import audio

        name, per_code = self.mel_feature, self.mel_format.frames_per_code
        feats = corpus.features(index, ("codes", name))
        all_codes, mel = feats["codes"].long(), feats[name].float()
        n, window, frames = all_codes.shape[0], self.options.max_codes, self.frames
        start = rng.randint(0, n - window) if n > window else 0
        codes = all_codes[start:start + window]
        f0 = int(start * per_code)
        valid = max(0, min(frames, int(codes.shape[0] * per_code), mel.shape[-1] - f0))
        target = mel[:, f0:f0 + valid]
        pad_code = self.config.num_codes - 1
        cond_index = index
        if self.options.cond_from == "speaker":
            cond_index = rng.choice(corpus.same_speaker(index) or [index])
        cond_mel = (mel if cond_index == index else corpus.features(cond_index, (name,))[name].float())
        warp, pitch = self.options.speaker_warp, self.options.speaker_pitch
        if warp is not None and rng.random() < self.options.speaker_warp_prob:
            factor = math.exp(rng.uniform(math.log(warp[0]), math.log(warp[1])))
            if pitch is None:
                target = audio.warp_mel_frequencies(target, factor, self.mel_format)
                cond_mel = audio.warp_mel_frequencies(cond_mel, factor, self.mel_format)
            else:
                p = math.exp(rng.uniform(math.log(pitch[0]), math.log(pitch[1])))
                target = audio.warp_mel_source_filter(target, p, factor, self.mel_format)
                cond_mel = audio.warp_mel_source_filter(cond_mel, p, factor, self.mel_format)
        example = {
            "codes": F.pad(codes, (0, window - codes.shape[0]), value=pad_code),
            "mel": F.pad(audio.normalize_mel(target), (0, frames - valid), value=-1.0),
            "frames": valid,
            "cond": random_crop(cond_mel, self.options.cond_frames, rng, pad_value=audio.TACOTRON_MEL_MIN),
        }
        if self.on_latents:  # what the pipeline gives the GPT: the text + its stop token, the codes so far
            text = self.tokenizer.encode(corpus.utterances[index].text) + [self.tokenizer.stop_token]
            voice_index = index
            if self.options.gpt_cond_other_speaker > 0 and rng.random() < self.options.gpt_cond_other_speaker:
                voice_index = other_speaker_utterance(corpus, index, rng)
            clips = ar_conditioning_clips(corpus, voice_index, rng, self.options.gpt_cond_clips,
                                          self.options.gpt_cond_frames)
            example.update(text=torch.tensor(text, dtype=torch.long), prefix=all_codes[:start + window],
                           start=start, ar_cond=clips)
        return example

    def collate(self, examples):
        frames = examples[0]["mel"].shape[-1]
        batch = {"codes": torch.stack([e["codes"] for e in examples]),
                 "mel": torch.stack([e["mel"] for e in examples]),
                 "mask": torch.arange(frames)[None] < as_long([e["frames"] for e in examples])[:, None],
                 "cond": torch.stack([e["cond"] for e in examples])}
        if self.on_latents:  # variable lengths: lists, each row runs the GPT alone
            batch.update(text=[e["text"] for e in examples], prefix=[e["prefix"] for e in examples],
                         start=as_long([e["start"] for e in examples]),
                         ar_cond=torch.stack([e["ar_cond"] for e in examples]))
        return batch

    def loss(self, phase, models, batch, step, scratch):
        from hare.schedulers import q_sample, vlb_term

        model = models["model"]
        x0 = batch["mel"]  # (batch, mels, frames) in [-1, 1]
        b, c, frames = x0.shape
        top = max(1, round(self.options.max_t_fraction * self.options.trained_steps))
        t = torch.randint(0, top, (b,), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = q_sample(x0, t, noise, self.options.trained_steps)
        cond_latent = model.conditioning_latent(batch["cond"])
        drop = model.random_drop_mask(b, x0.device)
        source = self.gpt_latents(batch) if self.on_latents else batch["codes"]
        aligned = model.aligned_conditioning(source, cond_latent, frames, drop_mask=drop)
        out = model(x_t, t, aligned).float()  # (batch, 200, frames) [eps | v]
        mask = batch["mask"][:, None].to(out.dtype)
        denom = mask.sum().clamp(min=1) * c
        mse = (((out[:, :c] - noise) ** 2) * mask).sum() / denom
        vlb = vlb_term(out, x0.float(), x_t.float(), t, self.options.trained_steps, mask=batch["mask"]).mean()
        losses = {"loss": mse + self.options.vlb_weight * vlb, "mse": mse.detach(), "vlb": vlb.detach()}
        if self.options.aux_mel_weight > 0:
            # rows trained unconditioned predict nothing (the reference zeroes them)
            aux = (((model.predict_mel(aligned, drop).float() - x0) ** 2) * mask).sum() / denom
            losses["loss"] = losses["loss"] + self.options.aux_mel_weight * aux
            losses["aux_mel"] = aux.detach()
        return losses
