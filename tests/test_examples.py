"""WordNet usage examples as training sentences (hare.train.examples), on a tiny fake WordNet."""

import pytest

from hare.train import examples

_HEADER = "  1 This software and database is being provided to you, \"the licensee\", by Princeton\n"
_NOUN = (_HEADER +
         '00001740 03 n 01 entity 0 000 | that which exists; "the dog barked all night long"; '
         '"a cat sat on the warm mat by the door"\n'
         '00002137 03 n 01 thing 0 000 | a thing; "he paid 20 dollars for it today"; "an EEG was taken '
         "of the patient\"; \"he said `stop it' loudly to them\"; \"too short\"\n")
_VERB = (_HEADER +
         '00001740 29 v 01 breathe 0 000 | draw air; "The dog barked all night long"; '
         '"please make the check out to me?"\n')


@pytest.fixture
def wordnet(tmp_path):
    (tmp_path / "data.noun").write_text(_NOUN, encoding="latin-1")
    (tmp_path / "data.verb").write_text(_VERB, encoding="latin-1")
    (tmp_path / "data.adj").write_text(_HEADER, encoding="latin-1")
    (tmp_path / "data.adv").write_text(_HEADER, encoding="latin-1")
    return tmp_path


def test_clean_keeps_readable_sentences_only():
    assert examples.clean("the truck gave him a tow to the garage") == "The truck gave him a tow to the garage."
    assert examples.clean("Can we finance the addition to our home?") == "Can we finance the addition to our home?"
    assert examples.clean("it's the natural thing to happen") == "It's the natural thing to happen."
    for bad in ("he paid 20 dollars for it", "an EEG was taken of the patient", "I had tea, said Mr. McGee today",
                "`I had tea occasionally with the Duke,' said Mr. Eggers", "too short now",
                "a very long " + "and long " * 9 + "sentence", "what a damn fine day it is", "café au lait was served hot"):
        assert examples.clean(bad) is None, bad


def test_examples_reads_glosses_once_each(wordnet):
    got = examples.examples(wordnet)
    assert got == ["The dog barked all night long.", "A cat sat on the warm mat by the door.",
                   "Please make the check out to me?"]


def test_missing_wordnet_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        examples.examples(tmp_path)


def test_main_excludes_lists_and_their_phrases(wordnet, tmp_path, capsys):
    held = tmp_path / "eval.txt"
    held.write_text("# a comment line\nWe sat on the warm mat by the fire.\n")
    assert examples.main(["--wordnet", str(wordnet), "--exclude", str(held)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sorted(out) == ["Please make the check out to me?", "The dog barked all night long."]
    assert examples.main(["--wordnet", str(wordnet), "--exclude", str(held), "--overlap", "0", "--count", "2",
                          "--seed", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and set(out) <= {"The dog barked all night long.", "A cat sat on the warm mat by the door.",
                                          "Please make the check out to me?"}


def test_main_unreadable_exclude_list_is_a_clear_error(wordnet, tmp_path, capsys):
    assert examples.main(["--wordnet", str(wordnet), "--exclude", str(tmp_path / "missing.txt")]) == 2
    captured = capsys.readouterr()
    assert "cannot read sentences file" in captured.err and captured.out == ""
    assert examples.main(["--wordnet", str(tmp_path / "no-wordnet")]) == 2
    assert "wordnet-base" in capsys.readouterr().err
