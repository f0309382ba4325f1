"""The ``Inbox`` protocol: list, watch, fetch and archive files of one partner drop location.

An inbox knows nothing of formats or catalogs. ``INBOX_KINDS`` (in ``inboxes/__init__.py``) is
the one place a kind is mapped to its class. What every kind shares about readiness lives here:
which names are input, the ``ready_marker`` names, the end-of-read check of ``fetch``, the size
limit a copy may not pass (``FileTooLarge``), and archive names that always fit the filesystem.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO, Protocol, cast

from config.errors import FeedError, LimitExceeded
from config.model import InboxBase, InboxConfig
from inbox_daemon.drop import Drop

OnReady = Callable[[Drop], None]

# Names uploaders use while a file is still being written, and our own folders.
TEMP_PATTERNS = ("*.part", "*.tmp", "*.filepart", "*.crdownload", ".*", "~*")
PROCESSED, FAILED, RESULTS = "processed", "failed", "results"
RESERVED = (PROCESSED, FAILED, RESULTS)
# ``ready_marker``: ``feed.csv`` is ready once ``feed.csv.done`` or ``feed.csv.ok`` is next to it
MARKER_SUFFIXES = (".done", ".ok")
# bytes of one file name on the filesystems inboxes live on (ext4, XFS, btrfs, tmpfs; most
# SFTP servers' too): an archive name longer than this cannot be made (ENAMETOOLONG)
NAME_MAX = 255
NAME_HASH_CHARS = 12    # hex digits of sha256 that stand for the part of a name cut off


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


def read_checked(src, at_end: Callable[[int], None], *, max_bytes: int | None = None,
                 partner: str = "") -> BinaryIO:
    """``src`` as a ``CheckedRead`` (see there), typed as the file object the spool reads;
    with ``max_bytes``, also a ``LimitedRead``."""
    checked = CheckedRead(src, at_end)
    if max_bytes is None:
        return cast(BinaryIO, checked)                      # the spool only calls read()
    return cast(BinaryIO, LimitedRead(checked, max_bytes, partner=partner))


class LimitedRead:
    """A file object for ``spool_stream`` that raises ``FileTooLarge`` as soon as more than
    ``max_bytes`` were read: a file that grows while it is copied (or whose listed size was
    wrong) costs the spool at most ``max_bytes`` and one chunk, and the spool drops that copy."""

    def __init__(self, src, max_bytes: int, *, partner: str):
        self._src = src
        self._max = max_bytes
        self._partner = partner
        self._read = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._src.read(size)
        self._read += len(chunk)
        if self._read > self._max:
            raise FileTooLarge(size=self._read, max_bytes=self._max, partner=self._partner, growing=True)
        return chunk


def read_limited(src, max_bytes: int | None, *, partner: str) -> BinaryIO:
    """``src`` as a ``LimitedRead`` when there is a limit, else as it is."""
    return cast(BinaryIO, src if max_bytes is None else LimitedRead(src, max_bytes, partner=partner))


def check_listed_size(size: int, max_bytes: int | None, *, partner: str) -> None:
    """``FileTooLarge`` when the size an inbox lists is over the limit: refused unread."""
    if max_bytes is not None and size > max_bytes:
        raise FileTooLarge(size=size, max_bytes=max_bytes, partner=partner)


def archive_name(name: str, version: str, taken: Callable[[str], bool], *, room: int = 0) -> str:
    """The name a file gets in ``processed/`` or ``failed/``: its own, else ``<name>.<version>``,
    else ``<name>.<version>.<n>``, the first one not ``taken``: an earlier archive is never
    overwritten, not even by a re-send that keeps size and mtime (``cp -p``, ``rsync -t``).

    A collision name always fits in ``NAME_MAX`` bytes less ``room`` (what its markers add to
    it: they are archived next to it under its name plus their suffix); see ``fitted``. Its own
    name always fits, with its markers: they are in the inbox under those names."""
    return next(c for c in archive_candidates(name, version, room=room) if not taken(c))


def archive_candidates(name: str, version: str, *, room: int = 0) -> Iterator[str]:
    """Every name ``archive_name`` may give a version of ``name``, in the order it tries them
    (also how an archived file is found again: ``LocalInbox.archive`` of a requeued job)."""
    limit = NAME_MAX - room
    return itertools.chain(
        (name, fitted(name, f".{version}", limit)),
        (fitted(name, f".{version}.{n}", limit) for n in itertools.count(2)))


def fitted(name: str, tail: str, limit: int = NAME_MAX) -> str:
    """``name + tail`` if it fits in ``limit`` bytes (UTF-8); else as much of the beginning of
    ``name`` as fits, ``~`` and a short hash of the whole ``name``, then ``tail``: two long names
    that share their beginning still get names of their own, and the version and counter that
    tell archives apart stay whole. A ``tail`` too long to keep whole is hashed too."""
    whole = name + tail
    if len(whole.encode()) <= limit:
        return whole
    mark = "~" + hashlib.sha256(name.encode()).hexdigest()[:NAME_HASH_CHARS]
    if len(tail.encode()) > limit // 2:
        tail = "." + hashlib.sha256(tail.encode()).hexdigest()[:NAME_HASH_CHARS]
    keep = limit - len((mark + tail).encode())
    # cut at a character boundary: a partial UTF-8 sequence is dropped, never kept half
    head = name.encode()[:max(keep, 0)].decode("utf-8", "ignore")
    return head + mark + tail


class FileTooLarge(LimitExceeded):
    """A file bigger than its partner's ``max_file_bytes``: refused before it is copied (by the
    size its inbox lists), or while it is copied (it grew past the limit meanwhile)."""

    def __init__(self, *, size: int, max_bytes: int, partner: str, growing: bool = False):
        self.size, self.max_bytes, self.partner = size, max_bytes, partner
        self.limit, self.row = "max_file_bytes", None
        if growing:
            self.reason = (f"the file grew past {max_bytes} bytes while it was copied (at least {size} bytes "
                           f"read), more than partner {partner}'s max_file_bytes = {max_bytes}")
        else:
            self.reason = (f"the file is {size} bytes, more than partner {partner}'s max_file_bytes = "
                           f"{max_bytes}: it was not read")
        self.value = str(size)
        FeedError.__init__(self, self.reason + " (partners.max_file_bytes)")


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
    # True where other daemons sharing the store list the same files (remote inboxes): a file
    # is claimed in the store before it is downloaded. A local folder belongs to one daemon.
    shared: bool

    @property
    def id(self) -> str: ...
    def scan(self) -> Iterable[Drop]: ...
    def watch(self, on_ready: OnReady) -> None: ...
    # (spooled path, sha256, size); raises ``FileTooLarge`` once more than ``max_bytes`` came
    def fetch(self, drop: Drop, spool_dir, *, max_bytes: int | None = None) -> tuple: ...
    # raises ``SourceChanged`` when the file at ``drop.key`` is the one read but changed since
    # (an upload that went on): asked right before the commit. A new file there is fine.
    def verify_unchanged(self, drop: Drop) -> None: ...
    def archive(self, drop: Drop, status: str) -> None: ...
    def write_back(self, drop: Drop, name: str, data: bytes) -> None: ...
    # removes what ``write_back`` left under ``name``, if anything (an earlier attempt's diagnostics)
    def withdraw(self, drop: Drop, name: str) -> None: ...
    def probe(self) -> dict: ...          # {"ok": bool, "detail": str}
    def settling(self) -> int: ...
    def offer_again_in(self, drop: Drop, seconds: float) -> None: ...   # look at it again then
    def failing(self) -> dict | None: ...     # why its looks fail lately, or None
    def looks(self) -> tuple[str, str]: ...   # how it learns of files: ("watching" | "polling", how)
    def alive(self) -> bool: ...
    def close(self) -> None: ...
