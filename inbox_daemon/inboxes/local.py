"""A local directory inbox, watched with watchdog (inotify on Linux).

Only complete files are handed over. Events only say what happened to a file; one thread (the
settle loop) alone decides when it is ready, combining these signals:

- *When to look.* With inotify: a file renamed into the folder is due at once (the rename is the
  writer's "done"); a file closed after writing (IN_CLOSE_WRITE) is due after ``QUIET`` seconds
  with no further write: a writer that appends line by line (a shell's ``>>`` opens, appends and
  closes for every line) closes its file many times, and the quiet window makes its lines one
  delivery. A write meanwhile waits for the next close, with ``settle`` as the fallback. A file
  "created" that nobody writes to within ``PROBE`` was moved in whole from another folder. Without
  close events (the polling observer, network filesystems) and for files found at start-up, a file
  is due once its size and mtime stayed unchanged for ``settle``. Empty files are never due by
  waiting: a writer may not have started.
- *No writer.* No process holds the file open for writing (``writers_holding``, by /proc on
  Linux): a writer that pauses longer than ``settle`` with its file open, or an upload still going
  on when the daemon (re)starts, keeps its file until it closes it.
- *A whole last line.* A text file due by a close before ``settle`` passed whose last byte is not
  a newline waits until ``settle`` passed since its last change: its writer is most likely
  between two lines.
- *A marker*, with ``ready_marker``: ``<name>.done`` or ``<name>.ok`` exists next to it.

A file handed over is still checked: ``fetch`` reads it and compares what it read and what the
file is at the end of the read (fstat of the open file, lstat of its path) with what was judged
ready, and ``verify_unchanged`` does so again right before the commit; a file that changed is
read again once it is ready (``SourceChanged``), never applied truncated. Archived files are
watched for growth (``ArchiveWatch``): the recursive watch sees ``processed/`` and ``failed/``.
Only top-level regular files that match ``patterns`` are taken: never symlinks, temp names,
markers, or the ``processed/``, ``failed/`` and ``results/`` folders.

The folder itself is looked at too (``_check_folder``): deleted or moved away, it takes its
inotify watch with it, and nothing would say so. While it is missing ``failing()`` reports it
(``folder_missing``); once a folder of that name is back it is watched again at once.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import itertools
import os
import stat as stat_mod
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from adapters.readers import detect_format, ends_with_line_break, split_name
from config.errors import InboxMisconfigured, SourceChanged, SourceGone, UnknownFormat
from config.model import LocalInboxConfig
from config.status import ARCHIVED_AS_SUCCESS
from inbox_daemon.drop import Drop, delivery_time
from inbox_daemon.inboxes.archived import Archived, ArchiveWatch
from inbox_daemon.inboxes.base import (
    FAILED,
    MARKER_SUFFIXES,
    PROCESSED,
    RESERVED,
    RESULTS,
    OnReady,
    archive_candidates,
    archive_name,
    check_listed_size,
    marked_name,
    marker_names,
    read_checked,
    safe_name,
    wanted,
)
from inbox_daemon.logs import get_logger
from inbox_daemon.spool import spool_stream
from inbox_daemon.tempfiles import fsync_dir, write_atomic

SETTLE_TICK = 0.02        # seconds between checks of files waiting to be ready
MAX_ARCHIVE_LOOKUPS = 100  # names of failed/ tried for a requeued job's file (archive_candidates)
PROBE = 0.05              # seconds a created file must stay unwritten to count as moved in whole
QUIET = 0.25              # seconds after a close-write without another write: the writer is done
                          # (a `>>` writer's lines come a few ms to ~100 ms apart)
PROC = "/proc"
FOLDER_CHECK = 0.5        # seconds between looks at whether the inbox folder is still the one watched
# text formats, whose last byte tells whether a writer stopped between two lines (compressed
# files do not say: ".csv.gz" is not among them)
TEXT_FORMATS = frozenset({"csv", "tsv", "json", "ndjson", "xml"})

# why a due file is not handed over (logged at debug)
HELD = "a process holds it open for writing"
NO_MARKER = "waiting for its marker"
UNTERMINATED = "its last line is not terminated: waiting for settle"
HEADER_ONLY = "it holds a header line and nothing after it yet: waiting for settle"
# tables whose first line is a header: one that has nothing after it may be a writer's first line
TABLE_FORMATS = frozenset({"csv", "tsv"})


@dataclass(frozen=True)
class _Waiting:
    """A file seen but not handed over yet. Replaced (never changed in place) on every event,
    so the settle loop can tell that an event came while it was checking the file."""
    size: int
    mtime: int
    since: float          # clock() of the last change seen (an event, a size or mtime change)
    wait: float           # due once unchanged this long
    closed: bool = False  # due by a close-write's quiet window, not by ``settle``


class LocalInbox:
    version_is_content = False          # an mtime: cp -p, rsync -t and coarse clocks keep it
    shared = False                      # a folder of this host, watched by this daemon alone

    def __init__(self, config: LocalInboxConfig, *, observer_factory=Observer, clock=time.monotonic):
        self.config = config
        self.root = Path(config.path).resolve()
        self._observer_factory = observer_factory
        self._clock = clock
        self._observer: BaseObserver | None = None
        self._watch: ObservedWatch | None = None
        self._watched: tuple[int, int] | None = None    # (st_dev, st_ino) of the folder watched
        self._missing = False                           # the folder is gone: nothing is watched
        self._next_folder_check = 0.0
        self._folder_event = threading.Event()         # the watch saw the folder itself go
        self._settler: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()         # a file is due at once (a rename, a marker): look now
        self._pending: dict[str, _Waiting] = {}
        self._lock = threading.Lock()
        self._on_ready: OnReady | None = None
        self._close_events = False
        self._refused: set[str] = set()          # names already reported as unusable
        # files answered and kept ("keep"), by name -> what a write would change: the rescan
        # does not read them again while it is unchanged (an event, a new write, always is)
        self._kept: dict[str, tuple[int, int, int, int]] = {}
        # the inode each version was read from: the archive moves that file, not another one
        # renamed over it since with the same mtime (rsync -t, a re-send that keeps mtimes)
        self._read_from: dict[tuple[str, str], tuple[int, int, int, int]] = {}
        self.log = get_logger(inbox=self.id, partner=config.partner)
        self._archives = ArchiveWatch(settle=config.settle, log=self.log, clock=clock)
        for folder in (self.root, *(self.root / r for r in RESERVED)):
            folder.mkdir(parents=True, exist_ok=True)

    @property
    def id(self) -> str:
        return self.config.id

    # -- finding files ------------------------------------------------------------------------
    def _drop(self, name: str, stat: os.stat_result) -> Drop:
        path = self.root / name
        return Drop(inbox=self.id, partner=self.config.partner, key=name, name=name, uri=path.as_uri(),
                    size=stat.st_size, version=str(stat.st_mtime_ns), delivered=delivery_time(stat.st_ctime_ns / 1e9))

    def _stat_candidate(self, name: str) -> os.stat_result | None:
        """lstat of a top-level regular file we take, or None."""
        if safe_name(name) is None:
            if "/" not in name and name not in self._refused:
                self._refused.add(name)      # once per name: the rescan would repeat it
                self.log.warning("file.refused", name=name.encode("utf-8", "backslashreplace").decode("ascii"),
                                 reason="the name is not valid UTF-8 text: rename the file")
            return None
        if name in RESERVED or not wanted(name, self.config):
            return None
        try:
            st = os.lstat(self.root / name)
        except FileNotFoundError:
            return None
        return st if stat_mod.S_ISREG(st.st_mode) else None      # symlinks are not followed

    def scan(self) -> Iterator[Drop]:
        """Files present now that are ready; young ones (changed within ``settle``) and those a
        writer still holds wait in the settle loop instead."""
        with os.scandir(self.root) as entries:
            names = sorted(e.name for e in entries)
        self._forget_gone(set(names))
        now_wall = time.time()
        settled = []
        for name in names:
            st = self._stat_candidate(name)
            if st is None or self._kept.get(name) == _written(st):
                continue
            if now_wall - st.st_mtime >= self.config.settle:
                settled.append((name, st))
            else:
                self._track(name, st)
        held = writers_holding({(st.st_dev, st.st_ino): self.root / name for name, st in settled})
        for name, st in settled:
            why = self._not_ready(name, st, held, closed_at=None)
            if why is None:
                yield self._drop(name, st)
            elif why == HELD:
                self._track(name, st, wait=self.config.settle, touched=True)

    def _forget_gone(self, present: set[str]) -> None:
        """What is remembered per file (kept, the inode read) only while the file is there: the
        memory stays as small as the folder, however long the daemon runs."""
        self._kept = {name: w for name, w in self._kept.items() if name in present}
        self._read_from = {k: w for k, w in self._read_from.items() if k[0] in present}

    # -- watching -----------------------------------------------------------------------------
    def watch(self, on_ready: OnReady) -> None:
        self._on_ready = on_ready
        self._observer = self._observer_factory()
        self._close_events = _reports_close_write(self._observer)
        self._arm(_identity(self.root))
        self._observer.daemon = True
        self._observer.start()
        self._settler = threading.Thread(target=self._settle_loop, name=f"settle {self.id}", daemon=True)
        self._settler.start()

    def _arm(self, folder: tuple[int, int] | None) -> bool:
        """Watch the folder (``folder``: its identity, as looked at just before). Recursive,
        although only top-level files are input: archiving moves a file into processed/, and
        watchdog holds an IN_MOVED_FROM whose IN_MOVED_TO it cannot see for 0.5 s, delaying every
        event queued behind it. Watching the subfolders pairs the move, and shows an archived
        file that an upload still writes to (``ArchiveWatch``). False: the folder is not there."""
        assert self._observer is not None
        if self._watch is not None:
            try:
                self._observer.unschedule(self._watch)     # its emitter may have stopped already
            except KeyError:
                pass
            self._watch = None
        if folder is None:
            return False
        try:
            for sub in RESERVED:            # as at start: watched from the first archive on
                (self.root / sub).mkdir(exist_ok=True)
            self._watch = self._observer.schedule(_Handler(self), str(self.root), recursive=True)
        except OSError as exc:              # gone again meanwhile: the next check tells
            self.log.warning("inbox.watch_failed", path=str(self.root), error=str(exc))
            return False
        self._watched = folder
        return True

    def _check_folder(self) -> None:
        """Is the folder watched still the inbox folder? A folder deleted (or moved away) takes
        its inotify watch with it, silently: without this look, files dropped into a folder of
        that name made again would be seen only by the daemon's rescan, a minute later. One
        stat per ``FOLDER_CHECK``, and at once when the watch saw the folder itself go. While
        the folder is missing, ``failing()`` says so; once it is back it is watched again, and
        what was dropped meanwhile is looked at as if it had just been moved in."""
        now = self._clock()
        if not self._folder_event.is_set() and now < self._next_folder_check:
            return
        self._folder_event.clear()
        self._next_folder_check = now + FOLDER_CHECK
        folder = _identity(self.root)
        if folder is not None and folder == self._watched and self._watch_alive():
            return
        if not self._arm(folder):               # (gone: the watch of what was there is dropped)
            if not self._missing:
                self._missing = True
                self.log.error("inbox.folder_missing", path=str(self.root),
                               action="files dropped there are not seen; watched again once it is back")
            return
        if self._missing:
            self._missing = False
            self.log.warning("inbox.folder_back", path=str(self.root))
        else:
            self.log.warning("inbox.watch_rearmed", path=str(self.root),
                             reason="the folder was replaced, or its watch ended")
        with os.scandir(self.root) as entries:
            names = sorted(e.name for e in entries)
        for name in names:
            self._event(name, "created")        # no event was seen for them: look as at a move-in

    def _watch_alive(self) -> bool:
        """The watch's emitter still runs (watchdog stops it once its folder was deleted)."""
        assert self._observer is not None
        return any(e.watch == self._watch and e.is_alive() for e in list(self._observer.emitters))

    def _folder_gone(self) -> None:
        self._folder_event.set()
        self._wake.set()

    def _track(self, name: str, st: os.stat_result, *, wait: float | None = None, touched: bool = False,
               closed: bool = False) -> None:
        """Wait for ``name``: ``wait`` seconds unchanged (default: as before, else ``settle``),
        counted from now if it changed or an event ``touched`` it."""
        now = self._clock()
        with self._lock:
            prev = self._pending.get(name)
            changed = prev is None or (prev.size, prev.mtime) != (st.st_size, st.st_mtime_ns)
            if not (changed or touched or wait is not None):
                return
            self._pending[name] = _Waiting(
                st.st_size, st.st_mtime_ns,
                since=now if changed or touched or prev is None else prev.since,
                wait=wait if wait is not None else (prev.wait if prev else self.config.settle),
                closed=closed if wait is not None else bool(prev and prev.closed))
        if wait == 0:
            self._wake.set()

    def _event(self, name: str, kind: str) -> None:
        """``kind``: "renamed" (into place), "closed" (after writing), "created", "written"."""
        if self.config.ready_marker and (data := marked_name(name)) is not None:
            self._marker_seen(data)
            return
        st = self._stat_candidate(name)
        if st is None:
            return
        settle = self.config.settle
        if kind == "renamed":
            self._track(name, st, wait=0.0, touched=True)
        elif not self._close_events:
            self._track(name, st, wait=settle)                      # no close events: settle decides
        elif kind == "closed":
            self._track(name, st, wait=min(QUIET, settle), touched=True, closed=True)
        elif kind == "created":
            self._track(name, st, wait=min(PROBE, settle), touched=True)
        else:                                   # written: wait for its close (settle: a fallback)
            self._track(name, st, wait=settle, touched=True)

    def _marker_seen(self, data: str) -> None:
        """A marker appeared: its data file is looked at again (at once, unless it is waiting
        for its own quiet window or ``settle`` already)."""
        st = self._stat_candidate(data)
        if st is None:
            return                  # a marker without its data file is left alone
        with self._lock:
            if data not in self._pending:
                self._pending[data] = _Waiting(st.st_size, st.st_mtime_ns, self._clock(), 0.0)
                self._wake.set()

    def _settle_loop(self) -> None:
        while True:
            self._wake.wait(SETTLE_TICK)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._check_folder()
            except OSError as exc:
                self.log.error("inbox.folder_check_failed", path=str(self.root), error=str(exc))
            self._hand_over(self._due())
            try:
                self._watch_grown()
            except OSError as exc:
                self.log.error("inbox.archive_watch_failed", error=str(exc))

    def _due(self) -> list[tuple[str, os.stat_result, _Waiting]]:
        now = self._clock()
        with self._lock:
            pending = list(self._pending.items())
        due = []
        for name, waiting in pending:
            st = self._stat_candidate(name)
            if st is None:
                with self._lock:
                    if self._pending.get(name) is waiting:
                        del self._pending[name]
            elif (st.st_size, st.st_mtime_ns) != (waiting.size, waiting.mtime):
                self._track(name, st)
            elif now - waiting.since >= waiting.wait and st.st_size > 0:
                due.append((name, st, waiting))
        return due

    def _hand_over(self, due: list[tuple[str, os.stat_result, _Waiting]]) -> None:
        """Hand over the due files that are ready; the others wait (see the module docstring)."""
        if not due:
            return
        held = writers_holding({(st.st_dev, st.st_ino): self.root / name for name, st, _ in due})
        for name, st, waiting in due:
            why = self._not_ready(name, st, held, closed_at=waiting.since if waiting.closed else None)
            with self._lock:
                if self._pending.get(name) is not waiting:
                    continue                        # an event came meanwhile: it decides
                if why is None or why == NO_MARKER:
                    del self._pending[name]         # (the marker's own event brings it back)
                elif why == HELD:                   # look again after its wait, or at its close
                    self._pending[name] = dataclasses.replace(
                        waiting, since=self._clock(), wait=max(waiting.wait, QUIET))
                else:
                    self._pending[name] = dataclasses.replace(waiting, wait=self.config.settle, closed=False)
            if why is not None:
                self.log.debug("file.not_ready", name=name, reason=why)
            elif self._on_ready is not None:
                self._on_ready(self._drop(name, st))

    def _not_ready(self, name: str, st: os.stat_result, held: Collection[tuple[int, int]], *,
                   closed_at: float | None) -> str | None:
        """Why a file that is due is not ready yet, or None. ``closed_at``: when the close-write
        that made it due was seen (None: due by ``settle``, a rename, a marker)."""
        if (st.st_dev, st.st_ino) in held:
            return HELD
        if self.config.ready_marker and not self._markers(name):
            return NO_MARKER
        if closed_at is not None and self._clock() - closed_at < self.config.settle:
            # made due by a close, quiet for a moment: a file that looks cut short between two
            # writes (a shell's ``echo header > f; sleep 1; echo row >> f``) waits for settle
            fmt = self._text_format(name)
            if fmt in TEXT_FORMATS and not _ends_with_newline(self.root / name):
                return UNTERMINATED
            if fmt in TABLE_FORMATS and _one_line(self.root / name):
                return HEADER_ONLY
        return None

    def _text_format(self, name: str) -> str | None:
        """The format it is read as, if uncompressed: the one the inbox forces, else the one its
        name says (the readers' own mapping: ``.txt`` is CSV, ``.jsonl`` NDJSON)."""
        if split_name(name)[1]:
            return None
        try:
            return self.config.format or detect_format(name)
        except UnknownFormat:
            return None

    def _markers(self, name: str, folder: Path | None = None) -> list[Path]:
        """The markers of ``name`` present in ``folder`` (the inbox root by default)."""
        found = []
        for marker in marker_names(name):
            path = (folder or self.root) / marker
            try:
                if not stat_mod.S_ISDIR(os.lstat(path).st_mode):
                    found.append(path)
            except FileNotFoundError:
                continue
        return found

    def offer_again_in(self, drop: Drop, seconds: float) -> None:
        """Another process holds this file (another daemon on a shared folder, or one that died
        and whose claim has not run out), or it changed while it was read: offer it again after
        ``seconds``, if it is ready then."""
        st = self._stat_candidate(drop.key)
        if st is not None:
            with self._lock:
                self._pending[drop.key] = _Waiting(st.st_size, st.st_mtime_ns, self._clock(), seconds)

    def probe(self) -> dict:
        ok = os.access(self.root, os.R_OK | os.W_OK | os.X_OK)
        return {"ok": ok, "detail": f"{self.root} is {'readable and writable' if ok else 'not writable'}"}

    def settling(self) -> int:
        """Files seen but not yet ready (waiting for ``settle``, their quiet window or their
        writer). An empty file that stayed empty past its wait does not count: it may never be
        written, and ``run --once`` must end."""
        now = self._clock()
        with self._lock:
            return sum(not (w.size == 0 and now - w.since >= w.wait) for w in self._pending.values())

    def failing(self) -> dict | None:
        """For /healthz: the folder is missing (nothing is watched), archived files that grew."""
        grown = self._archives.failing()
        if not self._missing:
            return grown
        missing = {"error": f"the inbox folder {self.root} is missing (or cannot be watched): files dropped "
                            "there are not seen; it is watched again once it is back",
                   "folder_missing": str(self.root)}
        if grown:
            return {**grown, **missing, "error": f"{missing['error']}; {grown['error']}"}
        return missing

    def looks(self) -> tuple[str, str]:
        return ("watching", "inotify") if self._close_events else ("polling", f"the folder, settle {self.config.settle:g} s")

    def alive(self) -> bool:
        return bool(self._observer and self._observer.is_alive() and self._settler
                    and self._settler.is_alive())

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._settler is not None:
            self._settler.join(timeout=5)

    # -- taking files in and out --------------------------------------------------------------
    def _path(self, key: str) -> Path:
        """The inbox file a key names; a key that is no plain name (from a ledger, a bug, an
        attacker) never leads outside the folder."""
        if safe_name(key) is None:
            raise InboxMisconfigured(f"{key!r} is not a plain file name in this inbox; not touched")
        return self.root / key

    def _folder(self, name: str) -> Path:
        """One of our own subfolders (processed/, failed/, results/), created if missing; refused
        if it is a symlink or anything but a real folder, which could lead files out of the
        inbox (into another partner's inbox, even)."""
        folder = self.root / name
        try:
            folder.mkdir(exist_ok=True)
        except FileExistsError:
            pass
        st = os.lstat(folder)
        if not stat_mod.S_ISDIR(st.st_mode):
            raise InboxMisconfigured(f"{folder} is not a folder of its own (a symlink?): nothing is moved "
                                     "or written there")
        return folder

    def fetch(self, drop: Drop, spool_dir: Path, *, max_bytes: int | None = None) -> tuple[Path, str, int]:
        """Spool exactly the file that was judged ready: opened without following a symlink,
        a regular file, still the version (size, mtime) seen, and still that version once it
        was read to its end (``_read_whole``). Over ``max_bytes`` (as listed, or as read): not
        spooled, ``FileTooLarge``."""
        check_listed_size(drop.size, max_bytes, partner=self.config.partner)
        path = self._path(drop.key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise SourceGone(f"{drop.key} disappeared before it could be read") from exc
        except OSError as exc:           # ELOOP: it became a symlink
            raise InboxMisconfigured(f"{drop.key} is not a regular file any more; not read ({exc})") from exc
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat_mod.S_ISREG(st.st_mode):
                raise InboxMisconfigured(f"{drop.key} is not a regular file; not read")
            if (st.st_size, str(st.st_mtime_ns)) != (drop.size, drop.version):
                raise SourceChanged(f"{drop.key} changed since it was seen; it is read once it is ready again")
            self._read_from[(drop.key, drop.version)] = _written(st)
            return spool_stream(read_checked(fh, lambda read: self._read_whole(drop, fh.fileno(), read),
                                             max_bytes=max_bytes, partner=self.config.partner), spool_dir)

    def _read_whole(self, drop: Drop, fd: int, read: int) -> None:
        """At the end of the read: the bytes read, the open file (fstat) and the file at its
        path (lstat) are all still the size and mtime judged ready."""
        st = os.fstat(fd)
        if read != drop.size or (st.st_size, str(st.st_mtime_ns)) != (drop.size, drop.version):
            raise SourceChanged(f"{drop.key} changed while it was read ({drop.size} bytes when judged ready, "
                                f"{read} read, {st.st_size} now); it is read again once it is ready")
        self.verify_unchanged(drop)

    def verify_unchanged(self, drop: Drop) -> None:
        """``SourceChanged`` if the file read for ``drop`` (the same inode) was written since it
        was opened: a writer went on after it was read, or rewrote it keeping its size and mtime
        (``cp -p`` of a same-size file: the inode change time still moves, ``_written``).
        Another file renamed over it is a delivery of its own, and a file gone is gone: neither
        makes what was read incomplete."""
        read = self._read_from.get((drop.key, drop.version))
        if read is None:
            return                      # not read here: there is nothing to compare with
        try:
            st = os.lstat(self._path(drop.key))
        except FileNotFoundError:
            return
        if st.st_ino == read[0] and _written(st) != read:
            raise SourceChanged(f"{drop.key} changed after it was read ({drop.size} bytes then, {st.st_size} "
                                "now); it is read again once it is ready")

    def _same_file(self, drop: Drop) -> os.stat_result | None:
        """The file at ``drop.key`` if it is still the version that was processed, else None."""
        try:
            st = os.lstat(self._path(drop.key))
        except FileNotFoundError:
            return None
        if not stat_mod.S_ISREG(st.st_mode) or str(st.st_mtime_ns) != drop.version:
            return None     # replaced by a newer upload (or a link): that one gets its own job
        read = self._read_from.get((drop.key, drop.version))
        if read is not None and read[0] != st.st_ino:
            return None     # another file renamed over it, with the same mtime: its own job too
        if read is not None and _written(st) != read:
            # written again in place since its commit, keeping size and mtime (cp -p): what is
            # there now is another delivery, looked at again as one (never archived unread)
            self._track(drop.key, st, wait=self.config.settle, touched=True)
            return None
        return st

    def archive(self, drop: Drop, status: str) -> None:
        """After the outcome is durable: processed/ (or delete/keep) on success, failed/ otherwise.
        Only the very version that was processed is moved: a newer upload under the same name
        stays for its own job. Its markers go with it (first: a marker left behind would make
        the next upload of that name ready before its own marker)."""
        st = self._same_file(drop)
        read = self._read_from.pop((drop.key, drop.version), None)
        if st is None:
            if status in ARCHIVED_AS_SUCCESS:
                self._out_of_failed(drop)
            return
        self._archives.taken_in(drop.key)
        source = self._path(drop.key)
        if status in ARCHIVED_AS_SUCCESS:
            if self.config.on_success == "keep":
                # what was read, not what is there now: a write since then is seen by the rescan
                self._kept[drop.key] = read or _written(st)
                return
            if self.config.on_success == "delete":
                self._move_markers(drop.key, None)
                source.unlink(missing_ok=True)
                fsync_dir(self.root)
                return
            folder = self._folder(PROCESSED)
        else:
            folder = self._folder(FAILED)
        target = folder / archive_name(source.name, drop.version, lambda n: os.path.lexists(folder / n),
                                       room=self._marker_room())
        self._move_markers(drop.key, target)
        os.replace(source, target)
        self._archives.remember(drop.key, f"{folder.name}/{target.name}", (st.st_size, st.st_mtime_ns))
        fsync_dir(folder)
        fsync_dir(self.root)

    def _out_of_failed(self, drop: Drop) -> None:
        """A requeued job that went through this time: its file, archived to failed/ by the
        answer before, goes where a success goes (processed/, or deleted; with ``keep`` it stays).
        Found by the names ``archive_name`` gives it and its version (its mtime, which a rename
        keeps) and size; a file of another delivery under that name is left alone."""
        if self.config.on_success == "keep":
            return
        failed = self.root / FAILED
        for name in itertools.islice(archive_candidates(drop.key, drop.version, room=self._marker_room()),
                                     MAX_ARCHIVE_LOOKUPS):
            try:
                st = os.lstat(failed / name)
            except FileNotFoundError:
                continue
            if stat_mod.S_ISREG(st.st_mode) and str(st.st_mtime_ns) == drop.version and st.st_size == drop.size:
                break
        else:
            return
        markers = [failed / (name + suffix) for suffix in MARKER_SUFFIXES
                   if self.config.ready_marker and (failed / (name + suffix)).exists()]
        if self.config.on_success == "delete":
            for path in [*markers, failed / name]:
                path.unlink(missing_ok=True)
            fsync_dir(failed)
        else:
            folder = self._folder(PROCESSED)
            target = folder / archive_name(drop.key, drop.version, lambda n: os.path.lexists(folder / n),
                                           room=self._marker_room())
            for marker in markers:
                os.replace(marker, target.with_name(target.name + marker.name[len(name):]))
            os.replace(failed / name, target)
            fsync_dir(folder)
            fsync_dir(failed)
        self.log.info("file.moved_out_of_failed", file=drop.key, was=f"{FAILED}/{name}",
                      to=self.config.on_success)

    def _marker_room(self) -> int:
        """Bytes an archived name must leave for its markers' suffixes."""
        return max(map(len, MARKER_SUFFIXES)) if self.config.ready_marker else 0

    def _move_markers(self, name: str, target: Path | None) -> None:
        """``ready_marker``: the markers of ``name`` next to ``target`` (its archived name), or
        deleted when ``target`` is None."""
        if not self.config.ready_marker:
            return
        for marker in self._markers(name):
            if target is None:
                marker.unlink(missing_ok=True)
            else:
                os.replace(marker, target.with_name(target.name + marker.name[len(name):]))

    def write_back(self, drop: Drop, name: str, data: bytes) -> None:
        if safe_name(name) is None:
            raise InboxMisconfigured(f"{name!r} is not a plain file name; not written")
        write_atomic(self._folder(RESULTS) / name, data)

    def withdraw(self, drop: Drop, name: str) -> None:
        if safe_name(name) is None:
            raise InboxMisconfigured(f"{name!r} is not a plain file name; not removed")
        (self.root / RESULTS / name).unlink(missing_ok=True)

    # -- archived files that grew -------------------------------------------------------------
    def _archived_changed(self, path: str) -> None:
        """An event for ``processed/<x>`` or ``failed/<x>``: tell the watch how it looks now."""
        self._archives.seen(path, _state(self.root / path))

    def _watch_grown(self) -> None:
        """Archived files that grew: followed until quiet for ``settle`` with no writer, then
        moved back into the inbox root, to be read whole as a new delivery."""
        growing = self._archives.growing()
        if not growing:
            return
        for archived in growing:
            self._archives.seen(archived.path, _state(self.root / archived.path))
        stats: dict[str, os.stat_result] = {}
        for archived in self._archives.due():
            try:
                stats[archived.path] = os.lstat(self.root / archived.path)
            except FileNotFoundError:
                continue
        held = writers_holding({(st.st_dev, st.st_ino): self.root / path for path, st in stats.items()})
        for archived in self._archives.due():
            st = stats.get(archived.path)
            if st is not None and (st.st_dev, st.st_ino) not in held:
                self._return(archived)

    def _return(self, archived: Archived) -> None:
        """Move a grown archived file back under its own name, never over another file: the
        name taken (a new upload) means wait; its markers first, for the same reason as at
        archive time."""
        source, target = self.root / archived.path, self.root / archived.name
        if os.path.lexists(target):
            return
        if self.config.ready_marker:
            for marker in self._markers(source.name, source.parent):
                os.replace(marker, self.root / (archived.name + marker.name[len(source.name):]))
        try:
            os.link(source, target)             # fails rather than replace a file of that name
        except FileExistsError:
            return
        except OSError:                         # a filesystem without hard links
            if os.path.lexists(target):
                return
            os.rename(source, target)
        else:
            os.unlink(source)
        fsync_dir(self.root)
        fsync_dir(source.parent)
        self._archives.returned(archived)


def writers_holding(files: Mapping[tuple[int, int], Path]) -> set[tuple[int, int]]:
    """Which of ``files`` (path by (st_dev, st_ino)) a process holds open for writing.

    Linux answers this per file: a read lease (``fcntl F_SETLEASE``) is refused with EAGAIN while
    any process has the file open for writing, so one probe (taken and given back at once) costs
    a few µs. Only a file's owner (or a holder of CAP_LEASE) may take one, and not every
    filesystem grants leases: the files the lease cannot answer for are looked for in /proc
    (``_proc_writers``), a pass over every open fd of every process (milliseconds)."""
    held: set[tuple[int, int]] = set()
    unanswered = set()
    for key, path in files.items():
        written = _lease_refused(path, key)
        if written is None:
            unanswered.add(key)
        elif written:
            held.add(key)
    return held | _proc_writers(unanswered)


def _lease_refused(path: Path, key: tuple[int, int]) -> bool | None:
    """Is a read lease on ``path`` refused because someone writes to it? None: no answer (not
    ours to lease, leases not supported, or ``path`` is no longer the file ``key`` names)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != key:
            return None
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        except OSError as exc:
            return True if exc.errno == errno.EAGAIN else None
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


def _proc_writers(wanted: Collection[tuple[int, int]]) -> set[tuple[int, int]]:
    """``writers_holding`` by /proc, for files a lease cannot answer for: every
    ``/proc/<pid>/fd/<fd>`` link is stat'ed (that gives the inode it leads to); a match counts
    when ``/proc/<pid>/fdinfo/<fd>`` says O_WRONLY or O_RDWR (a reader does not hold a file
    back). Processes whose fds we may not read (another user's, without CAP_SYS_PTRACE) are
    skipped, and so is everything where there is no /proc: the other signals still hold there."""
    wanted_keys = set(wanted)
    held: set[tuple[int, int]] = set()
    if not wanted_keys:
        return held
    try:
        pids = [p for p in os.listdir(PROC) if p.isdigit()]
    except OSError:
        return held
    for pid in pids:
        fd_dir = f"{PROC}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue                    # gone meanwhile, or not ours to read
        for fd in fds:
            try:
                st = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in wanted_keys and key not in held and _open_for_writing(f"{PROC}/{pid}/fdinfo/{fd}"):
                held.add(key)
                if held == wanted_keys:
                    return held
    return held


def _open_for_writing(fdinfo: str) -> bool:
    try:
        with open(fdinfo, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("flags:"):
                    return bool(int(line.split()[1], 8) & (os.O_WRONLY | os.O_RDWR))
    except (OSError, ValueError):
        pass                            # closed meanwhile: it holds nothing
    return False


def _ask_file(path: Path, question: Callable[[int, int], bool], *, unreadable: bool) -> bool:
    """``question(fd, size)`` of the file at ``path``, opened without following a link; the
    answer is ``unreadable`` when it cannot be read (``fetch`` decides then)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return unreadable
    try:
        return question(fd, os.fstat(fd).st_size)
    except OSError:
        return unreadable
    finally:
        os.close(fd)


def _ends_with_newline(path: Path) -> bool:
    """Does ``path`` end with a line break?"""
    return _ask_file(path, ends_with_line_break, unreadable=True)


def _one_line(path: Path, most: int = 1 << 16) -> bool:
    """Is ``path`` one line, its only line break at its end? Read whole, so only up to ``most``
    bytes: no header is longer, and a file made due by every close of a writer is asked again."""
    def one(fd: int, size: int) -> bool:
        if size > most:
            return False
        body = os.pread(fd, size, 0).rstrip(b"\r\n")
        return b"\n" not in body and b"\r" not in body
    return _ask_file(path, one, unreadable=False)


def _state(path: Path) -> tuple[int, int] | None:
    """(size, mtime) of ``path``, or None when it is gone."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


def _written(st: os.stat_result) -> tuple[int, int, int, int]:
    """What any write to a file changes, even one that sets its mtime back (``cp -p``): the
    inode change time moves with every write, rename or utime, and no user tool can set it."""
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _identity(folder: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of ``folder``, or None when it is not there as a folder (deleted, moved
    away, replaced by a file, or out of reach)."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat_mod.S_ISDIR(st.st_mode) else None


def _reports_close_write(observer) -> bool:
    """inotify reports close-after-write; the polling observer (network filesystems) does not."""
    try:
        from watchdog.observers.inotify import InotifyObserver
    except ImportError:
        return False
    return isinstance(observer, InotifyObserver)


# watchdog event → (the path that names the file, what it says about readiness). Opens are not
# among them: the daemon's own reads open files too, and a writer's open shows by its first
# write and by the writer check.
_EVENT_KINDS = {
    FileMovedEvent: ("dest_path", "renamed"),      # renamed into place
    FileClosedEvent: ("src_path", "closed"),       # closed after writing
    FileCreatedEvent: ("src_path", "created"),     # a bare create may be a move from elsewhere
    FileModifiedEvent: ("src_path", "written"),    # someone writes: wait for the close
}


class _Handler(FileSystemEventHandler):
    def __init__(self, inbox: LocalInbox):
        self.inbox = inbox
        self.archives = (inbox.root / PROCESSED, inbox.root / FAILED)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, (DirDeletedEvent, DirMovedEvent)) and \
                Path(os.fsdecode(event.src_path)) == self.inbox.root:
            self.inbox._folder_gone()               # its watch ends with it: look now
            return
        spec = _EVENT_KINDS.get(type(event))
        if spec is None:
            return                                  # directories, deletions, closed-without-write
        path = Path(os.fsdecode(getattr(event, spec[0])))
        if path.parent == self.inbox.root:          # top-level files are input
            self.inbox._event(path.name, spec[1])
        elif path.parent in self.archives:          # an archived file an upload may still write to
            self.inbox._archived_changed(f"{path.parent.name}/{path.name}")
