"""Keep freed host memory in the process, so a training step does not page-fault its gradients in anew.

A step frees and reallocates the same buffers every time (the hashed tables' gradients alone are tens of MB).
glibc returns freed memory at the top of its heap to the system once it exceeds a trim threshold, and serves
blocks above its mmap threshold by fresh mappings, so the next step faults every page back in and zeroes it:
on a CPU that was about 5,000-20,000 page faults and 5% of the recipe's step. Raising both thresholds keeps the
memory for reuse (the process holds its peak instead of shrinking between steps)."""

from __future__ import annotations

import ctypes
import os
import platform

#: glibc's ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: The largest mmap threshold glibc accepts on 64-bit systems: blocks above it (rare in training) still get their
#: own mapping, returned at once when freed.
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Never give the top of the heap back while training (the largest value mallopt takes).
TRIM_THRESHOLD = 2**31 - 1

#: The environment variables glibc reads for the same settings: a user's own choice wins.
USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def on_glibc() -> bool:
    """Whether this process's malloc is glibc's (Linux with glibc), the one :func:`keep_freed_memory` acts on."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds for this process (see the module's docstring); True where that
    happened. A no-op elsewhere (macOS, Windows, musl) and where the environment already sets malloc's thresholds."""
    if not on_glibc():
        return False
    if any(name in os.environ for name in USER_SETTINGS) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # Setting either threshold also stops glibc adjusting them itself as blocks are freed.
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
