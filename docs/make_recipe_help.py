"""Rewrite the ``--help`` listings under each recipe's "### Flags" heading in docs/recipes.md from the recipes'
own parsers: ``python docs/make_recipe_help.py``. The listings show a CPU machine's defaults (the help shows the
values a run takes on the machine it runs on) at 110 columns; tests/test_docs.py checks that every flag is listed."""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "recipes.md"
RECIPES = ("tinystories", "audio", "images", "mixed")
#: The TinyStories listing is whole; the others leave out the model and training groups it already shows.
SHARED_GROUPS = ("model (", "training (")


def help_text(name: str, whole: bool) -> str:
    os.environ["COLUMNS"] = "110"
    sys.path.insert(0, str(ROOT))
    module = importlib.import_module(f"recipes.{name}")
    parser = module.build_train_parser() if hasattr(module, "build_train_parser") else module.build_parser()
    text = parser.format_help()
    if not whole:  # drop the groups the TinyStories listing shows
        kept, skipping = [], False
        for line in text.splitlines():
            if line and not line.startswith(" "):
                skipping = line.startswith(SHARED_GROUPS)
            if not skipping:
                kept.append(line)
        text = "\n".join(kept) + "\n"
    return text.rstrip() + "\n"


def main() -> None:
    page = PAGE.read_text(encoding="utf-8")
    for index, name in enumerate(RECIPES):
        pattern = re.compile(rf"(`python -m recipes\.{name} --help`.*?\n```\n)(.*?)(^```$)", re.MULTILINE | re.DOTALL)
        with contextlib.redirect_stdout(io.StringIO()):
            listing = help_text(name, whole=index == 0)
        page, count = pattern.subn(lambda match: match.group(1) + listing + match.group(3), page)
        if count != 1:
            raise SystemExit(f"docs/recipes.md: found {count} --help listings of recipes.{name}, expected 1")
    PAGE.write_text(page, encoding="utf-8")
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
