"""``Drop``: one observed file in an inbox, before anything was read from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Drop:
    inbox: str                  # the inbox's id (``local:inbox/acme``, ``s3:bucket/prefix``…)
    partner: str                # from the inbox binding, never from the file
    name: str                   # the file name as the partner gave it
    uri: str                    # where it is, for people: file:///…, sftp://…, s3://…
    size: int
    extra: dict[str, Any] = field(default_factory=dict)   # mtime, ETag, version…
