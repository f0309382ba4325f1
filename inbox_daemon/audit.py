"""The append-only, hash-chained audit trail.

One JSON object per line in ``audit-YYYY-MM-DD.jsonl``; each record's ``hash`` is the sha256 of
the record without ``hash`` (sorted keys, compact separators, UTF-8) and its ``prev`` is the hash
of the record before it, across day files. Editing, removing or reordering any line breaks the
chain at that line, which ``verify`` reports. Writers serialise on an exclusive ``flock`` so two
processes (daemon and CLI) never interleave or fork the chain.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inbox_daemon.jsontext import json_text

GENESIS = "0" * 64


def record_hash(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    seq: Any
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} (seq {self.seq}): {self.reason}"


class AuditLog:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def _files(self) -> list[Path]:
        return sorted(self.folder.glob("audit-*.jsonl"))

    def _last_record(self) -> dict | None:
        for path in reversed(self._files()):
            line = _last_line(path)
            if line:
                return json.loads(line)
        return None

    def append(self, event: str, *, partner: str | None = None, job_id: str | None = None,
               sha256: str | None = None, source: Any = None, actor: str = "daemon",
               details: dict | None = None) -> dict:
        """Append one record under the lock and fsync it; return the record written."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            torn = self._repair_torn_tail()
            last = self._last_record()
            now = datetime.now(UTC)
            record = {
                "seq": (last["seq"] + 1) if last else 1,
                "ts": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "event": event, "partner": partner, "job_id": job_id, "sha256": sha256,
                "source": source, "actor": actor, "details": details or {},
                "prev": last["hash"] if last else GENESIS,
            }
            if torn:
                # say so in the chain itself, before the record that was asked for
                record["details"] = {**record["details"], "recovered_torn_tail": torn}
            record["hash"] = record_hash(record)
            line = json_text(record, separators=(",", ":")) + "\n"     # the hash is of the value
            with open(self.folder / f"audit-{now:%Y-%m-%d}.jsonl", "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
        return record

    def _repair_torn_tail(self) -> dict | None:
        """A power loss mid-append leaves a last line without its newline. Appends are fsynced
        whole, so such a line was never completed: cut it off (and report it in the next record),
        or every later record would chain onto garbage."""
        files = self._files()
        if not files:
            return None
        path = files[-1]
        with open(path, "rb+") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            if size == 0:
                return None
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return None
            fh.seek(max(0, size - 1_000_000))
            tail = fh.read()
            keep = size - len(tail) + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())
        return {"file": path.name, "bytes": size - keep}

    def records(self) -> Iterator[tuple[Path, int, str]]:
        for path in self._files():
            with open(path, encoding="utf-8") as fh:
                for number, line in enumerate(fh, start=1):
                    yield path, number, line

    def verify(self) -> tuple[int, Problem | None]:
        """(records checked, the first problem or None)."""
        prev, expected_seq, count = GENESIS, 1, 0
        for path, number, line in self.records():
            try:
                record = json.loads(line)
            except ValueError:
                return count, Problem(path.name, number, None, "not a JSON object")
            seq = record.get("seq") if isinstance(record, dict) else None
            if not isinstance(record, dict) or "hash" not in record:
                return count, Problem(path.name, number, seq, "not an audit record")
            if record_hash(record) != record["hash"]:
                return count, Problem(path.name, number, seq, "content does not match its hash (altered)")
            if record.get("prev") != prev:
                return count, Problem(path.name, number, seq,
                                      "prev does not match the hash before it (a record was removed, "
                                      "reordered or inserted)")
            if seq != expected_seq:
                return count, Problem(path.name, number, seq, f"expected seq {expected_seq}")
            prev, expected_seq, count = record["hash"], expected_seq + 1, count + 1
        return count, None

    def tail(self, n: int = 10) -> list[str]:
        if n <= 0:
            return []
        lines: list[str] = []
        for path in reversed(self._files()):
            with open(path, encoding="utf-8") as fh:
                # records end in "\n" and nothing else: str.splitlines() would also split at
                # characters JSON may carry inside a string
                parts = fh.read().split("\n")
                lines = (parts[:-1] if parts and parts[-1] == "" else parts) + lines
            if len(lines) >= n:
                break
        return lines[-n:]

    def follow(self, poll: float = 0.5) -> Iterator[str]:
        """Yield lines appended from now on, across day files (``audit tail -f``)."""
        current = self._files()[-1] if self._files() else None
        offset = current.stat().st_size if current else 0
        while True:
            files = self._files()
            if files and files[-1] != current:
                if current is not None:
                    yield from _read_from(current, offset)
                current, offset = files[-1], 0
            if current is not None:
                for line in _read_from(current, offset):
                    offset += len(line.encode("utf-8")) + 1
                    yield line
            time.sleep(poll)


def _read_from(path: Path, offset: int) -> Iterator[str]:
    with open(path, encoding="utf-8") as fh:
        fh.seek(offset)
        for line in fh:
            if not line.endswith("\n"):
                return
            yield line.rstrip("\n")


def _last_line(path: Path) -> str | None:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        block, data = 4096, b""
        while end > 0:
            start = max(0, end - block)
            fh.seek(start)
            data = fh.read(end - start) + data
            end = start
            stripped = data.rstrip(b"\n")
            if b"\n" in stripped or start == 0:
                return stripped.rsplit(b"\n", 1)[-1].decode("utf-8") or None
    return None
