"""The scale-out catalog store: PostgreSQL through psycopg 3, shared by several daemons.

The contract is SQLite's (``storage.base``): rows and the job's outcome commit in one
transaction. Batches go in with ``COPY`` (pyarrow writes the CSV, in C++; PostgreSQL's CSV
format tells a null from an empty string exactly as pyarrow writes them) into a temporary
staging table, and one set-based ``INSERT … SELECT DISTINCT ON (sku_key) … ON CONFLICT DO
UPDATE … WHERE … IS DISTINCT FROM`` merges them in key order, skipping unchanged rows.

PostgreSQL is also what coordinates the daemons, with nothing but rows and locks:

- a job per (partner, sha256) is unique; ``claim`` takes it with ``SELECT … FOR UPDATE``, so two
  daemons never both run it;
- a running job and a claimed remote file carry a lease (``lease_until``, the database's clock)
  held by one daemon and renewed by its heartbeat (``renew``); when a daemon dies its leases run
  out and ``expire_leases`` (any daemon, every few seconds) queues its jobs again;
- the attempt number fences commits: the outcome is written only ``WHERE attempt = <ours>``, so a
  daemon that was merely slow cannot commit a job another daemon took over.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from importlib import resources
from typing import Any

import numpy as np
import psycopg
import psycopg.errors
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql as pgsql
from psycopg.copy import QueuedLibpqWriter

from config.canonical import CANONICAL_SCHEMA
from config.errors import (
    DeactivationRefused,
    JobNotFound,
    LeaseLost,
    StoreBusy,
    StoreError,
    StoreUnavailable,
)
from config.status import APPLIED, ATTEMPT_RELEASED, REQUEUEABLE, RUNNABLE, JobStatus
from storage.base import (
    EVERY_COLUMN,
    JOB_COLUMNS,
    MERGED_COLUMNS,
    PRODUCT_DELIVERY,
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
    job_from_row,
    new_job_id,
    split_statements,
    utcnow,
)
from storage.console import ConsoleReads
from storage.history import (
    EXPORT_SCHEMA,
    RECORD_VERSION,
    HistoryReads,
    Jsonb,
    PriceShockRule,
    check_price_shock,
    record_deactivations_sql,
    record_updates_sql,
)
from storage.outbox import WebhookOutbox

CONNECT_TIMEOUT_S = 10
MIGRATION_LOCK = 0x1B0CDAE0           # pg_advisory_xact_lock key: one daemon migrates at a time
SORT_MEMORY = "256MB"                 # work_mem of a merge: the file's rows are sorted by key once
_COPY_OPTIONS = pacsv.WriteOptions(include_header=False, quoting_style="needed")
_STAGE_COLUMNS = ", ".join(f'"{n}"' for n in CANONICAL_SCHEMA.names)
_BUSY = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected,
         psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled)
# a product that no later delivery than this file's (the parameter) set
_NOT_LATER = f"{PRODUCT_DELIVERY} <= %s"
# the partner's active products the file has no row of, valid or rejected: what a snapshot deactivates
_ABSENT = ("partner_id = %s AND active AND NOT EXISTS (SELECT 1 FROM stage g WHERE g.sku_key ="
           " products.sku_key) AND NOT EXISTS (SELECT 1 FROM seen r WHERE r.sku_key = products.sku_key)")


def _map_errors(exc: psycopg.Error) -> StoreError:
    if isinstance(exc, _BUSY):
        return StoreBusy(str(exc))
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return StoreUnavailable(str(exc).strip() or type(exc).__name__)
    return StoreError(str(exc))


class _CopyStream(io.RawIOBase):
    """A ``COPY … TO STDOUT`` as a file pyarrow reads from."""

    def __init__(self, copy):
        self._chunks = iter(copy)
        self._left = b""

    def readable(self) -> bool:
        return True

    def empty(self) -> bool:
        """Nothing at all came (pyarrow refuses an empty CSV)."""
        if not self._left:
            self._left = bytes(next(self._chunks, b""))
        return not self._left

    def readinto(self, buffer) -> int:
        while not self._left:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._left = bytes(chunk)
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


class PostgresStore(LedgerReads, HistoryReads, ConsoleReads, WebhookOutbox):
    """``CatalogStore`` on PostgreSQL. One instance per thread: it owns a connection."""

    PARAM = "%s"
    NULL_SAFE_EQUAL = "IS NOT DISTINCT FROM"
    JSON = Jsonb()
    LIKE = "ILIKE"
    TRUE, FALSE = "true", "false"
    HASHED = False

    def __init__(self, url: str, *, password: str | None = None, lease: float = 30.0,
                 holder: str | None = None):
        self.lease, self.holder = lease, holder or default_holder()
        try:
            # a None password is left out of the connection string: libpq's own sources then apply
            conninfo = psycopg.conninfo.make_conninfo(url, password=password)
            self._conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                         application_name="inbox-daemon")
            # A daemon that hangs inside a transaction (a frozen VM, a stopped process) would hold
            # its row locks, and stall every other daemon merging those products, for ever. The
            # server ends such a transaction once it has been idle as long as a claim lives
            # without a heartbeat: by then the job is queued again elsewhere anyway.
            self._conn.execute("SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
                               (f"{max(1, round(lease * 1000))}ms",))
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot connect to the PostgreSQL store: {str(exc).strip()}") from exc
        try:
            self._migrate()
            self._read_identity()
        except BaseException:
            self._conn.close()
            raise

    # -- plumbing -------------------------------------------------------------------------------
    @contextmanager
    def _cursor(self) -> Iterator[psycopg.Cursor]:
        """Every statement runs on one of these, so driver errors are mapped in this one place."""
        try:
            with self._conn.cursor() as cur:
                yield cur
        except psycopg.Error as exc:
            raise _map_errors(exc) from exc

    def _exec(self, sql: str, params: tuple | None = None) -> list[tuple]:
        with self._cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def _rowcount(self, sql: str, params: tuple | None = None) -> int:
        """A statement's row count as the server reports it (``CREATE TABLE … AS``: the rows it
        wrote), where counting them again would scan the table."""
        with self._cursor() as cur:
            cur.execute(sql, params)
            return cur.rowcount

    def _one(self, sql: str, params: tuple | None = None) -> Any:
        rows = self._exec(sql, params)
        return rows[0][0] if rows else None

    @contextmanager
    def _transaction(self, *, durable: bool = True) -> Iterator[None]:
        """``durable=False``: the commit does not wait for its WAL flush (``CatalogStore.claim``);
        the next durable commit flushes it with its own."""
        self._exec("BEGIN")
        if not durable:
            self._exec("SET LOCAL synchronous_commit = off")
        try:
            yield
        except BaseException:
            self._rollback()
            raise
        self._exec("COMMIT")

    def _rollback(self) -> None:
        """Never raises: it runs while another error propagates; a broken connection has no
        transaction left to roll back."""
        try:
            self._exec("ROLLBACK")
        except StoreError:
            pass

    def _migrate(self) -> None:
        from config import ConfigError
        folder = resources.files("storage") / "migrations" / "postgres"
        scripts = sorted((int(p.name.split("_", 1)[0]), p) for p in folder.iterdir() if p.name.endswith(".sql"))
        known = scripts[-1][0] if scripts else 0
        with self._transaction():
            self._exec("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            if self._one("SELECT to_regclass('inbox_schema_version')") is None:
                if self._one("SELECT to_regclass('products')") is not None:
                    raise ConfigError(["store.url: the database has a products table that inbox-daemon did not "
                                       "create (no inbox_schema_version table): use an empty database or schema"])
                self._exec("CREATE TABLE inbox_schema_version (version integer NOT NULL, applied_at text NOT NULL)")
                self._exec("INSERT INTO inbox_schema_version VALUES (0, %s)", (utcnow(),))
            version = self._one("SELECT max(version) FROM inbox_schema_version")
            if version > known:
                raise ConfigError([f"store.url: the database schema is version {version}, newer than this "
                                   f"inbox-daemon knows ({known}): upgrade the daemon"])
            for number, script in scripts:
                if number > version:
                    for statement in split_statements(script.read_text()):
                        self._exec(statement)
                    self._exec("INSERT INTO inbox_schema_version VALUES (%s, %s)", (number, utcnow()))

    def close(self) -> None:
        self._conn.close()

    # -- ledger ---------------------------------------------------------------------------------
    def claim(self, *, partner_id: str, sha256: str, inbox: str, source: Source, fmt: str | None,
              mode: str, spool_path: str | None, answered_if_same_file: bool = False,
              reverts: str | None = None) -> Claim:
        now = utcnow()
        with self._transaction(durable=False):      # see CatalogStore.claim
            # twice at most: a job another daemon inserted for this content meanwhile is seen on
            # the second pass (ON CONFLICT waited for its insert to commit, so the next statement
            # sees its row; under REPEATABLE READ or SERIALIZABLE the insert raises instead)
            for _ in range(2):
                original = self._content_holder(partner_id, sha256, lock=True)
                reapplies = None
                if original is not None:
                    expired, holder = self._exec("SELECT lease_until IS NULL OR lease_until < now(), claimed_by"
                                                 " FROM jobs WHERE id = %s", (original.id,))[0]
                    expired = expired or holder_is_dead(holder)
                    if original.status in RUNNABLE or (original.status == JobStatus.RUNNING and expired):
                        return self._resume(original, inbox=inbox, source=source, fmt=fmt, mode=mode,
                                            spool_path=spool_path, now=now)
                    settled = self._settled_claim(original, inbox=inbox, source=source,
                                                  answered_if_same_file=answered_if_same_file)
                    if isinstance(settled, Claim):
                        return settled
                    if settled == "duplicate":
                        job_id = new_job_id()
                        self._exec(
                            "INSERT INTO jobs (id, partner_id, inbox, sha256, source_uri, source_name, size,"
                            " source_version, delivered_at, format, mode, status, attempt, duplicate_of, created_at,"
                            " started_at, claimed_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 1, %s,"
                            " %s, %s, %s)",
                            (job_id, partner_id, inbox, sha256, source.uri, source.name, source.size, source.version,
                             source.delivered_at, fmt, mode, JobStatus.DUPLICATE, original.id, now, now, self.holder))
                        return Claim("duplicate", self.job(job_id))
                    reapplies = original.id
                job_id = new_job_id()
                inserted = self._exec(
                    "INSERT INTO jobs (id, partner_id, inbox, sha256, source_uri, source_name, size, source_version,"
                    " delivered_at, format, mode, status, attempt, spool_path, reapplies, reverts, created_at,"
                    " started_at, lease_until, claimed_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 1,"
                    " %s, %s, %s, %s, %s, now() + make_interval(secs => %s), %s)"
                    " ON CONFLICT (partner_id, sha256, (coalesce(reapplies, ''))) WHERE duplicate_of IS NULL"
                    " DO NOTHING RETURNING id",
                    (job_id, partner_id, inbox, sha256, source.uri, source.name, source.size, source.version,
                     source.delivered_at, fmt, mode, JobStatus.RUNNING, spool_path, reapplies, reverts, now, now,
                     self.lease, self.holder))
                if inserted:
                    self._start_attempt(job_id, 1, now)
                    return Claim("reapply" if reapplies else "new", self.job(job_id))
            raise StoreBusy(f"the content {sha256[:12]} of {partner_id} is being claimed by another daemon")

    def _resume(self, original: Job, *, inbox: str, source: Source, fmt: str | None, mode: str,
                spool_path: str | None, now: str) -> Claim:
        attempt = original.attempt + 1
        self._exec(
            "UPDATE jobs SET status = %s, attempt = %s, inbox = %s, source_uri = %s,"
            " source_name = %s, size = %s, source_version = %s, delivered_at = %s, format = %s, mode = %s,"
            " spool_path = %s, error = NULL, result = NULL, rows_read = NULL, rows_rejected = NULL, started_at = %s,"
            " finished_at = NULL,"
            " reported_at = NULL, lease_until = now() + make_interval(secs => %s), claimed_by = %s"
            " WHERE id = %s",
            (JobStatus.RUNNING, attempt, inbox, source.uri, source.name, source.size, source.version,
             source.delivered_at, fmt, mode, spool_path, now, self.lease, self.holder, original.id))
        self._start_attempt(original.id, attempt, now)
        return Claim("resumed", self.job(original.id))

    def _take_report(self, job: Job) -> bool:
        expired, holder = self._exec("SELECT lease_until IS NULL OR lease_until < now(), claimed_by"
                                     " FROM jobs WHERE id = %s", (job.id,))[0]
        if not (expired or holder_is_dead(holder)):
            return False
        self._exec("UPDATE jobs SET claimed_by = %s, lease_until = now() + make_interval(secs => %s) WHERE id = %s",
                   (self.holder, self.lease, job.id))
        return True

    def _start_attempt(self, job_id: str, attempt: int, now: str) -> None:
        self._exec("INSERT INTO job_attempts (job_id, attempt, started_at) VALUES (%s, %s, %s)"
                   " ON CONFLICT (job_id, attempt) DO UPDATE SET started_at = excluded.started_at,"
                   " finished_at = NULL, status = NULL, error = NULL", (job_id, attempt, now))

    def _record_outcome(self, job: Job, outcome: Outcome) -> None:
        """Fenced by the attempt number: nothing is written for an attempt that was taken over.
        Only into the catalog the daemon opened (``_check_identity``)."""
        self._check_identity()
        now = utcnow()
        done = self._exec(
            "UPDATE jobs SET status = %s, error = %s, result = %s, finished_at = %s,"
            " rows_read = %s, rows_rejected = %s"
            " WHERE id = %s AND attempt = %s RETURNING id",
            (outcome.status, outcome.error, json.dumps(outcome.result, ensure_ascii=False), now, *outcome.rows,
             job.id, job.attempt))
        if not done:
            raise LeaseLost(f"job {job.id} attempt {job.attempt} was taken over by another daemon")
        self._exec("UPDATE job_attempts SET finished_at = %s, status = %s, error = %s"
                   " WHERE job_id = %s AND attempt = %s", (now, outcome.status, outcome.error, job.id, job.attempt))
        if outcome.notify:
            self._enqueue_webhook(job.id, job.attempt, job.partner_id, outcome.result)

    def finish(self, job: Job, outcome: Outcome) -> None:
        with self._transaction():
            self._record_outcome(job, outcome)

    def release(self, job: Job) -> None:
        with self._transaction():
            self._exec("UPDATE jobs SET status = %s, lease_until = NULL WHERE id = %s AND status = %s AND attempt = %s",
                       (JobStatus.QUEUED, job.id, JobStatus.RUNNING, job.attempt))
            self._exec("UPDATE job_attempts SET finished_at = %s, status = %s WHERE job_id = %s AND attempt = %s",
                       (utcnow(), ATTEMPT_RELEASED, job.id, job.attempt))

    def recover(self) -> list[str]:
        """At start-up: only what no live daemon holds — running jobs whose lease ran out or whose
        daemon on this host is dead, and failed jobs (their retry was scheduled in some daemon's
        memory) — is queued again; dead local daemons' file claims are dropped. Other daemons'
        running jobs are left alone."""
        holders = {r[0] for r in self._exec("SELECT DISTINCT claimed_by FROM jobs WHERE status = %s"
                                            " UNION SELECT DISTINCT holder FROM drop_claims", (JobStatus.RUNNING,))}
        dead = [h for h in holders if h and holder_is_dead(h)]
        with self._transaction():
            rows = self._exec("UPDATE jobs SET status = %s, lease_until = NULL"
                              " WHERE (status = %s AND (lease_until < now() OR claimed_by = ANY(%s)))"
                              " OR status = %s RETURNING id",
                              (JobStatus.QUEUED, JobStatus.RUNNING, dead, JobStatus.FAILED))
            self._mark_interrupted(r[0] for r in rows)
            self._exec("DELETE FROM drop_claims WHERE holder = ANY(%s)", (dead,))
        return [r[0] for r in rows]

    def expire_leases(self) -> list[str]:
        with self._transaction():
            rows = self._exec("UPDATE jobs SET status = %s, lease_until = NULL"
                              " WHERE status = %s AND lease_until < now() RETURNING id",
                              (JobStatus.QUEUED, JobStatus.RUNNING))
            self._mark_interrupted(r[0] for r in rows)
            self._exec("DELETE FROM drop_claims WHERE until < now()")
        return [r[0] for r in rows]

    def renew(self) -> None:
        with self._transaction():
            self._exec("UPDATE jobs SET lease_until = now() + make_interval(secs => %s)"
                       " WHERE claimed_by = %s AND status = %s", (self.lease, self.holder, JobStatus.RUNNING))
            self._exec("UPDATE drop_claims SET until = now() + make_interval(secs => %s) WHERE holder = %s",
                       (self.lease, self.holder))

    def claim_drop(self, *, inbox: str, uri: str, version: str) -> bool:
        rows = self._exec(
            "INSERT INTO drop_claims (inbox, uri, version, holder, until)"
            " VALUES (%s, %s, %s, %s, now() + make_interval(secs => %s))"
            " ON CONFLICT (inbox, uri, version) DO UPDATE SET holder = excluded.holder, until = excluded.until"
            " WHERE drop_claims.until < now() OR drop_claims.holder = excluded.holder RETURNING holder",
            (inbox, uri, version, self.holder, self.lease))
        return bool(rows)

    def release_drop(self, *, inbox: str, uri: str, version: str) -> None:
        self._exec("DELETE FROM drop_claims WHERE inbox = %s AND uri = %s AND version = %s AND holder = %s",
                   (inbox, uri, version, self.holder))

    def queued(self, partners: Iterable[str] | None = None, limit: int = 100) -> list[Job]:
        where = "status = %s"
        params: list[object] = [JobStatus.QUEUED]
        if partners is not None:
            where += " AND partner_id = ANY(%s)"
            params.append(list(partners))
        rows = self._exec(f"SELECT {JOB_COLUMNS} FROM jobs WHERE {where} ORDER BY created_at"
                          f" LIMIT {int(limit)}", tuple(params))
        return [job_from_row(r) for r in rows]

    def requeue(self, *, ids: Iterable[str] = (), status: JobStatus | None = None,
                partner_id: str | None = None) -> list[str]:
        ids = list(ids)
        with self._transaction():
            if ids:
                for job_id in ids:
                    job = self._job_row("id = ?", (job_id,), lock=True)
                    if job is None:
                        raise JobNotFound(f"no job {job_id!r}")
                    if job.status not in REQUEUEABLE:
                        raise JobNotFound(f"job {job_id} is {job.status}; only "
                                          f"{', '.join(sorted(REQUEUEABLE))} jobs can be requeued")
                chosen = ids
            else:
                where = ["status = %s"]
                params: list[object] = [status]
                if partner_id:
                    where.append("partner_id = %s")
                    params.append(partner_id)
                chosen = [r[0] for r in self._exec(f"SELECT id FROM jobs WHERE {' AND '.join(where)} FOR UPDATE",
                                                   tuple(params))]
            self._exec("UPDATE jobs SET status = %s, lease_until = NULL WHERE id = ANY(%s)",
                       (JobStatus.QUEUED, chosen))
        return chosen

    # -- catalog --------------------------------------------------------------------------------
    def _next_version(self, partner_id: str) -> int:
        """The partner's next catalog version; its row stays locked until the transaction ends,
        so one partner's merges (on any daemon) commit one after the other, in version order."""
        return self._one("INSERT INTO catalog_versions (partner_id, version) VALUES (%s, 1) ON CONFLICT (partner_id)"
                         " DO UPDATE SET version = catalog_versions.version + 1 RETURNING version", (partner_id,))

    def export(self, partner_id: str, since: int) -> tuple[int, Iterator[pa.RecordBatch]]:
        """(the partner's catalog version now, its products changed after ``since`` as batches),
        read in one snapshot: ``COPY … TO STDOUT`` streamed through pyarrow's CSV reader (C++,
        the server's CSV tells NULL from an empty string as the reader is told to)."""
        try:
            self._exec("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            version = self._one("SELECT coalesce(max(version), 0) FROM catalog_versions WHERE partner_id = %s",
                                (partner_id,))
            query = self._conn.cursor().copy(pgsql.SQL(
                "COPY (SELECT {} FROM products WHERE partner_id = {} AND version > {}) TO STDOUT (FORMAT csv)").format(
                pgsql.SQL(", ".join(EXPORT_SCHEMA.names)), pgsql.Literal(partner_id), pgsql.Literal(int(since))))
            copy = query.__enter__()
        except BaseException:
            self._rollback()
            raise

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                stream = _CopyStream(copy)
                if stream.empty():
                    query.__exit__(None, None, None)
                    self._exec("COMMIT")
                    return
                reader = pacsv.open_csv(stream, read_options=pacsv.ReadOptions(column_names=EXPORT_SCHEMA.names),
                                        parse_options=pacsv.ParseOptions(newlines_in_values=True),
                                        convert_options=pacsv.ConvertOptions(
                                            column_types=EXPORT_SCHEMA, strings_can_be_null=True, null_values=[""],
                                            quoted_strings_can_be_null=False, true_values=["t"], false_values=["f"]))
                yield from reader
                query.__exit__(None, None, None)
                self._exec("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return version, batches()

    def read_ahead(self, partner_id: str, *, size: int, mode: str) -> None:
        """Nothing to read ahead: every row is compared in the merge, on the server."""

    def load(self, job: Job, *, exclusive: bool = False) -> PostgresLoad:
        """``exclusive`` changes nothing here: every row is staged and compared inside the one
        transaction's merge statement, so nothing read before it can go stale."""
        return PostgresLoad(self, job)


class PostgresLoad:
    """Stage → merge → commit for one job, all in one transaction. Leaving the ``with`` block
    without commit rolls it back, staging tables and all (they are ``ON COMMIT DROP``)."""

    def __init__(self, store: PostgresStore, job: Job):
        self._s, self.job = store, job
        self._delivery = job.delivery          # this file's place in the partner's delivery order
        self._done = False
        self._rejected: list[pa.Table] = []
        self._unnamed = 0                       # rows staged without a name (they cannot create a product)
        self._staged = 0                        # rows staged (counted here: the merge need not scan them)
        self._keys = 0                          # keys staged: rows of ``last``
        self._copy: ExitStack | None = None
        self._version = 0                       # the partner's catalog version this merge commits as
        store._exec("BEGIN")
        try:
            store._exec(
                "CREATE TEMP TABLE stage (\"row\" bigint, sku text, sku_key text, name text, description text,"
                " price_cents bigint, currency text, stock bigint, active boolean, brand text, category text,"
                " gtin text, url text, image_url text, attributes text) ON COMMIT DROP")
            store._exec("CREATE TEMP TABLE seen (sku_key text, \"row\" bigint) ON COMMIT DROP")
        except BaseException:
            store._rollback()
            raise

    def __enter__(self) -> PostgresLoad:
        return self

    def __exit__(self, *exc) -> None:
        if not self._done:
            self.abort()

    keeps_records = False     # every row is compared in the merge, on the server

    def ready(self) -> bool:
        return True

    def recognise(self, records: np.ndarray) -> np.ndarray:
        return np.full(len(records), -1, dtype=np.int64)

    def stage(self, batch: pa.RecordBatch, rejected_keys: pa.Table | None = None,
              columns: Columns = EVERY_COLUMN, records: pa.Array | None = None,
              recognised: Recognised | None = None) -> None:
        """Stage valid rows; ``rejected_keys`` as in ``SqliteLoad.stage`` (no ``records``: this
        store does not keep them, and recognises nothing). One ``COPY`` stays open
        for the whole file and a writer thread feeds it, so the server ingests a batch while the
        next one is read and judged."""
        if batch.num_rows:
            self._unnamed += batch.column("name").null_count
            self._staged += batch.num_rows
            if self._copy is None:
                self._copy = ExitStack()
                cursor = self._copy.enter_context(self._s._conn.cursor())
                self._stream = self._copy.enter_context(cursor.copy(
                    f"COPY stage ({_STAGE_COLUMNS}) FROM STDIN WITH (FORMAT csv)", writer=QueuedLibpqWriter(cursor)))
            buffer = io.BytesIO()
            pacsv.write_csv(batch, buffer, write_options=_COPY_OPTIONS)
            try:
                self._stream.write(buffer.getvalue())
            except psycopg.Error as exc:
                raise _map_errors(exc) from exc
        if rejected_keys is not None and rejected_keys.num_rows:
            self._rejected.append(rejected_keys.select(["sku_key", "row"]))   # few: copied at the merge

    def _finish_copy(self) -> None:
        if self._copy is not None:
            copy, self._copy = self._copy, None
            try:
                copy.close()
            except psycopg.Error as exc:
                raise _map_errors(exc) from exc
        if self._rejected:
            buffer = io.BytesIO()
            pacsv.write_csv(pa.concat_tables(self._rejected), buffer, write_options=_COPY_OPTIONS)
            try:
                with self._s._conn.cursor() as cur, \
                        cur.copy('COPY seen (sku_key, "row") FROM STDIN WITH (FORMAT csv)') as seen:
                    seen.write(buffer.getvalue())
            except psycopg.Error as exc:
                raise _map_errors(exc) from exc

    def merge(self, *, mode: str, max_deactivate_ratio: float, columns: Columns = EVERY_COLUMN,
              hold: PriceShockRule | None = None) -> MergeCounts:
        """Apply the staged rows: each kept key's last row sets the ``columns`` the file
        carries (the others stay as the catalog holds them); a snapshot deactivates the rest.
        What it changes is recorded (``storage.history``); ``hold``: ``PriceShockHeld`` instead
        when its prices jump."""
        now = utcnow()
        s, partner = self._s, self.job.partner_id
        try:
            self._finish_copy()
            self._version = s._next_version(partner)     # first: one partner's merges in order
            # the whole file is sorted by key once: give that sort memory rather than temp files
            s._exec(f"SET LOCAL work_mem = '{SORT_MEMORY}'")
            last = (f'SELECT DISTINCT ON (sku_key) sku_key, "row" AS last_row, {", ".join(MERGED_COLUMNS)}'
                    ' FROM stage ORDER BY sku_key, "row" DESC')
            held = s._one("SELECT EXISTS (SELECT 1 FROM products WHERE partner_id = %s)", (partner,))
            if held:
                # each key's last row is compared with the catalog first (``_diff``), so it is kept
                self._keys = s._rowcount(f"CREATE TEMP TABLE last ON COMMIT DROP AS {last}")
                # its size, for the planner: a small file's rows are then looked up in the
                # partner's catalog by key, not joined with a scan of it
                s._exec("ANALYZE last (sku_key)")
            behind = held and self._behind()
            deactivated = self._to_deactivate(mode, max_deactivate_ratio, behind) if held else 0
            keep = self._kept()
            unnamed = self._unnamed_rows(keep) if self._unnamed else ()
            touched, stale = "", 0
            if held:
                stale = self._diff(keep, columns, behind)
                # the products the merge updates, joined with their rows of the file
                rows = (" FROM diff d JOIN last l ON l.sku_key = d.sku_key JOIN products ON products.partner_id = %s"
                        " AND products.sku_key = d.sku_key WHERE d.changed AND d.current")
                if hold is not None and "price_cents" in columns.written:
                    check_price_shock(s, rows, (partner,), hold)
                s._q(record_updates_sql(s.JSON, rows, columns, "IS DISTINCT FROM"), (partner, self._version, partner))
                touched = " AND l.sku_key IN (SELECT sku_key FROM diff WHERE fresh OR (changed AND current))"
                inserted, updated = self._upsert("last", keep, now, columns, touched)
                distinct = self._keys if keep == "true" else s._one(f"SELECT count(*) FROM last l WHERE {keep}")
            else:
                # a partner's first import: nothing to compare with, so each key's last row goes
                # from the sort straight into the insert; every key kept is inserted or unnamed
                inserted, updated = self._upsert(f"({last})", keep, now, columns, touched)
                distinct = inserted + len(unnamed)
            if inserted:
                s._exec("UPDATE catalog_versions SET products = products + %s WHERE partner_id = %s",
                        (inserted, partner))
            if deactivated:
                self._deactivate(now)
            s._q(RECORD_VERSION, (self._version, self.job.id))
            # rows of a key whose last occurrence was rejected count as superseded, as in SQLite
            return MergeCounts(staged=self._staged, superseded=self._staged - distinct, inserted=inserted,
                               updated=updated, unchanged=distinct - inserted - updated - stale - len(unnamed),
                               deactivated=deactivated, stale=stale, unnamed=unnamed)
        except BaseException:
            self.abort()
            raise

    def _behind(self) -> bool:
        """Was a later delivery than this file's merged before (then each row is checked against
        its product's delivery, and the rows left alone are counted)? Another daemon's merge may
        commit a later one meanwhile: the upsert checks every row it would change all the same
        (``_NOT_LATER``, on the row as locked), only the count may then miss a few."""
        # an index range of the partner's jobs delivered at or after this one: nearly always empty
        # (nothing is written per merge for this: a row every merge of a partner updated would
        # make them queue for each other's commits)
        return bool(self._s._one(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE partner_id = %s AND delivered_at >= %s AND status IN (%s, %s)"
            " AND delivered_at || ' ' || source_name > %s)",
            (self.job.partner_id, self.job.delivered_at or "", *sorted(APPLIED), self._delivery)))

    def _to_deactivate(self, mode: str, max_ratio: float, behind: bool) -> int:
        """How many keys a snapshot deactivates: those it has no row of, but the ones a later
        delivery set; ``DeactivationRefused`` when they are more than ``max_ratio`` of the
        partner's active keys."""
        if mode != "snapshot":
            return 0
        s, partner = self._s, self.job.partner_id
        active = s._one("SELECT count(*) FROM products WHERE partner_id = %s AND active", (partner,))
        later = f" AND {_NOT_LATER}" if behind else ""
        deactivated = s._one(f"SELECT count(*) FROM products WHERE {_ABSENT}{later}",
                             (partner, *((self._delivery,) if behind else ())))
        if deactivated and deactivated > max_ratio * active:
            raise DeactivationRefused(would_deactivate=deactivated, active=active, max_ratio=max_ratio)
        return deactivated

    def _kept(self) -> str:
        """The SQL condition on a key's last staged row ``l`` that it is applied: a key whose last
        row in the file was rejected is left as it is."""
        if not self._rejected:
            return "true"
        self._s._exec('CREATE INDEX ON seen (sku_key, "row")')
        return 'NOT EXISTS (SELECT 1 FROM seen r WHERE r.sku_key = l.sku_key AND r."row" > l.last_row)'

    def _unnamed_rows(self, keep: str) -> tuple[tuple[int, str], ...]:
        """(row, sku) of kept keys whose last row has no name and that the catalog does not hold:
        refused (``MergeCounts.unnamed``), as a product is never created without a name."""
        last = ('SELECT DISTINCT ON (sku_key) sku_key, "row" AS last_row, sku, name FROM stage'
                ' WHERE sku_key IN (SELECT sku_key FROM stage WHERE name IS NULL) ORDER BY sku_key, "row" DESC')
        return tuple(self._s._exec(
            f"SELECT l.last_row, l.sku FROM ({last}) l WHERE {keep} AND l.name IS NULL AND NOT EXISTS"
            " (SELECT 1 FROM products p WHERE p.partner_id = %s AND p.sku_key = l.sku_key) ORDER BY l.last_row",
            (self.job.partner_id,)))

    def _diff(self, keep: str, columns: Columns, behind: bool) -> int:
        """Each kept key's row of the file against the catalog, once (``temp diff``): new, or
        changing its product, and whether that product is this file's to change (no later
        delivery set it). The upsert then touches only the new and changing rows, and a re-sent
        catalog costs one join rather than a conflict check per row. The partner's catalog
        cannot move meanwhile: its merges queue on its version (``_next_version``). Returns the
        rows left stale."""
        current = f"NOT changed OR ({_NOT_LATER})" if behind else "true"
        self._s._exec(
            f"CREATE TEMP TABLE diff ON COMMIT DROP AS SELECT sku_key, fresh, changed, {current} AS current FROM"
            f" (SELECT l.sku_key, products.sku_key IS NULL AS fresh, products.sku_key IS NOT NULL AND"
            f" ({columns.differs('IS DISTINCT FROM', 'l')}) AS changed, products.source_job_id FROM last l LEFT JOIN"
            f" products ON products.partner_id = %s AND products.sku_key = l.sku_key WHERE {keep}) products",
            (*((self._delivery,) if behind else ()), self.job.partner_id))
        self._s._exec("ANALYZE diff")
        return self._s._one("SELECT count(*) FROM diff WHERE changed AND NOT current")

    def _upsert(self, source: str, keep: str, now: str, columns: Columns, touched: str) -> tuple[int, int]:
        """One statement: the upsert of the kept rows of ``source`` (each key's last row:
        ``last`` or the query that sorts them; ``touched``: only those ``_diff`` found new or
        changing their product); returns (rows inserted, rows updated). Only the columns the
        file carries are updated; a new product without ``active`` is active; a row without a
        name only updates. Unchanged rows and products a later delivery set are left alone by
        the update's condition all the same."""
        cols = ", ".join(MERGED_COLUMNS)
        values = ", ".join(columns.insert_value(c, "true") for c in MERGED_COLUMNS)
        named = (" AND (l.name IS NOT NULL OR EXISTS (SELECT 1 FROM products p WHERE p.partner_id = %s"
                 " AND p.sku_key = l.sku_key))") if self._unnamed else ""
        changed = columns.differs("IS DISTINCT FROM")
        return self._s._exec(
            f"WITH up AS (INSERT INTO products (partner_id, sku_key, {cols}, updated_at, source_job_id, version,"
            f" created_version) SELECT %s, sku_key, {values}, %s, %s, %s, %s FROM {source} l"
            f" WHERE {keep}{named}{touched} ON CONFLICT (partner_id, sku_key) DO UPDATE SET {columns.assignments()}, "
            + ", ".join(f"{c} = excluded.{c}" for c in ("updated_at", "source_job_id", "version"))
            + f" WHERE ({changed}) AND {_NOT_LATER} RETURNING (xmax = 0) AS fresh)"
            " SELECT count(*) FILTER (WHERE fresh), count(*) FILTER (WHERE NOT fresh) FROM up",
            (self.job.partner_id, now, self.job.id, self._version, self._version,
             *((self.job.partner_id,) if named else ()), self._delivery))[0]

    def _deactivate(self, now: str) -> None:
        """What ``_ABSENT`` names, but products a later delivery set."""
        s, partner = self._s, self.job.partner_id
        s._exec(s._sql(record_deactivations_sql(s.JSON, "true", "false", _ABSENT.replace("partner_id = %s AND ", ""),
                                                f" AND {_NOT_LATER}")),
                (partner, self._version, partner, self._delivery))
        s._exec(f"UPDATE products SET active = false, updated_at = %s, source_job_id = %s, version = %s"
                f" WHERE {_ABSENT} AND {_NOT_LATER}", (now, self.job.id, self._version, partner, self._delivery))

    def commit(self, outcome: Outcome) -> None:
        """Record the job's outcome in the merge's transaction and commit both together."""
        try:
            self._s._record_outcome(self.job, outcome)
            self._s._exec("COMMIT")
            self._done = True
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if not self._done:
            self._done = True
            if self._copy is not None:
                copy, self._copy = self._copy, None
                try:       # leaving the COPY with an error sends CopyFail: the server drops it
                    copy.__exit__(StoreError, StoreError("load aborted"), None)
                except (psycopg.Error, StoreError):
                    pass
            self._s._rollback()
