"""The docs stay in step with the code: every public name is documented, every page is linked."""

import re
from pathlib import Path

import bytecodecs
import bytemodels

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_api_page_names_every_public_object():
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    missing = [f"{module.__name__}.{name}" for module in (bytemodels, bytecodecs) for name in module.__all__
               if f"`{module.__name__}.{name}" not in text]
    assert not missing, f"docs/api.md is stale (run python docs/make_api.py): {missing}"


def test_index_links_every_page_and_every_link_exists():
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(([\w-]+\.md)\)", index))
    pages = {path.name for path in DOCS.glob("*.md")} - {"index.md"}
    assert pages <= linked, f"pages not linked from docs/index.md: {sorted(pages - linked)}"
    assert all((DOCS / name).is_file() for name in linked)
