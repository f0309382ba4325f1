"""``Drop``: one observed file in an inbox, before anything was read from it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Drop:
    inbox: str          # the inbox's id (``local:inbox/acme``, ``s3:bucket/prefix``…)
    partner: str        # from the inbox binding, never from the file
    key: str            # where the inbox finds it: path under the inbox root, or object key
    name: str           # the file name as the partner gave it
    uri: str            # for people: file:///…, sftp://…, s3://…
    size: int
    version: str        # mtime (ns) or ETag: with ``key``, names this exact file
