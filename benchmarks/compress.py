"""``bytemodels compress`` on held-out data against general compressors and the formats people keep.

With models trained by the recipes (any run folder or checkpoint), on the data each run held out:

- **text**: ``valid.txt`` of ``../shared/data/tinystories`` (the TinyStories recipe's validation split), one file;
- **audio**: the FSDD clips the audio recipe held out (``--sample-format pcm16``: the clips as they are stored),
  one ``.bmz`` per WAV file, each restored byte for byte; against FLAC of the same clips, one file each;
- **images**: the MNIST images the images recipe held out, as one raw pixel file (784 bytes per image, coded as
  784-byte records); against one optimised PNG per image.

For each: the ``.bmz`` size against gzip -9, bzip2 -9, xz -9e and zstd -19 --long (each file on its own, as the
``.bmz`` files are made, and all files joined into one stream), the model's cross-entropy on the same bytes
(``bytemodels eval``'s number) and the overhead of the actual files over it. Then compression and decompression
speed on the text model by batch size. Every file is decompressed and compared with the original (``--verify``
limits how many clips, for time).

    python benchmarks/compress.py --text-model runs/tinystories --audio-model runs/audio16 --image-model runs/images
    python benchmarks/compress.py --text-model runs/tinystories --skip-sizes --speed-batch-sizes 1,16,64,128

Results: Markdown tables on stdout, JSON in ``outputs/benchmarks/compress-<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compressors import bits_per_byte as compressed_bpb  # noqa: E402
from compressors import flac_size, general_compressors, png_size  # noqa: E402

import bytecodecs  # noqa: E402
from bytemodels import decompress  # noqa: E402
from bytemodels.checkpoint import load_model, open_checkpoint  # noqa: E402
from bytemodels.documents import bits_per_byte, checkpoint_layout, document_separator, raw_records  # noqa: E402
from bytemodels.documents import separated_documents  # noqa: E402
from bytemodels.file_compression import codec_restore, compress_with_checkpoint  # noqa: E402
from bytemodels.data import split_documents  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def held_out_clips(metadata: dict[str, Any], codec: Any) -> list[Path]:
    """The audio files the audio recipe held out: its file order, its split."""
    data = metadata["data"]
    paths = bytecodecs.iter_folder(Path(data["path"]), codec).paths
    return [paths[i] for i in split_documents(len(paths), data["val_fraction"], 0)[1]]


def held_out_images(metadata: dict[str, Any]) -> np.ndarray:
    """The images the images recipe held out of its array: (count, height, width) uint8."""
    from bytecodecs.image import load_array

    data = metadata["data"]
    array = load_array(Path(data["path"]), data.get("array_key"))
    return array[split_documents(len(array), data["val_fraction"], 0)[1]]


class Model:
    """A trained checkpoint, what it was trained with, and the one compression path of the command line."""

    def __init__(self, path: str, batch_size: int, separator: str | None = None) -> None:
        self.folder, self.metadata, self.state = open_checkpoint(path)
        self.separator = self.metadata.get("separator") if separator is None else separator
        self.model = load_model(self.folder, "cpu")
        self.codec = bytecodecs.codec_from_config(self.metadata["codec"]) if self.metadata.get("codec") else None
        self.layout = checkpoint_layout(self.metadata, self.codec)
        self.batch_size = batch_size
        self.restore = codec_restore(self.codec)

    def compress(self, path: Path) -> tuple[bytes, float, int, str | None]:
        out = io.BytesIO()
        bits, coded, through = compress_with_checkpoint(self.model, self.metadata, self.codec, path, out,
                                                        batch_size=self.batch_size, separator=self.separator)
        return out.getvalue(), bits, coded, through

    def cross_entropy_bits(self, path: Path, through: str | None) -> float:
        """``bytemodels eval``'s bits on the bytes compress coded (the codec's form, or the raw records)."""
        if through is None:
            documents = raw_records(np.fromfile(path, dtype=np.uint8), self.layout, self.codec)
        elif self.layout == "packed" and self.separator:
            documents = separated_documents(self.codec, path, self.separator)
        else:
            documents = self.codec.encode_file(path)
        bits, _ = bits_per_byte(self.model, documents, self.codec.tag if self.codec else None, self.layout, 16)
        return bits

    def describe(self) -> dict[str, Any]:
        config = self.model.config
        return {"checkpoint": str(self.folder), "step": self.state.get("step"),
                "training_seconds": self.state.get("elapsed_s") or self.state.get("elapsed"),
                "parameters": sum(p.numel() for p in self.model.parameters()), "dims": list(config.dims),
                "max_seq_len": config.max_seq_len, "codec": self.codec.config() if self.codec else None}


def measure_files(model: Model, files: list[Path], verify: int, label: str) -> dict[str, Any]:
    """Compress each file; sizes, ideal bits, eval's bits; decompress the first ``verify`` and compare."""
    from tqdm import tqdm

    total = {"files": len(files), "bytes": 0, "bmz": 0, "coded_bytes": 0, "coder_bits": 0.0, "eval_bits": 0.0,
             "through_codec": 0, "seconds_compress": 0.0, "verified": 0}
    for index, path in enumerate(tqdm(files, desc=label, unit="file", leave=False)):
        start = time.perf_counter()
        blob, bits, coded, through = model.compress(path)
        total["seconds_compress"] += time.perf_counter() - start
        total["bytes"] += path.stat().st_size
        total["bmz"] += len(blob)
        total["coded_bytes"] += coded
        total["coder_bits"] += bits
        total["through_codec"] += through is not None
        total["eval_bits"] += model.cross_entropy_bits(path, through)
        if index < verify:
            if decompress(model.model, blob, restore=model.restore) != path.read_bytes():
                raise SystemExit(f"{path}: the round trip did not give the file back")
            total["verified"] += 1
    total["bmz_bits_per_byte"] = 8 * total["bmz"] / total["bytes"]
    total["eval_bits_per_coded_byte"] = total["eval_bits"] / total["coded_bytes"]
    total["overhead"] = 8 * total["bmz"] / total["eval_bits"] - 1
    return total


def compressor_rows(items: list[bytes]) -> dict[str, dict[str, float]]:
    raw = sum(len(item) for item in items)
    rows = {}
    for name, compress in general_compressors(long_zstd=True).items():
        each = sum(len(compress(item)) for item in items)
        joined = len(compress(b"".join(items))) if len(items) > 1 else each
        rows[name] = {"each file": compressed_bpb(each, raw), "all joined": compressed_bpb(joined, raw)}
    return rows


def text_sizes(model: Model, data_dir: Path) -> dict[str, Any]:
    path = data_dir / "tinystories" / "valid.txt"
    result = measure_files(model, [path], 1, "text")
    return {**result, "data": str(path), "compressors": compressor_rows([path.read_bytes()])}


def audio_sizes(model: Model, verify: int, limit: int | None) -> dict[str, Any]:
    clips = held_out_clips(model.metadata, model.codec)[:limit]
    result = measure_files(model, clips, verify, "audio")
    import soundfile

    flac = 0
    for path in clips:
        samples, rate = soundfile.read(path, dtype="int16")
        flac += flac_size(samples, rate)
    result["flac_bits_per_byte"] = compressed_bpb(flac, result["bytes"])
    return {**result, "data": f"{len(clips)} held-out FSDD clips (WAV files)",
            "compressors": compressor_rows([path.read_bytes() for path in clips])}


def image_sizes(model: Model, folder: Path) -> dict[str, Any]:
    images = held_out_images(model.metadata)
    path = folder / "held_out.gray"
    path.write_bytes(np.ascontiguousarray(images).tobytes())
    result = measure_files(model, [path], 1, "images")
    result["png_bits_per_byte"] = compressed_bpb(sum(png_size(image) for image in images), images.nbytes)
    return {**result, "data": f"{len(images)} held-out MNIST images, one raw pixel file",
            "compressors": compressor_rows([image.tobytes() for image in images])}


def speed(model: Model, data_dir: Path, batch_sizes: list[int], size: int) -> list[dict[str, Any]]:
    from bytemodels import compress

    text = (data_dir / "tinystories" / "valid.txt").read_bytes()
    tag = model.codec.tag if model.codec else None
    rows = []
    for batch_size in batch_sizes:
        # Enough text to fill two blocks of windows (a window holds about a KB), at most ``size``.
        data = text[:min(size, max(16384, 2 * batch_size * model.model.config.max_seq_len))]
        separator = document_separator(data, model.separator)
        start = time.perf_counter()
        blob = compress(model.model, data, layout=model.layout, tag=tag, separator=separator, batch_size=batch_size)
        middle = time.perf_counter()
        back = decompress(model.model, blob)
        end = time.perf_counter()
        if back != data:
            raise SystemExit(f"batch {batch_size}: the round trip did not give the data back")
        rows.append({"batch_size": batch_size, "bytes": len(data), "compress_kb_s": len(data) / (middle - start) / 1e3,
                     "decompress_kb_s": len(data) / (end - middle) / 1e3})
        print(f"batch {batch_size}: compress {rows[-1]['compress_kb_s']:.2f} KB/s, decompress "
              f"{rows[-1]['decompress_kb_s']:.2f} KB/s", file=sys.stderr)
    return rows


def size_table(results: dict[str, Any]) -> str:
    columns = [name for name in ("text", "audio", "images") if name in results]
    other = {"audio": ("FLAC -8, one file per clip", "flac_bits_per_byte"),
             "images": ("optimised PNG, one file per image", "png_bits_per_byte")}
    lines = ["| method | " + " | ".join(results[name]["data"] for name in columns) + " |",
             "| --- | " + " | ".join("---:" for _ in columns) + " |"]

    def row(title: str, cell) -> None:
        lines.append(f"| {title} | " + " | ".join(cell(name) for name in columns) + " |")

    row("**bytemodels compress (.bmz files)**", lambda name: f"**{results[name]['bmz_bits_per_byte']:.3f}**")
    row("the model's cross-entropy (bytemodels eval)",
        lambda name: f"{results[name]['eval_bits'] / results[name]['bytes']:.3f}")
    row("overhead of the files over it", lambda name: f"{100 * results[name]['overhead']:.2f}%")
    for title, key in other.values():
        row(title, lambda name, key=key: f"{results[name][key]:.3f}" if key in results[name] else "-")
    for compressor in results[columns[0]]["compressors"]:
        for how in ("each file", "all joined"):
            row(f"{compressor} ({how})", lambda name: f"{results[name]['compressors'][compressor][how]:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--text-model", help="TinyStories recipe run folder or checkpoint")
    parser.add_argument("--separator", default="<|endoftext|>",
                        help="the text model's documents separator, for runs that did not record it")
    parser.add_argument("--audio-model", help="audio recipe run (--sample-format pcm16) folder or checkpoint")
    parser.add_argument("--image-model", help="images recipe run on mnist_test.npz: folder or checkpoint")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64, help="windows per block for the sizes")
    parser.add_argument("--verify", type=int, default=20, help="clips decompressed and compared (all text, images)")
    parser.add_argument("--limit-clips", type=int, help="only the first N held-out clips")
    parser.add_argument("--skip-sizes", action="store_true")
    parser.add_argument("--speed-batch-sizes", default="1,16,64,128")
    parser.add_argument("--speed-bytes", type=int, default=524288,
                        help="most bytes of valid.txt timed per batch size (two blocks' worth, at least 16 KB)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    results: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                               "threads": args.threads, "torch": torch.__version__, "command": sys.argv,
                               "sizes": {}, "models": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for name, path in (("text", args.text_model), ("audio", args.audio_model), ("images", args.image_model)):
            if path is None:
                continue
            model = Model(path, args.batch_size, args.separator if name == "text" else None)
            results["models"][name] = model.describe()
            if args.skip_sizes:
                continue
            if name == "text":
                results["sizes"][name] = text_sizes(model, args.data)
            elif name == "audio":
                results["sizes"][name] = audio_sizes(model, args.verify, args.limit_clips)
            else:
                results["sizes"][name] = image_sizes(model, Path(scratch))
            print(json.dumps({key: value for key, value in results["sizes"][name].items() if key != "compressors"}),
                  file=sys.stderr)
        if args.text_model and args.speed_batch_sizes:
            batch_sizes = [int(value) for value in args.speed_batch_sizes.split(",")]
            results["speed"] = speed(Model(args.text_model, args.batch_size), args.data, batch_sizes, args.speed_bytes)
    results["seconds"] = time.time() - started
    if results["sizes"]:
        print(size_table(results["sizes"]))
    for row in results.get("speed", []):
        print(f"| {row['batch_size']} | {row['compress_kb_s']:.2f} | {row['decompress_kb_s']:.2f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"compress-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
