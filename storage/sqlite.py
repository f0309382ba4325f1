"""The embedded catalog store: one SQLite file in WAL mode, driven through ADBC.

ADBC lets Arrow batches go into a TEMP staging table without a Python object per row; the merge
into ``products`` is then one set-based ``INSERT … SELECT … ON CONFLICT DO UPDATE``, fed in key
order (``GROUP BY sku_key``, which also keeps the last occurrence of each key) and skipping rows
whose canonical columns did not change. Staging happens outside the write transaction, so the
write lock is held only for the merge and the job's outcome, which commit together.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import adbc_driver_manager
import adbc_driver_sqlite.dbapi as adbc_sqlite
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from config.canonical import CANONICAL_SCHEMA
from config.errors import (
    CatalogChanged,
    DeactivationRefused,
    JobNotFound,
    LeaseLost,
    StoreBusy,
    StoreError,
    StoreReplaced,
    StoreUnavailable,
)
from config.status import ATTEMPT_RELEASED, REQUEUEABLE, RUNNABLE, JobStatus
from storage.base import (
    EVERY_COLUMN,
    JOB_NAMES,
    PRODUCT_DELIVERY,
    SEVERAL_BLOCKS,
    Claim,
    Columns,
    Job,
    LedgerReads,
    MergeCounts,
    Outcome,
    Recognised,
    Source,
    default_holder,
    holder_is_dead,
    new_job_id,
    utc_in,
    utcnow,
)
from storage.base import (
    JOB_COLUMNS as _JOB_COLUMNS,
)
from storage.base import (
    MERGED_COLUMNS as _MERGED,
)
from storage.base import (
    job_from_row as _job,
)
from storage.base import (
    split_statements as _statements,
)
from storage.changes import Existing, row_hashes
from storage.console import ConsoleReads
from storage.history import (
    EXPORT_SCHEMA,
    RECORD_VERSION,
    HistoryReads,
    PriceShockRule,
    check_price_shock,
    record_deactivations_sql,
    record_updates_sql,
    updated_rows,
)
from storage.outbox import WebhookOutbox

BUSY_TIMEOUT_MS = 30_000
CACHE_KIB = 65_536          # a 64 MB page cache: the merge re-reads index pages far less often
# The staging tables' database (TEMP): 16 KiB pages in an 8 MB cache. The upsert fetches each
# key's last row by rowid; in random key order every fetch descends the staging table from its
# root, and with 4 KiB pages (a 2 MB cache) those descents read pages back from the file all the
# time: a 5M-row import in random key order took 32.7-32.8 s against 33.6-35.5 s (three pairs,
# interleaved; the upsert 12.2-12.6 s against 12.9-14.0 s); the 500k one no slower.
# 64 KiB pages were slower (21 s upserts); a larger cache alone changed nothing.
TEMP_PAGE_BYTES, TEMP_CACHE_KIB = 16_384, 8_192
_STAGE_SCHEMA = CANONICAL_SCHEMA.append(pa.field("row_hash", pa.int64())).append(pa.field("record_hash", pa.int64()))
_RECORDS_SCHEMA = pa.schema([("sku_key", pa.string()), ("record_hash", pa.int64())])
# rows of the file that are not staged but decide what happens to a key: kind 0, the row was
# rejected; kind 1, the row equals what the catalog holds
_SEEN_SCHEMA = pa.schema([("sku_key", pa.string()), ("row", pa.int64()), ("kind", pa.int64())])
_REJECTED, _UNCHANGED = 0, 1
# a file's hashes are compared in Arrow when it may hold at least 1/8 as many rows as the
# partner's catalog (its size at >= 64 bytes a row); else its rows are compared in SQL alone
_BYTES_PER_ROW, _WORTH_READING = 64, 8
# the last staged row per key, in key order, so the upsert walks the products index in order
# (the lever ``PERFORMANCE-NOTES.md`` found). A key's rows are staged in the order they came
# (``adapters.rows``), so its last is the one with the largest rowid: the sort is of (key,
# rowid) alone, and each row is then fetched by its rowid (a third faster than sorting whole
# rows). Each batch is staged sorted by key (``_stage_now``), so those fetches move forward
# through every batch at once, whatever order the file came in, instead of reading the staging
# table a page at a time from all over it.
_LAST_STAGED = ("SELECT s.sku_key, " + ", ".join(f"s.{c}" for c in _MERGED) + ", s.row_hash, s.record_hash,"
                " s.row AS last_row FROM (SELECT sku_key, max(rowid) AS at FROM temp.stage GROUP BY sku_key) k"
                " JOIN temp.stage s ON s.rowid = k.at")


EXPORT_BATCH_ROWS = 16_384
_ZERO_OF = {True: "''", False: "0"}     # a text column's stand-in for NULL, and a number's


# a product that no later delivery than this file's (the parameter) set
_NOT_LATER = f"{PRODUCT_DELIVERY} <= ?"


def _map_errors(exc: Exception) -> StoreError:
    text = str(exc)
    if "locked" in text or "busy" in text.lower():
        return StoreBusy(text)
    if isinstance(exc, (adbc_driver_manager.OperationalError, adbc_driver_manager.InternalError,
                        OSError)):
        return StoreUnavailable(text)
    return StoreError(text)


def _read_catalog(cur, partner: str, size: int, mode: str) -> Existing:
    """The partner's keys, row hashes, record hashes and ``active``, with its catalog version:
    one statement, so one consistent moment (at least one row, the version's, even for an
    empty catalog). Only when it pays: reading a large catalog's hashes for a file far smaller
    than it costs more than comparing the file's few rows in SQL. Then nothing is left out of
    staging (an empty ``Existing``), and nothing can go stale. A snapshot always reads them:
    what it deactivates is worked out from them."""
    cur.execute("SELECT coalesce(max(version), 0), coalesce(max(products), 0) FROM catalog_versions"
                " WHERE partner_id = ?", (partner,))
    version, products = cur.fetchall()[0]
    if mode != "snapshot" and size // _BYTES_PER_ROW * _WORTH_READING < products:
        return Existing.unread(version, products)
    cur.execute("SELECT v.version, p.sku_key, p.row_hash, p.active, p.record_hash FROM (SELECT coalesce((SELECT"
                " version FROM catalog_versions WHERE partner_id = ?), 0) AS version) v"
                " LEFT JOIN products p ON p.partner_id = ?", (partner, partner))
    table = cur.fetch_arrow_table().cast(pa.schema(
        [("version", pa.int64()), ("sku_key", pa.string()), ("row_hash", pa.int64()), ("active", pa.int64()),
         ("record_hash", pa.int64())]))
    version = table.column("version")[0].as_py()
    return Existing.from_table(table.filter(pc.is_valid(table.column("sku_key"))), version)


def _read_apart(path: Path, partner: str, size: int, mode: str) -> Existing:
    """``_read_catalog`` on a connection of its own (``SqliteStore.read_ahead``)."""
    conn = adbc_sqlite.connect(str(path), autocommit=True)
    try:
        cur = conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cur.fetchall()
            return _read_catalog(cur, partner, size, mode)
        finally:
            cur.close()
    finally:
        conn.close()


class WriterTurn:
    """Whose turn it is to write, between the connections of every process on one catalog: an
    ``flock`` on a file beside it, taken before ``BEGIN IMMEDIATE`` and given back once the
    transaction ends.

    Why: a writer that finds SQLite's write lock taken sleeps in SQLite's busy handler, 1, 2, 5,
    10, 15, 20 then 25 ms, and goes on sleeping long after the lock is free. Two worker
    processes each writing three short transactions a file spent much of a burst of small files
    asleep that way (a few sleeps a file, strace). A writer waiting here looks again within a
    millisecond (``_PAUSES``), a few syscalls a look.

    It orders writers; it does not protect the catalog: SQLite's lock still does, against
    anything that writes the file without this turn (the ``sqlite3`` shell). A turn not had
    within the busy timeout (its holder stopped, not dead: the kernel frees a dead process's)
    is not waited for any longer: SQLite's busy handler then decides, as it did alone."""

    _PAUSES = (0.0001, 0.0002, 0.0005, 0.001)

    def __init__(self, catalog: Path):
        self._path = catalog.with_name(catalog.name + ".writer")
        self._fd: int | None = None
        self._held = False

    def take(self) -> None:
        if self._fd is None:
            try:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                return          # a read-only folder, another user's file: SQLite's lock alone
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        for attempt in itertools.count():
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._held = True
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return
                time.sleep(self._PAUSES[min(attempt, len(self._PAUSES) - 1)])

    def give_back(self) -> None:
        if self._held and self._fd is not None:
            self._held = False
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._held = False


_SCRIPTS = sorted((int(p.name.split("_", 1)[0]), p)
                  for p in (resources.files("storage") / "migrations" / "sqlite").iterdir() if p.name.endswith(".sql"))
_LATEST_SCHEMA = _SCRIPTS[-1][0]


_SYNCHRONOUS = "FULL"      # every commit synced, but those a transaction says need not be (``_unsynced``)
_PREPARED = 64        # statements kept prepared per connection, the least recently used dropped


def _close_quietly(cursor) -> None:
    """Close a cursor being dropped; one in a bad state is being dropped for that reason."""
    try:
        cursor.close()
    except adbc_driver_manager.Error:
        pass


def _file_id(path: Path) -> tuple[int, int]:
    """(device, inode): which file a path names right now."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


class SqliteStore(LedgerReads, HistoryReads, ConsoleReads, WebhookOutbox):
    """``CatalogStore`` on one SQLite file. One instance per thread: it owns a connection.
    Leases use the host's clock: every daemon sharing the file runs on this host."""

    def __init__(self, path: str | os.PathLike, *, lease: float = 30.0, holder: str | None = None):
        self.lease, self.holder = lease, holder or default_holder()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._temp_ready = False
        self._used: set[str] = set()        # temp tables a load wrote to: emptied before the next one
        self._ahead: tuple[str, str, ThreadPoolExecutor, Future] | None = None
        self._turn = WriterTurn(self.path)
        try:
            self._conn = adbc_sqlite.connect(str(self.path), autocommit=True)
            self._cur = self._conn.cursor()
            self._prepared: dict[str, Any] = {}
            # the busy timeout first: turning a new catalog to WAL waits for its lock like any write
            for pragma in (f"busy_timeout={BUSY_TIMEOUT_MS}", "journal_mode=WAL", f"synchronous={_SYNCHRONOUS}",
                           f"cache_size=-{CACHE_KIB}", f"temp.page_size={TEMP_PAGE_BYTES}",
                           f"temp.cache_size=-{TEMP_CACHE_KIB}", "foreign_keys=ON"):
                self._exec(f"PRAGMA {pragma}")
            self._migrate()
            self._read_identity()
            self._file = _file_id(self.path)
        except adbc_driver_manager.Error as exc:
            raise _map_errors(exc) from exc

    def _check_identity(self) -> None:
        """Also: is the file at the catalog's path still the one opened? A deleted catalog goes
        on working for the connections that hold it open, as a file no one else will ever see."""
        try:
            now = _file_id(self.path)
        except FileNotFoundError:
            now = None
        if now != self._file:
            raise StoreReplaced(f"the catalog file {self.path} was deleted or replaced under the daemon: "
                                "nothing is applied until it is restarted")
        super()._check_identity()

    # -- plumbing -------------------------------------------------------------------------------
    def _exec(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Every statement goes through here, so driver errors are mapped in this one place.
        Each text runs on a cursor of its own, kept (``_prepared``): an ADBC cursor prepares
        its statement again whenever the text differs from its last one, and a file's ~25
        statements were prepared anew every time (~0.8 ms of a small file's ~11 ms of CPU)."""
        cur = self._prepared.pop(sql, None)
        if cur is None:
            cur = self._conn.cursor()
            if len(self._prepared) >= _PREPARED:
                _close_quietly(self._prepared.pop(next(iter(self._prepared))))
        self._prepared[sql] = cur            # the most recently used last
        try:
            cur.execute(sql, params if params else None)
        except adbc_driver_manager.Error as exc:
            # A failed statement leaves its bound parameters on its cursor (on a shared cursor,
            # the ROLLBACK that follows failed on them): a cursor in that state is not used again.
            _close_quietly(self._prepared.pop(sql))
            raise _map_errors(exc) from exc
        try:
            return cur.fetchall()          # also ends the statement: it holds no snapshot
        except adbc_driver_manager.Error:
            return []           # a statement without a result set

    def _reset_cursor(self) -> None:
        """After a driver error: a fresh cursor for Arrow reads and ingests, and no statement
        kept prepared (``_exec``)."""
        self._close_cursors()
        self._cur = self._conn.cursor()

    def _close_cursors(self) -> None:
        for cur in (self._cur, *self._prepared.values()):
            _close_quietly(cur)
        self._prepared.clear()

    def _one(self, sql: str, params: tuple = ()) -> Any:
        rows = self._exec(sql, params)
        return rows[0][0] if rows else None

    @contextmanager
    def _transaction(self, *, durable: bool = True) -> Iterator[None]:
        """One write transaction; the write lock is taken at once (no upgrade deadlocks).
        ``durable=False``: its commit is not synced to disk (``synchronous=NORMAL``), so it
        survives the process being killed, not a power loss, and the write lock is not held
        for an fsync; the next durable commit of any connection syncs it with its own."""
        with contextlib.nullcontext() if durable else self._unsynced():
            self._begin_write()
            try:
                yield
            except BaseException:
                self._end_write("ROLLBACK")
                raise
            self._end_write("COMMIT")

    @contextmanager
    def _unsynced(self) -> Iterator[None]:
        """Commits within are not synced to disk; this connection's level is restored after."""
        self._exec("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            self._exec(f"PRAGMA synchronous={_SYNCHRONOUS}")

    def _begin_write(self) -> None:
        """``BEGIN IMMEDIATE`` in this connection's turn (``WriterTurn``)."""
        self._turn.take()
        try:
            self._exec("BEGIN IMMEDIATE")
        except BaseException:
            self._turn.give_back()
            raise

    def _end_write(self, statement: str) -> None:
        """``COMMIT`` or ``ROLLBACK``; the turn is given back whatever became of it."""
        try:
            self._exec(statement)
        finally:
            self._turn.give_back()

    def _migrate(self) -> None:
        """The schema brought up to date, a script at a time. Each script's version is read again
        under the write lock: two processes opening a new catalog at once (two daemons, a daemon
        and a command) would otherwise both run the first script, and the second would fail on
        tables the first had just created."""
        if (self._one("PRAGMA user_version") or 0) >= _LATEST_SCHEMA:
            return
        for number, script in _SCRIPTS:
            with self._transaction():
                if number <= (self._one("PRAGMA user_version") or 0):
                    continue
                for statement in _statements(script.read_text()):
                    self._exec(statement)
                self._exec(f"PRAGMA user_version = {number}")

    def close(self) -> None:
        self._end_read_ahead()
        self._close_cursors()
        self._conn.close()
        self._turn.close()

    # -- ledger ---------------------------------------------------------------------------------
    def claim(self, *, partner_id: str, sha256: str, inbox: str, source: Source, fmt: str | None,
              mode: str, spool_path: str | None, answered_if_same_file: bool = False,
              reverts: str | None = None) -> Claim:
        now = utcnow()
        with self._transaction(durable=False):      # see CatalogStore.claim
            original = self._content_holder(partner_id, sha256)
            insert = functools.partial(self._insert_job, partner_id=partner_id, sha256=sha256, inbox=inbox,
                                       source=source, fmt=fmt, mode=mode, now=now, reverts=reverts)
            if original is None:
                job = insert(status=JobStatus.RUNNING, spool_path=spool_path, lease_until=utc_in(self.lease))
                self._start_attempt(job.id, 1, now)
                return Claim("new", job)
            resumable = original.status in RUNNABLE or (
                original.status == JobStatus.RUNNING and self._lease_expired(original.id, now))
            if resumable:
                attempt = original.attempt + 1
                self._exec(
                    "UPDATE jobs SET status = ?, attempt = ?, inbox = ?, source_uri = ?,"
                    " source_name = ?, size = ?, source_version = ?, delivered_at = ?, format = ?, mode = ?,"
                    " spool_path = ?, error = NULL, result = NULL, rows_read = NULL, rows_rejected = NULL, started_at = ?,"
                    " finished_at = NULL,"
                    " reported_at = NULL, lease_until = ?, claimed_by = ? WHERE id = ?",
                    (JobStatus.RUNNING, attempt, inbox, source.uri, source.name, source.size, source.version,
                     source.delivered_at, fmt, mode, spool_path, now, utc_in(self.lease), self.holder, original.id))
                self._start_attempt(original.id, attempt, now)
                return Claim("resumed", self.job(original.id))
            settled = self._settled_claim(original, inbox=inbox, source=source,
                                          answered_if_same_file=answered_if_same_file)
            if isinstance(settled, Claim):
                return settled
            if settled == "reapply":
                job = insert(status=JobStatus.RUNNING, spool_path=spool_path, lease_until=utc_in(self.lease),
                             reapplies=original.id)
                self._start_attempt(job.id, 1, now)
                return Claim("reapply", job)
            return Claim("duplicate", insert(status=JobStatus.DUPLICATE, duplicate_of=original.id))

    def _insert_job(self, *, partner_id: str, sha256: str, inbox: str, source: Source, fmt: str | None,
                    mode: str, now: str, status: JobStatus, spool_path: str | None = None,
                    duplicate_of: str | None = None, lease_until: str | None = None,
                    reapplies: str | None = None, reverts: str | None = None) -> Job:
        """The job as inserted, made from what was inserted (every other column is NULL): reading
        it back (``RETURNING``) kept the write lock 0.25 ms longer for each file's claim."""
        inserted = {"id": new_job_id(), "partner_id": partner_id, "inbox": inbox, "sha256": sha256,
                    "source_uri": source.uri, "source_name": source.name, "size": source.size,
                    "source_version": source.version, "delivered_at": source.delivered_at, "format": fmt,
                    "mode": mode, "status": status, "attempt": 1, "spool_path": spool_path,
                    "duplicate_of": duplicate_of, "reapplies": reapplies, "reverts": reverts, "created_at": now,
                    "started_at": now}
        self._exec(f"INSERT INTO jobs ({', '.join(inserted)}, lease_until, claimed_by)"
                   f" VALUES ({', '.join('?' * (len(inserted) + 2))})", (*inserted.values(), lease_until, self.holder))
        fields: dict[str, Any] = dict.fromkeys(JOB_NAMES)
        fields.update(inserted)
        return Job(**fields)

    def _lease_expired(self, job_id: str, now: str) -> bool:
        """Its lease ran out, or its holder is a process of this host that is gone (a command
        killed mid-job: its own next run takes the job over at once)."""
        lease, holder = self._exec("SELECT lease_until, claimed_by FROM jobs WHERE id = ?", (job_id,))[0]
        return lease is None or lease < now or holder_is_dead(holder)

    def _take_report(self, job: Job) -> bool:
        if not self._lease_expired(job.id, utcnow()):
            return False
        self._exec("UPDATE jobs SET claimed_by = ?, lease_until = ? WHERE id = ?", (self.holder, utc_in(self.lease), job.id))
        return True

    def _start_attempt(self, job_id: str, attempt: int, now: str) -> None:
        self._exec("INSERT OR REPLACE INTO job_attempts (job_id, attempt, started_at) VALUES (?, ?, ?)",
                   (job_id, attempt, now))

    def _record_outcome(self, job: Job, outcome: Outcome) -> None:
        """The outcome of this attempt, fenced by its number: if another daemon took the job over
        (a newer attempt), nothing is recorded and the transaction must roll back. Only into the
        catalog the daemon opened (``_check_identity``)."""
        self._check_identity()
        now = utcnow()
        recorded = self._exec(
            "UPDATE jobs SET status = ?, error = ?, result = ?, finished_at = ?,"
            " rows_read = ?, rows_rejected = ?"
            " WHERE id = ? AND attempt = ? RETURNING id",
            (outcome.status, outcome.error, json.dumps(outcome.result, ensure_ascii=False), now, *outcome.rows,
             job.id, job.attempt))
        if len(recorded) != 1:
            raise LeaseLost(f"job {job.id} attempt {job.attempt} was taken over by another daemon")
        self._exec("UPDATE job_attempts SET finished_at = ?, status = ?, error = ? WHERE job_id = ? AND attempt = ?",
                   (now, outcome.status, outcome.error, job.id, job.attempt))
        if outcome.notify:
            self._enqueue_webhook(job.id, job.attempt, job.partner_id, outcome.result)

    def finish(self, job: Job, outcome: Outcome) -> None:
        """Record an outcome that changes no rows (rejected, failed, duplicate)."""
        with self._transaction():
            self._record_outcome(job, outcome)

    def release(self, job: Job) -> None:
        """A job cut off before its commit (shutdown): nothing was applied, run it again later."""
        self._exec("UPDATE jobs SET status = ?, lease_until = NULL WHERE id = ? AND status = ? AND attempt = ?",
                   (JobStatus.QUEUED, job.id, JobStatus.RUNNING, job.attempt))
        self._exec("UPDATE job_attempts SET finished_at = ?, status = ? WHERE job_id = ? AND attempt = ?",
                   (utcnow(), ATTEMPT_RELEASED, job.id, job.attempt))

    def recover(self) -> list[str]:
        """At start-up: jobs left ``running`` by a daemon that is gone (its process is dead, or
        its lease ran out) and ``failed`` jobs whose retry was scheduled in some daemon's memory
        are queued again (nothing of theirs committed, so running them again is safe); the dead
        daemons' file claims are dropped, so their files are taken at once."""
        holders = {r[0] for r in self._exec("SELECT DISTINCT claimed_by FROM jobs WHERE status = ?",
                                            (JobStatus.RUNNING,))}
        holders |= {r[0] for r in self._exec("SELECT DISTINCT holder FROM drop_claims")}
        dead = [h for h in holders if h and holder_is_dead(h)]
        marks = ", ".join("?" * len(dead)) or "NULL"
        with self._transaction():
            ids = [r[0] for r in self._exec(
                f"SELECT id FROM jobs WHERE (status = ? AND (claimed_by IS NULL OR claimed_by IN ({marks})"
                " OR lease_until < ?)) OR status = ?", (JobStatus.RUNNING, *dead, utcnow(), JobStatus.FAILED))]
            self._queue_again(ids)
            self._exec(f"DELETE FROM drop_claims WHERE holder IN ({marks})", tuple(dead))
        return ids

    def queued(self, partners: Iterable[str] | None = None, limit: int = 100) -> list[Job]:
        """Jobs waiting to run, oldest first; only those of ``partners`` when given."""
        where = "status = ?"
        params: tuple[object, ...] = (JobStatus.QUEUED,)
        if partners is not None:
            partners = tuple(partners)
            where += f" AND partner_id IN ({', '.join('?' * len(partners)) or 'NULL'})"
            params += partners
        rows = self._exec(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {where} ORDER BY created_at"
                          f" LIMIT {int(limit)}", params)
        return [_job(r) for r in rows]

    def requeue(self, *, ids: Iterable[str] = (), status: JobStatus | None = None,
                partner_id: str | None = None) -> list[str]:
        ids = list(ids)
        with self._transaction():
            if ids:
                for job_id in ids:
                    job = self._job_row("id = ?", (job_id,))
                    if job is None:
                        raise JobNotFound(f"no job {job_id!r}")
                    if job.status not in REQUEUEABLE:
                        raise JobNotFound(f"job {job_id} is {job.status}; only "
                                          f"{', '.join(sorted(REQUEUEABLE))} jobs can be requeued")
                chosen = ids
            else:
                where = ["status = ?"]
                params: list[object] = [status]
                if partner_id:
                    where.append("partner_id = ?")
                    params.append(partner_id)
                chosen = [r[0] for r in self._exec(f"SELECT id FROM jobs WHERE {' AND '.join(where)}",
                                                   tuple(params))]
            self._queue_again(chosen)
        return chosen

    def _queue_again(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        for job_id in ids:
            self._exec("UPDATE jobs SET status = ?, lease_until = NULL WHERE id = ?", (JobStatus.QUEUED, job_id))
        self._mark_interrupted(ids)

    # -- claims across daemons ---------------------------------------------------------------
    def claim_drop(self, *, inbox: str, uri: str, version: str) -> bool:
        """Take this version of a remote file for download, unless another daemon holds it."""
        taken = self._exec(
            "INSERT INTO drop_claims (inbox, uri, version, holder, until) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (inbox, uri, version) DO UPDATE SET holder = excluded.holder,"
            " until = excluded.until WHERE drop_claims.until < ? OR drop_claims.holder = excluded.holder"
            " RETURNING holder", (inbox, uri, version, self.holder, utc_in(self.lease), utcnow()))
        return len(taken) == 1

    def release_drop(self, *, inbox: str, uri: str, version: str) -> None:
        self._exec("DELETE FROM drop_claims WHERE inbox = ? AND uri = ? AND version = ? AND holder = ?",
                   (inbox, uri, version, self.holder))

    def renew(self) -> None:
        """The heartbeat: everything this daemon holds lives another ``lease``."""
        until = utc_in(self.lease)
        with self._transaction():
            self._exec("UPDATE jobs SET lease_until = ? WHERE claimed_by = ? AND status = ?",
                       (until, self.holder, JobStatus.RUNNING))
            self._exec("UPDATE drop_claims SET until = ? WHERE holder = ?", (until, self.holder))

    def expire_leases(self) -> list[str]:
        """Running jobs whose holder stopped renewing: queued again (nothing of theirs committed)."""
        now = utcnow()
        with self._transaction():
            ids = [r[0] for r in self._exec(
                "SELECT id FROM jobs WHERE status = ? AND lease_until < ?", (JobStatus.RUNNING, now))]
            self._queue_again(ids)
            self._exec("DELETE FROM drop_claims WHERE until < ?", (now,))
        return ids

    # -- catalog --------------------------------------------------------------------------------
    def _next_version(self, partner_id: str) -> int:
        return self._one("INSERT INTO catalog_versions (partner_id, version, products) VALUES (?, 1, 0)"
                         " ON CONFLICT (partner_id) DO UPDATE SET version = version + 1 RETURNING version",
                         (partner_id,))

    def export(self, partner_id: str, since: int) -> tuple[int, Iterator[pa.RecordBatch]]:
        """(the partner's catalog version now, its products changed after ``since`` as batches),
        read in one snapshot. The driver types a column by its first rows, so every column is
        read without NULLs plus a flag of where they were, and the NULLs put back in Arrow."""
        cur = self._conn.cursor()
        try:
            # batches of 16 Ki rows: Parquet row groups of a useful size, a few MB each in memory
            cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(EXPORT_BATCH_ROWS)})
            cur.execute("BEGIN")
            cur.execute("SELECT coalesce(max(version), 0) FROM catalog_versions WHERE partner_id = ?", (partner_id,))
            version = cur.fetchall()[0][0]
            selected = ", ".join(f"coalesce({f.name}, {_ZERO_OF[pa.types.is_string(f.type)]}), {f.name} IS NULL"
                                 for f in EXPORT_SCHEMA)
            cur.execute(f"SELECT {selected} FROM products WHERE partner_id = ? AND version > ?", (partner_id, since))
            reader = cur.fetch_record_batch()
        except adbc_driver_manager.Error as exc:
            with contextlib.suppress(adbc_driver_manager.Error):
                cur.execute("ROLLBACK")      # the BEGIN, when it was taken
            cur.close()
            raise _map_errors(exc) from exc

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                for batch in reader:
                    yield pa.RecordBatch.from_arrays(
                        [pc.if_else(batch.column(2 * i + 1).cast(pa.bool_()), pa.scalar(None, f.type),
                                    batch.column(2 * i).cast(f.type)) for i, f in enumerate(EXPORT_SCHEMA)],
                        schema=EXPORT_SCHEMA)
            finally:
                reader.close()
                cur.execute("COMMIT")
                cur.close()
        return version, batches()

    def load(self, job: Job, *, exclusive: bool = False) -> SqliteLoad:
        return SqliteLoad(self, job, exclusive=exclusive)

    def read_ahead(self, partner_id: str, *, size: int, mode: str) -> None:
        """A file of several blocks is about to be spooled: what its load will compare it with
        is read meanwhile, on a thread and connection of their own (``_read_catalog``). The load
        checks the catalog's version at its merge as always, so a read that went stale is
        noticed; one left unused (a duplicate) is dropped by the next."""
        self._end_read_ahead()
        if size >= SEVERAL_BLOCKS:
            pool = ThreadPoolExecutor(1, thread_name_prefix=f"read-ahead-{partner_id}")
            self._ahead = (partner_id, mode, pool, pool.submit(_read_apart, self.path, partner_id, size, mode))

    def _take_read_ahead(self, job: Job) -> Callable[[], Existing] | None:
        """The read ahead for this job's partner and mode, if one was started: a call that
        waits for it (and for its thread to end) and returns it."""
        if self._ahead is None or self._ahead[:2] != (job.partner_id, job.mode):
            self._end_read_ahead()
            return None
        _, _, pool, future = self._ahead
        self._ahead = None

        def result() -> Existing:
            try:
                return future.result()
            finally:
                pool.shutdown(wait=True)
        return result

    def _end_read_ahead(self) -> None:
        if self._ahead is not None:
            self._ahead[2].shutdown(wait=True)
            self._ahead = None

    def _temp_tables(self) -> None:
        """This connection's staging tables, made once and emptied before every load (not after
        one: its answer need not wait for it, and a process that ends after its load, ``ingest``,
        never pays it: the temp tables go with the connection; 0.3-0.5 s after a 5M-row load)."""
        if self._temp_ready:
            self._empty_temp_tables()
            return
        try:
            self._cur.adbc_ingest("stage", _STAGE_SCHEMA.empty_table(), mode="create", temporary=True)
            self._cur.adbc_ingest("seen", _SEEN_SCHEMA.empty_table(), mode="create", temporary=True)
            self._cur.adbc_ingest("absent", pa.schema([("sku_key", pa.string())]).empty_table(), mode="create",
                                  temporary=True)
            self._cur.adbc_ingest("records", _RECORDS_SCHEMA.empty_table(), mode="create", temporary=True)
        except adbc_driver_manager.Error as exc:
            self._reset_cursor()
            raise _map_errors(exc) from exc
        self._exec("CREATE INDEX temp.seen_key ON seen (sku_key, row)")
        self._temp_ready = True

    def _empty_temp_tables(self) -> None:
        """The temp tables the last load wrote to (``SqliteLoad._append``), emptied."""
        for table in sorted(self._used):
            self._exec(f"DELETE FROM temp.{table}")
            self._used.discard(table)


class SqliteLoad:
    """Stage → merge → commit for one job. Leaving the ``with`` block without commit rolls back.

    Staging of a file larger than a reader block runs on a thread of its own, one batch behind
    the caller: while the pipeline reads and judges batch n+1, batch n is hashed, compared with
    what the catalog holds and ingested (and before the first batch, what it holds is read).
    At most ``_AHEAD`` batches wait, so memory stays flat. Only rows that are new or differ from
    the catalog are staged (``storage.changes``); the rest are counted as unchanged. The
    partner's row hashes are read once, outside the write lock; the merge checks that the
    partner's catalog version has not moved since, else raises ``CatalogChanged`` and the file is
    read again with ``exclusive=True``: the write lock held from the start, nothing can move."""

    _AHEAD = 2

    def __init__(self, store: SqliteStore, job: Job, *, exclusive: bool = False):
        self._s, self.job = store, job
        self._in_tx = False
        self._done = False
        self._rejected = False
        self._existing: Existing | None = None
        self._delivery = job.delivery          # this file's place in the partner's delivery order
        self._behind = False                   # a later delivery was merged before: guard each row
        self._staged_rows = 0
        self._unchanged_rows = 0
        self._unnamed = 0                      # rows staged without a name (they cannot create a product)
        self._columns = Columns()              # what the file sets, told by merge()
        self._version = 0                      # the partner's catalog version this merge commits as
        self._pending: deque[Future] = deque()
        self._reading: Future | None = None     # the read of what the catalog holds, on the thread
        self._pool: ThreadPoolExecutor | None = None
        store._temp_tables()
        if exclusive:
            store._begin_write()
            self._in_tx = True
        if job.size >= SEVERAL_BLOCKS:
            # a file of several batches: what the catalog holds is read while the first is parsed
            # (or was, while the file was spooled: never for an exclusive load, which reads again)
            ahead = None if exclusive else store._take_read_ahead(job)
            self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"stage-{job.id}")
            self._reading = self._pool.submit(self._read_existing, ahead)
            self._pending.append(self._reading)
        else:
            # a read ahead left by a large file that never came to its load (its copy failed)
            # holds a whole catalog: dropped now, not at the next large file
            store._end_read_ahead()
            try:
                self._read_existing()       # now, on the caller's thread: ``recognise`` only reads it
            except BaseException:
                self.abort()
                raise

    def __enter__(self) -> SqliteLoad:
        return self

    def __exit__(self, *exc) -> None:
        if not self._done:
            self.abort()

    keeps_records = True

    def ready(self) -> bool:
        """Is what the catalog holds read, so that ``recognise`` would not wait for it?"""
        return self._existing is not None

    def recognise(self, records: np.ndarray) -> np.ndarray:
        """Where in the catalog the key is of each record (``storage.changes.record_hashes``)
        that it last took as it is, or -1: such rows need no judging (``stage(recognised=)``)."""
        if self._existing is None:
            assert self._reading is not None       # a small file's was read at the start
            self._reading.result()
        assert self._existing is not None
        return self._existing.recognise(records)

    def stage(self, batch: pa.RecordBatch, rejected_keys: pa.Table | None = None,
              columns: Columns = EVERY_COLUMN, records: pa.Array | None = None,
              recognised: Recognised | None = None) -> None:
        """Stage valid rows. ``rejected_keys`` (sku_key, row) are rows of the file that had errors:
        a snapshot must not deactivate their SKUs for being "absent", and when a SKU's LAST
        occurrence was rejected, its earlier rows must not be applied in its stead. ``records``:
        the record hash each valid row came from (NULL: never to be recognised), stored with the
        product it sets; ``recognised``: rows of the block left out unjudged (``recognise``)."""
        if self._pool is None:
            self._stage_now(batch, rejected_keys, columns, records, recognised)     # a small file: no thread
            return
        while len(self._pending) >= self._AHEAD:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._stage_now, batch, rejected_keys, columns, records, recognised))

    def _append(self, table: str, data) -> None:
        """Rows into one of this connection's temp tables, emptied before the next load uses them."""
        self._s._used.add(table)
        self._s._cur.adbc_ingest(table, data, mode="append", temporary=True)

    def _seen(self, keys, rows, kind: int) -> None:
        """Rows of the file that are not staged but decide what happens to their key."""
        self._append("seen", pa.table({"sku_key": keys, "row": rows,
                                       "kind": pa.repeat(pa.scalar(kind), len(rows))}).cast(_SEEN_SCHEMA))

    def _drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def _stage_now(self, batch: pa.RecordBatch, rejected_keys: pa.Table | None, columns: Columns,
                   records: pa.Array | None = None, recognised: Recognised | None = None) -> None:
        existing = self._existing or self._read_existing()
        try:
            if recognised is not None:
                existing.took(recognised.at, recognised.rows)
                self._unchanged_rows += len(recognised.rows)
            if batch.num_rows:
                if records is None:
                    records = pa.nulls(batch.num_rows, pa.int64())
                # into an empty catalog no row hash is kept: the records' are what a re-sent
                # file is recognised by; a later file that misses them is compared in SQL
                hashes = row_hashes(batch, columns.carried) if existing.products else None
                if len(existing.keys) and hashes is not None:
                    unchanged = existing.split(batch, hashes, records)
                    if unchanged.any():
                        self._unchanged_rows += int(unchanged.sum())
                        keep = ~unchanged
                        batch, hashes, records = batch.filter(pa.array(keep)), hashes[keep], records.filter(pa.array(keep))
                if batch.num_rows:
                    self._unnamed += batch.column("name").null_count
                    stored = pa.nulls(batch.num_rows, pa.int64()) if hashes is None else pa.array(hashes)
                    staged = pa.RecordBatch.from_arrays([*batch.columns, stored, records],
                                                        schema=_STAGE_SCHEMA)
                    # sorted by key (rows of one key keep their order): see _LAST_STAGED
                    staged = staged.take(pc.sort_indices(staged, [("sku_key", "ascending"), ("row", "ascending")]))
                    self._append("stage", staged)
                    self._staged_rows += batch.num_rows
            if rejected_keys is not None and rejected_keys.num_rows:
                existing.saw(rejected_keys.column("sku_key").combine_chunks(),
                             rejected_keys.column("row").to_numpy())
                self._seen(rejected_keys.column("sku_key"), rejected_keys.column("row"), _REJECTED)
                self._rejected = True
        except adbc_driver_manager.Error as exc:
            self._s._reset_cursor()
            raise _map_errors(exc) from exc

    def _read_existing(self, ahead: Callable[[], Existing] | None = None) -> Existing:
        """What the catalog holds (``_read_catalog``): read ahead while the file was spooled
        (``SqliteStore.read_ahead``), else now. A read ahead that failed is only a lost head start."""
        if ahead is not None:
            try:
                self._existing = ahead()
                return self._existing
            except (adbc_driver_manager.Error, OSError):
                pass
        s = self._s
        try:
            self._existing = _read_catalog(s._cur, self.job.partner_id, self.job.size, self.job.mode)
        except adbc_driver_manager.Error as exc:
            s._reset_cursor()
            raise _map_errors(exc) from exc
        return self._existing

    def merge(self, *, mode: str, max_deactivate_ratio: float, columns: Columns = EVERY_COLUMN,
              hold: PriceShockRule | None = None) -> MergeCounts:
        """Apply the staged rows: each kept key's last row sets the ``columns`` the file
        carries (the others stay as the catalog holds them); a snapshot deactivates the rest.
        What it changes is recorded (``storage.history``); ``hold``: ``PriceShockHeld`` instead
        when its prices jump."""
        now = utcnow()
        self._columns = columns
        try:
            self._write_lock()
            existing = self._existing or self._read_existing()
            newest = self._check_version(existing)
            blockers = existing.blockers()
            if blockers.num_rows:
                self._seen(blockers.column("sku_key"), blockers.column("row"), _UNCHANGED)
            absent = self._to_deactivate(existing, mode, max_deactivate_ratio)
            staged_keys = None
            if existing.products:
                # keys staged: counted by SQLite (sorting, in bounded memory; a hash table of
                # millions of keys would not be); into an empty catalog every one is inserted or kept
                staged_keys = self._s._one("SELECT count(DISTINCT sku_key) FROM temp.stage") if self._staged_rows else 0
            not_kept, blocked = self._leave_out(blockers.num_rows > 0)
            unnamed = self._unnamed_rows() if self._unnamed else ()
            if existing.products and self._staged_rows:
                self._record_updates(hold)
            written, inserted = self._upsert(now, newest) if self._staged_rows else (0, 0)
            if staged_keys is None:
                staged_keys = written + not_kept + len(unnamed)
            stale = self._stale() if self._behind and self._staged_rows else 0
            if staged_keys - not_kept - stale - len(unnamed) > written:
                self._refresh_hashes()
            self._store_records(existing)
            if absent:
                self._deactivate(now)
            self._s._exec(RECORD_VERSION, (self._version, self.job.id))
            self._bump_version(inserted)
            return self._counts(existing, staged_keys=staged_keys, blocked=blocked, written=written,
                                inserted=inserted, deactivated=absent, stale=stale, unnamed=unnamed)
        except adbc_driver_manager.Error as exc:
            self._s._reset_cursor()
            self.abort()
            raise _map_errors(exc) from exc
        except BaseException:
            self.abort()
            raise

    def _write_lock(self) -> None:
        """Once staging is done: the write lock, unless the load took it at the start (``exclusive``)."""
        self._drain()
        if not self._in_tx:
            self._s._begin_write()
            self._in_tx = True

    def _check_version(self, existing: Existing) -> int:
        """Raises ``CatalogChanged`` if the partner's catalog moved on since ``existing`` was read;
        else returns the largest rowid of ``products``, past which this merge's inserts land.
        Also learns whether a later delivery than this file was merged already (``_behind``):
        only then may a product hold a newer delivery, and each row is checked against it."""
        partner = self.job.partner_id
        version, newest, latest = self._s._exec(
            "SELECT coalesce((SELECT version FROM catalog_versions WHERE partner_id = ?), 0),"
            " coalesce((SELECT max(rowid) FROM products), 0),"
            " (SELECT delivery FROM catalog_versions WHERE partner_id = ?)", (partner, partner))[0]
        if existing.checked and version != existing.version:
            raise CatalogChanged(f"the catalog of {partner} changed while job {self.job.id} was staged")
        self._behind = latest is not None and latest > self._delivery
        self._version = version + 1          # what this merge commits as (``_bump_version``)
        return newest

    def _record_updates(self, hold: PriceShockRule | None) -> None:
        """Before the upsert: the products it will update, checked for a price shock, and their
        change records (the columns that change, before and after)."""
        columns, partner = self._columns, self.job.partner_id
        rows = updated_rows(f"({_LAST_STAGED}) l", columns, "IS NOT", self._guard)
        params = (partner, *self._guard_params)
        if hold is not None and "price_cents" in columns.written:
            check_price_shock(self._s, rows, params, hold)
        self._s._exec(record_updates_sql(self._s.JSON, rows, columns, "IS NOT"), (partner, self._version, *params))

    def _to_deactivate(self, existing: Existing, mode: str, max_ratio: float) -> int:
        """How many keys a snapshot deactivates (into ``temp.absent``): those it has no row of,
        but the ones a later delivery set; ``DeactivationRefused`` when they are more than
        ``max_ratio`` of the partner's active keys."""
        if mode != "snapshot":
            return 0
        absent, active = self._absent(existing)
        if not len(absent):
            return 0
        self._append("absent", pa.table({"sku_key": absent}))
        later = self._s._one(f"SELECT count(*) FROM products WHERE partner_id = ? AND NOT {_NOT_LATER} AND sku_key IN"
                             " (SELECT sku_key FROM temp.absent)", (self.job.partner_id, self._delivery)) \
            if self._behind else 0
        deactivated = len(absent) - later
        if deactivated and deactivated > max_ratio * active:
            raise DeactivationRefused(would_deactivate=deactivated, active=active, max_ratio=max_ratio)
        return deactivated

    def _leave_out(self, blockers: bool) -> tuple[int, int]:
        """(keys the file leaves as they are, of them "blocked"), and their staged rows deleted.
        A key whose last row in the file was rejected, or equals the catalog, is left as it is;
        "blocked" (superseded) when a rejected row comes after its last valid one. Deleted once
        counted, so every key still staged is applied and the statements that follow read only
        rows they write: a re-sent snapshot stages mostly such rows (the earlier duplicates of
        keys whose last row is unchanged, ten times the rows that changed in the benchmark's
        catalog)."""
        if not (self._rejected or blockers):
            return 0, 0
        later = "SELECT 1 FROM temp.seen r WHERE r.sku_key = l.sku_key AND r.row > l.last_row"
        rejected_last = (f"EXISTS ({later} AND r.kind = {_REJECTED} AND NOT EXISTS (SELECT 1 FROM"
                         f" temp.seen u WHERE u.sku_key = l.sku_key AND u.kind = {_UNCHANGED}"
                         " AND u.row > r.row))")
        not_kept, blocked = self._s._exec(f"SELECT coalesce(sum(EXISTS ({later})), 0), coalesce(sum({rejected_last}), 0)"
                                          f" FROM ({_LAST_STAGED}) l")[0]
        if not_kept:
            self._s._exec("DELETE FROM temp.stage WHERE EXISTS (SELECT 1 FROM temp.seen r"
                          " WHERE r.sku_key = stage.sku_key AND r.row > stage.row)")
        return not_kept, blocked

    def _unnamed_rows(self) -> tuple[tuple[int, str], ...]:
        """(row, sku) of kept keys whose last row has no name and that the catalog does not hold:
        refused (``MergeCounts.unnamed``), as a product is never created without a name."""
        return tuple(self._s._exec(
            f"SELECT l.last_row, l.sku FROM ({_LAST_STAGED}) l WHERE l.name IS NULL AND NOT EXISTS"
            " (SELECT 1 FROM products p WHERE p.partner_id = ? AND p.sku_key = l.sku_key) ORDER BY l.last_row",
            (self.job.partner_id,)))

    def _upsert(self, now: str, newest: int) -> tuple[int, int]:
        """The last staged row of each kept key into ``products``, skipping rows equal to what it
        holds: (rows written, of them inserted). ``newest``: the largest rowid before. Only the
        columns the file carries are updated; a new product without ``active`` is active. The
        stored hash is the staged row's (``row_hashes``: over the columns the file sets)."""
        s, columns = self._s, self._columns
        cols = ", ".join(_MERGED)
        values = ", ".join(columns.insert_value(c, "1") for c in _MERGED)
        named = ""
        if self._unnamed:
            named = " AND (l.name IS NOT NULL OR EXISTS (SELECT 1 FROM products p WHERE p.partner_id = ? AND p.sku_key = l.sku_key))"
        # "WHERE true": SQLite parses ``ON CONFLICT`` after a SELECT only once it has a WHERE
        s._exec(
            f"INSERT INTO products (partner_id, sku_key, {cols}, row_hash, record_hash, updated_at, source_job_id,"
            f" version, created_version) SELECT ?, sku_key, {values}, row_hash, record_hash, ?, ?, ?, ?"
            f" FROM ({_LAST_STAGED}) l"
            f" WHERE true{named} ON CONFLICT (partner_id, sku_key) DO UPDATE SET {columns.assignments()}, "
            + ", ".join(f"{c} = excluded.{c}" for c in ("row_hash", "record_hash", "updated_at", "source_job_id",
                                                         "version"))
            + f" WHERE ({columns.differs('IS NOT')}){self._guard}",
            (self.job.partner_id, now, self.job.id, self._version, self._version,
             *((self.job.partner_id,) if named else ()), *self._guard_params))
        # products are never deleted, so each insert takes the next rowid past the largest one
        # (an upsert that updates takes none): the rows inserted are the largest rowid's move,
        # read from the end of the table instead of counting the new rows (0.8 s of a 5M import)
        written, largest = s._exec("SELECT changes(), coalesce((SELECT max(rowid) FROM products), 0)")[0]
        return written, largest - newest

    def _stale(self) -> int:
        """Kept keys whose row differs from the catalog's but was left alone: a later delivery
        set that product (counted after the upsert, which wrote every other differing row)."""
        return self._s._one(f"SELECT count(*) FROM ({_LAST_STAGED}) l JOIN products ON products.partner_id = ?"
                            f" AND products.sku_key = l.sku_key WHERE NOT {_NOT_LATER}"
                            f" AND ({self._columns.differs('IS NOT', 'l')})", (self.job.partner_id, self._delivery))

    def _refresh_hashes(self) -> None:
        """For kept keys staged as different but equal after all (a hash of an older daemon, or
        none): the values stand, only the stored hashes are brought up to date (never on a
        product a later delivery set: its hash is that delivery's)."""
        self._s._exec(f"UPDATE products SET row_hash = l.row_hash, record_hash = l.record_hash FROM ({_LAST_STAGED}) l"
                      " WHERE products.partner_id = ? AND products.sku_key = l.sku_key"
                      " AND (products.row_hash IS NOT l.row_hash OR products.record_hash IS NOT l.record_hash)"
                      f"{self._guard}", (self.job.partner_id, *self._guard_params))

    def _store_records(self, existing: Existing) -> None:
        """Keys whose last row equalled the catalog but came from another record than the one
        stored (``Existing.records_to_store``): that record is stored, for the next file to skip."""
        records = existing.records_to_store()
        if records.num_rows:
            self._append("records", records)
            self._s._exec("UPDATE products SET record_hash = r.record_hash FROM temp.records r"
                          " WHERE products.partner_id = ? AND products.sku_key = r.sku_key", (self.job.partner_id,))

    def _deactivate(self, now: str) -> None:
        """The keys in ``temp.absent`` (``_to_deactivate``), but those a later delivery set."""
        absent = "sku_key IN (SELECT sku_key FROM temp.absent)"
        self._s._exec(record_deactivations_sql(self._s.JSON, "1", "0", absent, self._guard),
                      (self.job.partner_id, self._version, self.job.partner_id, *self._guard_params))
        self._s._exec("UPDATE products SET active = 0, row_hash = NULL, record_hash = NULL, updated_at = ?,"
                      f" source_job_id = ?, version = ? WHERE partner_id = ? AND {absent}" + self._guard,
                      (now, self.job.id, self._version, self.job.partner_id, *self._guard_params))

    @property
    def _guard(self) -> str:
        """The condition a write to a product adds when a later delivery was merged before."""
        return f" AND {_NOT_LATER}" if self._behind else ""

    @property
    def _guard_params(self) -> tuple[str, ...]:
        return (self._delivery,) if self._behind else ()

    def _bump_version(self, inserted: int) -> None:
        """The partner's catalog moves on (a load that read it before fails ``_check_version``),
        and its count of products and its latest delivery merged with it."""
        self._s._exec("INSERT INTO catalog_versions (partner_id, version, products, delivery) VALUES (?, 1, ?, ?)"
                      " ON CONFLICT (partner_id) DO UPDATE SET version = version + 1,"
                      " products = products + excluded.products,"
                      " delivery = max(coalesce(delivery, ''), excluded.delivery)",
                      (self.job.partner_id, inserted, self._delivery))

    def _counts(self, existing: Existing, *, staged_keys: int, blocked: int, written: int, inserted: int,
                deactivated: int, stale: int, unnamed: tuple[tuple[int, str], ...]) -> MergeCounts:
        """Every row of the file is counted once. The file's keys are those staged plus those with
        a row equal to the catalog, less the keys that had both; each key's last row is
        inserted, updated or unchanged, unless it is blocked (a rejected row came after it), and
        every other row is superseded."""
        unchanged_keys, overlap, blocked_unstaged = existing.unchanged_counts()
        distinct = staged_keys + unchanged_keys - overlap
        blocked += blocked_unstaged
        staged = self._staged_rows + self._unchanged_rows
        return MergeCounts(staged=staged, superseded=staged - distinct + blocked, inserted=inserted,
                           updated=written - inserted,
                           unchanged=distinct - blocked - written - stale - len(unnamed),
                           deactivated=deactivated, stale=stale, unnamed=unnamed)

    def _absent(self, existing: Existing) -> tuple[pa.Array, int]:
        """(active keys of the partner the file has no row of, active keys). From the hashes
        read, or, when none were (every row was staged), from the staging tables."""
        if existing.checked:
            return existing.absent(), int(existing.active.sum())
        s = self._s
        s._cur.execute("SELECT sku_key FROM products WHERE partner_id = ? AND active = 1"
                       " AND sku_key NOT IN (SELECT sku_key FROM temp.stage)"
                       " AND sku_key NOT IN (SELECT sku_key FROM temp.seen)", (self.job.partner_id,))
        absent = s._cur.fetch_arrow_table().column("sku_key").combine_chunks().cast(pa.string())
        active = s._one("SELECT count(*) FROM products WHERE partner_id = ? AND active = 1", (self.job.partner_id,))
        return absent, active

    def commit(self, outcome: Outcome) -> None:
        """Record the job's outcome inside the merge transaction and commit both together."""
        s = self._s
        try:
            self._write_lock()
            s._record_outcome(self.job, outcome)
            s._end_write("COMMIT")
            self._in_tx = False
            self._done = True
        except BaseException:
            self.abort()
            raise
        finally:
            self._clear()

    def abort(self) -> None:
        """Roll back whatever this load did. Never raises: it runs while another error is
        propagating, and a connection too broken to roll back has no transaction left anyway."""
        for future in self._pending:
            future.cancel()
        for future in self._pending:
            try:
                future.result()          # a batch being ingested right now: let it end
            except BaseException:  # noqa: BLE001 — the error that matters is the one propagating
                pass
        self._pending.clear()
        if self._in_tx:
            self._in_tx = False
            try:
                self._s._end_write("ROLLBACK")
            except StoreError:
                pass
        self._done = True
        self._clear()

    def _clear(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
