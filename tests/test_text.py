"""Cleaners, tokenizer and splitting beyond the fixture sentences.

Expected values are written by hand: what the reference (tortoise/utils/tokenizer.py, tortoise/utils/text.py)
gives, quirks included (they are what the official weights were trained on).
"""

import json

import pytest
import torch

from hare.errors import CheckpointError, ModelNotFoundError, SettingsError, TextError
from hare.text import (
    MAX_TEXT_TOKENS, START_TOKEN, STOP_TOKEN, UNK_TOKEN, VOCAB_SIZE, Tokenizer, basic_cleaners, english_cleaners,
    split_text,
)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


# ---------------------------------------------------------------------------------------------------------------
# English cleaners

MONEY = [
    ("$1", "one dollar"),
    ("$5", "five dollars"),
    ("$100", "one hundred dollars"),
    ("$0.01", "one cent"),
    ("$0.99", "ninety-nine cents"),
    ("$1.01", "one dollar, one cent"),
    ("$2.50", "two dollars, fifty cents"),
    ("$3.5", "three dollars, five cents"),  # the cents are read as written, not as tenths
    ("$0", "zero dollars"),
    ("$.50", "fifty cents"),
    ("$1,000,000", "one million dollars"),
    ("$1.2.3", "one point two.three dollars"),  # "unexpected format": digits left to the later rules
    ("£5", "psfive"),  # unidecode turns "£" into "PS" before the pounds rule can see it
    ("£1,000", "psone thousand"),
    ("€20", "eurtwenty"),
]

ORDINALS = [
    ("1st", "first"), ("2nd", "second"), ("3rd", "third"), ("4th", "fourth"), ("11th", "eleventh"),
    ("12th", "twelfth"), ("13th", "thirteenth"), ("21st", "twenty-first"), ("22nd", "twenty-second"),
    ("23rd", "twenty-third"), ("100th", "one hundredth"), ("101st", "one hundred and first"),
    ("111th", "one hundred and eleventh"), ("112th", "one hundred and twelfth"), ("1000th", "one thousandth"),
    ("the 21st-century", "the twenty-first-century"),
]

NUMBERS = [
    # 1001..2999 are read as years
    ("1900", "nineteen hundred"),
    ("2000", "two thousand"),
    ("2005", "two thousand five"),
    ("2010", "twenty ten"),
    ("2023", "twenty twenty-three"),
    ("1066", "ten sixty-six"),
    ("1905", "nineteen oh five"),
    ("1984", "nineteen eighty-four"),
    ("1001", "ten oh one"),
    ("1100", "eleven hundred"),
    ("2999", "twenty-nine ninety-nine"),
    # the rest as plain numbers, without "and"
    ("1000", "one thousand"),
    ("3000", "three thousand"),
    ("3001", "three thousand one"),
    ("0", "zero"),
    ("007", "seven"),
    ("101", "one hundred one"),
    ("999", "nine hundred ninety-nine"),
    ("12345", "twelve thousand, three hundred forty-five"),
    ("1,000,000", "one million"),
    ("1000000000000", "one trillion"),
    ("10,00", "one thousand"),  # commas between digits are dropped wherever they are
    # decimals: each side read as an integer
    ("3.14", "three point fourteen"),
    ("0.5", "zero point five"),
    ("2.05", "two point five"),
    ("1.2.3", "one point two.three"),
    (".5", ".five"),
    # what is left alone around the digits
    ("5:30 p.m.", "five:thirty p.m."),
    ("10:45am", "ten:forty-fiveam"),
    ("100%", "one hundred%"),
    ("7/10", "seven/ten"),
    ("-5", "-five"),
    ("a1b2", "aonebtwo"),
    ("R&D", "r&d"),
    ("test@example.com", "test@example.com"),
]

ABBREVIATIONS = [
    ("Dr. No", "doctor no"),
    ("Mr. Smith and Mrs. Smith", "mister smith and misess smith"),
    ("St. Louis", "saint louis"),
    ("Main St. is long", "main saint is long"),  # street or saint: always "saint"
    ("John Smith Jr.", "john smith junior"),
    ("Drs. Jekyll and Hyde", "doctors jekyll and hyde"),
    ("Gen. Lee and Maj. Tom", "general lee and major tom"),
    ("Rev. Lt. Hon. Sgt. Capt. Col.", "reverend lieutenant honorable sergeant captain colonel"),
    ("Acme Co. Ltd.", "acme company limited"),
    ("Ft. Worth", "fort worth"),
    ("J. Doe, Esq.", "j. doe, esquire"),
    ("DR. WHO", "doctor who"),
    ("Capt Hook and Dr Who", "capt hook and dr who"),  # without the dot they stay
    ("edr. x", "edr. x"),  # only at a word start
]

UNICODE_AND_SPACES = [
    ("Crème brûlée", "creme brulee"),
    ("Voilà, naïve café", "voila, naive cafe"),
    ("Straße", "strasse"),
    ("Ærø", "aero"),
    ("Привет", "privet"),
    ("wait — what", "wait -- what"),
    ("“quoted”", "quoted"),
    ("‘single’", "'single'"),
    ("so…", "so..."),
    ("© 2020", "(c) twenty twenty"),
    ("a 😀 b", "a b"),
    ('She said "hi"', "she said hi"),
    ("a\t\n  b", "a b"),
    ("  lead and trail  ", " lead and trail "),
]


@pytest.mark.parametrize("raw,clean", MONEY + ORDINALS + NUMBERS + ABBREVIATIONS + UNICODE_AND_SPACES)
def test_english_cleaners(raw, clean):
    assert english_cleaners(raw) == clean


def test_basic_cleaners_only_lowercase_and_spaces():
    assert basic_cleaners("Hello  World\t1") == "hello world 1"
    assert basic_cleaners('Café "12" Dr.') == 'café "12" dr.'


def test_number_too_large_to_read_is_a_text_error():
    with pytest.raises(TextError, match="too large"):
        english_cleaners("1" * 40)
    with pytest.raises(TextError, match="too large"):
        Tokenizer().encode("call " + "9" * 5000)


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer


def test_constants(tok):
    assert (STOP_TOKEN, UNK_TOKEN, START_TOKEN, VOCAB_SIZE, MAX_TEXT_TOKENS) == (0, 1, 255, 255, 400)
    assert tok.stop_token == 0 and tok.start_token == 255 and tok.vocab_size == 255


def test_known_ids(tok):
    assert tok.encode("The quick brown fox.") == [42, 2, 194, 91, 24, 2, 243, 190, 2, 182, 37, 9]
    assert tok.encode("Hello") == [62, 84, 28]
    # the reference does not strip: outer spaces are [SPACE] tokens
    assert tok.encode("  Hello\n") == [2, 62, 84, 28, 2]
    # characters outside the vocabulary are [UNK] (1), one per character
    assert tok.encode("a % b") == [14, 2, 1, 2, 15]
    assert tok.encode("a&&b") == [14, 1, 1, 15]


@pytest.mark.parametrize("text", [
    "Dr. Smith paid $3.50 on the 3rd of May, 1984!",
    "It's 21st-century tech: what (really) matters?",
    "Voilà; naïve café -- owners/customers.",
    "the wolf said, 'hello.'",
])
def test_round_trip_of_cleaned_text(tok, text):
    assert tok.decode(tok.encode(text)) == english_cleaners(text)


def test_decode_drops_stop_and_unk_and_takes_tensors(tok):
    ids = tok.encode("Hello")
    assert tok.decode(torch.tensor(ids + [STOP_TOKEN, STOP_TOKEN])) == "hello"
    assert tok.decode(tok.encode("a%b")) == "ab"
    assert tok.decode([]) == ""


def test_basic_mode_skips_english_cleaning():
    basic = Tokenizer(basic=True)
    assert basic.encode("Hello World") == Tokenizer().encode("hello world")
    assert basic.encode("Dr. 5") == [17, 31, 9, 2, 1]  # no abbreviation or number expansion: "5" is [UNK]
    with pytest.raises(TextError):
        basic.encode("Привет 123")  # all [UNK] in the official vocabulary


def test_custom_vocab_file(tmp_path):
    from tokenizers import Tokenizer as BPE
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"[STOP]": 0, "[UNK]": 1, "[SPACE]": 2, "ja": 3, "nein": 4, ".": 5}
    bpe = BPE(WordLevel(vocab, unk_token="[UNK]"))
    bpe.pre_tokenizer = Whitespace()
    bpe.add_special_tokens(["[STOP]", "[UNK]", "[SPACE]"])
    path = tmp_path / "vocab.json"
    bpe.save(str(path))
    custom = Tokenizer(vocab_file=path, basic=True)
    assert custom.vocab_size == 6
    assert custom.encode("Ja nein.") == [3, 2, 4, 5]
    assert custom.encode("ja vielleicht") == [3, 2, 1]
    with pytest.raises(TextError):
        custom.encode("vielleicht.")  # nothing this vocabulary can say
    with pytest.raises(ModelNotFoundError):
        Tokenizer(vocab_file=tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(CheckpointError):
        Tokenizer(vocab_file=tmp_path / "bad.json")


# ---------------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("bad", ["", "   ", "\n\t", "...!?", "😀😀", "\"\"", "% & @ #", "[ ]", "—"])
def test_unspeakable_text_raises(tok, bad):
    with pytest.raises(TextError, match="nothing to speak"):
        tok.encode(bad)


def test_unchecked_encode_gives_the_reference_ids_anyway(tok):
    assert tok.encode("", check=False) == []
    assert tok.encode("...", check=False) == [9, 9, 9]
    assert tok.encode("[I am really sad,]")[:2] == [UNK_TOKEN, 22]  # odd but speakable: accepted


def test_length_limit_is_tokens_plus_stop_below_limit(tok):
    words = lambda n: " ".join(["a"] * n)  # noqa: E731  n letters + (n - 1) spaces = 2n - 1 ids
    assert len(tok.encode(words(199))) == 397
    assert len(tok.encode(words(199) + ",")) == 398  # 398 + 1 stop = 399 < 400: the longest accepted
    with pytest.raises(TextError, match="split"):
        tok.encode(words(200))  # 399 + 1 = 400
    assert len(tok.encode(words(200), check=False)) == 399
    small = Tokenizer(max_tokens=10)
    assert len(small.encode(words(4) + ",")) == 8
    with pytest.raises(TextError, match="too long"):
        small.encode(words(5))


def test_non_string_text_raises(tok):
    with pytest.raises(TextError):
        tok.encode(None)
    with pytest.raises(TextError):
        split_text(None)


# ---------------------------------------------------------------------------------------------------------------
# Long-text splitting


def test_split_reference_examples():
    text = """
    This is a sample sentence.
    This is another sample sentence.
    This is a longer sample sentence that should force a split inthemiddlebutinotinthislongword.
    "Don't split my quote... please"
    """
    assert split_text(text, desired_length=20, max_length=40) == [
        "This is a sample sentence.",
        "This is another sample sentence.",
        "This is a longer sample sentence that",
        "should force a split",
        "inthemiddlebutinotinthislongword.",
        '"Don\'t split my quote... please"',
    ]
    text = ("When you are really angry sometimes you use consecutive exclamation marks!!!!!! "
            "Is this a good thing to do?!?!?!\nI don't know but we should handle this situation..........")
    assert split_text(text, desired_length=30, max_length=50) == [
        "When you are really angry sometimes you use",
        "consecutive exclamation marks!!!!!!",
        "Is this a good thing to do?!?!?!",
        "I don't know but we should handle this situation.",
    ]


def test_split_without_punctuation_cuts_at_spaces_then_anywhere():
    assert split_text("aaaa bbbb cccc dddd eeee", 8, 12) == ["aaaa bbbb", "cccc dddd", "eeee"]
    # one long word: backs off to the desired length
    assert split_text("x" * 25, 8, 12) == ["x" * 8, "x" * 8, "x" * 9]
    words = "abc " * 200
    chunks = split_text(words, 50, 80)
    assert all(len(c) <= 80 for c in chunks) and " ".join(chunks).split() == words.split()


def test_split_sentences_and_back_off_to_last_sentence():
    assert split_text("He said Stop. Now. Please. Then left.", 5, 100) == [
        "He said Stop.", "Now.", "Please.", "Then left."]
    # at the maximum, back off to the last sentence end if it is past half the desired length, else to a space
    assert split_text("One two. Three four five six seven.", 10, 20) == ["One two.", "Three four five", "six seven."]


def test_split_quotes_hold_sentences_together():
    assert split_text('He said "Stop. Now. Please." Then left.', 5, 100) == [
        'He said "Stop. Now. Please." Then left.']
    assert split_text("“Hi.” Bye.", 1, 100) == ['"Hi." Bye.']
    assert split_text("“Curly quotes.” Here.") == ['"Curly quotes." Here.']


def test_split_punctuation_runs_and_dropped_chunks():
    assert split_text("Wait?!... Yes.", 1, 100) == ["Wait?!...", "Yes."]
    assert split_text("e.g. 3.14 is pi.", 1, 100) == ["e.g.", "3.14 is pi."]  # "." must be followed by a space
    assert split_text("Hi. ... !!! Bye.", 1, 100) == ["Hi.", "Bye."]  # punctuation-only chunks are dropped
    # newlines become spaces before the walk, so they never end a sentence
    assert split_text("Line one\nLine two", 1, 100) == ["Line one Line two"]


def test_split_trivial_inputs_and_bad_lengths():
    assert split_text("Short one.") == ["Short one."]
    assert split_text("") == []
    assert split_text("  ...  ") == []
    with pytest.raises(SettingsError):
        split_text("some text", 0, 3)  # the reference loops forever here


# ---------------------------------------------------------------------------------------------------------------
# Fixture runner on another meta.json


def test_fixture_runner_on_other_sentences():
    from fixture_runners import text as runner

    meta = {"model": "text",
            "cases": [{"text": "The quick brown fox.", "ids": [42, 2, 194, 91, 24, 2, 243, 190, 2, 182, 37, 9]},
                      {"text": "Hello", "ids": [62, 84]},
                      {"text": "", "ids": []}],
            "split_input": "One two. Three four five six seven.", "split_output": ["One two.", "Three four five",
                                                                                   "six seven."],
            "split_desired_length": 10, "split_max_length": 20}
    assert runner.meta_outputs(meta) == ["ids:0", "ids:1", "ids:2", "split"]
    result = runner.run(None, meta, {})
    assert result["ids:0"] == [] and result["ids:2"] == [] and result["split"] == []
    assert len(result["ids:1"]) == 1 and "want [62, 84]" in result["ids:1"][0]
    meta["split_output"] = ["One two."]
    assert "first difference at chunk 1" in runner.run(None, meta, {})["split"][0]


def test_ctc_targets_are_the_cleaned_letters():
    from hare.text import CTC_ALPHABET, ctc_targets

    spell = lambda ids: "".join(CTC_ALPHABET[i - 1] for i in ids)  # noqa: E731
    assert spell(ctc_targets("Dr. Smith paid $5 -- okay?")) == "doctor smith paid five dollars okay"
    assert spell(ctc_targets("  It's  GREAT;\n fine.  ")) == "it's great fine"
    assert spell(ctc_targets("Café Ünïcode")) == "cafe unicode"  # ASCII first, as the cleaners do
    assert spell(ctc_targets("already clean, 2 words", cleaned=True)) == "already clean words"  # no cleaning
    # every class but the blank (0): the 26 letters, space and apostrophe
    assert set(ctc_targets("The quick brown fox jumps over the lazy dog's back")) == set(range(1, len(CTC_ALPHABET) + 1))
    for bad in ["", "?!", "   ", "'"]:
        with pytest.raises(TextError, match="no letters"):
            ctc_targets(bad)


def test_text_without_digits_never_imports_the_number_reader():
    """inflect's import takes seconds (typeguard instruments it): only a text with a digit pays it."""
    import subprocess
    import sys

    code = ("import sys; from hare.text import english_cleaners as c; c('Hello, Mr. Smith!'); "
            "a = 'inflect' in sys.modules; c('at 7'); print(a, 'inflect' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]
