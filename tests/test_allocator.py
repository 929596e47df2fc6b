"""keep_freed_memory: freed buffers are reused without page faults, and a user's own malloc settings win."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from bytemodels.allocator import keep_freed_memory, on_glibc

# Sets glibc to give every freed block back (trim threshold 0, mmap above 64 KiB: the worst case of what its
# own adjusting does, which depends on the heap's layout), allocates and frees two 6 MB tensors (a hashed table's
# gradient) 20 times after a first round, and prints the page faults per round; with argv[1] == "keep",
# keep_freed_memory() runs after that setting, and its result is printed first.
FAULTS_SCRIPT = """
import ctypes, resource, sys
import torch
from bytemodels.allocator import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, keep_freed_memory
mallopt = ctypes.CDLL(None).mallopt
assert mallopt(M_TRIM_THRESHOLD, 0) and mallopt(M_MMAP_THRESHOLD, 65536)
if sys.argv[1] == "keep":
    print(keep_freed_memory())
def round_trip():
    for _ in range(20):
        a = torch.zeros(12288, 128); b = torch.zeros(12288, 128); del a, b
round_trip()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
round_trip()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""

glibc_linux = pytest.mark.skipif(not on_glibc(),
                                 reason="keep_freed_memory acts on glibc's malloc only (Linux with glibc)")


def faults_per_round(mode: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, mode], capture_output=True, text=True, check=True,
                          env={**clean, **env}, timeout=120)
    return done.stdout.split()


@glibc_linux
def test_freed_buffers_come_back_without_page_faults() -> None:
    """Without it every 6 MB buffer faults its ~1,500 pages in again; with it the second round faults none."""
    plain = float(faults_per_round("plain")[-1])
    applied, kept = faults_per_round("keep")
    assert applied == "True"
    assert plain > 1000, f"glibc returned no memory between rounds ({plain} faults per round)"
    assert float(kept) < 50


@glibc_linux
def test_a_users_own_malloc_setting_wins() -> None:
    applied, faults = faults_per_round("keep", MALLOC_TRIM_THRESHOLD_="0")
    assert applied == "False"
    assert float(faults) > 1000  # glibc's behaviour as set before: every freed block given back


def test_a_no_op_off_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert keep_freed_memory() is False
