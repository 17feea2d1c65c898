"""The six training objectives. Each one knows how to build its network(s) from a config, which cached
features it needs, how to turn an utterance into a training example (crops, conditioning clips), how to
collate examples into a batch, and how to turn a batch into a dict of losses.

    objective = make_objective("gpt", model={...GPTConfig fields...}, options={...})
    models = objective.build_models()                     # {"model": GPT}
    batch = objective.collate([objective.example(corpus, i, rng) for i in ...])
    losses = objective.loss("main", models, batch, step=0, scratch={})   # {"loss": total, ...}

- `vqvae`: mel reconstruction (MSE) + commitment; reports codebook perplexity and the fraction of codes used.
- `gpt`: text and speech-code cross-entropy (weights 0.01 and 1, as the community Tortoise recipe), the voice
  latent computed from clips of *other* utterances of the same speaker.
  Optional guided attention (`guided_weight`): a diagonal prior on some heads' attention from speech to text.
- `clvp`: symmetric contrastive loss over the batch (text <-> speech codes). Optional: codes laid out as the
  pipeline's reranker receives them (`calm_code`, `tail_codes`) and hard negatives (`hard_negatives`: damaged
  copies of each example's own codes that its text must score below the true ones) and a CTC letter head on
  the speech encoder (`ctc_weight`, a Hare extension: the reranker's check that a candidate says every word).
- `diffusion`: epsilon MSE + the learned-variance VLB term, conditioning dropped at random
  (`unconditioned_percentage`) so conditioning-free guidance works; conditioned on VQ-VAE codes, or (as
  Tortoise) on the latents a frozen GPT computes from the text and those codes (`options.gpt`).
  Optional: the auxiliary mel loss (`aux_mel_weight`, the shallow-diffusion prior) and training the denoiser
  on the start of the schedule only (`max_t_fraction`, for models sampled with shallow diffusion).
- `speller` (a Hare network): CTC over the letters of each utterance's text given its codes, the reranker's
  check that a candidate says every word (`Settings.ctc_weight`). Optional: codes laid out as the reranker
  receives them and random code noise.
- `vocoder`: UniVNet: multi-resolution STFT loss + least-squares GAN with period and resolution
  discriminators, two phases per step (generator, then discriminator). Fine-tuning from the official
  vocoder is supported (`train.init`).

Model hyperparameters are the network's dataclass in `hare.models.configs`; objective knobs (loss weights,
crop lengths) are the `*Options` dataclasses below.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from hare.audio import MEL_FORMATS
from hare.errors import TextError
from hare.models.configs import (CLVPConfig, DiffusionConfig, GPTConfig, HifiDecoderConfig, SpellerConfig,
                                 VocoderConfig, VQVAEConfig)
from hare.rerank import lay_out
from hare.text import CTC_ALPHABET, ctc_targets
from hare.train import TrainingError
from hare.train.data import AR_RATE, CODE_SAMPLES, pad_stack, random_crop

log = logging.getLogger(__name__)

DIFFUSION_FRAMES_PER_CODE = MEL_FORMATS["univnet"].frames_per_code  # 4.3537... (Tortoise's 24 kHz mel)


@dataclass(frozen=True)
class Phase:
    """One optimisation phase of a step: the models it trains and the ones it only reads (frozen)."""

    name: str
    trains: tuple[str, ...]
    reads: tuple[str, ...] = ()


def dataclass_from_dict(cls, values: Mapping[str, Any] | None, what: str):
    """Build a dataclass from a dict, refusing unknown keys; lists become tuples (the configs are frozen)."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise TrainingError(f"unknown {what} settings: {', '.join(unknown)} (known: {', '.join(fields)})")

    def freeze(v):
        return tuple(freeze(x) for x in v) if isinstance(v, list) else v

    kwargs = {name: freeze(value) for name, value in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise TrainingError(f"invalid {what} settings: {exc}") from None


def _silence_ar_mel(bands: int = 80) -> torch.Tensor:
    """The normalised AR mel of silence, per band: (bands, 1)."""
    from hare import audio

    return (math.log(1e-5) / audio.mel_norms()).reshape(bands, 1)


def _as_long(x) -> torch.Tensor:
    return torch.as_tensor(x).long()


class Objective:
    """Base class: one network (`"model"`), one phase, no EMA by default."""

    name = ""
    kind = ""  # hare.checkpoints kind of the exported network
    config_class: type = object
    options_class: type = object
    features: tuple[str, ...] = ()
    default_ema: float | None = None
    find_unused_parameters = False
    phases: tuple[Phase, ...] = (Phase("main", ("model",)),)

    def __init__(self, config=None, options=None):
        self.config = config if config is not None else self.config_class()
        self.options = options if options is not None else self.options_class()
        self._tokenizer = None

    @classmethod
    def from_dicts(cls, model: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None):
        return cls(dataclass_from_dict(cls.config_class, model, "model"),
                   dataclass_from_dict(cls.options_class, options, "options"))

    # -- building --------------------------------------------------------------------------------------
    def build_models(self) -> dict[str, nn.Module]:
        from hare import checkpoints

        return {"model": checkpoints.build(self.kind, self.config)}

    def export(self, models: Mapping[str, nn.Module]) -> tuple[nn.Module, str, Any]:
        """(module, checkpoint kind, config) to write with `hare.checkpoints.save`."""
        return models["model"], self.kind, self.config

    def main_model(self) -> str:
        return self.phases[0].trains[0]

    def fresh_parameters(self, init_config) -> tuple[str, ...]:
        """Key prefixes of parameters that `train.init` weights (of config `init_config`) may lack because this
        run's model settings add them (they start from their initial values); () = the weights must match."""
        return ()

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from hare.text import Tokenizer

            self._tokenizer = Tokenizer()
        return self._tokenizer

    def __getstate__(self):  # the tokenizer is rebuilt in each data-loader worker
        state = dict(self.__dict__)
        state["_tokenizer"] = None
        return state

    # -- data ------------------------------------------------------------------------------------------
    def limits(self) -> dict[str, Any]:
        """Validation limits: min_seconds, max_seconds, max_text_tokens (None = no limit)."""
        return {"min_seconds": 0.5, "max_seconds": None, "max_text_tokens": None, "needs_text": False}

    def example(self, corpus, index: int, rng: random.Random) -> dict:
        raise NotImplementedError

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # -- loss ------------------------------------------------------------------------------------------
    def loss(self, phase: str, models: Mapping[str, nn.Module], batch: Mapping[str, torch.Tensor], step: int,
             scratch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def eval_loss(self, models, batch) -> dict[str, torch.Tensor]:
        return self.loss(self.phases[0].name, models, batch, step=0, scratch={})

    def prepare_for_training(self, models: Mapping[str, nn.Module]) -> None:
        """Hook run after weights are loaded and before the optimisers are made."""


# ------------------------------------------------------------------------------------------------------
# VQ-VAE


@dataclass(frozen=True)
class VQVAEOptions:
    crop_frames: int = 256  # mel frames per example (a multiple of the compression)
    min_seconds: float = 1.0


class VQVAEObjective(Objective):
    name, kind = "vqvae", "vqvae"
    config_class, options_class = VQVAEConfig, VQVAEOptions
    features = ("ar_mel",)

    def limits(self):
        return {**super().limits(), "min_seconds": self.options.min_seconds}

    def example(self, corpus, index, rng):
        mel = corpus.features(index, ("ar_mel",))["ar_mel"].float()
        crop = self.options.crop_frames
        if mel.shape[-1] < crop:
            mel = torch.cat([mel, _silence_ar_mel(mel.shape[0]).expand(-1, crop - mel.shape[-1])], dim=1)
        return {"mel": random_crop(mel, crop, rng)}

    def collate(self, examples):
        return {"mel": torch.stack([e["mel"] for e in examples])}

    def loss(self, phase, models, batch, step, scratch):
        model = models["model"]
        mel = batch["mel"]  # (batch, 80, frames)
        recon, commit, codes = model(mel)
        target = mel[..., : recon.shape[-1]]
        mse = F.mse_loss(recon.float(), target.float())
        usage = type(model).codebook_usage(codes.detach(), self.config.num_codes)
        return {"loss": mse + self.config.commitment * commit.float(), "mse": mse.detach(),
                "commitment": commit.detach().float(),
                "perplexity": torch.tensor(usage["perplexity"], device=mel.device),
                "codes_used": torch.tensor(usage["used_fraction"], device=mel.device)}


# ------------------------------------------------------------------------------------------------------
# GPT


@dataclass(frozen=True)
class GPTOptions:
    text_weight: float = 0.01
    mel_weight: float = 1.0
    cond_clips: int = 2  # conditioning clips per example (voice latent = mean of their encodings)
    cond_frames: int = 517  # AR mel frames per conditioning clip (6 s at 22.05 kHz, as Tortoise)
    min_seconds: float = 0.5
    # guided attention (DC-TTS's loss, here on a decoder-only stack): the first `guided_heads` heads of each
    # block in `guided_layers`, their attention from speech positions renormalised over the text positions,
    # are penalised for mass far from the diagonal (text position / text length = speech position / speech
    # length), width `guided_sigma`. Speeds up learning the text-speech alignment; 0 = off.
    guided_weight: float = 0.0
    guided_layers: tuple[int, ...] = (1, 2)
    guided_heads: int = 2
    guided_sigma: float = 0.2


def guided_attention_loss(q: torch.Tensor, k: torch.Tensor, text_lengths: torch.Tensor,
                          code_lengths: torch.Tensor, sigma: float) -> torch.Tensor:
    """Mean off-diagonal attention mass from speech queries to text keys over the batch's real speech queries
    and the given heads (`hare.models.gpt.diagonal_attention_cost` for the arguments)."""
    from hare.models.gpt import diagonal_attention_cost

    per_query, query_ok = diagonal_attention_cost(q, k, text_lengths, code_lengths, sigma)
    mask = query_ok[:, None].to(per_query.dtype).expand_as(per_query)
    return (per_query * mask).sum() / mask.sum().clamp(min=1)


def other_speaker_utterance(corpus, index: int, rng: random.Random) -> int:
    """A random utterance of another speaker than `index`'s (`index` itself when the corpus has one speaker)."""
    speaker = corpus.utterances[index].speaker
    others = [s for s in corpus.speakers if s != speaker]
    if not others:
        return index
    return rng.choice(corpus.utterances_of(rng.choice(others)))


def ar_conditioning_clips(corpus, index: int, rng: random.Random, clips: int, frames: int) -> torch.Tensor:
    """(clips, 80, frames) random crops of the AR mels of other utterances by the same speaker (itself if alone),
    short ones padded with silence: the GPT's voice-latent input."""
    others = corpus.same_speaker(index) or [index]
    out = []
    silence = _silence_ar_mel()
    for _ in range(clips):
        mel = corpus.features(rng.choice(others), ("ar_mel",))["ar_mel"].float()
        if mel.shape[-1] < frames:
            mel = torch.cat([mel, silence.expand(mel.shape[0], frames - mel.shape[-1])], dim=1)
        out.append(random_crop(mel, frames, rng))
    return torch.stack(out)


class GPTObjective(Objective):
    name, kind = "gpt", "autoregressive"
    config_class, options_class = GPTConfig, GPTOptions
    features = ("ar_mel", "codes")

    def __init__(self, config=None, options=None):
        super().__init__(config, options)
        o = self.options
        if o.guided_weight > 0:
            bad = [i for i in o.guided_layers if not 0 <= i < self.config.layers]
            if bad or not o.guided_layers:
                raise TrainingError(f"options.guided_layers must name blocks 0..{self.config.layers - 1} "
                                    f"(got {list(o.guided_layers)})")
            if not 1 <= o.guided_heads <= self.config.heads:
                raise TrainingError(f"options.guided_heads must be in 1..{self.config.heads} (got {o.guided_heads})")
            if o.guided_sigma <= 0:
                raise TrainingError(f"options.guided_sigma must be > 0 (got {o.guided_sigma})")

    def guided_pairs(self) -> tuple[tuple[int, int], ...]:
        """The (block, head) pairs the guided-attention loss shapes; () when it is off."""
        o = self.options
        if o.guided_weight <= 0:
            return ()
        return tuple((layer, head) for layer in o.guided_layers for head in range(o.guided_heads))

    def export(self, models):
        """The GPT with its config; guided attention is recorded as the config's `alignment_heads` (the
        reranker's alignment score reads them), unless the model config already names some."""
        module, kind, config = super().export(models)
        if self.guided_pairs() and not config.alignment_heads:
            config = dataclasses.replace(config, alignment_heads=self.guided_pairs())
        return module, kind, config

    def limits(self):
        c = self.config
        return {**super().limits(), "min_seconds": self.options.min_seconds,
                "max_seconds": (c.max_mel_tokens - 1) * CODE_SAMPLES / AR_RATE,
                "max_text_tokens": c.max_text_tokens, "needs_text": True}

    def conditioning_clips(self, corpus, index, rng) -> torch.Tensor:
        return ar_conditioning_clips(corpus, index, rng, self.options.cond_clips, self.options.cond_frames)

    def example(self, corpus, index, rng):
        feats = corpus.features(index, ("codes", "samples22"))
        return {"text": torch.tensor(self.tokenizer.encode(corpus.utterances[index].text), dtype=torch.long),
                "codes": feats["codes"].long(), "samples22": int(feats["samples22"]),
                "cond": self.conditioning_clips(corpus, index, rng)}

    def collate(self, examples):
        c = self.config
        return {
            "text": pad_stack([e["text"] for e in examples], c.stop_text_token),
            "text_lengths": _as_long([len(e["text"]) for e in examples]),
            "codes": pad_stack([e["codes"] for e in examples], c.stop_mel_token),
            "wav_lengths": _as_long([e["samples22"] for e in examples]),
            "cond": torch.stack([e["cond"] for e in examples]),
        }

    def loss(self, phase, models, batch, step, scratch):
        model = models["model"]
        o = self.options
        layers = list(o.guided_layers) if o.guided_weight > 0 else []
        with model.recording_qk(layers):
            latent = model.conditioning_latent(batch["cond"])  # (batch, dim)
            out = model(latent, batch["text"], batch["text_lengths"], batch["codes"], batch["wav_lengths"])
        total = o.text_weight * out.loss_text.float() + o.mel_weight * out.loss_mel.float()
        losses = {"text_ce": out.loss_text.detach().float(), "mel_ce": out.loss_mel.detach().float()}
        if layers:
            text_len = out.text_logits.shape[-1]  # start + text + stop (the batch's longest)
            codes_len = out.mel_logits.shape[-1]
            t_lens = batch["text_lengths"].to(out.text_logits.device) + 2
            c_lens = (batch["wav_lengths"].to(out.text_logits.device) // model.config.mel_length_compression
                      ).clamp(max=codes_len - 2) + 2
            guided = []
            for layer in layers:
                q, k = model.speech_text_qk(layer, slice(None, o.guided_heads), text_len)
                guided.append(guided_attention_loss(q, k, t_lens, c_lens, o.guided_sigma))
            g = torch.stack(guided).mean()
            total = total + o.guided_weight * g
            losses["guided"] = g.detach()
        return {"loss": total, **losses}


# ------------------------------------------------------------------------------------------------------
# CLVP


@dataclass(frozen=True)
class CandidateLayout:
    """Options of the objectives whose networks score candidates (`as_candidate`)."""

    min_seconds: float = 0.5
    # Train on codes as the pipeline hands them to the reranker (`fix_candidates`): a run of the VQ-VAE's silence
    # code (`calm_code`, 1 to `max_calm_pad` of them, as shorter candidates are padded to the longest) and the
    # `tail_codes` after the speech, all of it seen by the encoder (no mask). None: plain masked codes.
    calm_code: int | None = None
    tail_codes: tuple[int, ...] = ()
    max_calm_pad: int = 24

    def __post_init__(self):
        if self.calm_code is not None and self.max_calm_pad < 1:
            raise ValueError(f"max_calm_pad must be >= 1 (got {self.max_calm_pad})")


@dataclass(frozen=True)
class CLVPOptions(CandidateLayout):
    # Hard negatives: each example also yields a damaged copy of its own codes (a span dropped, repeated, or
    # replaced by a span of another utterance: a GPT's usual failures), which its text must score below its
    # true codes. The text-to-speech loss then ranks every text against the batch's true and damaged codes,
    # teaching the fine-grained matching a reranker needs (candidates for one text all sound alike).
    # 0 = off; otherwise the probability that an example carries a damaged copy.
    hard_negatives: float = 0.0
    damage_span: tuple[float, float] = (0.15, 0.4)  # fraction of the codes a damage touches
    # Weight of the CTC loss of the letter head (needs the model's `ctc_classes`): the speech encoder also
    # learns to read the text's letters off the true codes (`hare.text.ctc_targets`). 0 = off.
    ctc_weight: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if self.ctc_weight < 0:
            raise ValueError(f"ctc_weight must be >= 0 (got {self.ctc_weight})")
        if not 0 <= self.hard_negatives <= 1:
            raise ValueError(f"hard_negatives must be in [0, 1] (got {self.hard_negatives})")
        lo, hi = self.damage_span
        if not 0 < lo <= hi < 1:
            raise ValueError(f"damage_span must be 0 < low <= high < 1 (got {self.damage_span})")


class CLVPObjective(Objective):
    name, kind = "clvp", "clvp2"
    config_class, options_class = CLVPConfig, CLVPOptions
    features = ("codes",)

    def limits(self):
        c = self.config
        if self.options.ctc_weight > 0 and not c.ctc_classes:
            raise TrainingError("options.ctc_weight needs a CLVP with a CTC head: set model.ctc_classes "
                                f"(the letters and the blank: {len(CTC_ALPHABET) + 1})")
        if c.ctc_classes:
            _check_letter_classes("ctc_classes", c.ctc_classes)
        return {**super().limits(), "min_seconds": self.options.min_seconds,
                "max_seconds": (c.speech_seq_len - 1) * CODE_SAMPLES / AR_RATE,
                "max_text_tokens": c.text_seq_len, "needs_text": True}

    def fresh_parameters(self, init_config):
        return ("ctc_head.",) if self.config.ctc_classes and not init_config.ctc_classes else ()

    @property
    def find_unused_parameters(self) -> bool:  # DDP: a letter head that no loss trains (ctc_weight 0) idles
        return bool(self.config.ctc_classes) and self.options.ctc_weight == 0

    def example(self, corpus, index, rng):
        o = self.options
        codes = self._codes(corpus, index)
        text = corpus.utterances[index].text
        ex = {"text": torch.tensor(self.tokenizer.encode(text), dtype=torch.long),
              "codes": self._as_candidate(codes, rng)}
        if o.ctc_weight > 0:  # a text without letters teaches the contrastive loss only
            ex["letters"] = _letters(text)
        if o.hard_negatives > 0 and rng.random() < o.hard_negatives:
            other = self._codes(corpus, rng.randrange(len(corpus))) if len(corpus) > 1 else codes
            ex["negative"] = self._as_candidate(damage_codes(codes, other, rng, o.damage_span), rng)
        return ex

    def _codes(self, corpus, index):
        return corpus.features(index, ("codes",))["codes"].long()

    def _as_candidate(self, codes, rng):
        return as_candidate(codes, self.options, self.config.speech_seq_len, rng)

    def collate(self, examples):
        texts, codes = [e["text"] for e in examples], [e["codes"] for e in examples]
        negatives = [e["negative"] for e in examples if "negative" in e]
        text = pad_stack(texts, 0)
        speech = pad_stack(codes + negatives, 0)
        lengths = _as_long([len(s) for s in codes + negatives])
        batch = {"text": text, "codes": speech[: len(codes)],
                 "text_mask": torch.arange(text.shape[1])[None] < _as_long([len(t) for t in texts])[:, None],
                 "speech_mask": torch.arange(speech.shape[1])[None] < lengths[: len(codes), None]}
        if "letters" in examples[0]:
            batch["letters"] = pad_stack([e["letters"] for e in examples], 0)
            batch["letter_lengths"] = _as_long([len(e["letters"]) for e in examples])
            batch["speech_lengths"] = lengths[: len(codes)]
        if negatives:  # the damaged copies and, for each, the row of the text it belongs to
            batch["negatives"] = speech[len(codes):]
            batch["negative_mask"] = torch.arange(speech.shape[1])[None] < lengths[len(codes):, None]
            batch["negative_of"] = _as_long([i for i, e in enumerate(examples) if "negative" in e])
        return batch

    def loss(self, phase, models, batch, step, scratch):
        model = models["model"]
        scale = model.temperature.exp().float()
        text_lat = model.text_latents(batch["text"], batch["text_mask"])
        states = model.speech_states(batch["codes"], batch["speech_mask"])
        speech_lat = model.speech_latents(batch["codes"], batch["speech_mask"], states=states)
        logits = (text_lat @ speech_lat.t()).float() * scale
        labels = torch.arange(logits.shape[0], device=logits.device)
        speech_to_text = F.cross_entropy(logits.t(), labels)
        out = {"accuracy": (logits.argmax(dim=1) == labels).float().mean().detach()}
        if "negatives" in batch:
            neg_lat = model.speech_latents(batch["negatives"], batch["negative_mask"])
            neg_logits = (text_lat @ neg_lat.t()).float() * scale  # every text against every damaged copy
            logits = torch.cat([logits, neg_logits], dim=1)
            rows = batch["negative_of"].to(logits.device)
            # how often a text scores its own true codes above its own damaged copy
            own_neg = neg_logits[rows, torch.arange(len(rows), device=logits.device)]
            out["hard_accuracy"] = (logits[rows, rows] > own_neg).float().mean().detach()
        out["loss"] = (F.cross_entropy(logits, labels) + speech_to_text) / 2
        if self.options.ctc_weight > 0:
            n_letters = batch["letter_lengths"]
            nll = model.ctc_loss(states, batch["speech_lengths"], batch["letters"], n_letters)
            out["ctc"] = (nll / n_letters.clamp(min=1)).mean()  # per letter, as F.ctc_loss's "mean"
            out["contrastive"] = out["loss"].detach()
            out["loss"] = out["loss"] + self.options.ctc_weight * out["ctc"]
        return out


def _letters(text: str) -> torch.Tensor:
    """The CTC letter classes of an utterance's text (`hare.text.ctc_targets`); empty if it has no letters."""
    try:
        return _as_long(ctc_targets(text))
    except TextError:
        return _as_long([])


def _check_letter_classes(field: str, classes: int) -> None:
    """A letter head's class count must be the letters of `hare.text.CTC_ALPHABET` and CTC's blank."""
    if classes != len(CTC_ALPHABET) + 1:
        raise TrainingError(f"model.{field} must be {len(CTC_ALPHABET) + 1} (hare.text.CTC_ALPHABET and the blank), "
                            f"got {classes}")


def as_candidate(codes: torch.Tensor, options: CandidateLayout, limit: int | None,
                 rng: random.Random) -> torch.Tensor:
    """Codes as the reranker sees them (`hare.rerank.lay_out`, as `fix_candidates` makes them): when `options.calm_code` is set, a run of 1 to
    `options.max_calm_pad` silence codes and `options.tail_codes` appended; at most `limit` codes (None: any)."""
    o, n = options, limit if limit is not None else len(codes) + options.max_calm_pad + len(options.tail_codes)
    if o.calm_code is not None:  # the speech keeps its length; the silence run shrinks to fit
        tail = len(o.tail_codes)
        pad = max(1, min(rng.randint(1, o.max_calm_pad), n - len(codes) - tail))
        codes = lay_out(codes[: n - pad - tail], o.calm_code, pad, tuple(o.tail_codes))
    return codes[:n]


def damage_codes(codes: torch.Tensor, other: torch.Tensor, rng: random.Random,
                 span: tuple[float, float] = (0.15, 0.4)) -> torch.Tensor:
    """A damaged copy of a code sequence, as an autoregressive model fails: a span (a `span` fraction of the
    length) dropped, said twice, or replaced by a span of `other` (another utterance: babble)."""
    n = len(codes)
    width = max(1, min(n - 1, round(n * rng.uniform(*span))))
    start = rng.randrange(0, n - width + 1)
    kind = rng.choice(("drop", "repeat", "replace")) if n > 1 else "replace"
    head, mid, tail = codes[:start], codes[start: start + width], codes[start + width:]
    if kind == "drop":
        return torch.cat([head, tail])
    if kind == "repeat":
        return torch.cat([head, mid, mid, tail])
    o = rng.randrange(0, max(1, len(other) - width + 1))
    babble = other[o: o + width]
    if torch.equal(babble, mid):  # the same codes (another copy of this utterance): babble in random codes
        babble = torch.randint(0, int(codes.max()) + 1, (width,), generator=torch.Generator().manual_seed(
            rng.randrange(2**31)), dtype=codes.dtype)
    return torch.cat([head, babble, tail])


# ------------------------------------------------------------------------------------------------------
# Diffusion


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


def load_frozen_gpt(path: str, width: int, field: str):
    """The GPT of a decoder objective's `options.gpt`, frozen; its width must be the decoder's `field`."""
    from hare import checkpoints

    from hare.errors import CheckpointError

    try:
        model, kind, _ = checkpoints.load(path)
    except CheckpointError as exc:  # a training-config problem here
        raise TrainingError(f"options.gpt: {exc}") from exc
    if kind != "autoregressive":
        raise TrainingError(f"options.gpt: {path} holds a {kind} model, not a GPT")
    if model.config.dim != width:
        raise TrainingError(f"{field} must be the GPT's width {model.config.dim} (got {width})")
    return model.requires_grad_(False)


def frozen_gpt_latents(gpt, batch, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """((batch, window, dim) GPT latents of each row's window, zero past its end; (batch, dim) voice latents).

    Each row runs alone (as at inference: no text padding for its codes to attend to) on its codes up to the
    window's end (`batch["prefix"]`, from `batch["start"]`), with its text and its conditioning clips
    (`batch["ar_cond"]`); the GPT is causal, so those are the latents of the whole utterance.
    """
    device = batch["ar_cond"].device
    out = torch.zeros(batch["ar_cond"].shape[0], window, gpt.config.dim, device=device)
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        voice = gpt.conditioning_latent(batch["ar_cond"].float())  # (batch, dim)
        for i, (text, codes) in enumerate(zip(batch["text"], batch["prefix"])):
            start = int(batch["start"][i])
            lat = gpt.speech_latents(voice[i:i + 1], text.to(device)[None], codes.to(device)[None])
            lat = lat[0, start:start + window].float()
            out[i, :lat.shape[0]] = lat
    return out, voice


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
                 "mask": torch.arange(frames)[None] < _as_long([e["frames"] for e in examples])[:, None],
                 "cond": torch.stack([e["cond"] for e in examples])}
        if self.on_latents:  # variable lengths: lists, each row runs the GPT alone
            batch.update(text=[e["text"] for e in examples], prefix=[e["prefix"] for e in examples],
                         start=_as_long([e["start"] for e in examples]),
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


# ------------------------------------------------------------------------------------------------------
# Vocoder


@dataclass(frozen=True)
class VocoderOptions:
    segment_frames: int = 64  # mel frames per training segment (64 x 256 = 16384 samples, UniVNet's)
    stft_weight: float = 2.5
    gan_weight: float = 1.0
    gan_start_step: int = 0  # train on the STFT loss alone before this step
    weight_norm: bool = True  # train the generator with weight norm (folded back on export)
    discriminator: Any = None  # DiscriminatorConfig fields
    min_seconds: float = 0.5

    def __post_init__(self):
        from hare.train.discriminators import DiscriminatorConfig

        d = self.discriminator
        if d is None:
            object.__setattr__(self, "discriminator", DiscriminatorConfig())
        elif isinstance(d, Mapping):
            object.__setattr__(self, "discriminator", dataclass_from_dict(DiscriminatorConfig, d, "discriminator"))


class VocoderObjective(Objective):
    name, kind = "vocoder", "vocoder"
    config_class, options_class = VocoderConfig, VocoderOptions
    features = ("wav24",)
    phases = (Phase("generator", ("generator",), ("discriminator",)), Phase("discriminator", ("discriminator",)))

    def build_models(self):
        from hare import checkpoints
        from hare.train.discriminators import Discriminator

        return {"generator": checkpoints.build(self.kind, self.config),
                "discriminator": Discriminator(self.options.discriminator)}

    def prepare_for_training(self, models):
        if self.options.weight_norm:
            models["generator"].apply_weight_norm()

    def export(self, models):
        """The generator with weight norm folded in (a fresh module; the training one is untouched)."""
        from hare import checkpoints

        gen = models["generator"]
        folded = checkpoints.build(self.kind, self.config).to(next(gen.parameters()).device)
        source = dict(gen.named_modules())
        with torch.no_grad():
            for name, module in folded.named_modules():
                for pname, p in module.named_parameters(recurse=False):
                    p.copy_(getattr(source[name], pname))  # a parametrised module computes its weight here
                for bname, b in module.named_buffers(recurse=False):
                    b.copy_(getattr(source[name], bname))
        return folded.eval(), self.kind, self.config

    def limits(self):
        return {**super().limits(), "min_seconds": self.options.min_seconds}

    def example(self, corpus, index, rng):
        wav = corpus.features(index, ("wav24",))["wav24"].float() / 32767.0
        return {"wav": random_crop(wav, self.options.segment_frames * self.config.hop_length, rng)}

    def collate(self, examples):
        return {"wav": torch.stack([e["wav"] for e in examples])}

    def loss(self, phase, models, batch, step, scratch):
        from hare import audio
        from hare.train.discriminators import discriminator_loss, generator_adversarial_loss, stft_loss

        real = batch["wav"]  # (batch, samples)
        disc = models["discriminator"]
        resolutions = self.options.discriminator.resolutions
        if phase == "generator":
            gen = models["generator"]
            frames = real.shape[-1] // self.config.hop_length
            with torch.autocast(real.device.type, enabled=False):
                mel = audio.vocoder_mel(real.float())[..., :frames]  # (batch, 100, frames)
            noise = torch.randn(real.shape[0], self.config.noise_dim, frames, device=real.device, dtype=mel.dtype)
            fake = gen(mel, noise)[:, 0]  # (batch, samples)
            sc, mag = stft_loss(fake, real, resolutions)
            losses = {"stft_sc": sc.detach(), "stft_mag": mag.detach()}
            total = self.options.stft_weight * (sc + mag)
            if step >= self.options.gan_start_step:
                adv = generator_adversarial_loss(disc(fake[:, None]))
                total = total + self.options.gan_weight * adv
                losses["adv"] = adv.detach()
            scratch["fake"] = fake.detach()
            losses["loss"] = total
            return losses
        if phase == "discriminator":
            fake = scratch.get("fake")
            if fake is None or step < self.options.gan_start_step:
                # keep every discriminator parameter in the graph (DDP) while contributing nothing
                zero = sum(p.sum() for p in disc.parameters()) * 0.0
                return {"loss": zero, "disc": zero.detach()}
            d = discriminator_loss(disc(real[:, None]), disc(fake[:, None]))
            return {"loss": d, "disc": d.detach()}
        raise ValueError(f"unknown vocoder phase {phase!r}")

    def eval_loss(self, models, batch):
        return self.loss("generator", models, batch, step=self.options.gan_start_step, scratch={})


# ------------------------------------------------------------------------------------------------------
# HiFi-GAN latent decoder (Tortoise v3's api_fast decoder)


@dataclass(frozen=True)
class HifiDecoderOptions:
    gpt: str = ""  # the frozen GPT whose latents the decoder learns to voice (Hare safetensors), required
    segment_codes: int = 24  # codes per training window (24 x 1024 samples at 22.05 kHz ~ 1.1 s)
    gpt_cond_clips: int = 1  # the GPT's conditioning clips per example (other utterances of the speaker)
    gpt_cond_frames: int = 128
    stft_weight: float = 2.5  # multi-resolution STFT loss (the mel-like spectral loss)
    gan_weight: float = 1.0
    feature_weight: float = 2.0  # HiFi-GAN's feature matching
    gan_start_step: int = 0
    weight_norm: bool = True  # trained with weight norm, folded back on export (as the official file has it)
    discriminator: Any = None  # DiscriminatorConfig fields
    min_seconds: float = 0.5

    def __post_init__(self):
        from hare.train.discriminators import DiscriminatorConfig

        if not self.gpt:
            raise ValueError("options.gpt must name the frozen GPT (a Hare autoregressive.safetensors)")
        if self.segment_codes < 4:
            raise ValueError(f"segment_codes must be at least 4 (got {self.segment_codes})")
        d = self.discriminator
        if d is None:
            object.__setattr__(self, "discriminator", DiscriminatorConfig())
        elif isinstance(d, Mapping):
            object.__setattr__(self, "discriminator", dataclass_from_dict(DiscriminatorConfig, d, "discriminator"))


class HifiDecoderObjective(Objective):
    """The HiFi-GAN latent decoder on a frozen GPT's teacher-forced latents (as the pipeline computes them)
    against the 24 kHz waveform: multi-resolution STFT + least-squares GAN + feature matching, with the
    vocoder objective's discriminators. From scratch, or from the official `hifidecoder.pth` (train.init)."""

    name, kind = "hifi_decoder", "hifi_decoder"
    config_class, options_class = HifiDecoderConfig, HifiDecoderOptions
    features = ("codes", "wav24", "ar_mel")
    phases = (Phase("generator", ("generator",), ("discriminator",)), Phase("discriminator", ("discriminator",)))

    def __init__(self, config=None, options=None):
        super().__init__(config, options)
        self._gpt = None

    def __getstate__(self):  # data-loader workers never run the GPT
        state = super().__getstate__()
        state["_gpt"] = None
        return state

    def build_models(self):
        from hare import checkpoints
        from hare.train.discriminators import Discriminator

        return {"generator": checkpoints.build(self.kind, self.config),
                "discriminator": Discriminator(self.options.discriminator)}

    def prepare_for_training(self, models):
        if self.options.weight_norm:
            from hare.models.layers import apply_weight_norm

            apply_weight_norm(models["generator"])

    def export(self, models):
        return VocoderObjective.export(self, models)  # weight norm folded into a fresh module

    def gpt(self, device=None):
        if self._gpt is None:
            self._gpt = load_frozen_gpt(self.options.gpt, self.config.latent_dim, "model.latent_dim")
            if self.config.cond_dim != self._gpt.config.dim:
                raise TrainingError(f"model.cond_dim must be the GPT's width {self._gpt.config.dim} "
                                    f"(got {self.config.cond_dim})")
        if device is not None:
            self._gpt = self._gpt.to(device)
        return self._gpt

    def limits(self):
        c = self.gpt().config
        return {**super().limits(), "min_seconds": self.options.min_seconds, "needs_text": True,
                "max_text_tokens": c.max_text_tokens, "max_seconds": (c.max_mel_tokens - 1) * CODE_SAMPLES / AR_RATE}

    def _samples_per_code(self) -> float:
        return CODE_SAMPLES * self.config.sample_rate / AR_RATE

    def example(self, corpus, index, rng):
        o = self.options
        feats = corpus.features(index, ("codes", "wav24"))
        codes, wav = feats["codes"].long().flatten(), feats["wav24"].float() / 32767.0
        n, window = codes.shape[0], o.segment_codes
        start = rng.randint(0, n - window) if n > window else 0
        per_code = self._samples_per_code()
        s0 = round(start * per_code)
        length = self._segment_samples()
        target = wav[s0:s0 + length]
        text = self.tokenizer.encode(corpus.utterances[index].text) + [self.tokenizer.stop_token]
        clips = ar_conditioning_clips(corpus, index, rng, o.gpt_cond_clips, o.gpt_cond_frames)
        return {"wav": F.pad(target, (0, length - target.shape[0])),
                "samples": min(target.shape[0], round(min(window, n - start) * per_code)),
                "text": torch.tensor(text, dtype=torch.long), "prefix": codes[:start + window], "start": start,
                "ar_cond": clips}

    def _segment_samples(self) -> int:
        """Samples the decoder makes for one window of codes."""
        c = self.config
        frames = math.floor(math.floor(self.options.segment_codes * c.code_upsample) * c.rate_ratio)
        return frames * math.prod(c.upsample_rates)

    def collate(self, examples):
        length = examples[0]["wav"].shape[0]
        return {"wav": torch.stack([e["wav"] for e in examples]),
                "mask": torch.arange(length)[None] < _as_long([e["samples"] for e in examples])[:, None],
                "text": [e["text"] for e in examples], "prefix": [e["prefix"] for e in examples],
                "start": _as_long([e["start"] for e in examples]),
                "ar_cond": torch.stack([e["ar_cond"] for e in examples])}

    def loss(self, phase, models, batch, step, scratch):
        from hare.train.discriminators import (discriminator_loss, feature_matching_loss,
                                               generator_adversarial_loss, stft_loss)

        o = self.options
        real = batch["wav"] * batch["mask"]  # past an utterance's end: silence, as the decoder should give
        disc = models["discriminator"]
        resolutions = o.discriminator.resolutions
        if phase == "generator":
            latents, voice = frozen_gpt_latents(self.gpt(real.device), batch, o.segment_codes)
            fake = models["generator"](latents, voice)[:, 0, :real.shape[-1]] * batch["mask"]
            sc, mag = stft_loss(fake, real, resolutions)
            losses = {"stft_sc": sc.detach(), "stft_mag": mag.detach()}
            total = o.stft_weight * (sc + mag)
            if step >= o.gan_start_step:
                fake_scores, fake_maps = disc(fake[:, None], features=True)
                with torch.no_grad():
                    _, real_maps = disc(real[:, None], features=True)
                adv = generator_adversarial_loss(fake_scores)
                fm = feature_matching_loss(real_maps, fake_maps)
                total = total + o.gan_weight * adv + o.feature_weight * fm
                losses.update(adv=adv.detach(), feature=fm.detach())
            scratch["fake"], scratch["real"] = fake.detach(), real
            losses["loss"] = total
            return losses
        if phase == "discriminator":
            fake = scratch.get("fake")
            if fake is None or step < o.gan_start_step:
                zero = sum(p.sum() for p in disc.parameters()) * 0.0  # every parameter in the graph (DDP)
                return {"loss": zero, "disc": zero.detach()}
            d = discriminator_loss(disc(scratch["real"][:, None]), disc(fake[:, None]))
            return {"loss": d, "disc": d.detach()}
        raise ValueError(f"unknown hifi_decoder phase {phase!r}")

    def eval_loss(self, models, batch):
        return self.loss("generator", models, batch, step=self.options.gan_start_step, scratch={})


# ------------------------------------------------------------------------------------------------------
# Speller (a Hare network: the reranker's letter recogniser)


@dataclass(frozen=True)
class SpellerOptions(CandidateLayout):
    # Probability that each code is replaced by a random one (GPT samples are noisier than the VQ-VAE's codes
    # of real speech). 0 = off.
    code_noise: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.code_noise < 1:
            raise ValueError(f"code_noise must be in [0, 1) (got {self.code_noise})")


class SpellerObjective(Objective):
    """CTC over the letters of each utterance's text (`hare.text.ctc_targets`) given its VQ-VAE codes."""

    name, kind = "speller", "speller"
    config_class, options_class = SpellerConfig, SpellerOptions
    features = ("codes",)

    def limits(self):
        _check_letter_classes("classes", self.config.classes)
        return {**super().limits(), "min_seconds": self.options.min_seconds, "needs_text": True}

    def example(self, corpus, index, rng):
        o = self.options
        codes = corpus.features(index, ("codes",))["codes"].long().flatten()
        if o.code_noise > 0:
            codes = codes.clone()
            for i in range(len(codes)):
                if rng.random() < o.code_noise:
                    codes[i] = rng.randrange(self.config.speech_vocab)
        # a text without letters teaches silence (all blanks)
        return {"codes": as_candidate(codes, o, None, rng), "letters": _letters(corpus.utterances[index].text)}

    def collate(self, examples):
        pad = self.options.calm_code if self.options.calm_code is not None else 0
        return {"codes": pad_stack([e["codes"] for e in examples], pad),
                "lengths": _as_long([len(e["codes"]) for e in examples]),
                "letters": pad_stack([e["letters"] for e in examples], 0),
                "letter_lengths": _as_long([len(e["letters"]) for e in examples])}

    def loss(self, phase, models, batch, step, scratch):
        # per letter of the batch, as the training loss of `Speller.forward`
        return {"loss": models["model"](batch["codes"], batch["lengths"], batch["letters"], batch["letter_lengths"])}


OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (VQVAEObjective, GPTObjective, CLVPObjective, DiffusionObjective, VocoderObjective,
                                HifiDecoderObjective, SpellerObjective)
}


def make_objective(name: str, model: Mapping[str, Any] | None = None,
                   options: Mapping[str, Any] | None = None) -> Objective:
    if name not in OBJECTIVES:
        raise TrainingError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name].from_dicts(model, options)
