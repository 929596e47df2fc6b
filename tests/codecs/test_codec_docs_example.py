"""The custom-codec walk-through of docs/codecs.md, run exactly as written.

Blocks fenced as ```python file=PATH / ```toml file=PATH are the files of the example package;
blocks fenced as ```python run are executed in order. The package is "installed" the way pip lays
it out: its module and a ``*.dist-info`` whose ``entry_points.txt`` comes from its pyproject.toml.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

DOC = Path(__file__).resolve().parents[2] / "docs" / "codecs.md"
tomllib = pytest.importorskip("tomllib", reason="tomllib (Python 3.11+) reads the example's pyproject.toml")
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def doc_blocks() -> list[tuple[str, dict[str, str], str]]:
    """``(language, attributes, code)`` of every fenced block; ``run`` is an attribute without value."""
    blocks = []
    for language, info, code in FENCE.findall(DOC.read_text(encoding="utf-8")):
        attributes = dict(word.partition("=")[::2] for word in info.split())
        blocks.append((language, attributes, code))
    return blocks


@pytest.fixture
def installed_example(tmp_path, monkeypatch, clean_registry):
    """Write the example package's files and install them into a fresh folder on ``sys.path``."""
    files = {attrs["file"]: code for _, attrs, code in doc_blocks() if "file" in attrs}
    assert set(files) == {"csvrows-codec/pyproject.toml", "csvrows-codec/csvrows_codec.py"}
    for name, code in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(code, encoding="utf-8")

    project = tomllib.loads(files["csvrows-codec/pyproject.toml"])["project"]
    site = tmp_path / "site-packages"
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (site / "csvrows_codec.py").write_text(files["csvrows-codec/csvrows_codec.py"], encoding="utf-8")
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n", encoding="utf-8")
    sections = "".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in points.items())
        for group, points in project["entry-points"].items()
    )
    (info / "entry_points.txt").write_text(sections, encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("csvrows_codec", None)


def test_walk_through_runs_as_written(installed_example, capsys) -> None:
    runnable = [code for language, attrs, code in doc_blocks() if language == "python" and "run" in attrs]
    assert len(runnable) >= 2
    namespace: dict = {}
    for code in runnable:
        exec(compile(code, f"{DOC}:run-block", "exec"), namespace)  # noqa: S102 - our own docs
    assert "skipped 2 unusable files" in capsys.readouterr().out


def test_example_codec_declares_the_entry_point_group() -> None:
    pyproject = next(code for _, attrs, code in doc_blocks() if attrs.get("file", "").endswith("pyproject.toml"))
    import bytecodecs

    entry_points = tomllib.loads(pyproject)["project"]["entry-points"]
    assert entry_points == {bytecodecs.ENTRY_POINT_GROUP: {"csv-rows": "csvrows_codec:CsvRowsCodec"}}


def test_every_python_block_at_least_compiles() -> None:
    for language, attrs, code in doc_blocks():
        if language == "python":
            compile(code, f"{DOC}:{attrs or 'block'}", "exec")


def test_example_package_installs_with_pip_and_runs(tmp_path) -> None:
    """The real thing: pip builds and installs the example package; a fresh interpreter runs the blocks."""
    pytest.importorskip("setuptools", reason="building the example package without network needs setuptools")
    files = {attrs["file"]: code for _, attrs, code in doc_blocks() if "file" in attrs}
    for name, code in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(code, encoding="utf-8")
    target = tmp_path / "target"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(tmp_path / "csvrows-codec")],
        check=True, capture_output=True,
    )
    script = "\n".join(code for language, attrs, code in doc_blocks() if language == "python" and "run" in attrs)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(target)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "skipped 2 unusable files" in result.stdout


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=200),
                      st.lists(st.sampled_from([b"a", b",", b'"', b"\r", b"\n", b"\r\n", b"\0", b"\xff", b" "]),
                               max_size=60).map(b"".join)))
def test_the_walk_through_codec_decodes_any_bytes(installed_example, data) -> None:
    """docs/codecs.md promises that decode never raises on cut or garbled model output: model output is any bytes."""
    import bytecodecs

    codec = bytecodecs.get_codec("csv-rows")
    rows = codec.decode(data)
    assert isinstance(rows, list) and all(isinstance(row, list) for row in rows)


def test_the_walk_through_codec_decodes_a_field_over_the_csv_size_limit(installed_example) -> None:
    import csv

    import bytecodecs

    rows = bytecodecs.get_codec("csv-rows").decode(b'"' + b"x" * (csv.field_size_limit() + 10))
    assert len(rows) == 1
