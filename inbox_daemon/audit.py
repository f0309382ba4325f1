"""The append-only, hash-chained audit trail.

One JSON object per line in ``audit-YYYY-MM-DD.jsonl``; each record's ``hash`` is the sha256 of
the record without ``hash`` (sorted keys, compact separators, UTF-8) and its ``prev`` is the hash
of the record before it, across day files. Editing, removing or reordering any line breaks the
chain at that line, which ``verify`` reports. Writers serialise on an exclusive ``flock`` so two
processes (daemon and CLI) never interleave or fork the chain.

What a chain alone cannot show, three more things do:

- **Its end.** Removing the last records, or the whole folder, leaves a chain that verifies. So
  the catalog's store keeps the chain's head (``seq`` and ``hash``, with the chain's id from
  ``.chain-id``) each time a job is reported; ``verify(head=...)`` then requires the chain to
  reach that record.
- **A key.** Anyone who can write the files can rewrite a record and every hash after it. With a
  key (``[daemon] audit_key_env``, from the environment) each ``hash`` is an HMAC-SHA256 and the
  record says so (``"mac": "hmac-sha256"``): without the key no record can be rewritten.
- **A damaged tail.** A last line that is not a record of the chain (garbage written into the
  file, a record altered) would make every later append fail, and with it every report. It is
  moved aside to ``quarantine-<time>.jsonl``, the chain goes on from the last good record (the
  next record says what was moved), and ``.damaged`` marks the trail as needing an operator's
  look (``/healthz`` degraded) until ``audit ack``.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from config.model import DaemonConfig
from inbox_daemon.jsontext import json_text

GENESIS = "0" * 64
KEYED = "hmac-sha256"           # the ``mac`` of a record hashed with the key
DAMAGED = ".damaged"            # the marker of a quarantined tail, until ``audit ack``
CHAIN_ID = ".chain-id"          # which chain this folder holds (the store keeps its head)
MAX_QUARANTINED_LINES = 1000    # damaged lines moved aside at most at once; more is a damaged trail


def record_hash(record: dict, key: bytes | None = None) -> str:
    """sha256 of the record without ``hash``; an HMAC with ``key`` when the record is keyed."""
    body = {k: v for k, v in record.items() if k != "hash"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if record.get("mac") == KEYED:
        if key is None:
            raise KeyError("the record is keyed (hmac-sha256): the audit key is needed to check it")
        return hmac.new(key, text, hashlib.sha256).hexdigest()
    return hashlib.sha256(text).hexdigest()


class AuditKeyMissing(OSError):
    """A keyed trail cannot take a record without the key (an ``OSError``: reporting fails as
    when the folder cannot be written, and is tried again)."""


@dataclass(frozen=True)
class Head:
    """The last record a store saw reported: the chain must reach it."""
    chain: str
    seq: int
    hash: str


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    seq: Any
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} (seq {self.seq}): {self.reason}"


def open_audit(daemon: DaemonConfig) -> AuditLog:
    """The daemon's trail, keyed when ``audit_key_env`` names a variable that is set (an unset
    one is warned of at start; appending to a keyed trail without it fails: ``AuditKeyMissing``)."""
    value = os.environ.get(daemon.audit_key_env) if daemon.audit_key_env else None
    if value:
        from inbox_daemon.logs import register_secret
        register_secret(value)
    return AuditLog(daemon.audit_dir, key=value.encode("utf-8") if value else None)


class AuditLog:
    def __init__(self, folder: Path, key: bytes | None = None):
        self.folder = Path(folder)
        self.key = key

    def ledger_key(self) -> str:
        """What the catalog's ledger keeps this trail's head under: this host and the folder.
        Daemons on several hosts share one store and each keeps its own trail, often at the
        same path (``/var/lib/inbox-daemon/audit``): under the path alone, the ledger followed
        the first host's chain, and ``verify`` on every other host said the folder was replaced."""
        return f"{socket.gethostname()}:{self.folder.resolve()}"

    def chain_id(self) -> str:
        """This folder's chain: made with its first record; a new folder is a new chain."""
        path = self.folder / CHAIN_ID
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        self.folder.mkdir(parents=True, exist_ok=True)
        chain = secrets.token_hex(8)
        with open(path, "x") as fh:
            fh.write(chain + "\n")
        return chain

    def damaged(self) -> dict | None:
        """What was quarantined and not acknowledged yet, or None."""
        try:
            return json.loads((self.folder / DAMAGED).read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return {"error": "the damage marker itself is unreadable"}

    def mark_damaged(self, found: dict) -> None:
        """The trail needs an operator's look (``/healthz`` degraded) until ``acknowledge``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / DAMAGED).write_text(json.dumps(found))

    def acknowledge(self) -> dict | None:
        """An operator looked at the quarantined lines: the trail is whole again from here."""
        found = self.damaged()
        if found is not None:
            (self.folder / DAMAGED).unlink(missing_ok=True)
            self.append("audit.acknowledged", actor="cli", details={"damage": found})
        return found

    def _files(self) -> list[Path]:
        return sorted(self.folder.glob("audit-*.jsonl"))

    def last_record(self) -> dict | None:
        """The last record of the trail, or None for an empty one."""
        return self._last_record()

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
            if not (self.folder / CHAIN_ID).exists():
                self.chain_id()
            torn = self._repair_torn_tail()
            quarantined = self._quarantine_damaged_tail()
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
            if quarantined:
                record["details"] = {**record["details"], "quarantined": quarantined}
            if self.key is not None:
                record["mac"] = KEYED
            elif last and last.get("mac") == KEYED:
                raise AuditKeyMissing("the audit trail is keyed (hmac-sha256): set the audit key's environment "
                                      "variable ([daemon] audit_key_env) to add to it")
            record["hash"] = record_hash(record, self.key)
            line = json_text(record, separators=(",", ":")) + "\n"     # the hash is of the value
            with open(self.folder / f"audit-{now:%Y-%m-%d}.jsonl", "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
        return record

    def _repair_torn_tail(self) -> dict | None:
        """A power loss mid-append leaves a last line without its newline. A line that is a whole
        record of the chain lost only its newline: it gets it back, and stays. Anything else was
        never completed (appends are fsynced whole, and a job is reported only after its record
        was): it is moved aside to a quarantine file, never thrown away, and the next record
        names it, or every later record would chain onto garbage."""
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
            start = max(0, size - 1_000_000)
            fh.seek(start)
            tail = fh.read()
            cut = tail.rfind(b"\n") + 1            # 0: no line break in the tail (nothing kept)
            keep, torn = start + cut if cut else 0, tail[cut:]
            before = tail[:cut].rstrip(b"\n").rsplit(b"\n", 1)[-1]
            if self._good(torn.decode("utf-8", "replace"), _record_or_none(before)):
                fh.write(b"\n")                   # the record was whole: only its end was lost
                fh.flush()
                os.fsync(fh.fileno())
                return {"file": path.name, "bytes": 0, "newline_restored": True}
            aside = self._move_aside([torn])
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())
        return {"file": path.name, "bytes": size - keep, "moved_to": aside}

    def _move_aside(self, lines: list[bytes]) -> str:
        """Lines taken off the trail, written (and synced) to a quarantine file of their own
        before they leave it: its name."""
        now = datetime.now(UTC)
        aside = self.folder / f"quarantine-{now:%Y%m%dT%H%M%S%fZ}.jsonl"
        with open(aside, "xb") as fh:
            fh.write(b"\n".join(lines) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        return aside.name

    def _good(self, line: str, before: dict | None) -> bool:
        """Is ``line`` a record of this chain (its own hash right, ``prev`` the hash before it)?
        A keyed record is taken as good without the key: it cannot be judged here, and append
        refuses to go on a keyed chain without the key anyway."""
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or record_hash(record, self.key) != record.get("hash"):
                return False
        except ValueError:
            return False
        except KeyError:
            return True
        return before is None or record.get("prev") == before.get("hash")

    def _quarantine_damaged_tail(self) -> dict | None:
        """Move the last lines that are no records of the chain aside (see the module docstring).
        Only the tail: a damaged record with good ones after it is for ``verify`` to report."""
        files = self._files()
        if not files:
            return None
        path = files[-1]
        last = _last_line(path)
        if last is None or self._good(last, None):
            return None                     # the usual case: one seek, the last line's own hash
        lines = path.read_bytes().split(b"\n")[:-1]          # complete lines (the tail is repaired)
        bad = 0
        while bad < min(len(lines), MAX_QUARANTINED_LINES):
            line = lines[len(lines) - 1 - bad]
            before = _record_or_none(lines[len(lines) - 2 - bad]) if len(lines) - 2 - bad >= 0 else None
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                text = ""
            if self._good(text, before):
                break
            bad += 1
        if not bad:
            return None
        keep = lines[:len(lines) - bad]
        moved = lines[len(lines) - bad:]
        aside = self._move_aside(moved)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(b"".join(line + b"\n" for line in keep))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        found = {"file": path.name, "lines": bad, "moved_to": aside, "at": datetime.now(UTC).isoformat()}
        self.mark_damaged(found)
        return found

    def records(self) -> Iterator[tuple[Path, int, str]]:
        for path in self._files():
            with open(path, encoding="utf-8") as fh:
                for number, line in enumerate(fh, start=1):
                    yield path, number, line

    def verify(self, head: Head | None = None) -> tuple[int, Problem | None]:
        """(records checked, the first problem or None). ``head``: the last record the store saw
        reported; the chain must reach it (nothing cut off the end, the folder not replaced).
        Once a record is keyed, every later one must be too: a chain rewritten without the key
        from there on does not verify."""
        prev, expected_seq, count = GENESIS, 1, 0
        keyed, reached = False, head is None
        for path, number, line in self.records():
            try:
                record = json.loads(line)
            except ValueError:
                return count, Problem(path.name, number, None, "not a JSON object")
            seq = record.get("seq") if isinstance(record, dict) else None
            if not isinstance(record, dict) or "hash" not in record:
                return count, Problem(path.name, number, seq, "not an audit record")
            if keyed and record.get("mac") != KEYED:
                return count, Problem(path.name, number, seq, "not keyed, after keyed records (rewritten "
                                                              "without the audit key?)")
            keyed = record.get("mac") == KEYED
            try:
                expected = record_hash(record, self.key)
            except KeyError as exc:
                return count, Problem(path.name, number, seq, str(exc.args[0]))
            if expected != record["hash"]:
                return count, Problem(path.name, number, seq, "content does not match its hash (altered)")
            if record.get("prev") != prev:
                return count, Problem(path.name, number, seq,
                                      "prev does not match the hash before it (a record was removed, "
                                      "reordered or inserted)")
            if seq != expected_seq:
                return count, Problem(path.name, number, seq, f"expected seq {expected_seq}")
            if head is not None and seq == head.seq:
                if record["hash"] != head.hash:
                    return count, Problem(path.name, number, seq, "not the record the catalog's ledger saw "
                                                                  "reported with this seq (the trail was replaced)")
                reached = True
            prev, expected_seq, count = record["hash"], expected_seq + 1, count + 1
        if head is not None and self._chain_on_disk() not in (None, head.chain):
            return count, Problem(CHAIN_ID, 0, None, f"this folder holds chain {self._chain_on_disk()}, the "
                                                     f"catalog's ledger saw chain {head.chain} reported (the "
                                                     "folder was replaced)")
        if not reached and head is not None:
            return count, Problem("(end)", 0, expected_seq - 1,
                                  f"the trail ends at seq {expected_seq - 1}, but the catalog's ledger saw seq "
                                  f"{head.seq} reported: records were removed from its end"
                                  + (" (the folder is empty or gone)" if count == 0 else ""))
        return count, None

    def _chain_on_disk(self) -> str | None:
        try:
            return (self.folder / CHAIN_ID).read_text().strip()
        except FileNotFoundError:
            return None

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


def _record_or_none(line: bytes) -> dict | None:
    """The record a line of the trail holds, or None (no line, not a JSON object)."""
    try:
        record = json.loads(line) if line else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


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
