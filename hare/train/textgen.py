"""Seeded English sentence generator: many different, plain sentences for synthetic training corpora.

    python -m hare.train.textgen --count 3000 --seed 1 > sentences.txt
    python -m hare.train.textgen --count 24000 --vocab broad --exclude configs/eval-sentences.txt > more.txt

Public-domain text corpora are not installable offline, so Hare writes its own training text: a small
grammar over ~900 common words (written for Hare; the output is free to use, CC0). The sentences are simple
but varied in sound, which is what a speech model needs to learn to read. `--vocab broad` adds ~9 000 common
words (`configs/words-broad.txt`, see `hare.train.wordlist`) and templates with function words, so a model
learns how spelling sounds rather than a few hundred words. Real, hand-written sentences
(`configs/sentences.txt`, `configs/eval-sentences.txt`) stay the held-out test material.
"""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

NOUNS = """apple baby bag ball bank basket bean bed bell bench bicycle bird blanket boat book bottle bowl box
boy branch bread bridge brother brush bucket cabin cake camera candle captain car card carpet castle cat chair
cheese chicken child church city cloud coat coffee coin cook corner cottage cousin cow cup curtain dancer daughter
desk doctor dog doll door dragon drawer dress drum duck eagle engine farmer feather fence field finger fire fish
flag flower forest fork fox friend frog garden gate ghost giant girl glass glove goat gold guitar hammer hat hill
horse hospital hotel house island jacket jar judge kettle key king kitchen kite knife ladder lake lamp lawyer leaf
lemon letter lion lizard machine map market meadow mirror monkey moon mountain mouse museum nail needle nest
newspaper nurse ocean office onion orange owl painter palace pancake parrot pencil pepper piano picture pillow
pilot pirate planet plate pocket poet pond potato prince princess puppy queen rabbit radio river road robot rock
roof rope sailor sandwich scarf school scientist sheep shell ship shoe shop singer sister soldier spider spoon
squirrel stable star station stone storm street student sugar suitcase sweater table teacher tent theater tiger
toy tractor train tree truck tunnel turtle umbrella valley village violin wagon wall watch whale window wizard
wolf yard""".split()

PLACES = """the kitchen the garden the station the market the library the harbor the forest the village the old
castle the museum the bakery the city the farm the school the hospital the river the beach the mountains the
valley the park the island the theater the office the bridge the hotel the cellar the attic the meadow the
church the shop"""
PLACES = [" ".join(p.split()) for p in re.split(r"\bthe\s+", PLACES) if p.strip()]

ADJECTIVES = """angry bright brave broken busy calm careful cheerful clean clever cold cozy curious dark
dusty eager early empty enormous famous fancy fierce fresh friendly funny gentle giant golden gray green happy
heavy honest hungry huge icy kind large lazy little lonely loud lucky modern muddy narrow nervous new noisy old
orange patient plain polite proud purple quiet rapid red rich round rusty sad sharp shiny short silent silver
simple sleepy slow small smooth soft sour spotted steep strange strong sunny sweet tall tiny tired warm wet
white wild wise wooden yellow young""".split()

PEOPLE = """Anna Peter Maria James Sophie Thomas Emma Daniel Laura Oliver Grace Henry Alice Samuel Clara Victor
Nora George Ruby Arthur Lucy Frank Helen Oscar Martha Simon Julia Walter Rose Edward""".split()

# (past tense, takes an object)
VERBS_T = """painted carried found lost opened closed cleaned washed repaired bought sold built moved pushed
pulled dropped lifted counted watched followed visited noticed packed filled emptied borrowed returned
measured hid chased fed wrapped answered fixed ordered cooked baked delivered collected""".split()
VERBS_I = """laughed waited smiled shouted whispered danced jumped slept listened wandered arrived
disappeared hurried rested sang stumbled paused agreed complained""".split()
ADVERBS = """quietly slowly quickly carefully happily suddenly gently loudly early late again soon
eagerly patiently calmly bravely""".split()
_TIME_TEXT = ("this morning|last night|on Monday|on Tuesday|on Wednesday|on Thursday|on Friday|on Saturday|"
              "on Sunday|in the spring|in the summer|in the autumn|in the winter|after lunch|before dinner|"
              "at noon|at midnight|every evening|yesterday|today|tomorrow|last week|next year")
TIMES = _TIME_TEXT.split("|")
NUMBERS = "two three four five six seven eight nine ten eleven twelve twenty thirty forty fifty".split()


# Common verbs for the function-word templates: base, past, -ing, -s (irregular ones spelled out).
VERB_FORMS = [tuple(v.split()) for v in """go went going goes|see saw seeing sees|take took taking takes|give gave
giving gives|make made making makes|find found finding finds|tell told telling tells|read read reading reads|write
wrote writing writes|swim swam swimming swims|run ran running runs|eat ate eating eats|drink drank drinking
drinks|sing sang singing sings|buy bought buying buys|bring brought bringing brings|think thought thinking
thinks|send sent sending sends|forget forgot forgetting forgets|blow blew blowing blows|fly flew flying
flies|grow grew growing grows|know knew knowing knows|throw threw throwing throws|draw drew drawing draws|hold
held holding holds|keep kept keeping keeps|leave left leaving leaves|lose lost losing loses|meet met meeting
meets|pay paid paying pays|sell sold selling sells|sit sat sitting sits|sleep slept sleeping sleeps|speak
spoke speaking speaks|stand stood standing stands|teach taught teaching teaches|win won winning wins|wear wore
wearing wears|break broke breaking breaks|catch caught catching catches|choose chose choosing chooses|drive
drove driving drives|fall fell falling falls|feel felt feeling feels|hear heard hearing hears|ride rode riding
rides|shake shook shaking shakes|carry carried carrying carries|play played playing plays|help helped helping
helps|open opened opening opens|close closed closing closes|call called calling calls|walk walked walking
walks|watch watched watching watches|clean cleaned cleaning cleans|cook cooked cooking cooks|paint painted
painting paints|build built building builds|cut cut cutting cuts|put put putting puts|get got getting
gets|come came coming comes|begin began beginning begins|bite bit biting bites|hide hid hiding hides|lend lent
lending lends|spend spent spending spends""".replace("\n", " ").split("|")]
SUBJECTS = [("I", "me", "was"), ("you", "you", "were"), ("he", "him", "was"), ("she", "her", "was"),
            ("we", "us", "were"), ("they", "them", "were"), ("it", "it", "was")]
MODALS = "can could will would should must might may".split()
PREPOSITIONS = """for of with from along over under through about into without between toward around after before
during near behind above below beyond across against among""".split()
NOUN_WORDS = "piece cup box bag picture story letter color sound end side top corner edge part bottom".split()


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _plural(noun: str) -> str:
    irregular = {"child": "children", "mouse": "mice", "sheep": "sheep", "knife": "knives", "leaf": "leaves",
                 "wolf": "wolves", "shelf": "shelves", "fish": "fish", "potato": "potatoes", "tomato": "tomatoes"}
    if noun in irregular:
        return irregular[noun]
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


class Vocabulary:
    """The word pools the grammar draws from: nouns with plurals, adjectives, verbs' past tenses, adverbs.

    The default is the grammar's own ~900 hand-picked words; `Vocabulary.broad()` adds the few thousand common
    words of `configs/words-broad.txt` (built by `hare.train.wordlist` from WordNet and a spelling list), so a
    corpus teaches a model how spelling sounds instead of a small set of words."""

    def __init__(self, nouns=None, adjectives=None, verbs_t=None, verbs_i=None, adverbs=None, verb_forms=None,
                 rich: bool = False):
        self.nouns = list(nouns) if nouns is not None else [(n, _plural(n)) for n in NOUNS]
        self.adjectives = list(adjectives) if adjectives is not None else list(ADJECTIVES)
        self.verbs_t = list(verbs_t) if verbs_t is not None else list(VERBS_T)
        self.verbs_i = list(verbs_i) if verbs_i is not None else list(VERBS_I)
        self.adverbs = list(adverbs) if adverbs is not None else list(ADVERBS)
        self.verb_forms = list(verb_forms) if verb_forms is not None else list(VERB_FORMS)
        # rich: ten more templates with pronouns, modals, prepositions, questions and present/progressive tenses
        self.rich = rich

    @classmethod
    def broad(cls, path: str | Path | None = None) -> "Vocabulary":
        """The built-in words plus a word-list file (default: the packaged `configs/words-broad.txt`)."""
        from hare.train import wordlist

        words = wordlist.read(path or BROAD_WORDS)
        base = cls()

        def union(own, extra):
            seen = set(own)
            return own + [w for w in extra if w not in seen and not seen.add(w)]

        own_nouns = {n for n, _ in base.nouns}
        return cls(nouns=base.nouns + [(n, pl) for n, pl in words["noun"] if n not in own_nouns],
                   adjectives=union(base.adjectives, words["adjective"]),
                   verbs_t=union(base.verbs_t, [forms[1] for forms in words["verb_t"]]),
                   verbs_i=union(base.verbs_i, [forms[1] for forms in words["verb_i"]]),
                   adverbs=union(base.adverbs, words["adverb"]),
                   verb_forms=union(base.verb_forms, words["verb_t"] + words["verb_i"]), rich=True)

    def words(self) -> set[str]:
        """Every word the pools can emit (lowercase), for coverage reports."""
        out = {w for pair in self.nouns for w in pair}
        out.update(self.adjectives, self.verbs_t, self.verbs_i, self.adverbs)
        if self.rich:
            out.update(w for forms in self.verb_forms for w in forms)
            out.update(w.lower() for subject in SUBJECTS for w in subject)
            out.update(MODALS + PREPOSITIONS + NOUN_WORDS)
        return out


BROAD_WORDS = Path(__file__).parent / "configs" / "words-broad.txt"
CORE = Vocabulary()  # the grammar's own words, the default


def _np(rng: random.Random, v: Vocabulary) -> str:
    """A noun phrase: a name, 'the old lamp', 'a fox', 'three red apples', 'her cousin'."""
    kind = rng.random()
    noun, plural = rng.choice(v.nouns)
    if kind < 0.15:
        return rng.choice(PEOPLE)
    if kind < 0.45:
        return f"the {rng.choice(v.adjectives)} {noun}"
    if kind < 0.6:
        return _a(f"{rng.choice(v.adjectives)} {noun}")
    if kind < 0.75:
        return f"{rng.choice(NUMBERS)} {plural}"
    if kind < 0.88:
        return f"{rng.choice(['my', 'his', 'her', 'our', 'their', 'your'])} {noun}"
    return f"the {noun}"


def _place(rng: random.Random) -> str:
    return rng.choice(["in", "near", "behind", "outside", "inside", "beside", "across"]) + " the " + rng.choice(PLACES)


def sentence(rng: random.Random, vocab: Vocabulary | None = None) -> str:
    """One sentence from a few templates, words drawn from `vocab` (default: the built-in words)."""
    v = vocab or CORE
    t = rng.randrange(20 if v.rich else 10)
    if t >= 10:
        return _rich_sentence(rng, v, t - 10)
    if t == 0:
        s = f"{_np(rng, v)} {rng.choice(v.verbs_t)} {_np(rng, v)} {_place(rng)}"
    elif t == 1:
        s = f"{rng.choice(TIMES)} {_np(rng, v)} {rng.choice(v.verbs_i)} {rng.choice(v.adverbs)} {_place(rng)}"
    elif t == 2:
        s = f"{_np(rng, v)} {rng.choice(v.verbs_t)} {_np(rng, v)} and {rng.choice(v.verbs_i)} {rng.choice(v.adverbs)}"
    elif t == 3:
        s = f"did {rng.choice(PEOPLE)} really see {_np(rng, v)} {_place(rng)}"
        return s[0].upper() + s[1:] + "?"
    elif t == 4:
        s = (f"there were {rng.choice(NUMBERS)} {rng.choice(v.adjectives)} {rng.choice(v.nouns)[1]} "
             f"{_place(rng)}")
    elif t == 5:
        s = (f"when {_np(rng, v)} {rng.choice(v.verbs_i)}, {_np(rng, v)} {rng.choice(v.verbs_t)} {_np(rng, v)} "
             f"{rng.choice(v.adverbs)}")
    elif t == 6:
        s = f"please bring {_np(rng, v)} to the {rng.choice(PLACES)} {rng.choice(TIMES)}"
    elif t == 7:
        s = (f"{_np(rng, v)} is {rng.choice(['very', 'quite', 'rather', 'always', 'never', 'not'])} "
             f"{rng.choice(v.adjectives)}")
    elif t == 8:
        s = f"{rng.choice(PEOPLE)} said that {_np(rng, v)} {rng.choice(v.verbs_t)} {_np(rng, v)} {rng.choice(TIMES)}"
    else:
        s = f"{_np(rng, v)} and {_np(rng, v)} {rng.choice(v.verbs_i)} {_place(rng)} {rng.choice(TIMES)}"
    s = " ".join(s.split())
    return s[0].upper() + s[1:] + rng.choice([".", ".", ".", "!"])


def _rich_sentence(rng: random.Random, v: Vocabulary, t: int) -> str:
    """The templates with function words: pronouns, modals, prepositions, questions, present tenses."""
    subj, _, was = rng.choice(SUBJECTS)
    base, past, ing, third = rng.choice(v.verb_forms)
    noun, plural = rng.choice(v.nouns)
    prep, adj, adverb = rng.choice(PREPOSITIONS), rng.choice(v.adjectives), rng.choice(v.adverbs)
    other = rng.choice(SUBJECTS)[1]
    end = "."
    if t == 0:
        s = f"{subj} {rng.choice(MODALS)} {base} {_np(rng, v)} {prep} {other}"
    elif t == 1:
        s = f"{subj} {was} {ing} {_np(rng, v)} {_place(rng)} {rng.choice(TIMES)}"
    elif t == 2:
        s, end = f"{rng.choice(MODALS)} {subj} {base} {_np(rng, v)} {prep} {_np(rng, v)}", "?"
    elif t == 3:
        s = f"{subj} {past} {_np(rng, v)} {prep} {other} {rng.choice(TIMES)}"
    elif t == 4:
        s, end = f"{rng.choice(['why', 'where', 'when', 'how'])} did {subj} {base} {_np(rng, v)}", "?"
    elif t == 5:
        s = f"the {rng.choice(NOUN_WORDS)} of {_np(rng, v)} {third} {adverb}"
    elif t == 6:
        s = f"{subj} would like {_a(adj + ' ' + noun)} {prep} {_np(rng, v)}"
    elif t == 7:
        s = f"it is {adj} to {base} {_np(rng, v)} {rng.choice(TIMES)}"
    elif t == 8:
        want = rng.choice(["like", "want", "need", "hope"])
        want = want + "s" if subj in ("he", "she", "it") else want
        s = f"{subj} {want} to {base} {rng.choice(NUMBERS)} {plural} {prep} {other}"
    else:
        s, end = f"are {rng.choice(['these', 'those', 'the', 'your', 'our'])} {plural} {adj} {prep} {other}", "?"
    s = " ".join(s.split())
    return s[0].upper() + s[1:] + end


def sentences(count: int, seed: int = 0, exclude: set[str] | None = None,
              vocab: Vocabulary | None = None) -> list[str]:
    """`count` distinct sentences (seeded); `exclude` lists sentences never to emit (e.g. a test set)."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    out = []
    tries = 0
    while len(out) < count:
        tries += 1
        if tries > 100 * count + 1000:
            raise RuntimeError(f"could only make {len(out)} distinct sentences")
        s = sentence(rng, vocab)
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab", default="core", help="'core' (the grammar's ~900 words), 'broad' (plus the "
                   "packaged words-broad.txt) or a word-list file written by hare.train.wordlist")
    p.add_argument("--exclude", action="append", default=[], metavar="FILE",
                   help="never emit a sentence listed in FILE (one per line, '#' comments); repeatable")
    args = p.parse_args(argv)
    vocab = None if args.vocab == "core" else Vocabulary.broad(None if args.vocab == "broad" else args.vocab)
    exclude = set()
    for path in args.exclude:
        exclude.update(line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()
                       if line.strip() and not line.startswith("#"))
    flags = f"--count {args.count} --seed {args.seed}" + (f" --vocab {args.vocab}" if vocab else "")
    flags += "".join(f" --exclude {e}" for e in args.exclude)
    print(f"# Generated by hare.train.textgen ({flags}). CC0.")
    print("\n".join(sentences(args.count, args.seed, exclude, vocab)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
