"""Named points where a crash test can kill the daemon, the way a power cut would.

``INBOX_DAEMON_CRASH_AT=after_commit`` (a comma-separated list of point names, optionally
``name:N`` for the N-th time the point is passed) makes the process SIGKILL itself there: no
cleanup, no flush, no ``finally``. Unset, as in every real deployment, ``reached`` is one dict
lookup. The points name the moments where a crash is most interesting: between each durable
step of a job. ``INBOX_DAEMON_FREEZE_AT`` (same syntax) stops the process there instead
(SIGSTOP), the way a hung host would: alive, holding its claims, until its lease runs out.

A worker process (``inbox_daemon.worker_process``) is part of its daemon: a point it reaches
kills or freezes the daemon first, and the N-th time counts every pass in the daemon and its
worker processes together (``share``, ``on_behalf_of``).
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

ENV = "INBOX_DAEMON_CRASH_AT"
FREEZE_ENV = "INBOX_DAEMON_FREEZE_AT"
POINTS = (
    "after_spool",        # the file is in the spool, hashed; nothing is in the ledger yet
    "after_claim",        # the job is running in the ledger; nothing staged
    "mid_stage",          # the first batch is staged, inside the load
    "before_commit",      # merged, the transaction not committed
    "after_commit",       # rows and outcome committed; no manifest yet
    "after_manifest",     # manifest written; no audit record yet
    "after_audit",        # audit recorded; the source not archived yet
    "after_report",       # marked reported in the ledger; the partner's copy not written back yet
    "after_archive",      # archived; the job is fully done
)


def _parse(env: str, sig: signal.Signals) -> dict[str, tuple[int, signal.Signals]]:
    wanted = {}
    for item in filter(None, (p.strip() for p in os.environ.get(env, "").split(","))):
        name, _, nth = item.partition(":")
        if name not in POINTS:
            raise ValueError(f"{env}: unknown point {name!r}; known: {', '.join(POINTS)}")
        wanted[name] = (int(nth or 1), sig)
    return wanted


_WANTED = _parse(ENV, signal.SIGKILL) | _parse(FREEZE_ENV, signal.SIGSTOP)
_passed: dict[str, int] = {}
_lock = threading.Lock()
_shared: Any = None             # the passes counted with the daemon's worker processes: one int a point
_daemon: int | None = None      # in a worker process: the daemon it works for


def share(context: Any) -> Any:
    """In the daemon, before its worker processes start: the pass counts they count into
    (None when no point is wanted: nothing is counted at all)."""
    global _shared
    if _WANTED and _shared is None:
        _shared = context.Array("i", len(POINTS))
    return _shared


def on_behalf_of(daemon: int, shared: Any) -> None:
    """In a worker process: points stop ``daemon`` too, and count into its ``shared`` counts."""
    global _daemon, _shared
    _daemon, _shared = daemon, shared


def reached(name: str) -> None:
    """Kill (or freeze) this process here if a crash test asked for it."""
    if not _WANTED:
        return
    nth, sig = _WANTED.get(name, (0, signal.SIGKILL))
    if _shared is not None:
        at = POINTS.index(name)
        with _shared.get_lock():
            _shared[at] += 1
            passed = _shared[at]
    else:
        with _lock:
            _passed[name] = passed = _passed.get(name, 0) + 1
    if nth == passed:
        if _daemon is not None:
            os.kill(_daemon, sig)
        os.kill(os.getpid(), sig)
