"""One process per folder, and one-line errors for a folder that cannot be written.

A run folder (or a byte cache being built) belongs to the process holding its lock: ``fcntl.flock`` on a small
file in the folder, which also holds the owner's PID for the message a second process gets, and is removed when
the owner lets go. The kernel drops the lock when the owner exits or is killed, so a crashed run never leaves a
stale lock behind (at most a lock file that the next process locks and reuses). Within one process the
lock is re-entrant: a recipe takes it before reading data, and the ``Trainer`` it builds takes it again.

``RunFolderError`` is what a folder that cannot be used raises (another process owns it, the disk is full, the
file system is read-only); its message is one line naming the folder or file and the cause.
"""

from __future__ import annotations

import errno
import hashlib
import fcntl
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".lock"
"""The lock file of a run folder."""

_HINTS = {errno.ENOSPC: "; free some space and try again", errno.EDQUOT: "; free some space and try again",
          errno.EROFS: "; choose a writable folder", errno.EACCES: "; choose a writable folder",
          errno.EPERM: "; choose a writable folder"}
_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)")  # how Rust libraries (safetensors) report an OSError


class RunFolderError(OSError):
    """A run or cache folder cannot be used: another process owns it, the disk is full, or it is read-only.

    The message is one line naming the folder or file and the cause; ``errno`` is the operating system's code
    when there is one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code


def error_code(error: BaseException) -> int | None:
    """The OS error number of ``error``: an ``OSError``'s, or one a library wrote into its message
    (``... (os error 28)``); None when there is none."""
    if isinstance(error, OSError) and error.errno:
        return error.errno
    found = _OS_ERROR_IN_TEXT.search(str(error))
    return int(found.group(1)) if found else None


def disk_error(error: BaseException) -> BaseException | None:
    """The OS error behind ``error``, or None: ``error`` itself, or one it was raised from or while handling
    (torch.save meeting a full disk raises a RuntimeError while handling the OSError), or a library's error
    whose message names an OS error number (safetensors)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if error_code(error):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def write_error(where: str | Path, error: BaseException, doing: str = "") -> RunFolderError:
    """A ``RunFolderError`` for an OS error met while writing: ``<where>: no space left on device while writing
    model.safetensors; free some space and try again``."""
    if isinstance(error, RunFolderError):
        return error
    code = error_code(error)
    cause = os.strerror(code) if code else (getattr(error, "strerror", None) or str(error))
    cause = cause[:1].lower() + cause[1:]
    return RunFolderError(f"{where}: {cause}{' while ' + doing if doing else ''}{_HINTS.get(code, '')}", code)


@contextmanager
def writing(where: str | Path, doing: str = "") -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block into a one-line ``RunFolderError`` (see ``write_error``)."""
    try:
        yield
    except RunFolderError:
        raise
    except OSError as error:
        raise write_error(where, error, doing) from None


@contextmanager
def atomic_file(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that takes a file name (``save_file``, ``savefig``): when the
    block ends without an error it is renamed over ``path``, so readers see the old file or the new one, never
    half; on an error it is deleted. ``suffix`` ends the temporary name (a writer that picks a format by it)."""
    path = Path(path)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    try:
        yield Path(temp)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through ``atomic_file``, on disk before the rename."""
    with atomic_file(path) as temp, open(temp, "wb") as file:
        file.write(data.encode("utf-8") if isinstance(data, str) else data)
        file.flush()
        os.fsync(file.fileno())


class FolderLock:
    """A held lock (see ``lock_folder``); ``release()`` or leave the ``with`` block to let it go."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._held = True

    def release(self) -> None:
        """Let go of this hold; the lock itself is released when the process's last hold on it goes."""
        if self._held:
            self._held = False
            _release(self.path)

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_holds: dict[Path, list[int]] = {}  # lock file -> [descriptor, holds]; re-entrant within the process
_holds_guard = threading.Lock()


def _owner(handle: int) -> str:
    try:
        text = os.pread(handle, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        text = ""
    return f"process {text}" if text.isdigit() else "another process"


def lock_folder(folder: str | Path, name: str = LOCK_FILE, *, wait: bool = False,
                what: str = "run folder") -> FolderLock:
    """Take the lock ``folder/name`` (creating the folder), held until ``release()`` or this process ends.

    A folder another process holds raises ``RunFolderError`` naming the folder and the owner's PID, or with
    ``wait`` says once on stderr that it waits for that process and then waits. A folder that cannot be
    created or written (read-only, full) is a ``RunFolderError`` too. Taking a lock this process already holds
    succeeds at once (each hold is released separately)."""
    folder = Path(folder)
    with writing(folder, f"creating the {what}"):
        folder.mkdir(parents=True, exist_ok=True)
    path = (folder / name).resolve()
    with _holds_guard:
        if path in _holds:
            _holds[path][1] += 1
            return FolderLock(path)
    handle = _acquire(path, folder, wait, what)  # outside the guard: waiting must not stop other threads' locks
    with _holds_guard:
        _holds[path] = [handle, 1]
    return FolderLock(path)


def _acquire(path: Path, folder: Path, wait: bool, what: str) -> int:
    """The descriptor of ``path``, flock-ed by this process (see ``lock_folder``)."""
    said_wait = False
    while True:
        with writing(path, f"creating the lock file of the {what}"):
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise RunFolderError(f"{folder}: the {what} is in use by {_owner(handle)}; wait for it to "
                                         "end or use another folder", errno.EBUSY) from None
                if not said_wait:
                    print(f"{folder}: waiting for {_owner(handle)}, which holds the {what}", file=sys.stderr,
                          flush=True)
                    said_wait = True
                fcntl.flock(handle, fcntl.LOCK_EX)
            if not _is_current(handle, path):  # its owner removed it on release: lock the new file
                os.close(handle)
                continue
            try:  # the owner's PID, for the message of the next process; the lock holds without it
                os.ftruncate(handle, 0)
                os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
            except OSError:
                pass
        except BaseException:
            os.close(handle)
            raise
        return handle


def _is_current(handle: int, path: Path) -> bool:
    """Whether ``handle`` is still the file at ``path`` (not one an owner unlinked while we waited for it)."""
    try:
        return os.path.samestat(os.fstat(handle), os.stat(path))
    except FileNotFoundError:
        return False


def _release(path: Path) -> None:
    with _holds_guard:
        hold = _holds.get(path)
        if hold is None:
            return
        hold[1] -= 1
        if hold[1] == 0:
            del _holds[path]
            try:  # removed while still locked, so a waiter that locked the old file sees it is gone and retries
                path.unlink()
            except OSError:
                pass
            os.close(hold[0])  # closing the descriptor releases the flock


def remove_leftovers(folder: str | Path, pattern: str) -> list[str]:
    """Delete what a killed writer left in ``folder``: entries whose names match ``pattern`` (a regular
    expression, matched from the start). Call it while holding the folder's lock; returns the names removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        if re.match(pattern, entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (SHA-256 runs at over 1 GB/s on CPUs with SHA
    instructions, faster than BLAKE2b there)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
