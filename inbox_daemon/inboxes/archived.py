"""Archived files that keep growing: an upload that went on after its file was archived.

A client that pauses longer than ``settle`` in the middle of an upload can have its file judged
ready, applied and archived before it is done. Archiving renames: an SFTP ``posix_rename`` or a
local rename moves the very file the client still writes to, so the rest of the upload lands in
``processed/<name>`` (or ``failed/``). ``ArchiveWatch`` remembers how each recently archived file
looked (size, mtime) when it was archived and is told how it looks later (local: events under
the archive folders; SFTP: a stat per poll). One that changed is a fault an operator must see:
an error ``file.grew_after_archive`` and, through the inbox's ``failing()``, ``/healthz`` until
the file was taken in again. Once it has been quiet for ``settle``, the inbox moves it back to
its root under its own name (when that name is free), so that its complete content is read as a
new delivery: the rest of the upload is never silently lost.

The inbox does the I/O (stat, rename); this class keeps the memory and the rules. The memory is
bounded: the last ``MEMORY`` files archived, each for ``HORIZON`` at most; a file that grew is
kept until it was taken in (or the daemon restarts).
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass

MEMORY = 1_000          # archived files watched at most: the oldest are forgotten first
HORIZON = 3600.0        # seconds an archived file is watched for growth

State = tuple[int, float]       # (size, mtime) as the inbox reads it


@dataclass
class Archived:
    name: str               # its name in the inbox root
    path: str               # where it lies, relative to the inbox root ("processed/feed.csv")
    at_archive: State       # how it looked when it was archived
    at: float               # clock() when it was archived
    now: State | None = None    # how it looks since it grew; None while it did not
    since: float = 0.0      # clock() of the last change seen since it grew
    returned: bool = False  # moved back into the inbox root; reported until it is taken in


class ArchiveWatch:
    def __init__(self, *, settle: float, log, clock=time.monotonic):
        self.settle = settle
        self.log = log
        self._clock = clock
        self._lock = threading.Lock()
        self._files: collections.OrderedDict[str, Archived] = collections.OrderedDict()   # by path

    def remember(self, name: str, path: str, state: State) -> None:
        """``name`` was just archived to ``path``, looking like ``state``."""
        with self._lock:
            self._files.pop(path, None)
            self._files[path] = Archived(name, path, state, self._clock())
            self._prune()

    def _prune(self) -> None:
        """Forget files that did not grow within ``HORIZON``, and the oldest beyond ``MEMORY``;
        never one that grew: it is a fault until it was taken in."""
        now = self._clock()
        quiet = [p for p, a in self._files.items() if a.now is None]
        excess = len(quiet) - MEMORY
        for n, path in enumerate(quiet):
            if n < excess or now - self._files[path].at > HORIZON:
                del self._files[path]

    def watched(self) -> list[Archived]:
        """The archived files to look at now: those still where they were archived."""
        with self._lock:
            self._prune()
            return [a for a in self._files.values() if not a.returned]

    def growing(self) -> list[Archived]:
        """Files that grew after they were archived and are not back in the inbox yet."""
        with self._lock:
            return [a for a in self._files.values() if a.now is not None and not a.returned]

    def seen(self, path: str, state: State | None) -> None:
        """The archived file at ``path`` looks like ``state`` now (None: it is gone, moved away
        by someone: forgotten, unless it grew; that stays reported until it is taken in or the
        daemon restarts)."""
        with self._lock:
            archived = self._files.get(path)
            if archived is None or archived.returned:
                return
            if state is None:
                if archived.now is None:
                    del self._files[path]
                return
            if archived.now is None:
                if state == archived.at_archive:
                    return
                archived.now, archived.since = state, self._clock()
                grew = True
            else:
                if state != archived.now:
                    archived.now, archived.since = state, self._clock()
                return
        if grew:
            self.log.error("file.grew_after_archive", archived=path, name=archived.name,
                           size_at_archive=archived.at_archive[0], size_now=state[0],
                           action="moved back into the inbox once quiet, to be read whole as a new delivery")

    def due(self) -> list[Archived]:
        """Files that grew and have been quiet for ``settle`` since: to move back now."""
        now = self._clock()
        return [a for a in self.growing() if now - a.since >= self.settle]

    def returned(self, archived: Archived) -> None:
        with self._lock:
            archived.returned = True
        self.log.warning("file.returned_to_inbox", archived=archived.path, name=archived.name,
                         size=archived.now[0] if archived.now else None)

    def taken_in(self, name: str) -> None:
        """A file of ``name`` in the inbox root was answered and archived: a grown file that
        was moved back under that name has been taken in; it is no fault any more."""
        with self._lock:
            for path in [p for p, a in self._files.items() if a.returned and a.name == name]:
                del self._files[path]

    def failing(self) -> dict | None:
        """For ``/healthz``: the archived files that grew and were not taken in again yet."""
        with self._lock:
            grown = [a for a in self._files.values() if a.now is not None]
        if not grown:
            return None
        return {"error": f"{len(grown)} file(s) grew after they were archived: an upload went on "
                         "after its file was applied; each is read again whole once it is quiet",
                "grew_after_archive": [
                    {"archived": a.path, "name": a.name, "size_at_archive": a.at_archive[0],
                     "size_now": a.now[0] if a.now else None, "moved_back": a.returned}
                    for a in grown]}
