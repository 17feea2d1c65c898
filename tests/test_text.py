"""Cleaners, tokenizer and splitting beyond the fixture sentences (expected values written by hand)."""

import pytest

from hare.errors import TextError
from hare.text import Tokenizer, english_cleaners, split_text


@pytest.mark.parametrize("raw,clean", [
    ("$1", "one dollar"),
    ("$5", "five dollars"),
    ("$0.01", "one cent"),
    ("$2.50", "two dollars, fifty cents"),
    ("$0", "zero dollars"),
    ("£5", "psfive"),  # the reference transliterates "£" to "PS" before its pounds rule can match
    ("1st 2nd 3rd 4th 11th 21st 112th", "first second third fourth eleventh twenty-first one hundred and twelfth"),
    ("1900", "nineteen hundred"),
    ("2000", "two thousand"),
    ("2005", "two thousand five"),
    ("2023", "twenty twenty-three"),
    ("1066", "ten sixty-six"),
    ("1000", "one thousand"),
    ("3000", "three thousand"),
    ("12345", "twelve thousand, three hundred forty-five"),
    ("1,000,000", "one million"),
    ("3.14", "three point fourteen"),
    ("Dr. No and Mrs. Smith, St. Louis", "doctor no and misess smith, saint louis"),
    ("Capt Hook", "capt hook"),  # without the dot it is not an abbreviation
    ("Crème brûlée", "creme brulee"),
    ('She said "hi"', "she said hi"),
    ("a\t\n  b", "a b"),
])
def test_english_cleaners(raw, clean):
    assert english_cleaners(raw) == clean


def test_tokens_known_sentence_and_round_trip():
    tok = Tokenizer()
    assert tok.encode("The quick brown fox.") == [42, 2, 194, 91, 24, 2, 243, 190, 2, 182, 37, 9]
    for text in ["hello world, it's a test!", "numbers: one two three?"]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.stop_token == 0 and tok.start_token == 255 and tok.vocab_size == 255


@pytest.mark.parametrize("bad", ["", "   ", "...!?", "😀😀", "\n\t", "\"\""])
def test_unspeakable_text_raises(bad):
    with pytest.raises(TextError):
        Tokenizer().encode(bad)


def test_too_long_text_raises_with_advice():
    with pytest.raises(TextError, match="split"):
        Tokenizer().encode("word " * 500)
    with pytest.raises(TextError):
        Tokenizer().encode(None)


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


def test_split_edge_cases():
    assert split_text("Short one.") == ["Short one."]
    assert split_text("  ...  ") == []
    words = "abc " * 200  # no punctuation at all: cut at spaces, every chunk within the maximum
    chunks = split_text(words, 50, 80)
    assert all(len(c) <= 80 for c in chunks) and " ".join(chunks).split() == words.split()
    assert split_text("“Curly quotes.” Here.") == ['"Curly quotes." Here.']
