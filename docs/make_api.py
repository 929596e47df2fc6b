"""Write docs/api.md from the docstrings of every public name of ``bytemodels`` and ``bytecodecs``.

Run from the checkout after changing a public API: ``python docs/make_api.py``.
A test checks that the page names every public object, so a stale page fails CI.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import dataclasses

import bytecodecs
import bytemodels
from bytemodels.app.flags import field_docs

OUT = Path(__file__).resolve().parents[1] / "docs" / "api.md"
# Extra public modules whose functions users call directly.
MODULES = ["bytemodels.tokens", "bytemodels.generate", "bytemodels.sampling", "bytemodels.stage_step",
           "bytemodels.fields", "bytemodels.app.flags"]


def first_paragraph(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip()


def signature(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""


def public_members(cls) -> list[tuple[str, object]]:
    members = []
    for name, value in vars(cls).items():
        if name.startswith("_") and name != "__call__":
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if callable(value) or isinstance(value, property):
            members.append((name, value))
    return members


def _first_sentence(text: str) -> str:
    """The first sentence of a long docstring paragraph (its first line could stop mid-sentence)."""
    flat = " ".join(text.split())
    end = flat.find(". ")
    return flat if end < 0 else flat[:end + 1]


def document(name: str, obj, lines: list[str], level: str = "###") -> None:
    if inspect.isclass(obj):
        lines.append(f"{level} `{name}{signature(obj) if not issubclass(obj, BaseException) else ''}`\n")
        lines.append(first_paragraph(obj) + "\n")
        if dataclasses.is_dataclass(obj):
            docs = field_docs(obj)
            lines.append("| field | default | meaning |\n| --- | --- | --- |")
            for field in dataclasses.fields(obj):
                if field.default is not dataclasses.MISSING:
                    default = f"`{field.default!r}`"
                elif field.default_factory is not dataclasses.MISSING:
                    default = f"`{field.default_factory()!r}`"
                else:
                    default = "required"
                lines.append(f"| `{field.name}` | {default} | {docs.get(field.name, '')} |")
            lines.append("")
        for member, value in public_members(obj):
            target = value.fget if isinstance(value, property) else value
            doc = first_paragraph(target)
            if not doc:
                continue
            head = f"`.{member}`" if isinstance(value, property) else f"`.{member}{signature(target)}`"
            lines.append(f"- {head}: {' '.join(doc.split()) if len(doc) <= 300 else _first_sentence(doc)}")
        lines.append("")
    elif callable(obj):
        lines.append(f"{level} `{name}{signature(obj)}`\n")
        lines.append(first_paragraph(obj) + "\n")
    else:
        lines.append(f"{level} `{name}`\n")
        lines.append(f"`{obj!r}`\n")


def package_section(title: str, module, lines: list[str]) -> None:
    lines.append(f"## {title}\n")
    lines.append(first_paragraph(module).split("\n\n")[0] + "\n")
    for name in sorted(module.__all__):
        document(f"{module.__name__}.{name}", getattr(module, name), lines)


def main() -> int:
    lines = ["# Public API", "",
             "Generated from the docstrings by `python docs/make_api.py`; every name in "
             "`bytemodels.__all__` and `bytecodecs.__all__` is here.", ""]
    package_section("bytemodels", bytemodels, lines)
    package_section("bytecodecs", bytecodecs, lines)
    for module_name in MODULES:
        module = sys.modules.get(module_name) or __import__(module_name, fromlist=["_"])
        lines.append(f"## {module_name}\n")
        lines.append(first_paragraph(module).split("\n\n")[0] + "\n")
        for name, value in sorted(vars(module).items()):
            if name.startswith("_") or getattr(value, "__module__", module_name) != module_name:
                continue
            if inspect.isfunction(value) or inspect.isclass(value):
                document(f"{module_name}.{name}", value, lines)
    OUT.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
