"""An English phoneme front end for GPTs that read phonemes instead of the official BPE spelling.

Tortoise lets a model bring its own tokenizer; small models learn pronunciation from phonemes far faster than
from spelling (shared/reference/TINY_TTS_LEVERS.md). `PhonemeTokenizer` has the `hare.text.Tokenizer`
interface (encode / decode / check / is_speakable, stop and start tokens), so the GPT, its training objective
and the pipeline treat both alike; a GPT names its front end in its config (`GPTConfig.text_tokenizer`) and
`hare.text.tokenizer_for` builds it. Official models keep the BPE tokenizer, bit-exact.

The text goes through the same English cleaners as the BPE path (ASCII transliteration of other scripts,
numbers, money and abbreviations spelt out), then gruut (MIT; its English lexicon is CMU-dictionary data,
BSD-style; unknown words get its letter-to-sound model's guess) gives each word's US-English phonemes. Stress
marks are tokens of their own (before the vowel they mark), words are separated by the space token, and
punctuation becomes one of four break tokens (, . ? !). Nothing here calls espeak-ng (GPL).
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
from pathlib import Path

from hare.errors import TextError, TextTooLongError

log = logging.getLogger(__name__)

FRONT_END = "phonemes-en"  # the name a GPTConfig gives to ask for this front end
FRONT_END_VERSION = 1  # bump when the symbols a text maps to change (the disk cache is keyed on it)
LANGUAGE = "en-us"

STOP_TOKEN = 0
UNK_TOKEN = 1
SPACE_TOKEN = 2
STRESS = ("ˈ", "ˌ")  # primary, secondary: a token before the stressed vowel
BREAKS = (",", ".", "?", "!")  # minor break; major breaks: statement, question, exclamation
VOWELS = ("i", "ɪ", "eɪ", "ɛ", "æ", "ɑ", "ɔ", "oʊ", "ʊ", "u", "ʌ", "ə", "ɚ", "ɝ", "aɪ", "aʊ", "ɔɪ",
          "ɐ", "ɒ", "ɜ", "ɨ", "ᵻ", "o", "e", "a")
CONSONANTS = ("p", "b", "t", "d", "k", "ɡ", "f", "v", "θ", "ð", "s", "z", "ʃ", "ʒ", "h", "m", "n", "ŋ",
              "l", "ɹ", "w", "j", "t͡ʃ", "d͡ʒ", "ɾ", "ʔ", "x", "r", "ɫ", "ç", "ʍ")
PHONEMES = VOWELS + CONSONANTS
SYMBOLS = ("[STOP]", "[UNK]", " ", *STRESS, *BREAKS, *PHONEMES)
VOCAB_SIZE = len(SYMBOLS)
START_TOKEN = VOCAB_SIZE  # one past the symbols, as the BPE tokenizer's start token is
MAX_TEXT_TOKENS = 400
_ID = {s: i for i, s in enumerate(SYMBOLS)}
_FIRST_VOICED = _ID[PHONEMES[0]]
_ALIASES = {"g": "ɡ", "tʃ": "t͡ʃ", "dʒ": "d͡ʒ", "ʤ": "d͡ʒ", "ʧ": "t͡ʃ"}  # other spellings of the symbols
_DROP = "ːˑ̩̯̃"  # length, nasalisation, syllabicity and non-syllabic marks: not distinctions English needs here
_MAJOR = {"?": "?", "!": "!"}
_GRUUT_LOCK = threading.Lock()

# Each symbol as letters a spelling model would have read for it: `hare.train.objectives.gpt` starts a
# phoneme GPT's text embedding from a letter GPT's by these (the mean of the spelling's BPE token embeddings).
SPELLINGS = {
    "[STOP]": "", "[UNK]": "", " ": " ", "ˈ": "", "ˌ": "", ",": ",", ".": ".", "?": "?", "!": "!",
    "i": "ee", "ɪ": "i", "eɪ": "ay", "ɛ": "e", "æ": "a", "ɑ": "o", "ɔ": "aw", "oʊ": "oa", "ʊ": "oo",
    "u": "oo", "ʌ": "u", "ə": "a", "ɚ": "er", "ɝ": "ir", "aɪ": "ie", "aʊ": "ow", "ɔɪ": "oy", "ɐ": "a",
    "ɒ": "o", "ɜ": "er", "ɨ": "i", "ᵻ": "e", "o": "o", "e": "e", "a": "a",
    "p": "p", "b": "b", "t": "t", "d": "d", "k": "k", "ɡ": "g", "f": "f", "v": "v", "θ": "th", "ð": "th",
    "s": "s", "z": "z", "ʃ": "sh", "ʒ": "s", "h": "h", "m": "m", "n": "n", "ŋ": "ng", "l": "l", "ɹ": "r",
    "w": "w", "j": "y", "t͡ʃ": "ch", "d͡ʒ": "j", "ɾ": "t", "ʔ": "t", "x": "h", "r": "r", "ɫ": "l", "ç": "h",
    "ʍ": "wh",
}
assert set(SPELLINGS) == set(SYMBOLS)


@functools.lru_cache(maxsize=1)
def _gruut():
    try:
        from gruut import sentences
    except ImportError as exc:
        raise TextError("this model reads phonemes, and the phoneme front end needs gruut (a dependency of "
                        "hare-tts): pip install gruut gruut-lang-en") from exc
    return sentences


def available() -> bool:
    """Whether gruut and its English data are installed (found, not imported: importing takes ~0.7 s)."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("gruut", "gruut_lang_en"))


def split_phoneme(phoneme: str) -> list[str]:
    """One gruut phoneme (e.g. 'ˈoʊ', 't͡ʃ', 'iː') as symbols: its stress marks first, then the longest known
    phonemes it is made of; characters no symbol covers become [UNK]."""
    out = [ch for ch in phoneme if ch in STRESS]
    base = "".join(ch for ch in phoneme if ch not in STRESS and ch not in _DROP)
    base = _ALIASES.get(base, base)
    i = 0
    while i < len(base):
        for size in (3, 2, 1):
            piece = _ALIASES.get(base[i:i + size], base[i:i + size])
            if len(base) - i >= size and piece in _ID and piece not in STRESS:
                out.append(piece)
                i += size
                break
        else:
            log.debug("phoneme %r: no symbol for %r", phoneme, base[i])
            out.append("[UNK]")
            i += 1
    return out


class _DiskCache:
    """Symbols of texts already phonemized, in one SQLite file shared by processes (a training run's data
    workers): gruut takes ~50 ms a sentence, a corpus is read every epoch."""

    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()

    def _db(self):
        db = getattr(self._local, "db", None)
        if db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=30)
            db.execute("CREATE TABLE IF NOT EXISTS symbols (text TEXT PRIMARY KEY, symbols TEXT)")
            self._local.db = db
        return db

    def get(self, text: str) -> list[str] | None:
        try:
            row = self._db().execute("SELECT symbols FROM symbols WHERE text = ?", (text,)).fetchone()
        except (sqlite3.Error, OSError):  # unreadable, corrupt or not creatable: phonemize again
            return None
        return None if row is None else row[0].split("\t") if row[0] else []

    def put(self, text: str, symbols: list[str]) -> None:
        try:
            db = self._db()
            db.execute("INSERT OR REPLACE INTO symbols VALUES (?, ?)", (text, "\t".join(symbols)))
            db.commit()
        except (sqlite3.Error, OSError) as exc:  # a full disk or a locked file costs speed, never the result
            log.debug("phoneme cache %s: %s", self.path, exc)


def default_cache_path() -> Path:
    from importlib.metadata import PackageNotFoundError, version

    from hare.paths import hare_home

    try:
        key = f"gruut{version('gruut')}-en{version('gruut-lang-en')}"
    except PackageNotFoundError:
        key = "gruut-unknown"
    return hare_home() / "phonemes" / f"{FRONT_END}-v{FRONT_END_VERSION}-{key}.sqlite"


def _symbols_of(sentences) -> list[str]:
    """The symbols of gruut's sentences (see `PhonemeTokenizer.symbols`)."""
    out: list[str] = []
    for sentence in sentences:
        for word in sentence:
            if word.is_break:
                mark = _MAJOR.get(word.text.strip()[:1], ".") if word.is_major_break else ","
                if out and out[-1] == " ":
                    out.pop()
                if out and out[-1] in BREAKS:  # "?!" or ", ." : one break, the stronger
                    out[-1] = mark if BREAKS.index(mark) > BREAKS.index(out[-1]) else out[-1]
                elif out:
                    out.append(mark)
                continue
            if word.is_punctuation or word.is_spoken is False:
                continue
            phonemes = word.phonemes or []
            if not phonemes:
                if any(ch.isalnum() for ch in word.text):
                    log.debug("no phonemes for %r", word.text)
                    if out and out[-1] != " ":
                        out.append(" ")
                    out.append("[UNK]")
                continue
            if out and out[-1] != " ":
                out.append(" ")
            for p in phonemes:
                out += split_phoneme(p)
    while out and out[-1] == " ":
        out.pop()
    if out and out[-1] == ",":  # the text ends on a minor break ("fine..."): it ends a sentence
        out[-1] = "."
    return out


class PhonemeTokenizer:
    """English text -> phoneme symbol ids (`SYMBOLS`), with the `hare.text.Tokenizer` interface.

    `max_tokens`: the model's limit (text with tokens + 1 >= it is refused, as the BPE tokenizer does).
    `disk_cache`: keep every phonemized text in a SQLite file (`default_cache_path()`, or the path given), for
    training, where the same sentences come back every epoch; inference keeps a small in-memory cache only.
    """

    name = FRONT_END
    stop_token = STOP_TOKEN
    start_token = START_TOKEN
    vocab_size = VOCAB_SIZE
    symbols_table = SYMBOLS

    def __init__(self, max_tokens: int = MAX_TEXT_TOKENS, disk_cache: bool | str | Path = False):
        self.max_tokens = max_tokens
        self._memo: dict[str, list[str]] = {}
        self._warm: threading.Thread | None = None
        path = default_cache_path() if disk_cache is True else Path(disk_cache) if disk_cache else None
        self._disk = _DiskCache(path) if path is not None else None

    def start_warm_up(self) -> None:
        """Import gruut and load its English lexicon and models (about a second) in a background thread, so
        that a model's load overlaps it rather than its first synthesis paying it; `symbols` waits for it."""
        if self._warm is None and available():
            self._warm = threading.Thread(target=self._phonemize, args=("hello.",), daemon=True,
                                          name="hare-phonemes-warm-up")
            self._warm.start()

    def __getstate__(self):  # a data-loader worker opens its own database connection
        state = dict(self.__dict__)
        state["_disk"] = None if self._disk is None else self._disk.path
        state["_warm"] = None
        return state

    def __setstate__(self, state):
        disk = state.pop("_disk")
        self.__dict__.update(state)
        self._disk = None if disk is None else _DiskCache(disk)

    def symbols(self, text: str) -> list[str]:
        """The symbols of `text`: English-cleaned, each word's phonemes (stress marks as their own symbols),
        words separated by ' ', punctuation as break symbols. [] when nothing in it is a word."""
        from hare.text import english_cleaners

        if not isinstance(text, str):
            raise TextError(f"text must be a string, got {type(text).__name__}")
        cleaned = english_cleaners(text).strip()
        if self._warm is not None:
            self._warm.join()
        if cleaned in self._memo:
            return list(self._memo[cleaned])
        found = self._disk.get(cleaned) if self._disk is not None else None
        if found is None:
            found = self._phonemize(cleaned)
            if self._disk is not None:
                self._disk.put(cleaned, found)
        if len(self._memo) > 4096:
            self._memo.clear()
        self._memo[cleaned] = found
        return list(found)

    @staticmethod
    def _phonemize(cleaned: str) -> list[str]:
        if not cleaned:
            return []
        with _GRUUT_LOCK:  # one caller at a time (the server's worker threads): gruut shares its lexicon database
            return _symbols_of(_gruut()(cleaned, lang=LANGUAGE, pos=True, espeak=False))

    def encode(self, text: str, *, check: bool = True) -> list[int]:
        """Symbol ids of `text`, without start or stop tokens. Raises TextError (unless `check=False`) if it
        has nothing to say (empty, only punctuation or symbols) or is too long for the model."""
        ids = [_ID[s] for s in self.symbols(text)]
        if check:
            self.check(ids, text)
        return ids

    def is_speakable(self, ids) -> bool:
        """Whether the ids hold at least one phoneme."""
        return any(int(i) >= _FIRST_VOICED and int(i) < VOCAB_SIZE for i in ids)

    def check(self, ids, text: str = "") -> None:
        if not self.is_speakable(ids):
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise TextError(f"nothing to speak in {shown!r}: after cleaning it has no words to pronounce")
        if len(ids) + 1 >= self.max_tokens:
            raise TextTooLongError(
                f"text is too long for one piece ({len(ids)} phonemes, at most {self.max_tokens - 2}); split it "
                "(hare.text.split_text, or give the whole text to TextToSpeech, which splits it)")

    def decode(self, ids) -> str:
        """The symbols of ids as one string ('hɛlˈoʊ, wˈɝld.'); [STOP] and the start token are dropped, [UNK]
        kept. `ids_of` reads such a string back."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return "".join(SYMBOLS[int(i)] for i in ids if 0 < int(i) < VOCAB_SIZE)

    @staticmethod
    def ids_of(phonemes: str) -> list[int]:
        """Ids of a symbol string as `decode` writes it (longest symbol first); raises TextError on a
        character no symbol covers."""
        ids, i = [], 0
        while i < len(phonemes):
            for size in (6, 5, 3, 2, 1):
                piece = phonemes[i:i + size]
                if len(piece) == size and piece in _ID and piece != "[STOP]":
                    ids.append(_ID[piece])
                    i += size
                    break
            else:
                raise TextError(f"{phonemes[i]!r} at {i} is not a phoneme symbol")
        return ids
