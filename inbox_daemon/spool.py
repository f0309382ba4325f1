"""The spool: our own copy of each file, hashed while it is copied (one pass over the bytes).

Reading our copy, never the partner's original, means the content we hashed is the content we
apply even if the partner rewrites the file meanwhile. Spool files are named by content.

A copy is not fsynced when it is made: the run that made it reads it from the page cache, and the
partner's file stays in its inbox until the outcome is durable. Only a copy kept beyond that run
(a rejected, failed or held job, which a requeue runs again from it) is made durable, before the
file leaves its inbox (``keep``). A job run again from its copy checks the copy against its
sha256 first (``intact``): one torn by a power loss is fetched again instead of applied.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from config.errors import SpoolError
from inbox_daemon import tempfiles

CHUNK = 1 << 20
SPOOL_TEMP = ".incoming-"          # a copy being written; its final name is its sha256


class _Hasher:
    """sha256 of a stream's chunks, in order: a whole chunk is hashed on a thread while the
    caller writes it and reads the next (hashlib lets go of the GIL), so copying a large file
    and hashing it take the longer of the two, not their sum (1.06 GB: 1.1 s as one after the
    other). A file of one short read, as most are, is hashed inline: no thread is started."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    def update(self, chunk: bytes) -> None:
        self._wait()                                   # one chunk in hand at a time, in order
        if self._pool is None and len(chunk) < CHUNK:
            self._digest.update(chunk)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="spool-sha256")
        self._pending = self._pool.submit(self._digest.update, chunk)

    def hexdigest(self) -> str:
        self._wait()
        return self._digest.hexdigest()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()


def spool_stream(src: BinaryIO, spool_dir: Path, *, suffix: str = "") -> tuple[Path, str, int]:
    """Copy ``src`` into ``spool_dir`` while hashing it (``_Hasher``): (spooled path, sha256
    hex, size)."""
    digest, size = _Hasher(), 0
    try:
        spool_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfiles.create(spool_dir, SPOOL_TEMP)
        out = os.fdopen(fd, "wb")
    except OSError as exc:
        raise SpoolError(f"cannot spool into {spool_dir}: {exc}") from exc
    try:
        with out, contextlib.closing(digest):
            # read errors belong to the source (network, inbox) and propagate as they are, for
            # the inbox to map; only write errors are the spool's
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise SpoolError(f"cannot spool into {spool_dir}: {exc}") from exc
                size += len(chunk)
            try:
                out.flush()
            except OSError as exc:
                raise SpoolError(f"cannot spool into {spool_dir}: {exc}") from exc
        sha256 = digest.hexdigest()
        final = spool_dir / f"{sha256}{suffix}"
        os.replace(tmp, final)
        return final, sha256, size
    except BaseException:
        Path(tmp).unlink(missing_ok=True)          # no orphaned partial copies
        raise


def keep(path: Path) -> None:
    """Make a spooled copy durable: its job may run again from it after a restart (requeue,
    retry). Best effort: a copy that is gone or cannot be synced is found out by ``intact``."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        tempfiles.fsync_dir(path.parent)
    except OSError:
        pass


def intact(path: Path, sha256: str) -> bool:
    """Is ``path`` a spooled copy of the content ``sha256`` names? False when it is missing, or
    was torn (a power loss before it was written out) or damaged since."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
    except OSError:
        return False
    return digest.hexdigest() == sha256


def spool_file(path: Path, spool_dir: Path, *, suffix: str = "") -> tuple[Path, str, int]:
    try:
        with open(path, "rb") as src:
            return spool_stream(src, spool_dir, suffix=suffix)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SpoolError(f"cannot read {path}: {exc}") from exc
