"""Temporary files that a crash can leave behind, and how the next start tells them from live ones.

Every temporary file we write (spool copies being downloaded, manifests and diagnostics before
their rename, decompressed Parquet) is created here with an exclusive ``flock`` held for as long
as its descriptor is open. A file that no process holds locked is debris of a process that died
(SIGKILL, power loss): ``remove_debris`` deletes exactly those, so a start-up never removes a
file another running process (an ``ingest`` beside the daemon) is still writing.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path


def create(folder: Path, prefix: str) -> tuple[int, str]:
    """``mkstemp`` in ``folder``, locked until the descriptor is closed."""
    fd, path = tempfile.mkstemp(prefix=prefix, dir=folder)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd, path


def remove_debris(folder: Path, prefixes: tuple[str, ...]) -> list[Path]:
    """Delete the files below ``folder`` whose names start with one of ``prefixes`` and that no
    process holds; the ones removed."""
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.rglob("*"):
        if not path.name.startswith(prefixes) or not path.is_file() or path.is_symlink():
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue                     # gone meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue                     # someone is writing it
        else:
            path.unlink(missing_ok=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed
