"""Training data: manifests, validation with counted skips, the resumable feature cache, bucketing, synth."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from hare.train import TrainingError
from hare.train import data as D
from hare.train import synth

WORDS = "the quick brown fox jumps over a lazy dog while seven small birds sing softly at dawn".split()


def write_tone_corpus(root: Path, speakers: int = 3, per_speaker: int = 6, seed: int = 0,
                      seconds: tuple[float, float] = (0.8, 1.6)) -> Path:
    """A stand-in for speech: per speaker a pitch, per utterance a few harmonic notes with noise.

    Writes root/wavs/*.wav and root/manifest.csv (path|text|speaker); returns the manifest path.
    """
    rng = np.random.default_rng(seed)
    pyr = random.Random(seed)
    (root / "wavs").mkdir(parents=True, exist_ok=True)
    sr = 22050
    lines = ["path|text|speaker"]
    for s in range(speakers):
        f0 = 110.0 * (1.5 ** s)
        for u in range(per_speaker):
            n = int(sr * rng.uniform(*seconds))
            t = np.arange(n) / sr
            notes = np.repeat(rng.uniform(0.8, 1.25, 4), -(-n // 4))[:n]
            wav = sum(0.15 / k * np.sin(2 * np.pi * f0 * k * np.cumsum(notes) / sr) for k in range(1, 5))
            wav = wav * np.hanning(n) ** 0.2 + 0.005 * rng.standard_normal(n)
            name = f"s{s}_{u:02d}.wav"
            soundfile.write(root / "wavs" / name, wav.astype(np.float32), sr)
            text = " ".join(pyr.choice(WORDS) for _ in range(pyr.randint(3, 7)))
            lines.append(f"wavs/{name}|{text}|spk{s}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_csv_manifest_with_bad_rows_is_validated_and_counted(tmp_path):
    manifest = write_tone_corpus(tmp_path, speakers=1, per_speaker=3)
    (tmp_path / "wavs" / "garbage.wav").write_bytes(b"RIFF\x00\x00not really a wave file" * 10)
    soundfile.write(tmp_path / "wavs" / "long.wav", np.zeros(22050 * 5, np.float32), 22050)
    with open(manifest, "a") as f:
        f.write("wavs/missing.wav|hello there|spk0\n")
        f.write("wavs/garbage.wav|hello there|spk0\n")
        f.write("wavs/s0_00.wav|   |spk0\n")
        f.write("wavs/long.wav|a long clip|spk0\n")
        f.write("just-one-field\n")
        f.write("wavs/s0_01.wav|!!! ???|spk0\n")  # nothing speakable
    utterances, report = D.load_manifest(manifest)
    assert report.total == 9 and report.skipped["malformed row"] == 1 and len(utterances) == 8
    from hare.text import Tokenizer

    kept, report = D.validate(utterances, max_seconds=4.0, tokenizer=Tokenizer(), report=report)
    assert len(kept) == 3 and report.kept == 3
    assert report.skipped == {"malformed row": 1, "missing file": 1, "unreadable audio": 1, "empty text": 2,
                              "audio too long": 1}
    assert all(u.duration and 0.5 < u.duration < 2 for u in kept)
    assert "missing.wav" in report.examples["missing file"][0]
    assert "3 of 9 utterances usable; skipped 6" in report.summary()


def test_ljspeech_and_libritts_layouts(tmp_path):
    lj = tmp_path / "LJSpeech-1.1"
    (lj / "wavs").mkdir(parents=True)
    for name in ("LJ001-0001", "LJ001-0002"):
        soundfile.write(lj / "wavs" / f"{name}.wav", np.full(4000, 0.1, np.float32), 22050)
    (lj / "metadata.csv").write_text("LJ001-0001|Printing, in 1 sense|Printing, in one sense\nLJ001-0002|Raw only|\n")
    utts, report = D.load_manifest(lj)
    assert [u.text for u in utts] == ["Printing, in one sense", "Raw only"]
    assert {u.speaker for u in utts} == {"LJSpeech-1.1"} and report.total == 2
    assert Path(utts[0].path) == (lj / "wavs" / "LJ001-0001.wav").resolve()

    lt = tmp_path / "LibriTTS" / "train-clean-100" / "19" / "198"
    lt.mkdir(parents=True)
    soundfile.write(lt / "19_198_000000_000000.wav", np.full(4000, 0.1, np.float32), 24000)
    (lt / "19_198_000000_000000.normalized.txt").write_text("Hello world.\n")
    (lt / "19_198_000000_000001.normalized.txt").write_text("No audio for this one.\n")
    utts, report = D.load_manifest(tmp_path / "LibriTTS")
    assert [(u.speaker, u.text) for u in utts] == [("19", "Hello world."), ("19", "No audio for this one.")]
    kept, report = D.validate(utts, report=report)
    assert len(kept) == 1 and report.skipped == {"missing file": 1}


def test_preprocess_caches_resumably_and_counts_undecodable_clips(tmp_path, monkeypatch):
    manifest = write_tone_corpus(tmp_path / "c", speakers=2, per_speaker=2)
    utts, report = D.load_manifest(manifest)
    kept, report = D.validate(utts, report=report)
    broken = tmp_path / "c" / "wavs" / "s1_01.wav"
    data = broken.read_bytes()
    broken.write_bytes(data[:44] + b"\xff" * 3)  # a valid header whose data is cut short and odd-sized
    cache = tmp_path / "cache"

    from hare import audio

    real_load = audio.load_audio

    def failing_load(path, sr):
        if Path(path).name == "s1_01.wav":
            raise RuntimeError("decoder exploded")
        return real_load(path, sr)

    monkeypatch.setattr(audio, "load_audio", failing_load)
    first = D.preprocess(kept, cache, ("ar_mel", "diff_mel", "wav24"), report=report)
    assert first.computed == 3 and len(first.usable) == 3 and first.report.skipped["unreadable audio"] == 1
    feats = D._read_features(first.files[0])
    assert feats["ar_mel"].shape[0] == 80 and feats["diff_mel"].shape[0] == 100 and feats["wav24"].dtype == torch.int16
    assert feats["ar_mel"].shape[1] == int(feats["samples22"]) // 256 + 1
    second = D.preprocess(kept, cache, ("ar_mel",))
    assert second.computed == 0 and second.reused == 3 and second.report.skipped["unreadable audio"] == 1

    # adding VQ-VAE codes later computes only the codes, from the cached mels
    from hare import checkpoints
    from hare.models.configs import VQVAEConfig

    vq = checkpoints.build("vqvae", VQVAEConfig(num_codes=16, hidden=16, codebook_dim=8, resblocks=1))
    vq_path = checkpoints.save(vq, "vqvae", vq.config, tmp_path / "vq")
    monkeypatch.setattr(audio, "load_audio", lambda *a: pytest.fail("audio decoded again"))
    third = D.preprocess(kept, cache, ("ar_mel", "codes"), vqvae=vq_path)
    assert third.computed == 3
    feats = D._read_features(third.files[0])
    assert feats["codes"].shape[0] == feats["ar_mel"].shape[1] // 4 and int(feats["codes"].max()) < 16
    with pytest.raises(TrainingError, match="VQ-VAE"):
        D.preprocess(kept, cache, ("codes",))


def test_bucket_sampler_splits_like_distributed_sampler_and_resumes():
    rng = random.Random(0)
    lengths = [rng.uniform(1, 10) for _ in range(103)]
    per_rank = [D.LengthBucketSampler(lengths, 4, num_replicas=3, rank=r, seed=5, bucket_batches=4) for r in range(3)]
    for s in per_rank:
        s.set_epoch(2)
    batches = [s.rank_batches() for s in per_rank]
    assert len({len(b) for b in batches}) == 1  # every rank runs the same number of steps
    seen = [i for b in batches for batch in b for i in batch]
    assert set(seen) == set(range(103))  # padding repeats a few, nothing is lost
    # batches are length-homogeneous: within a bucket window they are sorted runs
    spreads = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in per_rank[0].all_batches()]
    assert np.mean(spreads) < 3.0
    # different epochs shuffle differently; the same epoch is reproducible
    assert per_rank[0].all_batches(2) == per_rank[0].all_batches(2) != per_rank[0].all_batches(3)
    # resume: start_batch skips exactly the consumed batches, keys carry the epoch
    s = per_rank[1]
    full = list(s)
    s.start_batch = 3
    assert list(s) == full[3:] and full[0][0][0] == 2
    dropped = D.LengthBucketSampler(lengths, 4, num_replicas=2, rank=0, drop_last=True, seed=0)
    assert all(len(b) == 4 for b in dropped.rank_batches())


def test_example_rng_is_stable():
    assert D.example_rng(1, 2, 3).random() == D.example_rng(1, 2, 3).random()
    assert D.example_rng(1, 2, 3).random() != D.example_rng(1, 3, 3).random()


def test_conditioning_clips_come_from_the_same_speaker(tmp_path):
    manifest = write_tone_corpus(tmp_path / "c", speakers=3, per_speaker=3)
    from hare import checkpoints
    from hare.models.configs import VQVAEConfig
    from hare.train.objectives import make_objective

    vq = checkpoints.build("vqvae", VQVAEConfig(num_codes=16, hidden=16, codebook_dim=8, resblocks=1))
    vq_path = checkpoints.save(vq, "vqvae", vq.config, tmp_path / "vq")
    corpus, report = D.CachedCorpus.build(manifest, tmp_path / "cache", ("ar_mel", "codes"), vqvae=vq_path)
    assert len(corpus) == 9 and report.kept == 9 and corpus.speakers == ["spk0", "spk1", "spk2"]
    spk1 = corpus.utterances_of("spk1")
    assert len(spk1) == 3 and spk1 == sorted(spk1) and {corpus.utterances[j].speaker for j in spk1} == {"spk1"}
    assert corpus.same_speaker(spk1[1]) == [spk1[0], spk1[2]]
    gpt = make_objective("gpt", dict(layers=1, dim=32, heads=2, mel_vocab=18, start_mel_token=16, stop_mel_token=17),
                         dict(cond_frames=24, cond_clips=2))
    calls = []
    real = corpus.features
    corpus.features = lambda i, names=None: calls.append(i) or real(i, names)
    ex = gpt.example(corpus, 4, D.example_rng(0, 0, 4))
    assert calls[0] == 4 and set(calls[1:]) <= {3, 5}  # the utterance itself, then other clips of spk1
    assert ex["cond"].shape == (2, 80, 24) and ex["text"].dtype == torch.long
    batch = gpt.collate([ex, gpt.example(corpus, 0, D.example_rng(0, 0, 0))])
    assert batch["cond"].shape == (2, 2, 80, 24) and batch["codes"].shape[0] == 2


def test_synth_corpus(tmp_path):
    if not (synth.have_flite() and synth.have_espeak()):
        pytest.skip(f"flite/espeak-ng not installed ({synth.APT_HINT})")
    sentences = ["Hello there.", "The cat sat on the mat.", "Good morning to you.", "It is raining again."]
    corpus = synth.make_corpus(sentences, tmp_path / "synth", ["flite:slt", "flite:kal", "espeak:en-us+f3"],
                               heldout_sentences=1, heldout_speakers=["espeak:en-us+f3"], seed=1)
    assert corpus.counts == {"train": 6, "heldout": 2, "heldout_speakers": 4}
    utts, report = D.load_manifest(corpus.train)
    kept, report = D.validate(utts, report=report)
    assert len(kept) == 6 and report.num_skipped == 0
    assert {u.speaker for u in kept} == {"flite-slt", "flite-kal"}
    info = soundfile.info(kept[0].path)
    assert info.samplerate == 22050 and info.channels == 1 and info.duration > 0.3
    held = {u.text for u in D.load_manifest(corpus.heldout)[0]}
    assert len(held) == 1 and held.isdisjoint({u.text for u in kept})
    again = synth.make_corpus(sentences, tmp_path / "synth", ["flite:slt", "flite:kal", "espeak:en-us+f3"],
                              heldout_sentences=1, heldout_speakers=["espeak:en-us+f3"], seed=1)
    assert again.counts == corpus.counts  # resumable: existing clips are kept


def test_cli_data_check_prepare_and_train_errors(tmp_path, capsys):
    from hare.cli import main

    manifest = write_tone_corpus(tmp_path / "c", speakers=2, per_speaker=2)
    with open(manifest, "a") as f:
        f.write("wavs/nope.wav|hello|spk0\n")
    assert main(["data", "check", str(manifest), "--max-seconds", "10"]) == 0
    out = capsys.readouterr().out
    assert "4 of 5 utterances usable; skipped 1 (1 missing file)" in out and "nope.wav" in out

    cfg = tmp_path / "vq.yaml"
    cfg.write_text(f"objective: vqvae\nout_dir: {tmp_path / 'run'}\n"
                   f"model: {{num_codes: 16, hidden: 16, codebook_dim: 8, resblocks: 1}}\n"
                   f"options: {{crop_frames: 32, min_seconds: 0.5}}\n"
                   f"data: {{train: {manifest}, cache_dir: {tmp_path / 'cache'}, preprocess_workers: 0}}\n")
    assert main(["data", "prepare", str(cfg)]) == 0
    assert "cached 4 training utterances" in capsys.readouterr().out
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 4

    assert main(["train", str(cfg), "--set", "data.train=/nonexistent/manifest.csv"]) == 2
    assert "manifest not found" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read config" in capsys.readouterr().err
    assert main(["train", str(cfg), "--set", "optim.shedule=cosine"]) == 2
    assert "unknown optim settings: shedule" in capsys.readouterr().err


def test_cache_keeps_other_features_and_recomputes_codes_for_a_new_vqvae(tmp_path):
    from hare import checkpoints
    from hare.models.configs import VQVAEConfig

    manifest = write_tone_corpus(tmp_path / "c", speakers=1, per_speaker=2)
    kept, _ = D.validate(D.load_manifest(manifest)[0])
    cache = tmp_path / "cache"
    D.preprocess(kept, cache, ("ar_mel", "wav24"))
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        vq = checkpoints.build("vqvae", VQVAEConfig(num_codes=16, hidden=16, codebook_dim=8, resblocks=1))
        paths.append(checkpoints.save(vq, "vqvae", vq.config, tmp_path / f"vq{seed}"))
    a = D.preprocess(kept, cache, ("ar_mel", "codes"), vqvae=paths[0])
    codes_a = D._read_features(a.files[0])["codes"]
    b = D.preprocess(kept, cache, ("diff_mel", "codes"), vqvae=paths[1])
    assert b.computed == 2  # another VQ-VAE: its own codes, not the cached ones
    feats = D._read_features(b.files[0])
    assert {"ar_mel", "wav24", "diff_mel", "codes", "samples22"} <= set(feats)  # nothing thrown away
    assert D.preprocess(kept, cache, ("codes", "wav24"), vqvae=paths[1]).computed == 0
    assert D.preprocess(kept, cache, ("codes",), vqvae=paths[0]).computed == 2
    assert torch.equal(D._read_features(a.files[0])["codes"], codes_a)


def test_a_broken_vqvae_stops_preprocessing_instead_of_skipping_clips(tmp_path):
    from hare.errors import CheckpointError

    manifest = write_tone_corpus(tmp_path / "c", speakers=1, per_speaker=2)
    kept, _ = D.validate(D.load_manifest(manifest)[0])
    bad = tmp_path / "vq.safetensors"
    bad.write_bytes(b"not a model")
    (tmp_path / "vq.json").write_text('{"kind": "vqvae", "config": {}}')
    with pytest.raises(CheckpointError):
        D.preprocess(kept, tmp_path / "cache", ("ar_mel", "codes"), vqvae=bad)
    assert not list((tmp_path / "cache").rglob("*.bad"))


def test_parallel_preprocessing_matches_in_process(tmp_path):
    manifest = write_tone_corpus(tmp_path / "c", speakers=1, per_speaker=3)
    kept, _ = D.validate(D.load_manifest(manifest)[0])
    one = D.preprocess(kept, tmp_path / "a", ("ar_mel", "diff_mel"), workers=0)
    two = D.preprocess(kept, tmp_path / "b", ("ar_mel", "diff_mel"), workers=2)
    assert two.computed == 3
    for fa, fb in zip(one.files, two.files):
        a, b = D._read_features(fa), D._read_features(fb)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_synth_readers_per_sentence(tmp_path, monkeypatch):
    """--readers N: each sentence by N training speakers (seeded), held-out speakers still read all of them."""
    def fake_speak(spec, text, target):
        target.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(target, np.full(11025, 0.1, dtype=np.float32), 22050)

    monkeypatch.setattr(synth, "synthesize_one", fake_speak)
    sentences = [f"Sentence number {i}." for i in range(12)]
    speakers = ["flite:a", "flite:b", "flite:c", "flite:d"]
    corpus = synth.make_corpus(sentences, tmp_path / "c", speakers, heldout_sentences=2,
                               heldout_speakers=["flite:d"], readers=1, seed=4)
    assert corpus.counts == {"train": 10, "heldout": 2, "heldout_speakers": 12}
    train = D.load_manifest(corpus.train)[0]
    assert len({u.text for u in train}) == 10 and {u.speaker for u in train} <= {"flite-a", "flite-b", "flite-c"}
    assert len({u.speaker for u in train}) > 1  # spread over the speakers, not all by one
    again = synth.make_corpus(sentences, tmp_path / "c2", speakers, heldout_sentences=2,
                              heldout_speakers=["flite:d"], readers=1, seed=4)
    assert [(u.text, u.speaker) for u in D.load_manifest(again.train)[0]] == [(u.text, u.speaker) for u in train]
    two = synth.make_corpus(sentences, tmp_path / "c3", speakers, heldout_sentences=0, readers=2, seed=4)
    assert two.counts["train"] == 24
    with pytest.raises(TrainingError, match="readers"):
        synth.make_corpus(sentences, tmp_path / "c4", speakers, heldout_speakers=["flite:d"], readers=4)
