"""The audit trail as the console shows it: the latest records, a job's records, and ``verify``.

Verifying reads and hashes the whole chain (seconds for a few hundred thousand records), too long
for a page: it runs on a thread of its own when the console starts and when an admin asks, and
the audit page shows the last result with its time. A job's records are found by a byte search
for its id in the day files from the job's creation on.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from inbox_daemon.audit import AuditLog, Head
from storage.base import Job

JOB_RECORDS = 200          # at most this many records shown on a job's page
STALE_S = 60.0             # the audit page verifies the trail again once its last verification is this old
WAIT_S = 0.5               # ... and waits this long for the result before it shows "verifying"


@dataclass(frozen=True)
class Verification:
    started: str
    finished: str | None = None
    records: int = 0
    problem: str | None = None
    error: str | None = None           # verify itself failed (the folder unreadable, the key missing)

    @property
    def intact(self) -> bool:
        return self.finished is not None and self.problem is None and self.error is None


class TrailView:
    def __init__(self, audit: AuditLog, head: Callable[[], Head | None]):
        self.audit = audit
        self._head = head
        self._lock = threading.Lock()
        self._last: Verification | None = None
        self._thread: threading.Thread | None = None

    def latest(self, n: int = 50) -> list[dict]:
        """The last ``n`` records, newest first."""
        return [_record(line) for line in reversed(self.audit.tail(n))]

    def of_job(self, job: Job) -> list[dict]:
        """The records naming ``job`` (its outcome, requeues, approvals, a revert of it), oldest first."""
        needle = f'"{job.id}"'.encode()
        found: list[dict] = []
        first = f"audit-{job.created_at[:10]}.jsonl"
        for path in sorted(self.audit.folder.glob("audit-*.jsonl")):
            if path.name < first:
                continue
            if len(found) >= JOB_RECORDS:
                break
            data = path.read_bytes()
            start = data.find(needle)
            while start != -1 and len(found) < JOB_RECORDS:
                begin = data.rfind(b"\n", 0, start) + 1
                end = data.find(b"\n", start)
                end = len(data) if end == -1 else end
                found.append(_record(data[begin:end].decode("utf-8", "replace")))
                start = data.find(needle, end)
        return found

    # -- verify -----------------------------------------------------------------------------------
    def verification(self) -> Verification | None:
        with self._lock:
            return self._last

    def refresh(self, max_age: float = STALE_S, wait: float = WAIT_S) -> None:
        """For the audit page: a verification no older than ``max_age`` (the one made at the
        console's start said "0 records" until someone asked again), waited for ``wait`` at
        most (a trail of some thousands of records verifies well within it)."""
        last = self.verification()
        if last is not None and (last.finished is None or _age(last.finished) < max_age):
            return
        self.verify_soon()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(wait)

    def verify_soon(self) -> bool:
        """Start a verification unless one runs; False when one was running already."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return False
            self._last = Verification(started=_now())
            self._thread = threading.Thread(target=self._verify, name="console audit verify", daemon=True)
            self._thread.start()
            return True

    def _verify(self) -> None:
        started = self._last.started if self._last else _now()
        try:
            count, problem = self.audit.verify(self._head())
            result = Verification(started, _now(), count, str(problem) if problem else None)
        except Exception as exc:  # noqa: BLE001 — shown on the page as the reason verify could not run
            result = Verification(started, _now(), error=f"{type(exc).__name__}: {exc}")
        with self._lock:
            self._last = result


def _record(line: str) -> dict:
    try:
        record = json.loads(line)
    except ValueError:
        return {"unreadable": line[:500]}
    return record if isinstance(record, dict) else {"unreadable": line[:500]}


def _age(stamp: str) -> float:
    """Seconds since ``stamp`` (as ``_now`` writes it)."""
    return (datetime.now(UTC) - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
