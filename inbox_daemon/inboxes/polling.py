"""What every remote inbox (SFTP, S3 listing) shares: poll, settle, hand over ready files.

A poll lists the folder or prefix every ``poll_interval`` (±10% jitter, so many inboxes do not
poll in lockstep). A file is ready when its size and version (mtime or ETag) were unchanged
across ``settle``, or at first sight when it was last modified more than ``settle`` ago. A poll
that fails (network, server) is logged and retried with exponential backoff and full jitter; the
subclass reconnects on its next call.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

from config.model import InboxConfig
from inbox_daemon.drop import Drop
from inbox_daemon.errors import InboxError
from inbox_daemon.inboxes.base import OnReady, safe_name, wanted
from inbox_daemon.logs import get_logger
from inbox_daemon.webhooks import backoff

JITTER = 0.1
MAX_BACKOFF = 300.0


@dataclass(frozen=True)
class Entry:
    """One file as a listing shows it."""
    key: str            # path under the inbox folder / object key
    name: str
    size: int
    version: str        # mtime or ETag
    modified: float     # Unix time of the last change, as the server says


class PollingInbox:
    """Base for remote inboxes. Subclasses implement ``list_entries``, ``fetch``, ``archive``,
    ``write_back`` and ``disconnect``; ``uri(key)`` names a file for people."""

    def __init__(self, config: InboxConfig, *, clock=time.time):
        self.config = config
        self._clock = clock
        self._seen: dict[str, tuple[int, str, float]] = {}     # key -> (size, version, since)
        self._handed: set[tuple[str, str]] = set()              # (key, version) given to the daemon
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._polled = threading.Event()
        self._failures = 0
        self.log = get_logger(inbox=self.id, partner=config.partner)

    @property
    def id(self) -> str:
        return self.config.id

    # -- to implement ---------------------------------------------------------------------------
    def list_entries(self) -> Iterable[Entry]:
        raise NotImplementedError

    def uri(self, key: str) -> str:
        raise NotImplementedError

    def disconnect(self) -> None:
        pass

    # -- readiness ------------------------------------------------------------------------------
    def _candidates(self) -> Iterator[Entry]:
        for entry in self.list_entries():
            if safe_name(entry.name) and wanted(entry.name, self.config):
                yield entry

    def ready_entries(self) -> list[Entry]:
        """One listing: the entries that are ready now (see the module docstring)."""
        now = self._clock()
        ready, present = [], set()
        for entry in self._candidates():
            present.add(entry.key)
            with self._lock:
                prev = self._seen.get(entry.key)
                if prev is None or prev[:2] != (entry.size, entry.version):
                    self._seen[entry.key] = (entry.size, entry.version, now)
                    since = now
                else:
                    since = prev[2]
            settled = now - since >= self.config.settle or now - entry.modified >= self.config.settle
            if settled and entry.size > 0:
                ready.append(entry)
                with self._lock:
                    self._handed.add((entry.key, entry.version))
        with self._lock:
            for key in list(self._seen):
                if key not in present:
                    del self._seen[key]
            self._handed = {h for h in self._handed if h[0] in present}
        return ready

    def drop_for(self, entry: Entry) -> Drop:
        return Drop(inbox=self.id, partner=self.config.partner, key=entry.key, name=entry.name,
                    uri=self.uri(entry.key), size=entry.size, version=entry.version)

    def scan(self) -> list[Drop]:
        """The poll thread does the listing; a second lister at start-up would only race it."""
        return []

    # -- polling --------------------------------------------------------------------------------
    def watch(self, on_ready: OnReady) -> None:
        self._thread = threading.Thread(target=self._poll_loop, args=(on_ready,), name=f"poll {self.id}",
                                        daemon=True)
        self._thread.start()

    def _poll_loop(self, on_ready: OnReady) -> None:
        while not self._stop.is_set():
            try:
                entries = self.ready_entries()
                self._failures = 0
                for entry in entries:
                    on_ready(self.drop_for(entry))
                delay = self.config.poll_interval * (1 + random.uniform(-JITTER, JITTER))
            except InboxError as exc:
                self._failures += 1
                self.disconnect()
                cap = min(MAX_BACKOFF, max(10 * self.config.poll_interval, 5.0))
                delay = backoff(self._failures, min(self.config.poll_interval, 1.0), cap)
                self.log.warning("inbox.poll_failed", error=str(exc), failures=self._failures,
                                 retry_in_s=round(delay, 2))
            finally:
                self._polled.set()
            # poll sooner while something waits to settle, so it is taken as soon as it may be
            if self._waiting():
                delay = min(delay, max(self.config.settle / 2, 0.05))
            self._stop.wait(delay)

    def settling(self) -> int:
        """Files seen but not ready yet; 1 until the first poll finished (``run --once``)."""
        if not self._polled.is_set():
            return 1
        return self._waiting()

    def _waiting(self) -> int:
        with self._lock:
            return sum((key, v[1]) not in self._handed for key, v in self._seen.items())

    def alive(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.disconnect()
