"""Temporary files that a crash can leave behind, how the next start tells them from live ones,
and atomic writes through them.

Every temporary file we write (spool copies being downloaded, manifests and diagnostics before
their rename, decompressed Parquet) is created here with an exclusive ``flock`` held for as long
as its descriptor is open. A file that no process holds locked is debris of a process that died
(SIGKILL, power loss): ``remove_debris`` deletes exactly those, so a start-up never removes a
file another running process (an ``ingest`` beside the daemon) is still writing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def create(folder: Path, prefix: str) -> tuple[int, str]:
    """``mkstemp`` in ``folder``, locked until the descriptor is closed."""
    fd, path = tempfile.mkstemp(prefix=prefix, dir=folder)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd, path


def remove_debris(folder: Path, prefixes: tuple[str, ...]) -> list[Path]:
    """Delete the files in ``folder``'s partner folders (``folder/<partner>/``, where every
    temporary file is made) whose names start with one of ``prefixes`` and that no process
    holds; the ones removed. One level, not the whole tree: the results folder holds every
    manifest ever written."""
    removed = []
    candidates = [p for prefix in prefixes for p in folder.glob(f"*/{prefix}*")]
    for path in candidates:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue                     # gone meanwhile, a symlink, or not ours to open
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue                     # someone is writing it
        else:
            path.unlink(missing_ok=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (the directory entry itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic(path: Path) -> Iterator[BinaryIO]:
    """A file to write ``path`` through: ``path`` holds either its old content or all that was
    written, never a part, across a crash. A locked temporary file beside it, fsynced, renamed
    over it when the block ends without an error, the folder fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create(path.parent, f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """``path`` holds either its old content or all of ``data`` (``atomic``)."""
    with atomic(path) as fh:
        fh.write(data)
