"""Training data: manifests, validation, a feature cache, length-bucketed batches.

The path from a corpus on disk to batches:

1. `load_manifest(source)` reads an LJSpeech folder (`metadata.csv` + `wavs/`), a LibriTTS-style tree
   (`*.normalized.txt` beside each `.wav`) or a generic `path|text|speaker` CSV into `Utterance`s.
2. `validate(utterances, ...)` drops rows with a missing file, unreadable audio, empty text, or audio/text
   that is too long (or too short), and counts each reason in a `DataReport`; it never raises on bad rows.
3. `preprocess(utterances, cache_dir, features, vqvae=...)` decodes every clip once, with parallel workers,
   and caches what the objectives need (mels at 22.05 kHz and 24 kHz, 24 kHz audio, VQ-VAE codes) as one
   safetensors file per utterance. It is resumable: finished files are skipped; clips that fail to decode
   are recorded and counted, not retried.
4. `CachedCorpus` serves the cached features; `TrainingSet` turns an index into a training example through
   the objective (which crops, picks same-speaker conditioning clips and collates).
5. `LengthBucketSampler` groups utterances of similar length into batches and splits them over ranks like
   `DistributedSampler` (same number of batches on every rank), and can start mid-epoch (resume).

Randomness in examples (crops, conditioning clips) comes from a `random.Random` seeded by
(seed, epoch, index), so an example is the same whichever worker builds it and whenever a run resumes.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from hare.audio import AR_SAMPLE_RATE as AR_RATE  # the GPT / CLVP / VQ-VAE front end
from hare.audio import VOCODER_SAMPLE_RATE as VOCODER_RATE  # the diffusion decoder / vocoder's
from hare.errors import HareError
from hare.paths import sha256_file
from hare.train import TrainingError

log = logging.getLogger(__name__)

CODE_SAMPLES = 1024  # 22.05 kHz samples per speech code

# Features the cache can hold (one safetensors file per utterance):
#   ar_mel   (80, frames)   float16  normalised 22.05 kHz mel (`hare.audio.ar_mel`), hop 256
#   diff_mel (100, frames)  float16  unnormalised 24 kHz log-mel (the vocoder/diffusion front end), hop 256
#   hifi_mel (80, frames)   float16  unnormalised 22.05 kHz HiFi-GAN log-mel (`hare.audio.hifigan_mel`), hop 256
#   wav24    (samples,)     int16    24 kHz audio
#   codes    (n,)           int16    VQ-VAE codes of ar_mel (needs a VQ-VAE)
#   samples22 ()            int64    clip length in 22.05 kHz samples (always stored)
FEATURES = ("ar_mel", "diff_mel", "hifi_mel", "wav24", "codes")

SKIP_REASONS = (
    "malformed row", "missing file", "unreadable audio", "empty text", "audio too long", "audio too short",
    "text too long",
)


# --------------------------------------------------------------------------------------------------------
# Manifests


@dataclasses.dataclass(frozen=True)
class Utterance:
    path: str  # absolute path of the audio file
    text: str
    speaker: str
    duration: float | None = None  # seconds; filled in by `validate`


@dataclasses.dataclass
class DataReport:
    """Rows read, rows kept, and rows skipped per reason (with a few examples each)."""

    total: int = 0
    kept: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def skip(self, reason: str, what: str) -> None:
        self.skipped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < 3:
            shown.append(what)

    def merge(self, other: "DataReport") -> "DataReport":
        self.total += other.total
        self.kept += other.kept
        self.skipped.update(other.skipped)
        for reason, shown in other.examples.items():
            self.examples.setdefault(reason, []).extend(shown[: 3 - len(self.examples.get(reason, []))])
        return self

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.kept} of {self.total} utterances usable"
        parts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
        return f"{self.kept} of {self.total} utterances usable; skipped {self.num_skipped} ({parts})"

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "kept": self.kept, "skipped": dict(self.skipped), "examples": self.examples}


def read_ljspeech(root: str | os.PathLike, speaker: str | None = None) -> tuple[list[Utterance], DataReport]:
    """LJSpeech layout: `root/metadata.csv` rows `id|text|normalized text`, audio in `root/wavs/<id>.wav`.

    The normalised text is used when present. Every row gets `speaker` (default: the folder's name).
    """
    root = Path(root).resolve()
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise TrainingError(f"not an LJSpeech folder: {meta} does not exist")
    speaker = speaker or root.name
    report, out = DataReport(), []
    with open(meta, encoding="utf-8", newline="") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            report.total += 1
            fields = line.split("|")
            if len(fields) < 2 or not fields[0].strip():
                report.skip("malformed row", f"{meta}:{lineno}")
                continue
            text = fields[2] if len(fields) > 2 and fields[2].strip() else fields[1]
            name = fields[0].strip()
            wav = root / "wavs" / (name if name.endswith(".wav") else name + ".wav")
            out.append(Utterance(str(wav), text.strip(), speaker))
    return out, report


def read_libritts(root: str | os.PathLike) -> tuple[list[Utterance], DataReport]:
    """LibriTTS layout: `<speaker>/<chapter>/<speaker>_<chapter>_..._.wav` with a `.normalized.txt` beside it.

    The speaker is the first `_`-separated field of the file name.
    """
    root = Path(root).resolve()
    report, out = DataReport(), []
    for txt in sorted(root.rglob("*.normalized.txt")):
        report.total += 1
        stem = txt.name[: -len(".normalized.txt")]
        wav = txt.with_name(stem + ".wav")
        try:
            text = txt.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            report.skip("malformed row", str(txt))
            continue
        speaker = stem.split("_")[0] if "_" in stem else txt.parent.parent.name
        out.append(Utterance(str(wav), text, speaker))
    if report.total == 0:
        raise TrainingError(f"no *.normalized.txt files under {root} (expected a LibriTTS-style tree)")
    return out, report


def read_csv(path: str | os.PathLike, default_speaker: str = "speaker") -> tuple[list[Utterance], DataReport]:
    """Generic manifest: one `path|text|speaker` row per utterance (speaker optional; a header row allowed).

    Relative audio paths are relative to the manifest's folder. A 4th column, if any, is ignored.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise TrainingError(f"manifest not found: {path}")
    report, out = DataReport(), []
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE), 1):
            if not row or not "".join(row).strip():
                continue
            if lineno == 1 and [c.strip().lower() for c in row[:2]] == ["path", "text"]:
                continue
            report.total += 1
            if len(row) < 2 or not row[0].strip():
                report.skip("malformed row", f"{path}:{lineno}")
                continue
            audio = Path(row[0].strip())
            audio = audio if audio.is_absolute() else path.parent / audio
            speaker = row[2].strip() if len(row) > 2 and row[2].strip() else default_speaker
            out.append(Utterance(str(audio), row[1].strip(), speaker))
    return out, report


def load_manifest(source: str | os.PathLike, fmt: str = "auto") -> tuple[list[Utterance], DataReport]:
    """Read a corpus: `fmt` is ljspeech, libritts, csv, or auto (LJSpeech folder / other folder / file)."""
    source = Path(source)
    if fmt == "auto":
        if source.is_dir():
            fmt = "ljspeech" if (source / "metadata.csv").is_file() else "libritts"
        else:
            fmt = "csv"
    if fmt == "ljspeech":
        return read_ljspeech(source)
    if fmt == "libritts":
        return read_libritts(source)
    if fmt == "csv":
        return read_csv(source)
    raise TrainingError(f"unknown manifest format {fmt!r}: use ljspeech, libritts, csv or auto")


def write_manifest(utterances: Iterable[Utterance], path: str | os.PathLike, relative: bool = True) -> Path:
    """Write a `path|text|speaker` manifest (paths relative to its folder when possible)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()
    lines = ["path|text|speaker"]
    for u in utterances:
        audio = Path(u.path)
        if relative:
            try:
                audio = audio.resolve().relative_to(base)
            except ValueError:
                pass
        if "|" in u.text or "\n" in u.text:
            raise TrainingError(f"text of {u.path} contains '|' or a newline; it cannot go in a manifest")
        lines.append(f"{audio.as_posix()}|{u.text}|{u.speaker}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------------------
# Validation


def _audio_duration(path: str) -> float:
    import soundfile

    info = soundfile.info(path)
    if info.frames <= 0 or info.samplerate <= 0:
        raise ValueError("no audio frames")
    return info.frames / info.samplerate


def _check_one(u: Utterance, min_seconds: float, max_seconds: float | None) -> tuple[str | None, float | None]:
    if not u.text.strip():
        return "empty text", None
    if not os.path.isfile(u.path):
        return "missing file", None
    try:
        duration = _audio_duration(u.path)
    except Exception:  # soundfile raises RuntimeError/LibsndfileError/TypeError for foreign or broken files
        return "unreadable audio", None
    if max_seconds is not None and duration > max_seconds:
        return "audio too long", duration
    if duration < min_seconds:
        return "audio too short", duration
    return None, duration


def validate(utterances: Sequence[Utterance], *, min_seconds: float = 0.0, max_seconds: float | None = None,
             max_text_tokens: int | None = None, tokenizer=None, workers: int = 4,
             report: DataReport | None = None) -> tuple[list[Utterance], DataReport]:
    """Keep the usable rows (with `duration` filled in); count every skipped row by reason.

    Checks: text not empty (and speakable, if a tokenizer is given), audio file present and readable (its
    header), duration within [min_seconds, max_seconds], text within `max_text_tokens` BPE tokens.
    `report` (e.g. from `load_manifest`) is extended; rows it already counted are not counted twice.
    """
    from concurrent.futures import ThreadPoolExecutor

    from hare.errors import TextError

    report = report if report is not None else DataReport(total=len(utterances))
    if report.total == 0:
        report.total = len(utterances)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        checked = list(pool.map(lambda u: _check_one(u, min_seconds, max_seconds), utterances))
    kept = []
    for u, (reason, duration) in zip(utterances, checked):
        if reason is None and tokenizer is not None:
            try:
                n = len(tokenizer.encode(u.text))
            except TextError as exc:
                reason = "text too long" if "too long" in str(exc) else "empty text"
            else:
                if max_text_tokens is not None and n > max_text_tokens:
                    reason = "text too long"
        if reason is not None:
            report.skip(reason, u.path)
            continue
        kept.append(dataclasses.replace(u, duration=duration))
    report.kept = len(kept)
    return kept, report


# --------------------------------------------------------------------------------------------------------
# Feature cache


def cache_key(path: str) -> str:
    """A file name for an utterance's features: a hash of its path, size and modification time."""
    st = os.stat(path)
    h = hashlib.sha1(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()
    return h[:24]


def _cache_file(cache_dir: Path, key: str, suffix: str = ".safetensors") -> Path:
    return cache_dir / key[:2] / (key + suffix)


def _read_features(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(file))


def _read_cached(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a cache file; ({}, {}) if it is missing or damaged (it is then recomputed)."""
    from safetensors import safe_open

    if not file.is_file():
        return {}, {}
    try:
        with safe_open(str(file), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception:
        return {}, {}


def _write_features(file: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, file)


def _usable(tensors: dict, metadata: dict, wanted: Iterable[str], vqvae_id: str | None) -> set[str]:
    """The cached features still valid: codes only if they came from this VQ-VAE."""
    ok = set(tensors)
    if "codes" in ok and (vqvae_id is None or metadata.get("codes_vqvae") != vqvae_id):
        ok.discard("codes")
    return ok & (set(wanted) | {"samples22"})


class UndecodableAudio(Exception):
    """Raised inside preprocessing for a clip whose audio cannot be decoded (it is skipped and counted)."""


class FeatureExtractor:
    """Decodes one clip and computes the requested features (runs inside preprocessing workers)."""

    def __init__(self, vqvae_path: str | None = None, device: str | None = None):
        self.vqvae_path = vqvae_path
        self.device = device or "cpu"
        self._vqvae = None

    @property
    def vqvae(self):
        if self._vqvae is None and self.vqvae_path is not None:
            self._vqvae = load_vqvae(self.vqvae_path).to(self.device)
        return self._vqvae

    def __call__(self, path: str, wanted: set[str], have: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`have` (still valid cached features) plus whatever of `wanted` is missing."""
        from hare import audio

        out = dict(have)
        missing = set(wanted) - set(have)
        if "codes" in missing and "ar_mel" not in have:
            missing.add("ar_mel")
        if missing - {"codes"} or "samples22" not in out:
            try:
                wav22 = audio.load_audio(path, AR_RATE)  # (samples,) float32 in [-1, 1]
                wav24 = audio.load_audio(path, VOCODER_RATE) if {"diff_mel", "wav24"} & missing else None
            except Exception as exc:  # corrupt or truncated audio, an unknown format
                raise UndecodableAudio(f"{exc.__class__.__name__}: {exc}") from exc
            out["samples22"] = torch.tensor(wav22.shape[-1], dtype=torch.int64)
            if "ar_mel" in missing:
                out["ar_mel"] = _mel2d(audio.ar_mel(wav22)).half()
            if "diff_mel" in missing:
                out["diff_mel"] = _mel2d(audio.vocoder_mel(wav24)).half()
            if "hifi_mel" in missing:
                out["hifi_mel"] = _mel2d(audio.hifigan_mel(wav22)).half()
            if "wav24" in missing:
                out["wav24"] = (wav24.reshape(-1).clamp(-1, 1) * 32767).round().to(torch.int16)
        if "codes" in missing:
            if self.vqvae is None:
                raise TrainingError("speech codes were asked for but no VQ-VAE was given (data.vqvae)")
            mel = out["ar_mel"].float().to(self.device)[None]  # codes follow the cached (float16) mel
            with torch.no_grad():
                out["codes"] = self.vqvae.encode(mel)[0].to("cpu", torch.int16)
        return out


def _mel2d(mel: torch.Tensor) -> torch.Tensor:
    """(1, bands, frames) or (bands, frames) -> (bands, frames)."""
    return mel.reshape(mel.shape[-2], mel.shape[-1]).cpu()


def load_vqvae(path: str | os.PathLike):
    """A VQ-VAE from Hare safetensors, in eval mode."""
    from hare import checkpoints

    model, kind, _ = checkpoints.load(path)
    if kind != "vqvae":
        raise TrainingError(f"{path} holds a {kind} model, not a VQ-VAE")
    return model.eval()


def vqvae_id(path: str | os.PathLike) -> str:
    """Identifies a VQ-VAE file's weights (cached codes are valid only for the VQ-VAE that made them)."""
    return sha256_file(path)[:16]


_WORKER: FeatureExtractor | None = None


def _init_worker(vqvae_path: str | None) -> None:
    global _WORKER
    torch.set_num_threads(1)
    _WORKER = FeatureExtractor(vqvae_path)


def _process_one(job: tuple[str, str, tuple[str, ...], str | None]) -> tuple[str, str | None]:
    """Worker: (audio path, cache file, features, VQ-VAE id) -> (cache file, reason it is unusable, or None).

    Only undecodable audio makes a clip unusable; any other failure (a bad VQ-VAE, a full disk) stops the run.
    """
    path, file, wanted, vq_id = job
    file = Path(file)
    tensors, metadata = _read_cached(file)
    keep = _usable(tensors, metadata, wanted, vq_id)
    try:
        feats = _WORKER(path, set(wanted), {k: tensors[k] for k in keep})
    except UndecodableAudio as exc:
        log.debug("cannot decode %s: %s", path, exc)
        return str(file), "unreadable audio"
    except HareError:
        raise
    except Exception as exc:
        raise TrainingError(f"computing features of {path} failed: {exc.__class__.__name__}: {exc}") from exc
    if "codes" in feats and "codes" not in keep:
        metadata["codes_vqvae"] = vq_id  # fresh codes, from this VQ-VAE
    feats = {**tensors, **feats}  # features not asked for this time stay cached
    _write_features(file, feats, metadata)
    return str(file), None


@dataclasses.dataclass
class PreprocessResult:
    usable: list[Utterance]
    files: list[Path]  # cache file of each usable utterance
    computed: int
    reused: int
    report: DataReport


def preprocess(utterances: Sequence[Utterance], cache_dir: str | os.PathLike, features: Iterable[str], *,
               vqvae: str | os.PathLike | None = None, workers: int = 0, progress: bool = False,
               report: DataReport | None = None) -> PreprocessResult:
    """Cache `features` of every utterance under `cache_dir` (resumable; parallel with `workers` processes).

    Features already cached are kept (codes only if made by this `vqvae`). Utterances whose audio fails to
    decode are skipped (counted as "unreadable audio" in the report) and remembered in a `.bad` marker so a
    resumed run does not decode them again.
    """
    wanted = tuple(sorted(set(features)))
    unknown = set(wanted) - set(FEATURES)
    if unknown:
        raise TrainingError(f"unknown features {sorted(unknown)}; known: {', '.join(FEATURES)}")
    vq_id = None
    if "codes" in wanted:
        if vqvae is None:
            raise TrainingError("this objective needs speech codes: set data.vqvae to a trained VQ-VAE (.safetensors)")
        if not Path(vqvae).with_suffix(".safetensors").is_file():
            raise TrainingError(f"VQ-VAE not found: {vqvae}")
        vq_id = vqvae_id(Path(vqvae).with_suffix(".safetensors"))
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    report = report if report is not None else DataReport(total=len(utterances))
    files, jobs, bad = [], [], {}
    for u in utterances:
        key = cache_key(u.path)
        file = _cache_file(cache_dir, key)
        marker = _cache_file(cache_dir, key, ".bad")
        files.append(file)
        if marker.is_file():
            bad[str(file)] = marker.read_text().strip() or "unreadable audio"
            continue
        if not _has_features(file, wanted, vq_id):
            jobs.append((u.path, str(file), wanted, vq_id))
    errors: dict[str, str] = {}
    if jobs:
        if vq_id is not None:
            load_vqvae(vqvae)  # fail here, once, with a clear message, rather than in every worker
        errors = _run_jobs(jobs, None if vqvae is None else str(vqvae), workers, progress)
        for file, reason in errors.items():
            marker = Path(file).with_suffix(".bad")
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(reason + "\n")
    reused = len(utterances) - len(jobs) - len(bad)
    bad.update(errors)
    usable, usable_files = [], []
    for u, file in zip(utterances, files):
        reason = bad.get(str(file))
        if reason is not None:
            report.skip("unreadable audio", u.path)
            continue
        usable.append(u)
        usable_files.append(file)
    report.kept = len(usable)
    computed = len(jobs) - len(errors)
    return PreprocessResult(usable, usable_files, computed, reused, report)


def _has_features(file: Path, wanted: tuple[str, ...], vq_id: str | None) -> bool:
    if not file.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(file), "pt") as f:
            keys, metadata = set(f.keys()), dict(f.metadata() or {})
    except Exception:
        return False
    if "codes" in wanted and metadata.get("codes_vqvae") != vq_id:
        return False
    return set(wanted) | {"samples22"} <= keys


def _run_jobs(jobs, vqvae_path, workers, progress) -> dict[str, str]:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="caching features", unit="clip", disable=not progress)
    errors: dict[str, str] = {}
    try:
        if workers <= 1:
            global _WORKER
            saved = _WORKER
            _WORKER = FeatureExtractor(vqvae_path)
            try:
                for job in jobs:
                    file, reason = _process_one(job)
                    if reason:
                        errors[file] = reason
                    bar.update(1)
            finally:
                _WORKER = saved
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            ctx = multiprocessing.get_context("spawn")
            chunk = max(1, min(32, len(jobs) // (4 * workers)))
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(vqvae_path,)) as pool:
                for file, reason in pool.map(_process_one, jobs, chunksize=chunk):
                    if reason:
                        errors[file] = reason
                    bar.update(1)
    finally:
        bar.close()
    return errors


class CachedCorpus:
    """Usable utterances and their cached features, with per-speaker lookup for conditioning clips."""

    def __init__(self, utterances: Sequence[Utterance], files: Sequence[Path]):
        if len(utterances) != len(files):
            raise ValueError("one cache file per utterance")
        self.utterances = list(utterances)
        self.files = [str(f) for f in files]
        by_speaker: dict[str, list[int]] = collections.defaultdict(list)
        for i, u in enumerate(self.utterances):
            by_speaker[u.speaker].append(i)
        self._by_speaker = dict(by_speaker)

    @classmethod
    def build(cls, source, cache_dir, features, *, vqvae=None, workers: int = 0, min_seconds: float = 0.0,
              max_seconds: float | None = None, max_text_tokens: int | None = None, tokenizer=None,
              fmt: str = "auto", progress: bool = False) -> tuple["CachedCorpus", DataReport]:
        """load_manifest -> validate -> preprocess, in one call; raises if nothing usable is left."""
        utterances, report = load_manifest(source, fmt)
        kept, report = validate(utterances, min_seconds=min_seconds, max_seconds=max_seconds,
                                max_text_tokens=max_text_tokens, tokenizer=tokenizer, workers=max(workers, 4),
                                report=report)
        result = preprocess(kept, cache_dir, features, vqvae=vqvae, workers=workers, progress=progress,
                            report=report)
        if not result.usable:
            raise TrainingError(f"no usable utterances in {source}: {report.summary()}")
        return cls(result.usable, result.files), result.report

    def __len__(self) -> int:
        return len(self.utterances)

    def features(self, index: int, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Cached features of utterance `index` (only `names`, if given: a shared cache may hold more)."""
        if names is None:
            return _read_features(Path(self.files[index]))
        from safetensors import safe_open

        with safe_open(self.files[index], "pt") as f:
            return {name: f.get_tensor(name) for name in names}

    def same_speaker(self, index: int) -> list[int]:
        """Other utterances of this utterance's speaker (empty if it is the speaker's only one)."""
        return [j for j in self.utterances_of(self.utterances[index].speaker) if j != index]

    def utterances_of(self, speaker: str) -> list[int]:
        """The indices of a speaker's utterances, ascending (the corpus's own list: read, do not modify)."""
        return self._by_speaker[speaker]

    @property
    def speakers(self) -> list[str]:
        return sorted(self._by_speaker)

    def lengths(self) -> list[float]:
        return [u.duration or 0.0 for u in self.utterances]


def example_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The random source of one example: the same in every worker and after a resume."""
    return random.Random(f"hare:{seed}:{epoch}:{index}")


class TrainingSet(torch.utils.data.Dataset):
    """Map-style dataset whose keys are (epoch, index) pairs (as `LengthBucketSampler` yields them)."""

    def __init__(self, corpus: CachedCorpus, make_example: Callable[[CachedCorpus, int, random.Random], dict],
                 seed: int = 0):
        self.corpus = corpus
        self.make_example = make_example
        self.seed = seed

    def __len__(self) -> int:
        return len(self.corpus)

    def __getitem__(self, key) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        return self.make_example(self.corpus, index, example_rng(self.seed, epoch, index))


# --------------------------------------------------------------------------------------------------------
# Batching


class LengthBucketSampler(torch.utils.data.Sampler):
    """Batches of similar-length utterances, split over ranks as `DistributedSampler` does.

    Each epoch: shuffle the indices (seeded by seed + epoch), cut them into windows of
    `batch_size * bucket_batches`, sort each window by length, cut it into batches, and shuffle the batch
    order. The batch list is the same on every rank; rank r takes batches r, r + R, r + 2R, ... after the
    list is padded (by repeating its first batches) or, with `drop_last`, truncated to a multiple of R,
    so every rank runs the same number of steps. Yields lists of (epoch, index) keys.

    `start_batch` (set before iterating) skips that many of this rank's batches: the resume position.
    """

    def __init__(self, lengths: Sequence[float], batch_size: int, *, num_replicas: int | None = None,
                 rank: int | None = None, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 bucket_batches: int = 32):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if num_replicas is None:
            dist = torch.distributed
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            dist = torch.distributed
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} replicas")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.bucket_batches = max(1, bucket_batches)
        self.epoch = 0
        self.start_batch = 0
        if len(self.lengths) == 0:
            raise TrainingError("no utterances to sample from")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def all_batches(self, epoch: int | None = None) -> list[list[int]]:
        """The epoch's batches (indices), before the split over ranks."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.lengths)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        window = self.batch_size * self.bucket_batches
        batches = []
        for start in range(0, n, window):
            chunk = sorted(order[start:start + window], key=lambda i: self.lengths[i])
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        if self.shuffle:
            perm = torch.randperm(len(batches), generator=g).tolist()
            batches = [batches[i] for i in perm]
        return batches

    def rank_batches(self, epoch: int | None = None) -> list[list[int]]:
        batches = self.all_batches(epoch)
        r = self.num_replicas
        if self.drop_last:
            batches = batches[: len(batches) - len(batches) % r]
        elif len(batches) % r:
            need = r - len(batches) % r
            batches = batches + (batches * math.ceil(need / len(batches)))[:need]
        return batches[self.rank::r]

    def __len__(self) -> int:
        return len(self.rank_batches())

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        for batch in self.rank_batches(epoch)[self.start_batch:]:
            yield [(epoch, i) for i in batch]


def pad_stack(tensors: Sequence[torch.Tensor], value: float = 0.0, length: int | None = None) -> torch.Tensor:
    """Right-pad tensors along their last axis to a common length and stack them."""
    target = length if length is not None else max(t.shape[-1] for t in tensors)
    out = tensors[0].new_full((len(tensors), *tensors[0].shape[:-1], target), value)
    for i, t in enumerate(tensors):
        n = min(target, t.shape[-1])
        out[i, ..., :n] = t[..., :n]
    return out


def random_crop(x: torch.Tensor, length: int, rng: random.Random, pad_value: float = 0.0) -> torch.Tensor:
    """A random window of `length` along the last axis (right-padded with `pad_value` if x is shorter)."""
    n = x.shape[-1]
    if n >= length:
        start = rng.randint(0, n - length)
        return x[..., start:start + length]
    return torch.nn.functional.pad(x, (0, length - n), value=pad_value)


def save_report(report: DataReport, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
