"""The ``Inbox`` protocol: list, watch, fetch and archive files of one partner drop location.

An inbox knows nothing of formats or catalogs. ``INBOX_KINDS`` (in ``inboxes/__init__.py``) is
the one place a kind is mapped to its class.
"""

from __future__ import annotations

import fnmatch
from pathlib import PurePosixPath
from typing import Callable, Iterable, Protocol

from config.model import InboxConfig
from inbox_daemon.drop import Drop

OnReady = Callable[[Drop], None]

# Names uploaders use while a file is still being written, and our own folders.
TEMP_PATTERNS = ("*.part", "*.tmp", "*.filepart", "*.crdownload", ".*", "~*")
PROCESSED, FAILED, RESULTS = "processed", "failed", "results"
RESERVED = (PROCESSED, FAILED, RESULTS)


def wanted(name: str, cfg: InboxConfig) -> bool:
    """Is a top-level file of this name input? Temp names never are; ``patterns`` decide the rest."""
    lowered = name.lower()
    if any(fnmatch.fnmatchcase(lowered, p) for p in TEMP_PATTERNS):
        return False
    return any(fnmatch.fnmatchcase(lowered, p.lower()) for p in cfg.patterns)


def safe_name(key: str) -> str | None:
    """The plain file name of a key that stays inside its folder, or None (``..``, ``/``, NUL)."""
    if not key or "\x00" in key:
        return None
    path = PurePosixPath(key)
    if path.is_absolute() or len(path.parts) != 1 or path.name in ("", ".", ".."):
        return None
    return path.name


class Inbox(Protocol):
    config: InboxConfig

    @property
    def id(self) -> str: ...
    def scan(self) -> Iterable[Drop]: ...
    def watch(self, on_ready: OnReady) -> None: ...
    def fetch(self, drop: Drop, spool_dir) -> tuple: ...      # (spooled path, sha256, size)
    def archive(self, drop: Drop, status: str) -> None: ...
    def write_back(self, drop: Drop, name: str, data: bytes) -> None: ...
    def probe(self) -> dict: ...          # {"ok": bool, "detail": str}
    def settling(self) -> int: ...
    def alive(self) -> bool: ...
    def close(self) -> None: ...
