"""Registry: register/get/list, config round trips, and entry-point discovery from an installed dist."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import bytecodecs
from bytecodecs import ByteCodec, CodecError, Framing

CODECS_DIR = Path(__file__).resolve().parents[2] / "codecs"


@dataclass(frozen=True)
class ReverseCodec(ByteCodec):
    """A toy codec: bytes reversed."""

    repeat: int = 1
    name = "reverse"
    modality = "toy"
    tag = 5

    def encode(self, item: bytes) -> bytes:
        return bytes(item[::-1]) * self.repeat

    def decode(self, data: bytes) -> bytes:
        return bytes(data[::-1])

    def load(self, path):
        return bytecodecs.require_file(path).read_bytes()

    def save(self, item, path):
        Path(path).write_bytes(item)
        return Path(path)


def install_fake_distribution(site: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """Write modules and a ``*.dist-info`` with ``entry_points.txt`` into ``site``, as pip would."""
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    info = site / f"{dist}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n", encoding="utf-8")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{bytecodecs.ENTRY_POINT_GROUP}]\n{lines}", encoding="utf-8")


TOY_MODULE = '''
from dataclasses import dataclass
from bytecodecs import ByteCodec

@dataclass(frozen=True)
class UpperCodec(ByteCodec):
    shout: bool = True
    name = "upper"
    tag = 4
    extension = ".up"

    def encode(self, item):
        return item.upper().encode() if self.shout else item.encode()

    def decode(self, data):
        return data.decode(errors="replace")

    def load(self, path):
        raise NotImplementedError

    def save(self, item, path):
        raise NotImplementedError

class NotACodec:
    name = "plain"

@dataclass(frozen=True)
class WrongName(UpperCodec):
    name = "something-else"
'''


@pytest.fixture
def site(tmp_path, monkeypatch, clean_registry):
    """A folder on ``sys.path`` that fake distributions are installed into."""
    folder = tmp_path / "site-packages"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for module in [name for name in sys.modules if name.startswith("toycodecs_")]:
        del sys.modules[module]


def test_builtins_are_available_and_built_by_name() -> None:
    assert {"text", "wav", "image"} <= set(bytecodecs.available_codecs())
    assert isinstance(bytecodecs.get_codec("text"), bytecodecs.TextCodec)
    assert bytecodecs.get_codec("image", width=8, height=8).framing == Framing(record_size=192, align=24)
    assert bytecodecs.codec_class("wav") is bytecodecs.WavCodec


def test_unknown_name_and_options_are_clear_errors() -> None:
    with pytest.raises(CodecError, match="unknown codec 'midi'; available codecs: .*image.*text.*wav"):
        bytecodecs.get_codec("midi")
    with pytest.raises(CodecError, match="^codec 'wav' has no option 'bitrate'; its options are: sample_rate, "
                                         "channels, sample_format$"):
        bytecodecs.get_codec("wav", bitrate=64)
    with pytest.raises(CodecError, match="invalid: codec 'text' has no option 'stirct'; its options are: strict"):
        bytecodecs.codec_from_config({"name": "text", "stirct": True})
    with pytest.raises(CodecError, match="has no 'name'"):
        bytecodecs.codec_from_config({"strict": True})
    with pytest.raises(CodecError, match="names 'wav'"):
        bytecodecs.TextCodec.from_config({"name": "wav"})


def test_register_get_and_config_round_trip(clean_registry) -> None:
    bytecodecs.register_codec("reverse", ReverseCodec)
    assert "reverse" in bytecodecs.available_codecs()
    codec = bytecodecs.get_codec("reverse", repeat=2)
    assert codec.encode(b"abc") == b"cbacba"
    assert codec.config() == {"name": "reverse", "repeat": 2}
    assert bytecodecs.codec_from_config(codec.config()) == codec


def test_registering_a_name_twice_needs_replace(clean_registry) -> None:
    bytecodecs.register_codec("reverse", ReverseCodec)
    with pytest.raises(ValueError, match="already registered.*replace=True"):
        bytecodecs.register_codec("reverse", ReverseCodec)
    with pytest.raises(ValueError, match="already registered"):
        bytecodecs.register_codec("text", type("MyText", (bytecodecs.TextCodec,), {}))

    @dataclass(frozen=True)
    class FastReverse(ReverseCodec):
        pass

    bytecodecs.register_codec("reverse", FastReverse, replace=True)
    assert bytecodecs.codec_class("reverse") is FastReverse


def test_register_checks_what_it_is_given(clean_registry) -> None:
    with pytest.raises(TypeError, match="not a subclass"):
        bytecodecs.register_codec("reverse", object)
    with pytest.raises(ValueError, match="must match"):
        bytecodecs.register_codec("backwards", ReverseCodec)


def test_entry_point_of_an_installed_distribution_is_discovered(site) -> None:
    install_fake_distribution(site, "toy_codecs", {"upper": "toycodecs_a:UpperCodec"}, {"toycodecs_a": TOY_MODULE})
    assert "upper" in bytecodecs.available_codecs()
    assert "toycodecs_a" not in sys.modules  # listing does not import third-party code
    codec = bytecodecs.get_codec("upper")
    assert codec.encode("hi") == b"HI" and codec.tag == 4
    assert bytecodecs.codec_from_config({"name": "upper", "shout": False}).encode("hi") == b"hi"
    assert "toycodecs_a" in sys.modules


def test_broken_entry_points_name_their_source(site) -> None:
    install_fake_distribution(
        site, "toy_broken",
        {"plain": "toycodecs_b:NotACodec", "shouty": "toycodecs_b:WrongName",
         "missing": "toycodecs_nowhere:Codec"},
        {"toycodecs_b": TOY_MODULE},
    )
    with pytest.raises(CodecError, match="entry point 'plain'.*not a usable codec.*not a subclass"):
        bytecodecs.get_codec("plain")
    with pytest.raises(CodecError, match="entry point 'shouty'.*has name 'something-else'.*must match"):
        bytecodecs.get_codec("shouty")
    with pytest.raises(CodecError, match="entry point 'missing'.*failed to load.*toycodecs_nowhere"):
        bytecodecs.get_codec("missing")


def test_entry_point_cannot_shadow_a_builtin(site) -> None:
    install_fake_distribution(site, "toy_shadow", {"text": "toycodecs_c:UpperCodec"}, {"toycodecs_c": TOY_MODULE})
    registry = bytecodecs.registry
    del registry._codecs["text"]  # as if nobody had asked for "text" yet; the fixture restores it
    with pytest.warns(UserWarning, match="ignored: 'text' is a built-in codec"):
        for entry_point in registry._entry_points():
            if entry_point.name == "text":
                registry._register_entry_point(entry_point)
    assert "text" not in registry._codecs


def test_codecs_never_import_torch_or_the_core() -> None:
    for source in CODECS_DIR.glob("*.py"):
        text = source.read_text(encoding="utf-8")
        for forbidden in ("import torch", "from torch", "import bytemodels", "from bytemodels"):
            assert forbidden not in text, f"{source.name} contains {forbidden!r}"
    script = ("import sys, bytecodecs, bytecodecs.text, bytecodecs.wav, bytecodecs.image, bytecodecs.folder; "
              "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'bytemodels')); "
              "assert not bad, bad")
    subprocess.run([sys.executable, "-c", script], check=True)


def test_import_is_light_until_a_codec_is_used() -> None:
    script = ("import sys, bytecodecs; bytecodecs.get_codec('text'); "
              "heavy = sorted(m for m in ('PIL', 'soundfile', 'soxr') if m in sys.modules); "
              "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", script], check=True)


def run_fresh(script: str, extra_path: Path | None = None) -> None:
    """Run ``script`` in a fresh interpreter, where no built-in codec module is imported yet."""
    prelude = f"import sys; sys.path.insert(0, {str(extra_path)!r})\n" if extra_path else ""
    subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(script)], check=True)


USER_TEXT = '''
import sys
import bytecodecs
from dataclasses import dataclass

@dataclass(frozen=True)
class MyCodec(bytecodecs.ByteCodec):
    name = NAME
    tag = 7

    def encode(self, item):
        return b"mine"

    def decode(self, data):
        return data

    def load(self, path):
        raise NotImplementedError

    def save(self, item, path):
        raise NotImplementedError
'''


BUILTINS = [("text", "bytecodecs.text", "TextCodec"), ("wav", "bytecodecs.wav", "WavCodec"),
            ("image", "bytecodecs.image", "ImageCodec")]
"""(name, module, class) of each built-in codec, loaded lazily on first use."""


@pytest.mark.parametrize("name, module, attribute", BUILTINS)
def test_a_builtin_name_is_taken_before_its_module_is_imported(name, module, attribute) -> None:
    run_fresh(f'''
        NAME = {name!r}
        {textwrap.indent(textwrap.dedent(USER_TEXT), "        ").strip()}
        assert {module!r} not in sys.modules
        try:
            bytecodecs.register_codec(NAME, MyCodec)
        except ValueError as error:
            assert "already registered to the built-in codec" in str(error), error
            assert "replace=True" in str(error), error
        else:
            raise AssertionError("a built-in name was registered without replace=True")
        builtin = bytecodecs.{attribute}                      # the built-in still imports and registers
        assert bytecodecs.codec_class(NAME) is builtin
        ''')


@pytest.mark.parametrize("name, module, attribute", BUILTINS)
def test_replacing_a_builtin_before_its_module_is_imported_keeps_the_users_class(name, module, attribute) -> None:
    run_fresh(f'''
        NAME = {name!r}
        {textwrap.indent(textwrap.dedent(USER_TEXT), "        ").strip()}
        bytecodecs.register_codec(NAME, MyCodec, replace=True)
        assert bytecodecs.get_codec(NAME).encode("x") == b"mine"
        builtin = bytecodecs.{attribute}                      # importing the built-in module does not fail
        assert builtin is not MyCodec and builtin.__module__ == {module!r}
        assert bytecodecs.codec_class(NAME) is MyCodec         # and the user's class stays
        assert NAME in bytecodecs.available_codecs()
        ''')


def test_an_entry_point_name_is_taken_before_it_is_loaded(site) -> None:
    install_fake_distribution(site, "toy_taken", {"upper": "toycodecs_d:UpperCodec"}, {"toycodecs_d": TOY_MODULE})

    @dataclass(frozen=True)
    class MyUpper(ReverseCodec):
        name = "upper"

    with pytest.raises(ValueError, match="already registered to entry point 'upper' = 'toycodecs_d:UpperCodec'"):
        bytecodecs.register_codec("upper", MyUpper)
    assert "toycodecs_d" not in sys.modules                   # refusing does not import the package
    bytecodecs.register_codec("upper", MyUpper, replace=True)
    assert bytecodecs.codec_class("upper") is MyUpper
    assert "toycodecs_d" not in sys.modules                   # the replaced entry point is not loaded


SELF_REGISTERING = TOY_MODULE + '''
import bytecodecs
bytecodecs.register_codec("upper", UpperCodec)
'''


def test_an_entry_point_module_may_register_its_own_class(site) -> None:
    install_fake_distribution(site, "toy_self", {"upper": "toycodecs_e:UpperCodec"},
                              {"toycodecs_e": SELF_REGISTERING})
    codec = bytecodecs.get_codec("upper")
    assert type(codec).__module__ == "toycodecs_e" and codec.encode("hi") == b"HI"
