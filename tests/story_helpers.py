"""Generated stories for the compare.py tests (imported by name: tests/ is on the path under pytest)."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = ("once upon a time there was a little cat dog girl boy who liked to play in the sun park with "
         "her his friend mom said happy sad big red ball tree").split()


def stories(count: int, seed: int) -> list[str]:
    """Generated stories of a few dozen words each."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 40))).capitalize() + "." for _ in range(count)]


def write_story_data(data_dir: Path) -> None:
    """A shared-data folder holding a small TinyStories stand-in: ``tinystories/{train,valid}.txt`` with stories
    between ``<|endoftext|>`` lines, as the real files have them."""
    folder = data_dir / "tinystories"
    folder.mkdir(parents=True)
    for split, count in (("train", 120), ("valid", 12)):
        text = "".join(story + "\n<|endoftext|>\n" for story in stories(count, {"train": 3, "valid": 4}[split]))
        (folder / f"{split}.txt").write_text(text, encoding="utf-8")
