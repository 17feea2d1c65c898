"""The GPT objective (text and speech-code cross-entropy, optional guided attention) and the GPT's inputs and
outputs that the decoder objectives reuse: voice-conditioning clips and a frozen GPT's teacher-forced latents.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import torch

from hare.models.configs import GPTConfig
from hare.train import TrainingError
from hare.train.data import AR_RATE, CODE_SAMPLES, pad_stack, random_crop
from hare.train.objectives.base import Objective, as_long, silence_ar_mel


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
    silence = silence_ar_mel()
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

    def text_tokenizer_name(self) -> str:
        return self.config.text_tokenizer

    def build_models(self):
        from hare.text import front_end_mismatch

        if self.config.text_tokenizer != "bpe":
            problem = front_end_mismatch(self.config, self.tokenizer)
            if problem:
                raise TrainingError(f"model: {problem}")
        return super().build_models()

    def load_init(self, model, source, what):
        """As the base class; a GPT that reads another front end than `source` (a letter GPT fine-tuned to read
        phonemes) gets every other weight from it, and its text embedding and text head rows from the source's
        rows of each symbol's spelling (`hare.phonemes.SPELLINGS`: the mean of its BPE tokens' rows; symbols
        with no spelling, the stress marks, keep their fresh values)."""
        if source.config.text_tokenizer == self.config.text_tokenizer:
            return super().load_init(model, source, what)
        from hare.checkpoints import load_strict

        state = dict(source.state_dict())
        own = model.state_dict()
        from hare.text import tokenizer_for

        rows = spelling_rows(self.tokenizer, tokenizer_for(source.config.text_tokenizer), source.config)
        for key in ("text_embedding.weight", "text_head.weight", "text_head.bias"):
            old, new = state[key], own[key].clone()
            for i, src in enumerate(rows):
                if src:
                    new[i] = old[src].mean(0)
            state[key] = new
        load_strict(model, state, what=what, fresh=self.fresh_parameters(source.config))

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
            "text_lengths": as_long([len(e["text"]) for e in examples]),
            "codes": pad_stack([e["codes"] for e in examples], c.stop_mel_token),
            "wav_lengths": as_long([e["samples22"] for e in examples]),
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


def spelling_rows(new, old, old_config: GPTConfig) -> list[list[int]]:
    """For each text-embedding row of a GPT reading `new` (its symbols, then its start token), the rows of a
    GPT reading `old` (of `old_config`) that spell it: `new.symbols_table` entries through
    `hare.phonemes.SPELLINGS` and `old.encode`; the start and stop tokens map to the old ones. [] = no
    spelling (the row keeps its fresh value)."""
    from hare.phonemes import SPELLINGS

    table = getattr(new, "symbols_table", None)
    if table is None:
        raise TrainingError(f"cannot map a {old_config.text_tokenizer!r} GPT's text embedding onto "
                            f"{type(new).__name__}'s symbols")
    rows = []
    for i, symbol in enumerate(table):
        if i == new.stop_token:
            rows.append([old_config.stop_text_token])
            continue
        spelling = SPELLINGS.get(symbol, "")
        if spelling == " ":  # the old front end's word gap: its token between two one-letter words
            rows.append(old.encode("a b", check=False)[1:-1])
        else:
            rows.append(old.encode(spelling, check=False) if spelling else [])
    rows.append([old_config.start_text_token])
    return rows


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
