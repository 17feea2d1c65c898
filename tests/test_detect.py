"""`hare.detect` / `hare detect`: Tortoise v3's provenance classifier on the fixture-size weights, and its
one-line errors (exit code 2) for missing or broken weights and unusable audio. No network: $HARE_HOME is the
test's own folder and the hub is forced offline where the default model is asked for."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import load_file

import hare
from hare import checkpoints, cli
from hare.audio import resample_sinc
from hare.detect import load_classifier
from hare.errors import AudioError, CheckpointError, ModelNotFoundError

from conftest import FIXTURES_V3

CASE = FIXTURES_V3 / "classifier"


@pytest.fixture(scope="module")
def case():
    if not (CASE / "weights.pth").is_file():
        pytest.skip(f"classifier fixture not found at {CASE}")
    meta = json.loads((CASE / "meta.json").read_text())
    io = load_file(str(CASE / "io.safetensors"))
    state_dict = torch.load(CASE / "weights.pth", map_location="cpu", weights_only=True)
    return meta, io, state_dict


@pytest.fixture(scope="module")
def models_dir(case, tmp_path_factory):
    """A models folder with the fixture-size classifier as Hare safetensors (an official-layout .pth is read at
    the official sizes, like every other kind)."""
    meta, _, state_dict = case
    model = checkpoints.convert("classifier", state_dict, meta["kwargs"])
    folder = tmp_path_factory.mktemp("models")
    checkpoints.save(model, "classifier", model.config, folder / "classifier.safetensors")
    return folder


@pytest.fixture(autouse=True)
def home(isolated_home):
    return isolated_home


def _wav(path, samples, rate=24000, subtype="FLOAT"):
    soundfile.write(path, np.asarray(samples, dtype=np.float32), rate, subtype=subtype)
    return path


def _noise(seconds, rate=24000, seed=0):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, int(seconds * rate)).astype(np.float32)


def _run(args, capsys):
    code = cli.main(["detect", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, err, *needles):
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hare: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_detect_function_matches_the_fixture(case, models_dir, one_thread):
    _, io, _ = case
    want = float(io["output.prob_tortoise"][0])
    clip = io["input.clip24"][0]
    got = hare.detect(clip, sample_rate=24000, model=models_dir)
    assert abs(got - want) < 1e-4
    assert load_classifier(models_dir) is load_classifier(models_dir)  # loaded once and kept
    assert hare.detect(clip.numpy(), 24000, model=load_classifier(models_dir)) == pytest.approx(got, abs=1e-6)


def test_cli_prints_probability_per_file(case, models_dir, tmp_path, capsys, one_thread):
    _, io, _ = case
    want = float(io["output.prob_tortoise"][0])
    clip = _wav(tmp_path / "clip.wav", io["input.clip24"][0].numpy())  # float WAV: the same samples come back
    code, out, err = _run([clip, "--models-dir", models_dir, "--json"], capsys)
    assert code == 0, err
    rows = json.loads(out)
    assert rows[0]["file"] == str(clip) and abs(rows[0]["probability"] - want) < 1e-4
    short = _wav(tmp_path / "short.wav", _noise(1.0))
    code, out, err = _run([short, "--models-dir", models_dir], capsys)
    assert code == 0, err
    path, prob = out.strip().split("\t")
    assert path == str(short) and len(prob.split(".")[1]) == 3 and 0.0 <= float(prob) <= 1.0


def test_raw_audio_is_resampled_to_24k(models_dir, one_thread):
    wav48 = _noise(1.0, rate=48000, seed=1)
    at24 = resample_sinc(torch.from_numpy(wav48), 48000, 24000)
    got = hare.detect(torch.from_numpy(wav48)[None], sample_rate=48000, model=models_dir)
    assert got == pytest.approx(hare.detect(at24, sample_rate=24000, model=models_dir), abs=1e-6)
    with pytest.raises(AudioError, match="sample_rate"):
        hare.detect(wav48, model=models_dir)
    with pytest.raises(AudioError, match="mono"):
        hare.detect(np.zeros((2, 24000), np.float32), 24000, model=models_dir)


@pytest.mark.parametrize("make,needle", [
    (lambda p: _wav(p / "silent.wav", np.zeros(24000)), "silent"),
    (lambda p: _wav(p / "tiny.wav", _noise(0.1)), "too short"),
    (lambda p: (p / "notes.wav").write_text("not audio at all\n") and p / "notes.wav", "not a readable audio file"),
    (lambda p: p / "missing.wav", "not found"),
])
def test_unusable_audio_is_one_line_exit_2(make, needle, models_dir, tmp_path, capsys):
    path = make(tmp_path)
    code, out, err = _run([path, "--models-dir", models_dir], capsys)
    line = _one_line_error(code, err, needle, str(path))
    assert out == ""
    with pytest.raises(AudioError):
        hare.detect(path, model=models_dir)
    assert line


def test_other_files_are_still_judged(models_dir, tmp_path, capsys, one_thread):
    good = _wav(tmp_path / "good.wav", _noise(1.0))
    bad = _wav(tmp_path / "bad.wav", np.zeros(24000))
    code, out, err = _run([bad, good, "--models-dir", models_dir], capsys)
    _one_line_error(code, err, str(bad))
    assert out.startswith(f"{good}\t")


def test_corrupt_or_wrong_size_classifier_pth(case, tmp_path, capsys):
    clip = _wav(tmp_path / "clip.wav", _noise(1.0))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "classifier.pth").write_bytes(b"PK\x03\x04 truncated zip" + bytes(100))
    code, _, err = _run([clip, "--models-dir", corrupt], capsys)
    _one_line_error(code, err, "cannot read checkpoint", "classifier.pth")

    wrong = tmp_path / "wrong"
    wrong.mkdir()
    torch.save(case[2], wrong / "classifier.pth")  # the fixture's smaller widths: not the official sizes
    code, _, err = _run([clip, "--models-dir", wrong], capsys)
    _one_line_error(code, err, "does not match the model")
    with pytest.raises(CheckpointError):
        hare.detect(clip, model=wrong)


def test_missing_classifier_is_one_line(tmp_path, capsys, monkeypatch):
    clip = _wav(tmp_path / "clip.wav", _noise(1.0))
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run([clip, "--models-dir", empty], capsys)
    _one_line_error(code, err, "no classifier model in", "classifier.pth")
    code, _, err = _run([clip, "--models-dir", tmp_path / "nowhere"], capsys)
    _one_line_error(code, err, "models folder not found")

    # the default (tortoise-v2's classifier.pth), offline with nothing cached: the other model files' error
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    code, _, err = _run([clip], capsys)
    _one_line_error(code, err, "classifier.pth", "not cached and cannot be downloaded", "--models-dir")
    with pytest.raises(ModelNotFoundError, match="classifier.pth"):
        hare.detect(clip)
