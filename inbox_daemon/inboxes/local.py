"""A local directory inbox, watched with watchdog (inotify on Linux).

Readiness, with inotify: a file renamed within the folder, or closed after writing
(IN_CLOSE_WRITE), is ready at once. A file moved in from another folder arrives as a bare
"created" with no open or close (IN_MOVED_TO without its IN_MOVED_FROM); a writer's file is
"created" then "opened" in the same instant. So a created file that nobody opens within
``PROBE`` is complete; one that is opened or modified waits for its close. Without close events
(the polling observer, network filesystems) and for young files found at start-up, a file is
ready once its size and mtime stayed unchanged for ``settle``. Empty files never become ready by
waiting: a writer may not have started. Only top-level regular files that match ``patterns`` are taken:
never symlinks, temp names, or the ``processed/``, ``failed/`` and ``results/`` folders.
"""

from __future__ import annotations

import os
import stat as stat_mod
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from config.errors import InboxMisconfigured, InboxUnavailable
from config.model import LocalInboxConfig
from config.status import ARCHIVED_AS_SUCCESS
from inbox_daemon.drop import Drop
from inbox_daemon.inboxes.base import (
    FAILED,
    PROCESSED,
    RESERVED,
    RESULTS,
    OnReady,
    archive_name,
    safe_name,
    wanted,
)
from inbox_daemon.logs import get_logger
from inbox_daemon.spool import spool_stream
from inbox_daemon.tempfiles import fsync_dir, write_atomic

SETTLE_TICK = 0.02        # seconds between checks of files waiting to settle
PROBE = 0.05              # seconds a created file must stay unopened to count as moved in whole


class LocalInbox:
    version_is_content = False          # an mtime: cp -p, rsync -t and coarse clocks keep it

    def __init__(self, config: LocalInboxConfig, *, observer_factory=Observer, clock=time.monotonic):
        self.config = config
        self.root = Path(config.path).resolve()
        self._observer_factory = observer_factory
        self._clock = clock
        self._observer: BaseObserver | None = None
        self._settler: threading.Thread | None = None
        self._stop = threading.Event()
        # name -> (size, mtime_ns, since, wait): ready when unchanged for ``wait`` seconds
        self._pending: dict[str, tuple[int, int, float, float]] = {}
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
        for folder in (self.root, *(self.root / r for r in RESERVED)):
            folder.mkdir(parents=True, exist_ok=True)

    @property
    def id(self) -> str:
        return self.config.id

    # -- finding files ------------------------------------------------------------------------
    def _drop(self, name: str, stat: os.stat_result) -> Drop:
        path = self.root / name
        return Drop(inbox=self.id, partner=self.config.partner, key=name, name=name, uri=path.as_uri(),
                    size=stat.st_size, version=str(stat.st_mtime_ns))

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
        """Files present now. Young ones (changed within ``settle``) wait to settle instead."""
        with os.scandir(self.root) as entries:
            names = sorted(e.name for e in entries)
        self._forget_gone(set(names))
        now_wall = time.time()
        for name in names:
            st = self._stat_candidate(name)
            if st is None or self._kept.get(name) == _written(st):
                continue
            if now_wall - st.st_mtime >= self.config.settle:
                yield self._drop(name, st)
            else:
                self._track(name, st)

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
        # Recursive, although only top-level files are input: archiving moves a file into
        # processed/, and watchdog holds an IN_MOVED_FROM whose IN_MOVED_TO it cannot see for
        # 0.5 s, delaying every event queued behind it. Watching the subfolders pairs the move.
        self._observer.schedule(_Handler(self), str(self.root), recursive=True)
        self._observer.daemon = True
        self._observer.start()
        self._settler = threading.Thread(target=self._settle_loop, name=f"settle {self.id}", daemon=True)
        self._settler.start()

    def _track(self, name: str, st: os.stat_result, wait: float | None = None) -> None:
        with self._lock:
            prev = self._pending.get(name)
            wait = wait if wait is not None else (prev[3] if prev else self.config.settle)
            if prev is None or prev[:2] != (st.st_size, st.st_mtime_ns):
                self._pending[name] = (st.st_size, st.st_mtime_ns, self._clock(), wait)

    def _ready_now(self, name: str) -> None:
        with self._lock:
            self._pending.pop(name, None)
        st = self._stat_candidate(name)
        if st is not None and self._on_ready is not None:
            self._on_ready(self._drop(name, st))

    def _event(self, name: str, kind: str) -> None:
        """``kind``: "final" (closed after writing, renamed in place), "created", "writing"."""
        st = self._stat_candidate(name)
        if st is None:
            return
        if kind == "final":
            self._ready_now(name)
        elif not self._close_events:
            self._track(name, st, self.config.settle)      # no close events: settle decides
        elif kind == "created":
            self._track(name, st, min(PROBE, self.config.settle))
        else:                                               # a writer has it open: wait for close
            with self._lock:
                self._pending.pop(name, None)

    def _settle_loop(self) -> None:
        while not self._stop.wait(SETTLE_TICK):
            now = self._clock()
            with self._lock:
                pending = list(self._pending.items())
            for name, (size, mtime, since, wait) in pending:
                st = self._stat_candidate(name)
                if st is None:
                    with self._lock:
                        self._pending.pop(name, None)
                elif (st.st_size, st.st_mtime_ns) != (size, mtime):
                    self._track(name, st)
                elif now - since >= wait and st.st_size > 0:
                    self._ready_now(name)

    def offer_again_in(self, drop: Drop, seconds: float) -> None:
        """Another process holds this file (another daemon on a shared folder, or one that died
        and whose claim has not run out): offer it again after ``seconds``."""
        st = self._stat_candidate(drop.key)
        if st is not None:
            with self._lock:
                self._pending[drop.key] = (st.st_size, st.st_mtime_ns, self._clock(), seconds)

    def probe(self) -> dict:
        ok = os.access(self.root, os.R_OK | os.W_OK | os.X_OK)
        return {"ok": ok, "detail": f"{self.root} is {'readable and writable' if ok else 'not writable'}"}

    def settling(self) -> int:
        """Files seen but not yet ready (waiting for ``settle``). An empty file that stayed empty
        past its wait does not count: it may never be written, and ``run --once`` must end."""
        now = self._clock()
        with self._lock:
            return sum(not (size == 0 and now - since >= wait)
                       for size, _, since, wait in self._pending.values())

    def failing(self) -> dict | None:
        return None                 # inotify tells of files; there is no look that could fail

    def alive(self) -> bool:
        return bool(self._observer and self._observer.is_alive() and self._settler
                    and self._settler.is_alive())

    def close(self) -> None:
        self._stop.set()
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

    def fetch(self, drop: Drop, spool_dir: Path) -> tuple[Path, str, int]:
        """Spool exactly the file that was judged ready: opened without following a symlink,
        a regular file, still the version (mtime) seen. Anything else waits for its own event."""
        path = self._path(drop.key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise InboxUnavailable(f"{drop.key} disappeared before it could be read") from exc
        except OSError as exc:           # ELOOP: it became a symlink
            raise InboxMisconfigured(f"{drop.key} is not a regular file any more; not read ({exc})") from exc
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat_mod.S_ISREG(st.st_mode):
                raise InboxMisconfigured(f"{drop.key} is not a regular file; not read")
            if str(st.st_mtime_ns) != drop.version:
                raise InboxUnavailable(f"{drop.key} changed since it was seen; it is read once it is ready again")
            self._read_from[(drop.key, drop.version)] = _written(st)
            return spool_stream(fh, spool_dir)

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
        return st

    def archive(self, drop: Drop, status: str) -> None:
        """After the outcome is durable: processed/ (or delete/keep) on success, failed/ otherwise.
        Only the very version that was processed is moved: a newer upload under the same name
        stays for its own job."""
        st = self._same_file(drop)
        read = self._read_from.pop((drop.key, drop.version), None)
        if st is None:
            return
        source = self._path(drop.key)
        if status in ARCHIVED_AS_SUCCESS:
            if self.config.on_success == "keep":
                # what was read, not what is there now: a write since then is seen by the rescan
                self._kept[drop.key] = read or _written(st)
                return
            if self.config.on_success == "delete":
                source.unlink(missing_ok=True)
                fsync_dir(self.root)
                return
            folder = self._folder(PROCESSED)
        else:
            folder = self._folder(FAILED)
        target = folder / archive_name(source.name, drop.version, lambda n: (folder / n).exists())
        os.replace(source, target)
        fsync_dir(folder)
        fsync_dir(self.root)

    def write_back(self, drop: Drop, name: str, data: bytes) -> None:
        if safe_name(name) is None:
            raise InboxMisconfigured(f"{name!r} is not a plain file name; not written")
        write_atomic(self._folder(RESULTS) / name, data)


def _written(st: os.stat_result) -> tuple[int, int, int, int]:
    """What any write to a file changes, even one that sets its mtime back (``cp -p``): the
    inode change time moves with every write, rename or utime, and no user tool can set it."""
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _reports_close_write(observer) -> bool:
    """inotify reports close-after-write; the polling observer (network filesystems) does not."""
    try:
        from watchdog.observers.inotify import InotifyObserver
    except ImportError:
        return False
    return isinstance(observer, InotifyObserver)


# watchdog event → (the path that names the file, what it says about readiness)
_EVENT_KINDS = {
    FileMovedEvent: ("dest_path", "final"),        # renamed into place
    FileClosedEvent: ("src_path", "final"),        # closed after writing
    FileCreatedEvent: ("src_path", "created"),     # a bare create may be a move from elsewhere
    FileOpenedEvent: ("src_path", "writing"),      # someone has it open: wait for the close
    FileModifiedEvent: ("src_path", "writing"),
}


class _Handler(FileSystemEventHandler):
    def __init__(self, inbox: LocalInbox):
        self.inbox = inbox

    def on_any_event(self, event: FileSystemEvent) -> None:
        spec = _EVENT_KINDS.get(type(event))
        if spec is None:
            return                                  # directories, deletions, closed-without-write
        path = Path(os.fsdecode(getattr(event, spec[0])))
        if path.parent == self.inbox.root:          # top-level files only
            self.inbox._event(path.name, spec[1])
