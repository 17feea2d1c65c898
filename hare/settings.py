"""Synthesis settings: every knob of a synthesis (`Settings`), the presets, validation, and the command-line
options built from the same per-field facts (range, choices, flag, help), so that the CLI, the server and the
library accept exactly the same values."""

from __future__ import annotations

import argparse
import dataclasses
import math

from hare.errors import SettingsError
from hare.schedulers import SAMPLERS as _SCHEDULERS

SAMPLERS = tuple(_SCHEDULERS)  # the diffusion samplers `hare.schedulers` implements
# what turns the picked candidate into audio: the diffusion decoder and vocoder (Tortoise v2), or the HiFi-GAN
# latent decoder straight from the GPT's latents (Tortoise v3's api_fast; `hare.models.hifi_decoder`)
DECODERS = ("diffusion", "hifigan")


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric setting accepts: lo..hi, each end open or closed, either end unbounded (None)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def describe(self) -> str:
        if self.hi is None:
            return f"{'above' if self.lo_open else 'at least'} {_num(self.lo)}"
        if self.lo is None:
            return f"{'below' if self.hi_open else 'at most'} {_num(self.hi)}"
        return (f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}"
                f"{')' if self.hi_open else ']'}")


def _num(x: float) -> str:
    return f"{x:g}"


POSITIVE = Range(1)  # a count: 1 or more
UNIT = Range(0, 1)  # a weight or fraction


def knob(default, help: str, *, range: Range | None = None, choices: tuple | None = None,
         flag: str | None = None):
    """A `Settings` field with its facts: `range` or `choices` (checked by `Settings.validate` and by the
    command line's parser), `flag` (its command-line option; None: not an option of its own) and `help`."""
    return dataclasses.field(default=default, metadata={"help": help, "range": range, "choices": choices,
                                                        "flag": flag})


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every knob of a synthesis. Presets fill some; anything can be overridden."""

    num_candidates: int = knob(96, "autoregressive candidates to sample (preset decides)", range=POSITIVE,
                               flag="--candidates")
    batch_size: int | None = knob(None, "candidates sampled per batch (default: all, at most 16)", range=POSITIVE,
                                  flag="--batch-size")
    temperature: float = knob(0.8, "AR sampling temperature (default 0.8)", range=Range(0, 10, lo_open=True),
                              flag="--temperature")
    top_p: float = knob(0.8, "nucleus sampling mass (default 0.8)", range=Range(0, 1, lo_open=True), flag="--top-p")
    top_k: int = knob(50, "top-k sampling (default 50, transformers' default, which the reference inherits)",
                      range=Range(0), flag="--top-k")
    repetition_penalty: float = knob(2.0, "AR repetition penalty (default 2.0)", range=Range(0, lo_open=True),
                                     flag="--repetition-penalty")
    # kept for parity with the reference; it has no effect on sampling there either
    length_penalty: float = knob(1.0, "(default 1.0; no effect, as in the reference)", range=Range(0),
                                 flag="--length-penalty")
    max_codes: int = knob(500, "cap on speech codes per chunk (default 500)", range=POSITIVE, flag="--max-codes")
    cvvp_amount: float = knob(0.0, "weight of the CVVP voice score in reranking (default 0)", range=UNIT,
                              flag="--cvvp-amount")
    diffusion_steps: int = knob(80, "diffusion steps (preset decides)", range=POSITIVE, flag="--steps")
    sampler: str = knob("ddpm", "diffusion sampler (default: ddpm, as the reference)", choices=SAMPLERS,
                        flag="--sampler")
    cond_free: bool = knob(True, "conditioning-free guidance (preset decides)", flag="--cond-free")
    cond_free_k: float = knob(2.0, "guidance strength (default 2)", range=Range(0), flag="--cond-free-k")
    diffusion_temperature: float = knob(1.0, "(default 1.0)", range=Range(0), flag="--diffusion-temperature")
    # shallow diffusion: start the reverse process at this fraction of the schedule from the decoder's own
    # mel guess (`predict_mel`, trained with the auxiliary loss) instead of from pure noise (1.0, the reference);
    # 0 runs no diffusion step: the guess itself is the mel
    diffusion_start: float = knob(1.0, "shallow diffusion: start at this fraction of the schedule from the "
                                       "decoder's own mel guess (default 1: from noise, as the reference; "
                                       "0: the guess alone, no diffusion step; a model.json may set it)",
                                  range=UNIT, flag="--diffusion-start")
    # candidates whose speech (before its trailing silence) is shorter than this fraction of the median
    # candidate's are never picked, unless all are: a weak model's sampler can fall silent after a few codes,
    # and a reranker may then prefer the silence. 0 (the reference's behaviour) keeps them all.
    min_length_ratio: float = knob(0.0, "never pick a candidate shorter than this fraction of the median",
                                   range=Range(0, 1, hi_open=True))
    # weight of the GPT's own mean log-likelihood of each candidate in the reranking score, blended with the
    # CLVP's (and CVVP's) score after standardising both over the candidates: 0 (the reference's behaviour)
    # ranks by the CLVP alone, 1 by the likelihood alone. Costs one teacher-forced GPT pass over the candidates.
    likelihood_weight: float = knob(0.0, "weight of the GPT's own likelihood of each candidate in reranking "
                                         "(default 0, the reference's; a model's model.json may set it)",
                                    range=UNIT, flag="--likelihood-weight")
    # weight of the GPT's alignment score of each candidate (how closely its guided-attention heads follow the
    # text's diagonal, `GPT.score_candidates`), blended in the same way; needs a GPT whose config names its
    # `alignment_heads`. likelihood_weight + alignment_weight (+ ctc_weight) <= 1; the CLVP keeps the rest.
    alignment_weight: float = knob(0.0, "weight of the GPT's alignment score (its guided-attention heads follow "
                                        "the text) in reranking (default 0; needs a GPT trained with guided "
                                        "attention; a model.json may set it)", range=UNIT, flag="--alignment-weight")
    # weight of the letter score (a Hare extension: how well each candidate's codes spell the text, the mean
    # log-probability per letter of a CTC letter recogniser), blended in the same way. It comes from the model's
    # speller network (`hare.models.speller`, `speller.safetensors`; one small pass over the candidates) if it
    # has one, else from a CLVP trained with a CTC head (`ctc_classes`, `CLVP.ctc_score`: no extra pass).
    # likelihood_weight + alignment_weight + ctc_weight <= 1.
    ctc_weight: float = knob(0.0, "weight of the letter score (how well a candidate spells the text) in "
                                  "reranking (default 0; needs the model's speller network or a CLVP trained "
                                  "with a CTC head; a model.json may set it)", range=UNIT, flag="--ctc-weight")
    # the listener's second look (a Hare extension): the reranker's best `listen_candidates` candidates are each
    # decoded by the diffusion decoder's own mel guess (its prior; one pass, no diffusion step) and the model's
    # listener network (`hare.models.listener`, a CTC letter recogniser over mels) picks among them by how well
    # each decoded mel spells the text. 0 or 1: off (the reranker's pick stands).
    listen_candidates: int = knob(0, "decode the reranker's best N candidates and let the model's listener "
                                     "network pick by what it hears (default 0: off; needs listener.safetensors; "
                                     "a model.json may set it)", range=Range(0), flag="--listen-candidates")
    # zero-shot voice matching by equaliser: shift each band of the decoded mel by this fraction of the gap
    # between the voice clips' long-term mean log mel and the output's own (`audio.match_mel_means`: one gain per
    # band, timing and pitch untouched). 0 (the reference's behaviour) leaves the decoder's mel as it is.
    voice_match: float = knob(0.0, "equalise the output towards the voice clips' long-term spectrum, 0 to 1 "
                                   "(default 0, the reference's; a model.json may set it)", range=UNIT,
                              flag="--voice-match")
    # zero-shot voice matching by frequency warp (a Hare extension), before the equaliser: the decoded mel's
    # frequencies scaled by the factor that brings the model's own voice (its default voice's clips) nearest the
    # voice clips' long-term spectral shape (`audio.estimate_voice_warp`: a vocal tract's length moves every
    # formant by one factor; pitch moves with it), raised to this power. 0 (the reference's behaviour): off.
    voice_warp: float = knob(0.0, "warp the output's formants and pitch towards the voice clips' (from the "
                                  "model's default voice), 0 to 1 (default 0; a model.json may set it)",
                             range=UNIT, flag="--voice-warp")
    k: int = knob(1, "candidates returned (the best k by reranking score)", range=POSITIVE)
    # "diffusion" (the reference's v2 path) or "hifigan" (api_fast: the GPT's latents -> HiFi-GAN latent
    # decoder -> audio; no diffusion, no vocoder; with it the presets sample one candidate, as api_fast)
    decoder: str = knob("diffusion", "diffusion (default: diffusion decoder + vocoder) or hifigan (Tortoise v3's "
                                     "fast path: the GPT's latents straight to audio, one candidate unless "
                                     "--candidates is given)", choices=DECODERS, flag="--decoder")
    # streaming with decoder="hifigan" (`TextToSpeech.stream`): the first audio after this many codes, then
    # audio every `stream_every_codes` codes (a code is ~46 ms of speech)
    stream_first_codes: int = knob(16, "with --stream --decoder hifigan: first audio after this many codes "
                                       "(default 16)", range=POSITIVE, flag="--stream-first")
    stream_every_codes: int = knob(32, "with --stream --decoder hifigan: then audio every this many codes "
                                       "(default 32)", range=POSITIVE, flag="--stream-every")
    split_desired_length: int = knob(200, "long text is split into chunks of about this many characters",
                                     range=POSITIVE)
    split_max_length: int = knob(300, "and at most this many", range=POSITIVE)

    @property
    def ar_batch_size(self) -> int:
        """Candidates per autoregressive batch: `batch_size` (at most all of them), or all of them up to 16."""
        return min(self.batch_size or 16, self.num_candidates)

    def validate(self) -> "Settings":
        """Self, if every field is within its range or choices and the fields agree; else SettingsError."""
        for f in dataclasses.fields(self):
            value, facts = getattr(self, f.name), f.metadata
            if value is None and f.default is None:
                continue
            if facts["range"] is not None and value not in facts["range"]:
                raise SettingsError(f"{f.name} must be {facts['range'].describe()} (got {value!r})")
            if facts["choices"] is not None and value not in facts["choices"]:
                raise SettingsError(f"{f.name} must be one of {', '.join(facts['choices'])} (got {value!r})")
            if isinstance(f.default, bool) and not isinstance(value, bool):
                raise SettingsError(f"{f.name} must be true or false (got {value!r})")
        weights = self.likelihood_weight + self.alignment_weight + self.ctc_weight
        if weights > 1 + 1e-9:
            raise SettingsError(f"likelihood_weight + alignment_weight + ctc_weight must be at most 1 (got "
                                f"{self.likelihood_weight} + {self.alignment_weight} + {self.ctc_weight})")
        if self.k > self.num_candidates:
            raise SettingsError(f"k must be in [1, num_candidates] (got {self.k})")
        if self.split_desired_length > self.split_max_length:
            raise SettingsError("split lengths must satisfy 0 < desired <= max")
        return self


# The reference's presets (TORTOISE.md): AR candidates, diffusion steps, conditioning-free guidance.
PRESETS: dict[str, dict] = {
    "ultra_fast": dict(num_candidates=16, diffusion_steps=30, cond_free=False),
    "fast": dict(num_candidates=96, diffusion_steps=80, cond_free=True),
    "standard": dict(num_candidates=256, diffusion_steps=200, cond_free=True),
    "high_quality": dict(num_candidates=256, diffusion_steps=400, cond_free=True),
}


def make_settings(preset: str = "fast", **overrides) -> Settings:
    """The preset's settings with `overrides` applied (unknown names and bad values raise SettingsError)."""
    if preset not in PRESETS:
        raise SettingsError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise SettingsError(f"unknown setting(s): {', '.join(unknown)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    fast_path = {"num_candidates": 1} if given.get("decoder") == "hifigan" else {}  # api_fast: one sample
    return Settings(**{**PRESETS[preset], **fast_path, **given}).validate()


# --------------------------------------------------------------------------------------------------
# Command-line options from the same facts


def _whole(f: dataclasses.Field) -> bool:
    """Whether a setting holds a whole number (its annotation, a string under `from __future__ import annotations`)."""
    return f.type in ("int", "int | None")


def _parser_for(f: dataclasses.Field):
    """The argparse type of a setting: its Python type, checked against its range."""
    facts = f.metadata
    whole = _whole(f)

    def parse(text: str):
        try:
            value = int(text) if whole else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'a whole number' if whole else 'a number'}, got {text!r}") from None
        if facts["range"] is not None and value not in facts["range"]:
            raise argparse.ArgumentTypeError(f"must be {facts['range'].describe()}, got {text}")
        return value

    return parse


def option_fields(names=None) -> list[dataclasses.Field]:
    """The settings that have a command-line flag (only `names`, in their order, if given)."""
    flagged = {f.name: f for f in dataclasses.fields(Settings) if f.metadata["flag"]}
    if names is None:
        return list(flagged.values())
    return [flagged[n] for n in names]


def add_options(parser: argparse.ArgumentParser, names=None, help_overrides: dict | None = None) -> None:
    """Add each flagged setting's option (`--candidates`, `--top-p`, ...) to `parser`; its value is parsed and
    range-checked as `Settings.validate` checks it. A bool setting takes on|off. `help_overrides`: name -> help."""
    for f in option_fields(names):
        facts = f.metadata
        help_text = (help_overrides or {}).get(f.name, facts["help"])
        if isinstance(f.default, bool):
            parser.add_argument(facts["flag"], dest=f"setting_{f.name}", choices=("on", "off"), help=help_text)
        elif facts["choices"] is not None:
            parser.add_argument(facts["flag"], dest=f"setting_{f.name}", choices=facts["choices"], help=help_text)
        else:
            parser.add_argument(facts["flag"], dest=f"setting_{f.name}", type=_parser_for(f), help=help_text,
                                metavar="N" if _whole(f) else "X")


def overrides_from(args: argparse.Namespace) -> dict:
    """The settings given on the command line (those `add_options` added and the user set), by field name."""
    out = {}
    for f in dataclasses.fields(Settings):
        value = getattr(args, f"setting_{f.name}", None)
        if value is not None:
            out[f.name] = (value == "on") if isinstance(f.default, bool) else value
    return out
