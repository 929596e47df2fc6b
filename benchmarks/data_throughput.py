"""How fast the data layer builds a cache and reads training batches (it must never hold training back).

    python benchmarks/data_throughput.py              # ~50 MB of generated documents
    python benchmarks/data_throughput.py --mb 200 --seq-len 8192 --batch-size 64

Builds caches from generated documents (text-like and record-like, long and short; generated in
memory first, so the build time is the cache writing alone), then times ``Windows.batch`` for a
number of steps. Read speed counts window positions (ids) per second: compare
it with the bytes/s the trainer reports; a small model on an H100 trains at a few MB/s.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bytemodels.data import ByteDataset

WORDS = [w.encode() for w in "the a cat dog sat ran on under big small house tree and then once upon time".split()]


def text_documents(total_bytes: int, mean_length: int, seed: int = 0):
    """Word soup documents of about ``mean_length`` bytes until ``total_bytes`` are produced (streamed)."""
    rng = np.random.default_rng(seed)
    vocabulary = np.array(WORDS, dtype=object)
    produced = 0
    while produced < total_bytes:
        words = vocabulary[rng.integers(0, len(WORDS), max(1, int(rng.exponential(mean_length / 4))))]
        doc = b" ".join(words)
        produced += len(doc)
        yield doc


def record_documents(total_bytes: int, record_length: int, seed: int = 0):
    """Fixed-length random records (like audio clips or images) with a tag, streamed."""
    rng = np.random.default_rng(seed)
    for _ in range(max(1, total_bytes // record_length)):
        yield rng.integers(0, 256, record_length, dtype=np.uint8).tobytes(), 1


def measure(name: str, documents, layout: str, args: argparse.Namespace, cache: Path) -> dict:
    documents = list(documents)  # generate first: time the cache writing, not the generator
    start = time.perf_counter()
    dataset = ByteDataset.build(documents, cache, key={"bench": name}, layout=layout, val_fraction=0.01,
                                progress=False)
    build_s = time.perf_counter() - start
    windows = dataset.train.windows(args.seq_len, args.patch_size)
    windows.batch(0, 0, args.batch_size)  # warm the page cache
    start = time.perf_counter()
    for step in range(args.steps):
        windows.batch(0, step, args.batch_size)
    read_s = time.perf_counter() - start
    read_bytes = args.steps * args.batch_size * args.seq_len
    return {"data": name, "layout": layout, "documents": len(dataset), "MB": dataset.num_bytes / 1e6,
            "build MB/s": dataset.num_bytes / 1e6 / build_s, "read MB/s": read_bytes / 1e6 / read_s,
            "batches/s": args.steps / read_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50, help="megabytes of generated data per case")
    parser.add_argument("--seq-len", type=int, default=8192, help="window length in ids")
    parser.add_argument("--patch-size", type=int, default=8, help="patch size (records layout alignment)")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per batch")
    parser.add_argument("--steps", type=int, default=50, help="batches to read per case")
    args = parser.parse_args()
    total = int(args.mb * 1e6)
    cases = [("text, ~4 KB documents", lambda: text_documents(total, 4000), "packed"),
             ("text, ~100 B documents", lambda: text_documents(total, 100), "packed"),
             ("records of 16 KB", lambda: record_documents(total, 16000), "records"),
             ("records of 3 KB", lambda: record_documents(total, 3072), "records")]
    cache = Path(tempfile.mkdtemp(prefix="bytemodels-bench-"))
    try:
        rows = [measure(name, make(), layout, args, cache) for name, make, layout in cases]
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(f"seq_len {args.seq_len}, batch {args.batch_size}, patch {args.patch_size}, {args.steps} batches per case\n")
    header = ["data", "layout", "documents", "MB", "build MB/s", "read MB/s", "batches/s"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        cells = [f"{row[h]:,.1f}" if isinstance(row[h], float) else f"{row[h]:,}" if isinstance(row[h], int)
                 else row[h] for h in header]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
