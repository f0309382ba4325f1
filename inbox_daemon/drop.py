"""``Drop``: one observed file in an inbox, before anything was read from it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class Drop:
    inbox: str          # the inbox's id (``local:inbox/acme``, ``s3:bucket/prefix``…)
    partner: str        # from the inbox binding, never from the file
    key: str            # where the inbox finds it: path under the inbox root, or object key
    name: str           # the file name as the partner gave it
    uri: str            # for people: file:///…, sftp://…, s3://…
    size: int
    version: str        # mtime (ns) or ETag: with ``key``, names this exact file
    # when it became ready in its inbox (``delivery_time``), the partner's delivery order: local,
    # the inode change time (set by the last write or the rename into the folder; ``cp -p`` and
    # ``rsync -t`` cannot set it back); SFTP, the mtime; S3, LastModified. None: now (``ingest``)
    delivered: str | None = None


def delivery_time(unix: float) -> str:
    """A delivery time as the ledger keeps it: UTC with microseconds, fixed width, so that text
    order is time order (``2026-12-05T23:39:24.123456Z``)."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
