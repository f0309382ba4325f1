"""The ``Inbox`` protocol: list, watch, fetch and archive files of one partner drop location.

An inbox knows nothing of formats or catalogs. ``INBOX_KINDS`` (in ``inboxes/__init__.py``) is
the one place a kind is mapped to its class.
"""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Callable, Iterable
from typing import Protocol

from config.model import InboxBase, InboxConfig
from inbox_daemon.drop import Drop

OnReady = Callable[[Drop], None]

# Names uploaders use while a file is still being written, and our own folders.
TEMP_PATTERNS = ("*.part", "*.tmp", "*.filepart", "*.crdownload", ".*", "~*")
PROCESSED, FAILED, RESULTS = "processed", "failed", "results"
RESERVED = (PROCESSED, FAILED, RESULTS)


def wanted(name: str, cfg: InboxBase) -> bool:
    """Is a top-level file of this name input? Temp names never are; ``patterns`` decide the rest."""
    lowered = name.lower()
    if any(fnmatch.fnmatchcase(lowered, p) for p in TEMP_PATTERNS):
        return False
    return any(fnmatch.fnmatchcase(lowered, p.lower()) for p in cfg.patterns)


def archive_name(name: str, version: str, taken: Callable[[str], bool]) -> str:
    """The name a file gets in ``processed/`` or ``failed/``: its own, else ``<name>.<version>``,
    else ``<name>.<version>.<n>``, the first one not ``taken``: an earlier archive is never
    overwritten, not even by a re-send that keeps size and mtime (``cp -p``, ``rsync -t``)."""
    candidates = itertools.chain((name, f"{name}.{version}"), (f"{name}.{version}.{n}" for n in itertools.count(2)))
    return next(c for c in candidates if not taken(c))


def safe_name(key: str) -> str | None:
    """``key`` itself if it is a plain file name, else None: anything with a ``/`` (even
    ``./x`` or ``x/``, which a path library would quietly normalise), ``.``, ``..``, NUL, or a
    name that is not valid Unicode text (it could not be named in a manifest)."""
    if not key or "/" in key or "\x00" in key or key in (".", ".."):
        return None
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:           # undecodable bytes, carried as surrogates by the OS layer
        return None
    return key


class Inbox(Protocol):
    config: InboxConfig
    # True where the version a listing shows changes whenever the content does (an S3 ETag):
    # a version answered before need not be downloaded again. An mtime is not such a version.
    version_is_content: bool

    @property
    def id(self) -> str: ...
    def scan(self) -> Iterable[Drop]: ...
    def watch(self, on_ready: OnReady) -> None: ...
    def fetch(self, drop: Drop, spool_dir) -> tuple: ...      # (spooled path, sha256, size)
    def archive(self, drop: Drop, status: str) -> None: ...
    def write_back(self, drop: Drop, name: str, data: bytes) -> None: ...
    def probe(self) -> dict: ...          # {"ok": bool, "detail": str}
    def settling(self) -> int: ...
    def offer_again_in(self, drop: Drop, seconds: float) -> None: ...   # look at it again then
    def failing(self) -> dict | None: ...     # why its looks fail lately, or None
    def alive(self) -> bool: ...
    def close(self) -> None: ...
