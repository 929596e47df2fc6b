"""The training-curve picture: train and validation bits/byte against bytes seen (matplotlib, PNG)."""

from __future__ import annotations

import json
from pathlib import Path

from bytemodels.runfolder import atomic_file


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file (a torn last line, from a killed run, is skipped)."""
    records = []
    with open(path, encoding="utf-8") as file:
        for line in file:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def plot_curves(metrics_path: str | Path, png_path: str | Path, title: str | None = None) -> Path | None:
    """Draw train and validation bits/byte against bytes seen into ``png_path`` (written atomically).

    Returns the path, or None when the metrics hold nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["bytes"], r["bpb"]) for r in records if "bpb" in r]
    val = [(r["bytes"], r["val_bpb"]) for r in records if "val_bpb" in r]
    if not train and not val:
        return None
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    if train:
        axes.plot(*zip(*train), label="train", color="tab:blue", alpha=0.8)
    if val:
        axes.plot(*zip(*val), label="validation", color="tab:orange", marker="o", markersize=3)
    values = [v for _, v in train + val]
    latest = (val or train)[-1][1]
    if max(values) > 2 * latest:
        # The first steps (near 8 bits/byte) would squash the rest of the curve into a flat line.
        axes.set_ylim(min(values) * 0.95, 2 * latest)
        axes.text(0.99, 0.97, f"axis cut at {2 * latest:.2f} bits/byte (started at {max(values):.2f})",
                  transform=axes.transAxes, ha="right", va="top", fontsize=8, color="gray")
    axes.set_xlabel("bytes seen")
    axes.set_ylabel("bits per byte")
    axes.set_title(title or "training curve")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    png_path = Path(png_path)
    try:
        with atomic_file(png_path, suffix=".png") as temp:
            figure.savefig(temp, format="png")
    finally:
        plt.close(figure)
    return png_path
