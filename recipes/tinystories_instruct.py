"""TinyStories-Instruct entries built from plain stories, and prompts in their format.

An entry is a few header lines (``Features:``, ``Words:``, ``Sentence:``, ...), then ``Story: `` and the story;
``python -m recipes.tinystories --instruct`` fine-tunes on such entries, built here from the data's plain stories
(an approximation of the real set; entries the data already holds are used as they are).
"""

from __future__ import annotations

import random
import re

INSTRUCT_FIELDS = ("Features", "Words", "Summary", "Sentence", "Random sentence")
"""The header lines of the real TinyStories-Instruct entries."""
STORY_FIELD = "Story: "
"""Starts the story of an entry, after the header lines."""
_FIELD_LINE = re.compile(r"^(%s):" % "|".join(re.escape(name) for name in INSTRUCT_FIELDS), re.MULTILINE)
_STORY_LINE = re.compile(r"^Story:", re.MULTILINE)
_WORD = re.compile(r"[A-Za-z]+")
_QUOTED = re.compile(r'"[^"\n]+"|“[^”\n]+”')
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_STOPWORDS = frozenset("""
a about after again all also am an and any are as at away back be because been before being big but by came can
could day did do does down each even every for from get go going got had has have he her here him his how i if in
into is it its just know let like little lot made make many me more much my new no not now of off oh on once one
only or other our out over said saw say see she so some than that the their them then there they this time to too
two up upon us very was way we went were what when where which while who why will with would yes you your
""".split())


def is_instruct_entry(text: str) -> bool:
    """Whether ``text`` is already an instruct entry (it has a ``Story:`` line)."""
    return bool(_STORY_LINE.search(text))


def story_words(story: str) -> list[str]:
    """Content words of ``story`` in order of first use: lower-case in the text (so no names), not stopwords."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(story):
        if word.islower() and len(word) >= 3 and word not in _STOPWORDS:
            seen.setdefault(word, None)
    return list(seen)


def story_sentences(story: str) -> list[str]:
    """Sentences of ``story`` with four words or more."""
    parts = _SENTENCE_END.split(" ".join(story.split()))
    return [part for part in parts if len(part.split()) >= 4]


def make_instruct_entry(story: str, seed: int) -> str:
    """An entry in the TinyStories-Instruct format built from a plain story (an approximation of the real set).

    ``Words:`` three words drawn from the story, ``Sentence:`` one of its sentences (in about half of the
    entries), ``Features: Dialogue`` when it has quoted speech; the header lines in a random order, then
    ``Story: `` and the story. The same story and seed always give the same entry."""
    rng = random.Random(seed)
    story = story.strip()
    header = []
    if _QUOTED.search(story):
        header.append("Features: Dialogue")
    words = story_words(story)
    if words:
        header.append("Words: " + ", ".join(rng.sample(words, min(3, len(words)))))
    sentences = story_sentences(story)
    if sentences and rng.random() < 0.5:
        header.append("Sentence: " + rng.choice(sentences))
    rng.shuffle(header)
    return "".join(line + "\n" for line in header) + STORY_FIELD + story


def story_prompt(prompt: str) -> str:
    """The text a generation starts from: ``\\n`` typed in a shell becomes a newline, and an instruct-style
    prompt (``Words: ...``) without a ``Story:`` line gets one, so the model writes the story next."""
    prompt = prompt.replace("\\n", "\n")
    if _FIELD_LINE.search(prompt) and not is_instruct_entry(prompt):
        prompt = prompt.rstrip("\n") + "\n" + STORY_FIELD
    return prompt
