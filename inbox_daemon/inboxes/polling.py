"""What every remote inbox (SFTP, S3 listing) shares: poll, settle, hand over ready files.

A poll lists the folder or prefix every ``poll_interval`` (±10% jitter, so many inboxes do not
poll in lockstep). A file is ready when its size and version (mtime or ETag) were unchanged
across ``settle``, or at first sight when it was last modified more than ``settle`` ago; with
``ready_marker``, also only once the same listing shows ``<name>.done`` or ``<name>.ok`` (markers
are never input). What a listing cannot see (a client that paused longer than ``settle``, then
went on) is caught by the subclass's ``fetch`` and ``verify_unchanged``. A poll
that fails (network, server) is logged and retried with exponential backoff and full jitter; the
subclass reconnects on its next call.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from config.errors import InboxError, InboxMisconfigured
from config.model import RemoteInboxConfig
from inbox_daemon.backoff import backoff
from inbox_daemon.drop import Drop, delivery_time
from inbox_daemon.inboxes.base import OnReady, marker_names, safe_name, wanted
from inbox_daemon.logs import get_logger

JITTER = 0.1
MAX_BACKOFF = 300.0
REOFFER_S = 300.0       # a file handed over but still there is offered again after this long

# the config type of the subclass's kind (SftpInboxConfig, S3InboxConfig): its own keys, typed
ConfigT = TypeVar("ConfigT", bound=RemoteInboxConfig)


@dataclass(frozen=True)
class Entry:
    """One file as a listing shows it."""
    key: str            # path under the inbox folder / object key
    name: str
    size: int
    version: str        # mtime or ETag
    modified: float     # Unix time of the last change, as the server says


class PollingInbox(Generic[ConfigT]):
    """Base for remote inboxes. Subclasses implement ``list_entries``, ``fetch``, ``archive``,
    ``write_back`` and ``disconnect``; ``uri(key)`` names a file for people.

    ``atomic_uploads``: the store shows an object only once it is complete (S3), so an object
    last modified more than ``settle`` ago is ready at first sight. Otherwise (SFTP) a file is
    ready only after our own listings saw it unchanged across ``settle``: the server's clock may
    be off, and a file being uploaded can carry an old mtime."""

    atomic_uploads = False
    version_is_content = False          # overridden where a listing's version is content-derived
    shared = True                       # every daemon on the store lists it: files are claimed

    def __init__(self, config: ConfigT, *, clock=time.time):
        self.config = config
        self._clock = clock
        self._seen: dict[str, tuple[int, str, float]] = {}     # key -> (size, version, since)
        self._handed: dict[tuple[str, str], float] = {}         # (key, version) -> when handed over
        self._unmarked: set[str] = set()        # keys settled but waiting for their marker
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._polled = threading.Event()
        self._failures = 0
        self._last_error: str | None = None
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
    def ready_entries(self) -> list[Entry]:
        """One listing: the entries to hand over now (see the class docstring). Each version is
        handed over once; one still there after ``REOFFER_S`` (its job could not run) again."""
        now = self._clock()
        ready, present, unmarked = [], set(), set()
        listed = list(self.list_entries())
        names = {entry.name for entry in listed}        # markers among them
        for entry in listed:
            if not (safe_name(entry.name) and wanted(entry.name, self.config)):
                continue
            present.add(entry.key)
            with self._lock:
                prev = self._seen.get(entry.key)
                if prev is None or prev[:2] != (entry.size, entry.version):
                    self._seen[entry.key] = (entry.size, entry.version, now)
                    since = now
                else:
                    since = prev[2]
                handed = self._handed.get((entry.key, entry.version))
            settled = now - since >= self.config.settle or (
                self.atomic_uploads and now - entry.modified >= self.config.settle)
            fresh = handed is None or now - handed >= REOFFER_S
            if settled and entry.size > 0 and fresh:
                if self.config.ready_marker and names.isdisjoint(marker_names(entry.name)):
                    unmarked.add(entry.key)
                    continue
                ready.append(entry)
                with self._lock:
                    self._handed[(entry.key, entry.version)] = now
        with self._lock:
            for key in list(self._seen):
                if key not in present:
                    del self._seen[key]
            self._handed = {h: t for h, t in self._handed.items() if h[0] in present}
            self._unmarked = unmarked
        return ready

    def gone(self, drop: Drop) -> None:
        """This version left the inbox by our own hand (archived or deleted). The next file
        listed under its key is a new delivery even when no listing saw the key empty in
        between: ``put -p`` of new content under the same name keeps size and mtime, and a
        partner may send it the moment the last one was archived. It settles like any upload."""
        with self._lock:
            self._handed.pop((drop.key, drop.version), None)
            if self._seen.get(drop.key, (None, None))[:2] == (drop.size, drop.version):
                del self._seen[drop.key]

    def kept(self, drop: Drop) -> None:
        """This version was answered and stays ("keep"): not handed over again while it is
        listed unchanged. (A listing cannot tell an upload that keeps size and mtime apart.)"""
        with self._lock:
            self._handed[(drop.key, drop.version)] = math.inf

    def offer_again_in(self, drop: Drop, seconds: float) -> None:
        """Another daemon holds this file: hand it over again after ``seconds`` (when its
        claim may have run out), not at once, and without polling faster meanwhile."""
        with self._lock:
            if (drop.key, drop.version) in self._handed:
                self._handed[(drop.key, drop.version)] = self._clock() - REOFFER_S + seconds

    def drop_for(self, entry: Entry) -> Drop:
        return Drop(inbox=self.id, partner=self.config.partner, key=entry.key, name=entry.name,
                    uri=self.uri(entry.key), size=entry.size, version=entry.version,
                    delivered=delivery_time(entry.modified))

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
            failed = False
            try:
                entries = self.ready_entries()
                self._failures, self._last_error = 0, None
                for entry in entries:
                    on_ready(self.drop_for(entry))
                delay = self.config.poll_interval * (1 + random.uniform(-JITTER, JITTER))
            except Exception as exc:  # noqa: BLE001 — this thread is the inbox: it must outlive any error
                failed = True
                self._failures += 1
                self._last_error = f"{type(exc).__name__}: {exc}"[:300]
                self.disconnect()
                cap = min(MAX_BACKOFF, max(10 * self.config.poll_interval, 5.0))
                delay = backoff(self._failures, min(self.config.poll_interval, 1.0), cap)
                # misconfiguration (a changed host key, refused credentials) needs an operator,
                # not patience: an error; a server away for a while is a warning
                level = self.log.error if isinstance(exc, InboxMisconfigured) else self.log.warning
                level("inbox.poll_failed", error=str(exc), error_type=type(exc).__name__,
                      failures=self._failures, retry_in_s=round(delay, 2),
                      exc_info=not isinstance(exc, InboxError))
            finally:
                self._polled.set()
            # poll sooner while something waits to settle, so it is taken as soon as it may be
            if not failed and self._poll_soon():
                delay = min(delay, max(self.config.settle / 2, 0.05))
            self._stop.wait(delay)

    def looks(self) -> tuple[str, str]:
        return "polling", f"every {self.config.poll_interval:g} s"

    def failing(self) -> dict | None:
        """For /healthz: the polls are failing (the server is down, access was revoked)."""
        if not self._failures:
            return None
        return {"error": self._last_error, "polls": self._failures}

    def settling(self) -> int:
        """Files seen but not ready yet; 1 until the first poll finished (``run --once``)."""
        if not self._polled.is_set():
            return 1
        return self._waiting()

    def _waiting(self) -> int:
        """Entries not handed over yet, except empty ones that stayed empty past ``settle`` and
        settled ones waiting for their marker (an upload that never started, or whose marker
        never comes, must not hold ``run --once`` or keep polling fast)."""
        now = self._clock()
        with self._lock:
            return sum((key, version) not in self._handed and key not in self._unmarked
                       and not (size == 0 and now - since >= self.config.settle)
                       for key, (size, version, since) in self._seen.items())

    def _poll_soon(self) -> bool:
        """Poll at ``settle``/2 rather than ``poll_interval``: something is about to be ready."""
        return bool(self._waiting())

    def alive(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.disconnect()
