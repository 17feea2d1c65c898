"""Build the broad training vocabulary (`configs/words-broad.txt`) from WordNet and a spelling dictionary.

    apt-get install wordnet-base wamerican
    python -m hare.train.wordlist > hare/train/configs/words-broad.txt

A speech model learns to read from the words it hears: hare-mini's first corpora came from a grammar over ~900
words, and its GPT learned those words rather than how spelling sounds (the test sentences' unseen words scored
far worse). This tool lists a few thousand common English nouns, adjectives, verbs and adverbs with the forms
the sentence grammar needs (plural, past tense), so `python -m hare.train.textgen --vocab broad` can draw on them.

Sources, both with permissive licences and installable offline from Debian: WordNet 3.0 (`wordnet-base`,
Princeton's WordNet licence) gives each word's part of speech, how often its senses were tagged in the SemCor
corpus (`cntlist.rev`: the frequency filter) and, for verbs, the sentence frames (transitive or not); the
`wamerican` spelling list (SCOWL) confirms every generated inflection (`stopped`, not `stoped`) and drops words
it does not know. Irregular verbs are left out (WordNet's exception list does not tell a past tense from a
participle); the grammar's own hand-picked lists keep the common ones.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

WORDNET = Path("/usr/share/wordnet")
DICTIONARY = Path("/usr/share/dict/american-english")

# Part-of-speech letter per WordNet synset type in a sense key (5 = adjective satellite).
_SS_TYPE = {"1": "n", "2": "v", "3": "a", "4": "r", "5": "a"}
# Verb frames (WordNet's frame numbers) that take an object: "Somebody ----s something/somebody" and kin.
_TRANSITIVE_FRAMES = {8, 9, 10, 11, 14, 15, 16, 17, 18, 19, 20, 21}
_INTRANSITIVE_FRAMES = {1, 2, 3, 4, 6, 7, 12, 13, 22, 23, 27}
# Never put these in the mouths of the voices (WordNet lists slurs and vulgar senses among its nouns).
_BLOCK = set("""bastard bitch crap cunt damn dick fag faggot fuck nigger piss pussy shit slut whore nazi rape
raped kill killed murder murdered suicide""".split())
_WORD = re.compile(r"^[a-z]{3,12}$")
_VOWELS = set("aeiou")


def sense_counts(wordnet: Path) -> dict[tuple[str, str], int]:
    """(lemma, pos letter) -> how many times its senses were tagged in SemCor (WordNet's `cntlist.rev`)."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for line in (wordnet / "cntlist.rev").read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split()
        if len(parts) != 3 or "%" not in parts[0]:
            continue
        lemma, rest = parts[0].split("%", 1)
        pos = _SS_TYPE.get(rest[:1])
        if pos:
            counts[(lemma, pos)] += int(parts[2])
    return counts


def index_lemmas(wordnet: Path, pos: str) -> dict[str, list[int]]:
    """Lemma -> its synset offsets (most frequent sense first) from WordNet's `index.<pos>`."""
    name = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}[pos]
    out = {}
    for line in (wordnet / f"index.{name}").read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(" "):
            continue  # licence header
        parts = line.split()
        synsets = int(parts[2])
        out[parts[0]] = [int(x) for x in parts[len(parts) - synsets:]]
    return out


def verb_frames(wordnet: Path, offset: int) -> set[int]:
    """Frame numbers of the verb synset at `offset` in `data.verb`."""
    with open(wordnet / "data.verb", "rb") as f:
        f.seek(offset)
        line = f.readline().decode("utf-8", errors="replace")
    fields = line.split("|")[0].split()
    # offset lex_filenum ss_type w_cnt(hex) [word lex_id]... p_cnt [symbol offset pos source/target]... f_cnt
    # [+ f_num w_num]...
    at = 4 + 2 * int(fields[3], 16)
    at += 1 + 4 * int(fields[at])
    count = int(fields[at]) if at < len(fields) else 0
    return {int(fields[at + 2 + 3 * k]) for k in range(count)}


def _candidates_plural(noun: str) -> list[str]:
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return [noun + "es"]
    if noun.endswith("y") and noun[-2] not in _VOWELS:
        return [noun[:-1] + "ies"]
    return [noun + "s", noun + "es"]


def _candidates_past(verb: str) -> list[str]:
    if verb.endswith("e"):
        return [verb + "d"]
    if verb.endswith("y") and verb[-2] not in _VOWELS:
        return [verb[:-1] + "ied"]
    out = [verb + "ed"]
    if len(verb) >= 3 and verb[-1] not in _VOWELS | {"w", "x", "y"} and verb[-2] in _VOWELS \
            and verb[-3] not in _VOWELS:
        out.append(verb + verb[-1] + "ed")  # stop -> stopped (only if the dictionary has it)
    return out


def _candidates_ing(verb: str) -> list[str]:
    if verb.endswith("ie"):
        return [verb[:-2] + "ying"]
    if verb.endswith("e") and not verb.endswith(("ee", "ye", "oe")):
        return [verb[:-1] + "ing"]
    return [verb + "ing", verb + verb[-1] + "ing"]


def _candidates_third(verb: str) -> list[str]:
    return _candidates_plural(verb)


def build(wordnet: Path = WORDNET, dictionary: Path = DICTIONARY, min_count: int = 3) -> dict[str, list]:
    """{'noun': [(noun, plural)], 'adjective': [...], 'verb_t': [(verb, past, -ing, -s)], 'verb_i': [...],
    'adverb': [...]}"""
    known = set(dictionary.read_text(encoding="utf-8", errors="replace").split())
    counts = sense_counts(wordnet)
    exceptions: dict[str, set[str]] = defaultdict(set)  # base -> inflected forms WordNet lists as exceptions
    for line in (wordnet / "verb.exc").read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split()
        for base in parts[1:]:
            exceptions[base].add(parts[0])

    def common(lemma: str, pos: str) -> bool:
        return (_WORD.match(lemma) is not None and lemma in known and lemma not in _BLOCK
                and counts.get((lemma, pos), 0) >= min_count)

    def inflect(candidates: list[str], listed=frozenset()) -> str | None:
        """The candidate spelling the dictionary knows (one WordNet lists for this word first: stopped, not
        the mining verb's stoped)."""
        found = [c for c in candidates if c in known and c not in _BLOCK]
        found.sort(key=lambda c: c not in listed)
        return found[0] if found else None

    nouns = []
    for noun in sorted(index_lemmas(wordnet, "n")):
        if common(noun, "n") and (plural := inflect(_candidates_plural(noun))):
            nouns.append((noun, plural))
    adjectives = sorted(a for a in index_lemmas(wordnet, "a") if common(a, "a"))
    adverbs = sorted(r for r in index_lemmas(wordnet, "r") if common(r, "r") and r.endswith("ly"))
    verb_t, verb_i = [], []
    for verb, offsets in sorted(index_lemmas(wordnet, "v").items()):
        if not common(verb, "v"):
            continue
        listed = exceptions.get(verb, set())
        candidates = [_candidates_past(verb), _candidates_ing(verb), _candidates_third(verb)]
        if listed - {c for group in candidates for c in group}:
            continue  # irregular: went, ran, sang (the exception list does not say which form is the past)
        forms = (verb, *(inflect(group, listed) for group in candidates))
        if None in forms:
            continue
        frames = verb_frames(wordnet, offsets[0])
        if frames & _TRANSITIVE_FRAMES:
            verb_t.append(forms)
        elif frames & _INTRANSITIVE_FRAMES:
            verb_i.append(forms)
    return {"noun": nouns, "adjective": adjectives, "verb_t": verb_t, "verb_i": verb_i, "adverb": adverbs}


def write(words: dict[str, list]) -> str:
    """The word-list file: `class word [form]` per line, '#' comments."""
    lines = ["# Hare's broad training vocabulary: built by `python -m hare.train.wordlist` from WordNet 3.0",
             "# (Princeton WordNet licence) and the wamerican spelling list (SCOWL). One word per line:",
             "# class, base form, and the plural (nouns) or the past tense, -ing and -s forms (verbs)."]
    for cls, items in words.items():
        for item in items:
            lines.append(" ".join([cls, *item]) if isinstance(item, tuple) else f"{cls} {item}")
    return "\n".join(lines) + "\n"


_FIELDS = {"noun": 3, "adjective": 2, "adverb": 2, "verb_t": 5, "verb_i": 5}
_SHAPES = "`noun word plural`, `adjective word`, `adverb word` or `verb_t|verb_i base past ing third`"


def read(path: str | Path) -> dict[str, list]:
    """Parse a word-list file written by `write` (classes may be missing; unknown classes are an error)."""
    out: dict[str, list] = {"noun": [], "adjective": [], "verb_t": [], "verb_i": [], "adverb": []}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        cls = parts[0]
        want = _FIELDS.get(cls)
        if want is None or len(parts) != want:
            raise ValueError(f"{path}:{n}: expected {_SHAPES} with class in {sorted(out)}, got {line!r}")
        out[cls].append(tuple(parts[1:]) if want > 2 else parts[1])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wordnet", type=Path, default=WORDNET, help="WordNet dict directory (Debian wordnet-base)")
    p.add_argument("--dictionary", type=Path, default=DICTIONARY, help="spelling list (Debian wamerican)")
    p.add_argument("--min-count", type=int, default=3, help="least SemCor sense-tag count to keep a word")
    args = p.parse_args(argv)
    for path in (args.wordnet / "index.noun", args.dictionary):
        if not path.exists():
            p.error(f"{path} not found: apt-get install wordnet-base wamerican")
    print(write(build(args.wordnet, args.dictionary, args.min_count)), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
