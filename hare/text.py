"""Text front end: English cleaning, the official BPE tokenizer, and long-text splitting.

The cleaning rules and the splitter reproduce the reference (Tortoise v2) exactly, because the official
GPT and CLVP weights were trained on what they produce; `tests/test_fixtures.py` pins them.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from pathlib import Path

from hare.errors import CheckpointError, ModelNotFoundError, SettingsError, TextError, TextTooLongError

STOP_TOKEN = 0  # [STOP]: ends the text, pads batches
UNK_TOKEN = 1  # [UNK]: any character the vocabulary lacks (digits, brackets, %, &, @, ...)
SPACE_TOKEN = 2  # [SPACE]: every space of the cleaned text
VOCAB_SIZE = 255  # ids 0..254 of the official tokenizer.json
START_TOKEN = 255  # start-of-text: one past the BPE vocabulary (not in tokenizer.json); the GPT's text vocab is 256
MAX_TEXT_TOKENS = 400  # the reference refuses text whose tokens + 1 stop reach this

# ---------------------------------------------------------------------------------------------------------------
# Cleaners

_ABBREVIATIONS = {
    "mrs": "misess", "mr": "mister", "dr": "doctor", "st": "saint", "co": "company", "jr": "junior",
    "maj": "major", "gen": "general", "drs": "doctors", "rev": "reverend", "lt": "lieutenant",
    "hon": "honorable", "sgt": "sergeant", "capt": "captain", "esq": "esquire", "ltd": "limited",
    "col": "colonel", "ft": "fort",
}
# Applied one after another in this order (as the reference does): "mrs." is replaced before "mr." can match.
_ABBREVIATION_RES = [(re.compile(rf"\b{abbr}\.", re.IGNORECASE), word) for abbr, word in _ABBREVIATIONS.items()]

_NUMBER_WITH_COMMAS = re.compile(r"([0-9][0-9,]+[0-9])")
_POUNDS = re.compile(r"£([0-9,]*[0-9]+)")
_DOLLARS = re.compile(r"\$([0-9.,]*[0-9]+)")
_DECIMAL = re.compile(r"([0-9]+\.[0-9]+)")
_ORDINAL = re.compile(r"[0-9]+(st|nd|rd|th)")
_NUMBER = re.compile(r"[0-9]+")
_WHITESPACE = re.compile(r"\s+")


@functools.lru_cache(maxsize=1)
def _inflect():
    import inflect

    return inflect.engine()


def _say_dollars(match: re.Match) -> str:
    amount = match.group(1)
    parts = amount.split(".")
    if len(parts) > 2:  # not a money amount we understand: leave the digits for the number rule
        return amount + " dollars"
    dollars = int(parts[0]) if parts[0] else 0
    cents = int(parts[1]) if len(parts) > 1 and parts[1] else 0
    dollar_word = "dollar" if dollars == 1 else "dollars"
    cent_word = "cent" if cents == 1 else "cents"
    if dollars and cents:
        return f"{dollars} {dollar_word}, {cents} {cent_word}"
    if dollars:
        return f"{dollars} {dollar_word}"
    if cents:
        return f"{cents} {cent_word}"
    return "zero dollars"


def _say_number(match: re.Match) -> str:
    n = int(match.group(0))
    words = _inflect().number_to_words
    if 1000 < n < 3000:  # read like a year
        if n == 2000:
            return "two thousand"
        if 2000 < n < 2010:
            return "two thousand " + words(n % 100)
        if n % 100 == 0:
            return words(n // 100) + " hundred"
        return words(n, andword="", zero="oh", group=2).replace(", ", " ")
    return words(n, andword="")


def expand_numbers(text: str) -> str:
    """Digits to words: thousands separators, pounds, dollars and cents, decimals, ordinals, years, integers."""
    text = _NUMBER_WITH_COMMAS.sub(lambda m: m.group(1).replace(",", ""), text)
    text = _POUNDS.sub(r"\1 pounds", text)
    text = _DOLLARS.sub(_say_dollars, text)
    text = _DECIMAL.sub(lambda m: m.group(1).replace(".", " point "), text)
    text = _ORDINAL.sub(lambda m: _inflect().number_to_words(m.group(0)), text)
    return _NUMBER.sub(_say_number, text)


def expand_abbreviations(text: str) -> str:
    for pattern, word in _ABBREVIATION_RES:
        text = pattern.sub(word, text)
    return text


def english_cleaners(text: str) -> str:
    """The reference's English normalisation (order matters): ASCII, lowercase, numbers, abbreviations,
    whitespace, no double quotes."""
    from unidecode import unidecode

    text = unidecode(text).lower()
    if _NUMBER.search(text):  # every number rule needs a digit; inflect's import alone takes ~2 s
        from inflect import NumOutOfRangeError

        try:
            text = expand_numbers(text)
        except (NumOutOfRangeError, ValueError) as exc:  # inflect stops at 10**36; int() at 4300 digits
            longest = max(_NUMBER.findall(text), key=len)
            raise TextError(f"the number {longest[:40]}{'...' if len(longest) > 40 else ''} is too large to read "
                            "aloud; write it in words or in groups of digits") from exc
    text = expand_abbreviations(text)
    text = _WHITESPACE.sub(" ", text)
    return text.replace('"', "")


def basic_cleaners(text: str) -> str:
    """Lowercase and collapse whitespace only (for custom, non-English vocabularies)."""
    return _WHITESPACE.sub(" ", text.lower())


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer


def _default_vocab() -> str:
    return str(resources.files("hare") / "data" / "tokenizer.json")


class Tokenizer:
    """The official BPE text tokenizer (255 symbols; spaces are the literal token `[SPACE]`).

    `encode` gives exactly the reference's ids (`VoiceBpeTokenizer.encode`) for any text it accepts. `basic=True`
    uses the reference's basic cleaners (lowercase, collapse whitespace) for custom, non-English vocabularies;
    `vocab_file` is a `tokenizers` JSON file. `max_tokens` is the model's limit: text with tokens + 1 >= it
    (the reference's assert, counting the stop token) is refused.
    """

    stop_token = STOP_TOKEN
    start_token = START_TOKEN

    def __init__(self, vocab_file: str | Path | None = None, basic: bool = False,
                 max_tokens: int = MAX_TEXT_TOKENS):
        from tokenizers import Tokenizer as _BPE

        path = str(vocab_file) if vocab_file is not None else _default_vocab()
        if not Path(path).is_file():
            raise ModelNotFoundError(f"tokenizer vocabulary not found: {path}")
        try:
            self._bpe = _BPE.from_file(path)
        except Exception as exc:
            raise CheckpointError(f"cannot read tokenizer vocabulary {path}: {exc}") from exc
        self.basic = basic
        self.clean = basic_cleaners if basic else english_cleaners
        self.max_tokens = max_tokens
        self.vocab_size = self._bpe.get_vocab_size()
        # ids that make a sound: a letter or digit in them, and not a bracketed special ([STOP], [UNK], [SPACE])
        specials = {t.content for t in self._bpe.get_added_tokens_decoder().values()}
        self._voiced = frozenset(i for tok, i in self._bpe.get_vocab().items()
                                 if tok not in specials and any(ch.isalnum() for ch in tok))

    def encode(self, text: str, *, check: bool = True) -> list[int]:
        """Token ids of `text` (cleaned), without start or stop tokens.

        Raises TextError if nothing in it can be spoken (empty, whitespace, only punctuation, symbols or emoji,
        or only characters the vocabulary lacks) or if it is too long for the model. `check=False` skips these
        two checks and returns whatever the reference would (e.g. [] for "").
        """
        if not isinstance(text, str):
            raise TextError(f"text must be a string, got {type(text).__name__}")
        ids = self._bpe.encode(self.clean(text).replace(" ", "[SPACE]")).ids
        if check:
            self.check(ids, text)
        return ids

    def is_speakable(self, ids) -> bool:
        """Whether the ids hold at least one token with a letter or digit (not only spaces, punctuation, [UNK])."""
        return any(int(i) in self._voiced for i in ids)

    def check(self, ids, text: str = "") -> None:
        """Raise TextError if `ids` (of `text`) cannot be spoken or do not fit the model."""
        if not self.is_speakable(ids):
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise TextError(f"nothing to speak in {shown!r}: after cleaning it has no letters or numbers "
                            "the tokenizer knows")
        if len(ids) + 1 >= self.max_tokens:
            raise TextTooLongError(
                f"text is too long for one piece ({len(ids)} tokens, at most {self.max_tokens - 2}); split it "
                "(hare.text.split_text, or give the whole text to TextToSpeech, which splits it)")

    def decode(self, ids) -> str:
        """Text of token ids (a list, tensor or array); [STOP] and [UNK] are dropped, as in the reference."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        text = self._bpe.decode([int(i) for i in ids], skip_special_tokens=False).replace(" ", "")
        return text.replace("[SPACE]", " ").replace("[STOP]", "").replace("[UNK]", "")


def tokenizer_for(name: str = "bpe", max_tokens: int = MAX_TEXT_TOKENS, disk_cache: bool = False):
    """The text front end a GPT names in its config (`GPTConfig.text_tokenizer`): "bpe", the official tokenizer
    (`Tokenizer`), or "phonemes-en", English phonemes (`hare.phonemes.PhonemeTokenizer`, needs gruut; with
    `disk_cache`, what it reads is kept on disk, for training corpora)."""
    from hare import phonemes

    if name == "bpe":
        return Tokenizer(max_tokens=max_tokens)
    if name == phonemes.FRONT_END:
        return phonemes.PhonemeTokenizer(max_tokens=max_tokens, disk_cache=disk_cache)
    raise CheckpointError(f"unknown text front end {name!r}: this Hare knows 'bpe' and {phonemes.FRONT_END!r}")


def front_end_mismatch(config, tokenizer) -> str | None:
    """What is wrong between a GPT's config (its `text_vocab`, `start_text_token`, `stop_text_token`) and the
    front end it names (`tokenizer`), or None when they agree."""
    own = (config.text_vocab, config.start_text_token, config.stop_text_token)
    wanted = (tokenizer.vocab_size, tokenizer.start_token, tokenizer.stop_token)
    if own == wanted:
        return None
    return (f"a GPT reading {config.text_tokenizer!r} needs text_vocab {wanted[0]}, start_text_token {wanted[1]} "
            f"and stop_text_token {wanted[2]} (it has {own[0]}, {own[1]}, {own[2]})")


# ---------------------------------------------------------------------------------------------------------------
# Letters (the targets of a CTC recogniser head)

# Index 0 is CTC's blank; letter i of this string is class i + 1.
CTC_ALPHABET = " abcdefghijklmnopqrstuvwxyz'"
_NOT_LETTER = re.compile(r"[^a-z' ]+")


def ctc_targets(text: str, *, cleaned: bool = False) -> list[int]:
    """The letters of `text` as CTC classes (1..len(CTC_ALPHABET); 0 is the blank): English-cleaned unless
    `cleaned` (numbers and abbreviations spelt out, lowercase), then everything but letters, apostrophes and
    spaces dropped (punctuation is a space), runs of spaces collapsed. Raises TextError if no letter is left."""
    text = text if cleaned else english_cleaners(text)
    letters = _WHITESPACE.sub(" ", _NOT_LETTER.sub(" ", text.lower())).strip()
    if not any(ch.isalpha() for ch in letters):
        raise TextError(f"no letters to recognise in {text[:60]!r}")
    return [CTC_ALPHABET.index(ch) + 1 for ch in letters]


# ---------------------------------------------------------------------------------------------------------------
# Long text


_PUNCTUATION_ONLY = re.compile(r"^[\s.,;:!?]*$")


def split_text(text: str, desired_length: int = 200, max_length: int = 300) -> list[str]:
    """Split long text into chunks of about `desired_length` (at most `max_length`) characters.

    Chunks end at sentence boundaries (`!`, `?`, newline, or `.` before a space; runs of `!?.` stay
    together; a closing quote followed by a space ends a quoted sentence) outside quotes. A chunk that
    reaches `max_length` backs off to its last boundary when it is over half the desired length, else to
    the last space. Chunks with nothing but whitespace and punctuation are dropped. Same result as the
    reference's `split_and_recombine_text`.
    """
    if not isinstance(text, str):
        raise TextError(f"text must be a string, got {type(text).__name__}")
    if desired_length < 1 or max_length < 1:  # 0 would make the back-off loop re-read the same character forever
        raise SettingsError(f"split lengths must be at least 1 (got desired {desired_length}, max {max_length})")
    text = re.sub(r"\n\n+", "\n", text)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"[“”]", '"', text)
    return [c for c in (c.strip() for c in _Splitter(text, desired_length, max_length).run())
            if c and not _PUNCTUATION_ONLY.match(c)]


class _Splitter:
    """A cursor over the text that grows the current chunk one character at a time."""

    def __init__(self, text: str, desired: int, maximum: int):
        self.text, self.desired, self.maximum = text, desired, maximum
        self.pos = -1
        self.last = len(text) - 1
        self.in_quote = False
        self.chunk: list[str] = []
        self.boundaries: list[int] = []
        self.chunks: list[str] = []

    def forward(self) -> str:
        self.pos += 1
        ch = self.text[self.pos]
        self.chunk.append(ch)
        if ch == '"':
            self.in_quote = not self.in_quote
        return ch

    def back(self) -> str:
        self.pos -= 1
        self.chunk.pop()
        ch = self.text[self.pos]
        if ch == '"':
            self.in_quote = not self.in_quote
        return ch

    def ahead(self, offset: int) -> str:
        p = self.pos + offset
        # the reference never looks at the final character (p < last): kept for identical splits
        return self.text[p] if 0 <= p < self.last else ""

    def commit(self) -> None:
        self.chunks.append("".join(self.chunk))
        self.chunk = []
        self.boundaries = []

    def run(self) -> list[str]:
        while self.pos < self.last:
            ch = self.forward()
            if len(self.chunk) >= self.maximum:
                if self.boundaries and len(self.chunk) > self.desired / 2:
                    for _ in range(self.pos - self.boundaries[-1]):
                        self.back()
                else:
                    while ch not in "!?.\n " and self.pos > 0 and len(self.chunk) > self.desired:
                        ch = self.back()
                self.commit()
            elif not self.in_quote and (ch in "!?\n" or (ch == "." and self.ahead(1) in "\n ")):
                while (self.pos < len(self.text) - 1 and len(self.chunk) < self.maximum
                       and self.ahead(1) in "!?."):
                    ch = self.forward()
                self.boundaries.append(self.pos)
                if len(self.chunk) >= self.desired:
                    self.commit()
            elif self.in_quote and self.ahead(1) == '"' and self.ahead(2) in "\n ":
                self.forward()
                self.forward()
                self.boundaries.append(self.pos)
        self.chunks.append("".join(self.chunk))
        return self.chunks
