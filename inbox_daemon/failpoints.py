"""Named points where a crash test can kill the daemon, the way a power cut would.

``INBOX_DAEMON_CRASH_AT=after_commit`` (a comma-separated list of point names, optionally
``name:N`` for the N-th time the point is passed) makes the process SIGKILL itself there: no
cleanup, no flush, no ``finally``. Unset, as in every real deployment, ``reached`` is one dict
lookup. The points name the moments where a crash is most interesting: between each durable
step of a job.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "INBOX_DAEMON_CRASH_AT"
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


def _parse(value: str) -> dict[str, int]:
    wanted = {}
    for item in filter(None, (p.strip() for p in value.split(","))):
        name, _, nth = item.partition(":")
        if name not in POINTS:
            raise ValueError(f"{ENV}: unknown point {name!r}; known: {', '.join(POINTS)}")
        wanted[name] = int(nth or 1)
    return wanted


_WANTED = _parse(os.environ.get(ENV, ""))
_passed: dict[str, int] = {}
_lock = threading.Lock()


def reached(name: str) -> None:
    """Kill this process here if a crash test asked for it."""
    if not _WANTED:
        return
    with _lock:
        _passed[name] = _passed.get(name, 0) + 1
        due = _WANTED.get(name) == _passed[name]
    if due:
        os.kill(os.getpid(), signal.SIGKILL)
