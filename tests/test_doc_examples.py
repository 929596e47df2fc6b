"""Every Python block of README.md and docs/*.md runs as written.

A block runs in a fresh namespace inside a temporary folder. The fence's info string says what it needs:
``needs=NAME`` lays out the files or names the block assumes (a WAV file, a data folder, documents), and
``continues`` runs it in the namespace of the block before it on the same page. Blocks that train are made quick
by the test, not by the docs: every preset is a tiny model and every training config stops after a few steps.
The custom-codec walk-through's ``file=`` and ``run`` blocks are run by tests/codecs/test_codec_docs_example.py.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile

import bytecodecs
from bytemodels import MegabyteConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
WALK_THROUGH = ("file", "run")  # attributes of the blocks the codec walk-through test runs


def python_blocks() -> list[tuple[str, int, dict[str, str], str]]:
    """``(page, block number, attributes, code)`` of every Python block."""
    blocks = []
    for page in PAGES:
        for number, (info, code) in enumerate(FENCE.findall(page.read_text(encoding="utf-8"))):
            attributes = dict(word.partition("=")[::2] for word in info.split())
            blocks.append((str(page.relative_to(ROOT)), number, attributes, code))
    return blocks


RUNNABLE = [block for block in python_blocks() if not any(name in block[2] for name in WALK_THROUGH)]


# -- what blocks assume -----------------------------------------------------------------------------------------
def _wav(path: Path, seconds: float = 0.5, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    time = np.arange(int(seconds * rate)) / rate
    soundfile.write(path, 0.3 * np.sin(2 * np.pi * 440 * time), rate)


def need_speech(folder: Path, namespace: dict) -> None:
    _wav(folder / "speech.wav")
    namespace["generated"] = bytes(range(256)) * 8  # model output: any bytes
    (folder / "runs").mkdir()


def need_fsdd(folder: Path, namespace: dict) -> None:
    for index in range(3):
        _wav(folder / "data" / "fsdd" / f"{index}_clip.wav", seconds=0.1 + index / 10)
    (folder / "data" / "fsdd" / "broken.wav").write_bytes(b"RIFF\x00\x00")
    (folder / "data" / "fsdd" / "empty.wav").write_bytes(b"")


def need_documents(folder: Path, namespace: dict) -> None:
    codec = bytecodecs.get_codec("text")
    namespace["codec"] = codec
    namespace["documents"] = [(codec.encode(f"Once upon a time there were {index} cats. They sat."), codec.tag)
                              for index in range(40)]


def need_tables(folder: Path, namespace: dict) -> None:
    """The walk-through's csv-rows codec, registered as its package would be, and a folder of tables."""
    page = (ROOT / "docs" / "codecs.md").read_text(encoding="utf-8")
    source = next(code for info, code in FENCE.findall(page) if "file=csvrows-codec/csvrows_codec.py" in info)
    module = types.ModuleType("csvrows_codec")
    sys.modules["csvrows_codec"] = module  # dataclasses look their module up there
    exec(compile(source, "csvrows_codec.py", "exec"), module.__dict__)  # noqa: S102 - our own docs
    bytecodecs.register_codec("csv-rows", module.CsvRowsCodec, replace=True)
    tables = folder / "data" / "tables"
    tables.mkdir(parents=True)
    for index in range(30):
        (tables / f"t{index}.csv").write_text(f"name,count\ncat,{index}\ndog,{index * 2}\n", encoding="utf-8")


NEEDS = {"speech": need_speech, "fsdd": need_fsdd, "documents": need_documents, "tables": need_tables}


@pytest.fixture
def quick_training(monkeypatch):
    """Every preset is a tiny model and every training config stops after a few steps."""
    real_preset = MegabyteConfig.preset.__func__

    def tiny_preset(cls, name, **overrides):
        return real_preset(cls, "tiny", **{"dims": (32, 16), "layers": (1, 1), "heads": (2, 1),
                                           "max_seq_len": 64, **overrides})

    real_post_init = TrainConfig.__post_init__

    def quick(self):
        self.max_steps = 2 if self.max_steps is None else min(self.max_steps, 4)
        self.time, self.max_bytes = None, None
        self.batch_size, self.eval_windows, self.progress = 2, 2, False
        real_post_init(self)

    monkeypatch.setattr(MegabyteConfig, "preset", classmethod(tiny_preset))
    monkeypatch.setattr(TrainConfig, "__post_init__", quick)
    yield
    sys.modules.pop("csvrows_codec", None)


def test_the_pages_have_python_blocks_and_every_need_is_known():
    assert len(RUNNABLE) >= 7
    for page, number, attributes, _ in RUNNABLE:
        assert set(attributes) <= {"needs", "continues"}, (page, number, attributes)
        assert attributes.get("needs") in (None, *NEEDS), (page, number, attributes)


# A sample function that fails only warns during training: here that is a failure of the example.
@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("page, number", [(page, number) for page, number, _, _ in RUNNABLE])
def test_block_runs(page, number, tmp_path, monkeypatch, quick_training, clean_registry):
    monkeypatch.chdir(tmp_path)
    blocks = [block for block in python_blocks() if block[0] == page]
    # A block that continues the one before runs after it (and after the one that one continues).
    chain = [number]
    while "continues" in blocks[chain[0]][2]:
        chain.insert(0, chain[0] - 1)
    namespace: dict = {"__name__": "__doc_example__"}
    for index in chain:
        _, _, attributes, code = blocks[index]
        if "needs" in attributes:
            NEEDS[attributes["needs"]](tmp_path, namespace)
        exec(compile(code, f"{page}:python block {index}", "exec"), namespace)  # noqa: S102 - our own docs


@pytest.fixture
def clean_registry():
    from bytecodecs import registry

    for name in registry._BUILTIN_MODULES:  # built-ins register once, on first use: before the snapshot
        registry.codec_class(name)
    saved = dict(registry._codecs)
    yield
    registry._codecs.clear()
    registry._codecs.update(saved)
