"""Seeded English sentence generator: many different, plain sentences for synthetic training corpora.

    python -m hare.train.textgen --count 3000 --seed 1 > sentences.txt

Public-domain text corpora are not installable offline, so Hare writes its own training text: a small
grammar over ~900 common words (written for Hare; the output is free to use, CC0). The sentences are simple
but varied in sound, which is what a speech model needs to learn to read. Real, hand-written sentences
(`configs/sentences.txt`, `configs/eval-sentences.txt`) stay the held-out test material.
"""

from __future__ import annotations

import argparse
import random
import re

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


def _np(rng: random.Random) -> str:
    """A noun phrase: a name, 'the old lamp', 'a fox', 'three red apples', 'her cousin'."""
    kind = rng.random()
    noun = rng.choice(NOUNS)
    if kind < 0.15:
        return rng.choice(PEOPLE)
    if kind < 0.45:
        return f"the {rng.choice(ADJECTIVES)} {noun}"
    if kind < 0.6:
        return _a(f"{rng.choice(ADJECTIVES)} {noun}")
    if kind < 0.75:
        return f"{rng.choice(NUMBERS)} {_plural(noun)}"
    if kind < 0.88:
        return f"{rng.choice(['my', 'his', 'her', 'our', 'their', 'your'])} {noun}"
    return f"the {noun}"


def _place(rng: random.Random) -> str:
    return rng.choice(["in", "near", "behind", "outside", "inside", "beside", "across"]) + " the " + rng.choice(PLACES)


def sentence(rng: random.Random) -> str:
    """One sentence from a few templates."""
    t = rng.randrange(10)
    if t == 0:
        s = f"{_np(rng)} {rng.choice(VERBS_T)} {_np(rng)} {_place(rng)}"
    elif t == 1:
        s = f"{rng.choice(TIMES)} {_np(rng)} {rng.choice(VERBS_I)} {rng.choice(ADVERBS)} {_place(rng)}"
    elif t == 2:
        s = f"{_np(rng)} {rng.choice(VERBS_T)} {_np(rng)} and {rng.choice(VERBS_I)} {rng.choice(ADVERBS)}"
    elif t == 3:
        s = f"did {rng.choice(PEOPLE)} really see {_np(rng)} {_place(rng)}"
        return s[0].upper() + s[1:] + "?"
    elif t == 4:
        s = f"there were {rng.choice(NUMBERS)} {rng.choice(ADJECTIVES)} {_plural(rng.choice(NOUNS))} {_place(rng)}"
    elif t == 5:
        s = (f"when {_np(rng)} {rng.choice(VERBS_I)}, {_np(rng)} {rng.choice(VERBS_T)} {_np(rng)} "
             f"{rng.choice(ADVERBS)}")
    elif t == 6:
        s = f"please bring {_np(rng)} to the {rng.choice(PLACES)} {rng.choice(TIMES)}"
    elif t == 7:
        s = f"{_np(rng)} is {rng.choice(['very', 'quite', 'rather', 'always', 'never', 'not'])} {rng.choice(ADJECTIVES)}"
    elif t == 8:
        s = f"{rng.choice(PEOPLE)} said that {_np(rng)} {rng.choice(VERBS_T)} {_np(rng)} {rng.choice(TIMES)}"
    else:
        s = f"{_np(rng)} and {_np(rng)} {rng.choice(VERBS_I)} {_place(rng)} {rng.choice(TIMES)}"
    s = " ".join(s.split())
    return s[0].upper() + s[1:] + rng.choice([".", ".", ".", "!"])


def sentences(count: int, seed: int = 0, exclude: set[str] | None = None) -> list[str]:
    """`count` distinct sentences (seeded); `exclude` lists sentences never to emit (e.g. a test set)."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    out = []
    tries = 0
    while len(out) < count:
        tries += 1
        if tries > 100 * count + 1000:
            raise RuntimeError(f"could only make {len(out)} distinct sentences")
        s = sentence(rng)
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print("# Generated by hare.train.textgen (--count %d --seed %d). CC0." % (args.count, args.seed))
    print("\n".join(sentences(args.count, args.seed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
