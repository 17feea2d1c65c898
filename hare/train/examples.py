"""Everyday training sentences from WordNet's usage examples (real English, not a grammar's).

    apt-get install wordnet-base
    python -m hare.train.examples --count 6000 --seed 11 --exclude hare/train/configs/eval-sentences.txt ... > FILE

hare-mini's training text came from a sentence grammar (`hare.train.textgen`): its GPT learned the grammar's
style, and more steps on it helped the grammar's own held-out sentences but not the everyday ones a user types
(`docs/hare-mini-history.md`). WordNet 3.0's glosses quote ~48 000 short usage examples written by people
("the truck gave him a tow to the garage", "Please make the check out to me"): varied wording, idiom and
word order. This tool pulls them out of the Debian `wordnet-base` data files (Princeton's WordNet licence, a
permissive one; the text is used for training and not shipped), keeps the ones a voice can read as they are
(plain ASCII words and punctuation, no digits, no dialogue quotes, no acronyms, 5-18 words, none of the
blocked words of `hare.train.wordlist`), writes each as a sentence (capital first letter, final punctuation),
drops duplicates, every sentence of the `--exclude` lists and every one that shares a run of `--overlap` words
with them (so that no evaluation sentence's phrase is trained on), and prints a seeded random sample.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path

from hare.train.wordlist import _BLOCK, WORDNET

_QUOTED = re.compile(r'"([^"]+)"')
_ALLOWED = re.compile(r"^[A-Za-z][A-Za-z ,.'?!-]*$")
_ACRONYM = re.compile(r"\b[A-Z]{2,}\b|\b[A-Z][a-z]*[A-Z]")
_TOKEN = re.compile(r"[A-Za-z']+")


def _gloss_examples(line: str) -> list[str]:
    """The quoted usage examples in one WordNet data line's gloss (after its `|`)."""
    _, bar, gloss = line.partition(" | ")
    return _QUOTED.findall(gloss) if bar else []


def clean(example: str, min_words: int = 5, max_words: int = 18) -> str | None:
    """`example` as a sentence a voice can read as written, or None."""
    text = " ".join(example.split()).strip(" ;,")
    if not _ALLOWED.match(text) or _ACRONYM.search(text) or "--" in text or "''" in text:
        return None
    if text.count("'") > text.count("'s") + text.count("n't") + text.count("'re") + text.count("'ll") \
            + text.count("'ve") + text.count("'m") + text.count("'d"):
        return None                                  # a quotation mark, not an apostrophe
    words = _TOKEN.findall(text)
    if not min_words <= len(words) <= max_words or any(w.lower() in _BLOCK for w in words):
        return None
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".?!" else text + "."


def examples(wordnet: Path = WORDNET) -> list[str]:
    """Every usable example of WordNet's four data files, first occurrence order, without duplicates."""
    seen, out = set(), []
    for pos in ("noun", "verb", "adj", "adv"):
        path = Path(wordnet) / f"data.{pos}"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: apt-get install wordnet-base")
        for line in path.read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):                # the licence header
                continue
            for example in _gloss_examples(line):
                sentence = clean(example)
                if sentence and sentence.lower() not in seen:
                    seen.add(sentence.lower())
                    out.append(sentence)
    return out


def _runs(sentence: str, n: int) -> set[tuple[str, ...]]:
    words = [w.lower() for w in _TOKEN.findall(sentence)]
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=0, help="how many to print (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exclude", action="append", default=[], metavar="FILE",
                   help="a sentence list none of whose lines may be printed (repeatable)")
    p.add_argument("--overlap", type=int, default=5, metavar="N",
                   help="also drop sentences sharing a run of N words with an --exclude list (0: off)")
    p.add_argument("--wordnet", type=Path, default=WORDNET)
    a = p.parse_args(argv)
    lines = []
    if a.exclude:  # the corpus tools' reader (comments, blank lines, a clear error); it imports torch
        from hare.train import TrainingError
        from hare.train.synth import read_sentences
        try:
            lines = [s for f in a.exclude for s in read_sentences(f)]
        except TrainingError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    excluded = {ln.lower() for ln in lines}
    runs = set().union(*(_runs(ln, a.overlap) for ln in lines)) if a.overlap > 0 else set()
    try:
        found = examples(a.wordnet)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pool = [s for s in found if s.lower() not in excluded and not (runs and _runs(s, a.overlap) & runs)]
    random.Random(a.seed).shuffle(pool)
    chosen = pool[:a.count] if a.count else pool
    print(f"# WordNet 3.0 usage examples (python -m hare.train.examples --count {a.count} --seed {a.seed}): "
          f"{len(chosen)} of {len(pool)}", file=sys.stderr)
    sys.stdout.write("".join(s + "\n" for s in chosen))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
