"""A tiny story grammar with recurring characters and objects (TinyStories in miniature).

Every story introduces one or two named characters and one or two objects, then tells a few
events that mention them again, so that copying a name or object seen earlier in the context pays
off. Stories are lists of words from `GRAMMAR_WORDS`; `tokenizer.py` maps them to ids.
"""

from __future__ import annotations

import random

NAMES = ("Lily", "Tom", "Mia", "Ben", "Sara", "Max", "Anna", "Sam", "Zoe", "Leo")
KINDS = ("girl", "boy", "dog", "cat", "bird", "fox")
OBJECTS = ("ball", "box", "cake", "kite", "hat", "boat", "book", "toy", "drum", "cup")
ADJECTIVES = ("red", "big", "small", "blue", "old", "shiny")
PLACES = ("park", "house", "garden", "forest", "school", "river")
FUNCTION_WORDS = (
    ".", ",", "once", "upon", "a", "time", "there", "was", "named", "had", "friend", "one", "day",
    "went", "to", "the", "with", "and", "played", "saw", "said", "wow", "then", "lost", "in",
    "found", "gave", "it", "very", "happy", "sad", "they", "were", "end", "liked", "looked", "for", "of",
)

GRAMMAR_WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(NAMES + KINDS + OBJECTS + ADJECTIVES + PLACES + FUNCTION_WORDS)
)


def _intro(a: str, kind: str, adj: str, obj: str, friend: str, obj2: str) -> list[str]:
    return (
        f"once upon a time there was a {kind} named {a} . "
        f"{a} had a {adj} {obj} . {a} had a friend named {friend} . "
        f"{friend} had a {obj2} ."
    ).split()


_EVENTS = (
    "one day {a} went to the {place} with the {obj} .",
    "{a} and {b} played with the {obj} in the {place} .",
    "{b} saw the {adj} {obj} and said wow .",
    "then {a} lost the {obj} in the {place} .",
    "{a} was very sad . {b} looked for the {obj} .",
    "{b} found the {obj} and gave it to {a} .",
    "{a} liked the {obj2} of {b} .",
    "{b} gave the {obj2} to {a} .",
    "they were very happy .",
    "{a} and {b} went to the {place} .",
)


def story(rng: random.Random) -> list[str]:
    """One story as a list of grammar words; its characters and objects recur throughout."""
    a, b = rng.sample(NAMES, 2)
    obj, obj2 = rng.sample(OBJECTS, 2)
    kind, adj, place = rng.choice(KINDS), rng.choice(ADJECTIVES), rng.choice(PLACES)
    words = _intro(a, kind, adj, obj, b, obj2)
    for _ in range(rng.randint(3, 7)):
        words += rng.choice(_EVENTS).format(a=a, b=b, obj=obj, obj2=obj2, adj=adj, place=place).split()
    return words + "the end .".split()


def story_text(n_stories: int, seed: int = 0) -> str:
    """`n_stories` stories as text for a text probe (`probes.text_file`): one story per paragraph.

    Each story ends with the `<eos>` token, as in the training corpus, because the text probe joins
    the paragraphs without a separator. The result depends only on (n_stories, seed).
    """
    if n_stories < 1:
        raise ValueError(f"n_stories={n_stories} must be >= 1")
    rng = random.Random(seed)
    return "\n\n".join(" ".join(story(rng) + ["<eos>"]) for _ in range(n_stories)) + "\n"
