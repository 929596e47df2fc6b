"""Bits per byte of a checkpoint over every window of a validation cache, and over two 64-window samples of it.

During a run the trainer scores ``eval_windows`` windows (64 by default) to stay fast. This scores all of them, the
number to compare with a compressor on the same text, next to what the trainer's sample shows: 64 windows spread
evenly over the text (the trainer since 2026-11-29) and the first 64 (the trainer before; on TinyStories they are
easier text and scored 0.12-0.13 bits/byte lower than the whole). Byte targets only, as ``benchmarks/compare.py``.
Results: a Markdown table on stdout, JSON in ``outputs/benchmarks/validation-windows-<date>.json``.

    python benchmarks/validation_windows.py runs/tinystories runs/cache/tinystories-validation-*

``--windows N`` scores N windows instead of all of them, chosen as the trainer chooses its sample (spread evenly over
a text stream): the way to score a training split's cache (thousands of windows), and so to see how much better the
model does on text it was trained on than on the validation text:

    python benchmarks/validation_windows.py runs/tinystories runs/cache/tinystories-train-* --windows 128

``--overlap F`` adds a row for windows that share the fraction F of their length with the window before, each byte still
scored once but after at least that much of its text (``benchmarks/compare.py --eval-overlap``, where the other peers
are scored the same way): how much of the score is the cost of a window's first bytes, which see nothing before them:

    python benchmarks/validation_windows.py runs/tinystories runs/cache/tinystories-validation-* --overlap 0.5

The cache folder is the one the recipe built for the validation split, under its ``--cache-dir`` (``runs/cache`` by
default) and named after the split (``tinystories-validation-<hash>``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

# Run as a script (python benchmarks/validation_windows.py) or a module (python -m benchmarks.validation_windows).
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from benchmarks.compare import byte_nats, overlapped_byte_windows  # noqa: E402
from bytemodels.checkpoint import CheckpointError, load_model, open_checkpoint  # noqa: E402
from bytemodels.data import ByteDataset, DataCacheError  # noqa: E402
from bytemodels.runfolder import atomic_write  # noqa: E402

SAMPLE = 64
"""Windows in the trainer's default sample (``TrainConfig.eval_windows``)."""


def window_bits(model: torch.nn.Module, ids: np.ndarray, batch_size: int,
                scored_from: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(bits, byte targets) of each window: ``ids`` (n, seq_len) → two (n,) arrays; ``scored_from`` (n,): each
    window's first scored position (the rest before it is context), None for all."""
    bits, counts = np.zeros(len(ids)), np.zeros(len(ids), dtype=np.int64)
    patch_size = model.config.patch_size
    for start in tqdm(range(0, len(ids), batch_size), desc="scoring windows", unit="batch"):
        batch = torch.from_numpy(ids[start:start + batch_size])
        with torch.inference_mode():
            logits = model(batch).logits
        firsts = None if scored_from is None else torch.from_numpy(scored_from[start:start + batch_size])
        for row in range(len(batch)):
            first = None if firsts is None else firsts[row:row + 1]
            nats, targets = byte_nats(logits[row:row + 1], batch[row:row + 1], patch_size, first)
            bits[start + row], counts[start + row] = nats.sum() / math.log(2), targets.sum()
    return bits, counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a run folder or checkpoint folder")
    parser.add_argument("cache", help="a split's dataset cache folder: the validation split's (or, with --windows, "
                                      "the training split's)")
    parser.add_argument("--windows", type=int, default=None, metavar="N",
                        help="score N windows, chosen as the trainer chooses its sample (default: all of them)")
    parser.add_argument("--overlap", type=float, default=None, metavar="F",
                        help="also score overlapping windows that share the fraction F of their length with the one "
                             "before (every byte once, after at least that much context)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "benchmarks",
                        help="folder for the JSON result")
    args = parser.parse_args(argv)
    if args.windows is not None and args.windows < 1:
        parser.error(f"--windows {args.windows}: score at least 1 window")
    if args.overlap is not None and not 0 <= args.overlap < 1:
        parser.error(f"--overlap {args.overlap:g}: give a fraction from 0 up to (not including) 1")
    torch.set_num_threads(args.threads)
    try:
        folder, _, _ = open_checkpoint(args.checkpoint)
        model = load_model(folder, "cpu").eval()
        dataset = ByteDataset.open(Path(args.cache))
    except (CheckpointError, DataCacheError, OSError, ValueError) as error:
        sys.exit(f"validation_windows: error: {error}")
    config = model.config
    windows = dataset.windows(config.max_seq_len, config.patch_size, config.num_tags)
    total = len(windows)
    scored = min(args.windows or total, total)
    bits, counts = window_bits(model, windows.fixed(scored), args.batch_size)
    if scored < total:
        scores = {f"{scored} chosen as the trainer's sample": float(bits.sum() / counts.sum())}
    else:
        spread = list(windows.fixed_indices(SAMPLE))
        scores = {"all windows": float(bits.sum() / counts.sum()),
                  f"{SAMPLE} spread (the trainer)": float(bits[spread].sum() / counts[spread].sum()),
                  f"first {SAMPLE}": float(bits[:SAMPLE].sum() / counts[:SAMPLE].sum())}
    if args.overlap is not None:
        try:
            overlapped = overlapped_byte_windows(windows, args.overlap, args.windows)
        except ValueError as error:
            sys.exit(f"validation_windows: error: {args.cache}: {error}")
        overlap_bits, overlap_counts = window_bits(model, overlapped.ids, args.batch_size, overlapped.scored_from)
        scores[f"{len(overlapped.ids)} overlapping, {overlapped.stride} apart"] = float(overlap_bits.sum()
                                                                                       / overlap_counts.sum())
    result = {"checkpoint": str(folder), "cache": str(args.cache), "windows": total, "scored": scored,
              "bytes": int(counts.sum()), "bits_per_byte": scores}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"validation-windows-{time.strftime('%Y%m%d-%H%M%S')}.json"
    atomic_write(path, json.dumps(result, indent=2) + "\n")
    print(f"{folder}: {scored} of {total} windows of {config.max_seq_len} ids, {result['bytes']:,} bytes "
          "scored\n")
    print("| windows | bits/byte |\n| --- | ---: |")
    for name, value in result["bits_per_byte"].items():
        print(f"| {name} | {value:.4f} |")
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
