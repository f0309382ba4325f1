"""The ``Inbox`` protocol: list, watch, fetch and archive files of one partner drop location.

An inbox knows nothing of formats or catalogs. ``INBOX_KINDS`` (in ``inboxes/__init__.py``) is
the one place a kind is mapped to its class. What every kind shares about readiness lives here:
which names are input, the ``ready_marker`` names, and the end-of-read check of ``fetch``.
"""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Callable, Iterable
from typing import BinaryIO, Protocol, cast

from config.model import InboxBase, InboxConfig
from inbox_daemon.drop import Drop

OnReady = Callable[[Drop], None]

# Names uploaders use while a file is still being written, and our own folders.
TEMP_PATTERNS = ("*.part", "*.tmp", "*.filepart", "*.crdownload", ".*", "~*")
PROCESSED, FAILED, RESULTS = "processed", "failed", "results"
RESERVED = (PROCESSED, FAILED, RESULTS)
# ``ready_marker``: ``feed.csv`` is ready once ``feed.csv.done`` or ``feed.csv.ok`` is next to it
MARKER_SUFFIXES = (".done", ".ok")


def wanted(name: str, cfg: InboxBase) -> bool:
    """Is a top-level file of this name input? Temp names never are, nor markers of an inbox
    with ``ready_marker``; ``patterns`` decide the rest."""
    lowered = name.lower()
    if any(fnmatch.fnmatchcase(lowered, p) for p in TEMP_PATTERNS):
        return False
    if cfg.ready_marker and marked_name(name) is not None:
        return False
    return any(fnmatch.fnmatchcase(lowered, p.lower()) for p in cfg.patterns)


def marked_name(name: str) -> str | None:
    """The data file a marker names (``feed.csv.done`` -> ``feed.csv``), or None if ``name``
    is no marker."""
    for suffix in MARKER_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[:-len(suffix)]
    return None


def marker_names(name: str) -> tuple[str, ...]:
    """The names whose presence makes ``name`` ready in an inbox with ``ready_marker``."""
    return tuple(name + suffix for suffix in MARKER_SUFFIXES)


class CheckedRead:
    """A file object for ``spool_stream`` that calls ``at_end(bytes_read)`` when the source
    reports its end, before the spool keeps its copy. ``at_end`` raises ``SourceChanged`` when
    the file is not, by then, the one judged ready (it grew or changed while it was read): the
    spool then drops its partial copy, as for any read error, and nothing of it is applied."""

    def __init__(self, src, at_end: Callable[[int], None]):
        self._src = src
        self._at_end = at_end
        self._read = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._src.read(size)
        if chunk:
            self._read += len(chunk)
        else:
            self._at_end(self._read)
        return chunk


def read_checked(src, at_end: Callable[[int], None]) -> BinaryIO:
    """``src`` as a ``CheckedRead`` (see there), typed as the file object the spool reads."""
    return cast(BinaryIO, CheckedRead(src, at_end))        # the spool only calls read()


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
    # raises ``SourceChanged`` when the file at ``drop.key`` is the one read but changed since
    # (an upload that went on): asked right before the commit. A new file there is fine.
    def verify_unchanged(self, drop: Drop) -> None: ...
    def archive(self, drop: Drop, status: str) -> None: ...
    def write_back(self, drop: Drop, name: str, data: bytes) -> None: ...
    def probe(self) -> dict: ...          # {"ok": bool, "detail": str}
    def settling(self) -> int: ...
    def offer_again_in(self, drop: Drop, seconds: float) -> None: ...   # look at it again then
    def failing(self) -> dict | None: ...     # why its looks fail lately, or None
    def alive(self) -> bool: ...
    def close(self) -> None: ...
