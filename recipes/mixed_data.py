"""The mixed recipe's documents: a reader per modality (text files split into stories, audio files, an image array
or folder) and all of them interleaved into one records-layout ``ByteDataset``, each document led by its tag.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from itertools import zip_longest
from pathlib import Path
from typing import Any

from recipes.media import Reader, array_reader, files_under, image_array, source_key
from bytemodels.app.recipe import RecipeError
from bytemodels.data import file_key, folder_key

RECIPE = "mixed"
"""Names the byte cache (as the recipe of ``python -m recipes.mixed``)."""
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
"""Real stories, spoken digits and images beside the checkout (when there are some)."""
SEPARATOR = "<|endoftext|>"
"""Ends each story in TinyStories-style ``.txt`` files: a text file is split into documents there."""


# -- documents: one reader per modality, interleaved ------------------------------------------------------
def text_documents(path: Path, codec: Any, limit: int | None) -> tuple[dict[str, Any], Reader]:
    """(cache key, reader) for text: each file, split into stories where it holds ``<|endoftext|>``."""
    files = files_under(path, codec, "--text", "text")
    key = source_key(path, files)

    def read() -> Iterator[bytes]:
        count = 0
        for file in files.paths:
            for story in codec.load(file).split(SEPARATOR):
                story = story.strip()
                if story and (limit is None or count < limit):
                    count += 1
                    yield codec.encode(story)
            if limit is not None and count >= limit:
                return

    return {"text": key, "limit": limit}, read


def audio_documents(path: Path, codec: Any, limit: int | None) -> tuple[dict[str, Any], Reader]:
    """(cache key, reader) for the audio files under ``path``; unusable files are skipped and counted."""
    files = files_under(path, codec, "--audio", "audio", limit)
    return {"audio": source_key(path, files), "limit": limit}, files.encoded


def image_documents(path: Path, codec_options: dict[str, Any], array_key: str | None,
                    limit: int | None) -> tuple[Any, dict[str, Any], Reader]:
    """(codec, cache key, reader) for images: a .npz/.npy array (its images' size is the default) or a folder."""
    import bytecodecs
    from bytecodecs.image import ARRAY_SUFFIXES

    if path.is_file() and path.suffix.lower() in ARRAY_SUFFIXES:
        codec, array = image_array(path, array_key, codec_options, flag="--images")
        key = {"images": file_key(path), "array_key": array_key, "limit": limit}
        return codec, key, array_reader(array, codec, limit)
    codec = bytecodecs.get_codec("image", **codec_options)
    files = files_under(path, codec, "--images", "image", limit)
    return codec, {"images": folder_key(path, files.paths), "limit": limit}, files.encoded


def interleave(readers: dict[str, Reader],
               codecs: dict[str, Any]) -> Iterator[tuple[bytes, int]]:
    """``(bytes, tag)`` documents taking one of each modality in turn, so every stretch of the data (and of
    the validation windows) holds all of them."""
    from tqdm.auto import tqdm

    def tagged(reader: Reader, tag: int) -> Iterator[tuple[bytes, int]]:
        for data in reader():
            yield data, tag

    streams = [tagged(reader, codecs[name].tag) for name, reader in readers.items()]
    with tqdm(desc="encoding documents", unit="doc") as bar:
        for group in zip_longest(*streams):
            for document in group:
                if document is not None and document[0]:
                    bar.update(1)
                    yield document


def byte_dataset(keys: dict[str, Any], readers: dict[str, Reader], codecs: dict[str, Any],
                 cache_dir: Path, val_fraction: float) -> Any:
    """Every modality's documents in one records-layout ``ByteDataset``, built once under ``cache_dir``."""
    from bytemodels.data import ByteDataset

    key = {"recipe": RECIPE, "sources": keys, "codecs": {name: codec.config() for name, codec in codecs.items()}}
    return ByteDataset.build(interleave(readers, codecs), cache_dir, key=key, layout="records", name=RECIPE,
                             val_fraction=val_fraction, split_seed=0, progress=False)  # interleave has a bar


def sources_from_args(args: argparse.Namespace, codec_options: dict[str, dict[str, Any]]) -> tuple[dict, dict, dict]:
    """(codecs, cache keys, readers) of the modalities named by --text, --audio and --images."""
    import bytecodecs

    for flag, path in (("--text", args.text), ("--audio", args.audio), ("--images", args.images)):
        if path and not Path(path).expanduser().exists():
            raise RecipeError(f"{flag} {path}: no such file or folder")
    codecs, keys, readers = {}, {}, {}
    if args.text:
        codecs["text"] = bytecodecs.get_codec("text", **codec_options.get("text", {}))
        keys["text"], readers["text"] = text_documents(Path(args.text).expanduser(), codecs["text"], args.limit)
    if args.audio:
        codecs["audio"] = bytecodecs.get_codec("wav", **codec_options.get("audio", {}))
        keys["audio"], readers["audio"] = audio_documents(Path(args.audio).expanduser(), codecs["audio"], args.limit)
    if args.images:
        codecs["image"], keys["image"], readers["image"] = image_documents(
            Path(args.images).expanduser(), codec_options.get("image", {}), args.array_key, args.limit)
    if not codecs:
        example = ""
        if SHARED_DATA.is_dir():
            shared = os.path.relpath(SHARED_DATA)
            example = (f" (e.g. --text {shared}/tinystories/train.txt --audio {shared}/audio/fsdd/recordings "
                       f"--images {shared}/images/mnist_test.npz)")
        raise RecipeError(f"nothing to train on: give at least one of --text, --audio and --images{example}")
    return codecs, keys, readers
