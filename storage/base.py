"""The ``CatalogStore`` protocol: the ledger of jobs and the catalog they change.

The one promise every store keeps: the rows a file changes and that job's outcome commit in ONE
transaction (``Load.commit``). That is what makes ingest exactly-once across crashes: a job cut
off before the commit left nothing behind and is simply run again.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from config.canonical import MERGED_COLUMNS as MERGED_COLUMNS
from config.errors import StoreError, StoreReplaced
from config.status import APPLIED, JobStatus

if TYPE_CHECKING:
    from storage.history import PriceShockRule, RevertCounts
    from storage.outbox import Delivery

# the ledger's columns as a Job has them (the columns a merge writes: config.canonical.MERGED_COLUMNS)
JOB_COLUMNS = ("id, partner_id, inbox, sha256, source_uri, source_name, size, source_version, format, mode, "
               "status, attempt, duplicate_of, spool_path, error, result, created_at, started_at, "
               "finished_at, reported_at, delivered_at, reapplies, catalog_version, reverts, approved_by")
JOB_NAMES = tuple(c.strip() for c in JOB_COLUMNS.split(","))      # the fields of ``Job``, in that order


def default_holder() -> str:
    """Who holds a claim: this daemon process (host and pid). Its workers share it, so one
    heartbeat renews everything the daemon holds."""
    return f"{socket.gethostname()}:{os.getpid()}"


def holder_is_dead(holder: str | None) -> bool:
    """A holder on this host whose process is gone: its claims can be dropped at once, rather
    than when their lease runs out. Holders on other hosts are judged by their leases alone."""
    if not holder:
        return True
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False            # alive, another user's
    return False


def utcnow() -> str:
    return utc_in(0.0)


def utc_in(seconds: float) -> str:
    """UTC ``seconds`` from now, as the ledger writes times."""
    return ledger_time(datetime.now(UTC) + timedelta(seconds=seconds))


def ledger_time(moment: datetime) -> str:
    """``moment`` as the ledger writes times: ISO 8601 in UTC, to the millisecond, with ``Z``
    (so that text order is time order). A naive ``moment`` is taken as UTC."""
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sku_key(sku: str) -> str:
    """A SKU as the catalog keys it, as the file's rows are keyed (``adapters.validation``):
    trimmed, NFC, lower case, in Arrow."""
    return pc.utf8_lower(pc.utf8_normalize(pa.array([sku.strip()]), "NFC"))[0].as_py()


def new_job_id() -> str:
    """Sortable by creation time and readable in a file name: ``20261122T041500Z-9f3a1c2e``."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}Z-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Source:
    """Where a file came from, as the manifest and the ledger tell it."""
    uri: str
    name: str
    size: int
    version: str | None = None      # mtime or ETag
    delivered_at: str | None = None  # when it became ready in its inbox (``drop.delivery_time``)

    def as_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "name": self.name, "size": self.size, "version": self.version,
                "delivered_at": self.delivered_at}


@dataclass(frozen=True)
class Job:
    id: str
    partner_id: str
    inbox: str
    sha256: str
    source_uri: str
    source_name: str
    size: int
    source_version: str | None
    format: str | None
    mode: str
    status: JobStatus
    attempt: int
    duplicate_of: str | None
    spool_path: str | None
    error: str | None
    result: dict | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    reported_at: str | None
    delivered_at: str | None = None     # the source's delivery time: the partner's order
    reapplies: str | None = None        # an earlier job of the same content this one applies again
    catalog_version: int | None = None  # the partner's catalog version its merge committed as
    reverts: str | None = None          # a revert job: the job whose changes it undoes
    approved_by: str | None = None      # a held file released by an admin (``jobs approve``)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @property
    def source(self) -> Source:
        return Source(uri=self.source_uri, name=self.source_name, size=self.size,
                      version=self.source_version, delivered_at=self.delivered_at)

    @property
    def delivery(self) -> str:
        """Its place in the partner's delivery order: delivery time, then file name (files that
        became ready in the same second of a coarse clock are ordered by name). Text order is
        delivery order; every product keeps the ``delivery`` of the job that last changed it."""
        return delivery_order(self.delivered_at, self.source_name)


def delivery_order(delivered_at: str | None, name: str) -> str:
    return f"{delivered_at or ''} {name}"


# the same, in SQL, of the job that last changed a product (its ``source_job_id``): products keep
# no copy of it, so a merge of files that come in order writes nothing more than before
PRODUCT_DELIVERY = ("coalesce((SELECT coalesce(j.delivered_at, '') || ' ' || j.source_name FROM jobs j"
                    " WHERE j.id = products.source_job_id), '')")


ClaimKind = Literal["new", "resumed", "reapply", "duplicate", "unreported", "reported", "busy"]
#: claims whose job is to be run now
TO_RUN = frozenset({"new", "resumed", "reapply"})
# a file this large is read in several blocks: the catalog it is compared with is worth reading
# while the file is copied (``CatalogStore.read_ahead``), and its rows are staged on a thread
SEVERAL_BLOCKS = 4 << 20


@dataclass(frozen=True)
class Claim:
    """What ``claim`` decided: run ``job`` (new/resumed; reapply: content the partner sent before
    and has sent something else since, applied again as a job of its own), report it
    (unreported: outcome committed but its files not yet written), record a duplicate of
    ``job.duplicate_of``, leave it (busy), or nothing at all (reported: the very file the job
    came from, seen again after its answer)."""
    kind: ClaimKind
    job: Job


@dataclass(frozen=True)
class MergeCounts:
    staged: int
    superseded: int
    inserted: int
    updated: int
    unchanged: int
    deactivated: int
    stale: int = 0          # rows (and a snapshot's absent keys) left alone: a newer delivery set them
    # (row, sku) of rows refused by the merge: the last row of a key the catalog does not hold,
    # without a name (a product is created only with one)
    unnamed: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class Columns:
    """The stored columns a file sets (``adapters.validation.carried_columns``): a merge writes
    these alone and leaves the others as the catalog holds them. ``name`` is never cleared: a
    row without one keeps the product's (and cannot create a product)."""
    carried: frozenset[str] = frozenset(MERGED_COLUMNS)

    @property
    def written(self) -> tuple[str, ...]:
        return tuple(c for c in MERGED_COLUMNS if c in self.carried)

    @staticmethod
    def value(column: str, new: str = "excluded") -> str:
        """What an update of ``products`` writes into ``column`` from the row ``new``. A missing
        name is inserted as '' (``insert_value``: NOT NULL is checked before ON CONFLICT turns
        the insert into an update; a row without a name never creates a product), read here as
        "keep the product's"."""
        return f"coalesce(nullif({new}.name, ''), products.name)" if column == "name" else f"{new}.{column}"

    @staticmethod
    def insert_value(column: str, true: str) -> str:
        """What an upsert's insert takes from the staged row: a new product without ``active``
        is active (``true``, the store's literal)."""
        return {"name": "coalesce(name, '')", "active": f"coalesce(active, {true})"}.get(column, column)

    def assignments(self) -> str:
        """The SET list of an upsert's update."""
        return ", ".join(f"{c} = {self.value(c)}" for c in self.written)

    def differs(self, null_safe_not_equal: str, new: str = "excluded") -> str:
        """SQL: the row ``new`` would change the product (in the columns the file sets)."""
        return " OR ".join(f"products.{c} {null_safe_not_equal} {self.value(c, new)}" for c in self.written)


EVERY_COLUMN = Columns()        # a file that sets every stored column


@dataclass(frozen=True)
class AuditHead:
    """Where an audit folder's trail had got to when a job was reported (``inbox_daemon.audit``)."""
    folder: str          # the folder, resolved
    chain: str           # its ``.chain-id``
    seq: int
    hash: str


@dataclass(frozen=True)
class Outcome:
    status: JobStatus
    result: dict
    error: str | None = None
    notify: bool = False        # the partner's webhook is told of it (put in the outbox with it)

    @property
    def rows(self) -> tuple[int | None, int | None]:
        """Rows read and rejected, as the manifest counts them (the console sums these)."""
        rows = self.result.get("rows") or {}
        return rows.get("read"), rows.get("rejected")


@dataclass(frozen=True)
class Recognised:
    """Rows of a block that ``Load.recognise`` knew as records the catalog last took as they
    are, left out of judging: where each one's key is in the load's catalog, and its row."""
    at: np.ndarray
    rows: np.ndarray


class Load(Protocol):
    """One file being applied: stage batches, merge them, then commit rows + outcome together.
    A store that keeps the record each product came from (``keeps_records``) recognises records
    it took before, so that they skip judging; one that does not recognises none."""

    keeps_records: bool

    def ready(self) -> bool: ...
    def recognise(self, records: np.ndarray) -> np.ndarray: ...
    def stage(self, batch: pa.RecordBatch, rejected_keys: pa.Table | None = None,
              columns: Columns = EVERY_COLUMN, records: pa.Array | None = None,
              recognised: Recognised | None = None) -> None: ...
    def merge(self, *, mode: str, max_deactivate_ratio: float, columns: Columns = EVERY_COLUMN,
              hold: PriceShockRule | None = None) -> MergeCounts: ...
    def commit(self, outcome: Outcome) -> None: ...
    def abort(self) -> None: ...
    def __enter__(self) -> Load: ...
    def __exit__(self, *exc) -> None: ...


class CatalogStore(Protocol):
    """Claims are leases held by ``holder`` (a daemon): ``renew`` extends all of them at once,
    ``expire_leases`` queues jobs whose holder stopped renewing. The ``attempt`` number of a
    job is its fencing token: a commit of an attempt that was taken over raises ``LeaseLost``."""

    def claim(self, *, partner_id: str, sha256: str, inbox: str, source: Source, fmt: str | None,
              mode: str, spool_path: str | None, answered_if_same_file: bool = False,
              reverts: str | None = None) -> Claim:
        """The ledger's first word on a file. Its commit survives the process being killed (a
        job that kills its runner is counted, and quarantined after ``max_attempts``) but is
        not synced to disk: a power loss may take it back, and the file, still in its inbox,
        is then claimed anew. Nothing leaves the daemon on the claim alone: the outcome's
        commit, durable, syncs it before any answer is written."""
        ...
    def read_ahead(self, partner_id: str, *, size: int, mode: str) -> None: ...
    def load(self, job: Job, *, exclusive: bool = False) -> Load: ...
    # what jobs changed (storage.history)
    def change_set_of(self, job: Job) -> int: ...
    def job_changes(self, job: Job, *, page: int = ...) -> Iterator[dict]: ...
    def product_history(self, partner: str, sku: str) -> list[dict]: ...
    def since_version(self, partner: str, since: str) -> int: ...
    def cursor(self, partner: str, version: int) -> str | None: ...
    def export(self, partner_id: str, since: int) -> tuple[int, Iterator[pa.RecordBatch]]: ...
    def revert_plan(self, target: Job) -> list[tuple[str, str, str]]: ...
    def revert_preview(self, target: Job, *, shown: int = 20) -> Any: ...
    def revert(self, job: Job | None, target: Job, *, force: bool,
               outcome: Callable[[RevertCounts], Outcome] | None = None) -> RevertCounts: ...
    def check_not_reverted(self, target: Job, *, force: bool, but: str | None = None) -> None: ...
    def approve(self, job_id: str, by: str) -> Job: ...
    def prune_history(self, days: float, *, batch: int = 5_000, max_batches: int | None = None) -> int: ...
    def finish(self, job: Job, outcome: Outcome) -> None: ...
    def mark_reported(self, job_id: str, audit: AuditHead | None = None) -> None: ...
    def let_report_go(self, job: Job) -> None: ...
    def audit_head(self, folder: str) -> AuditHead | None: ...
    def reset_audit_head(self, head: AuditHead) -> None: ...
    def spool_paths(self, statuses: Iterable[JobStatus]) -> list[str]: ...
    def release(self, job: Job) -> None: ...
    def recover(self) -> list[str]: ...
    def seen(self, *, inbox: str, uri: str, version: str, delivered_at: str | None) -> Job | None: ...
    def queued(self, partners: Iterable[str] | None = None, limit: int = 100) -> list[Job]: ...
    def job(self, job_id: str) -> Job: ...
    def jobs(self, *, status: JobStatus | None = None, partner_id: str | None = None,
             limit: int | None = None) -> list[Job]: ...
    def requeue(self, *, ids: Iterable[str] = (), status: JobStatus | None = None,
                partner_id: str | None = None) -> list[str]: ...
    def attempts(self, job_id: str) -> list[dict]: ...
    def claim_drop(self, *, inbox: str, uri: str, version: str) -> bool: ...
    def release_drop(self, *, inbox: str, uri: str, version: str) -> None: ...
    def renew(self) -> None: ...
    def expire_leases(self) -> list[str]: ...
    # the webhook outbox (storage.outbox)
    def take_due(self, holder: str, *, lease: float, limit: int = 100) -> list[Delivery]: ...
    def delivered(self, delivery: Delivery, *, http_status: int | None, error: str | None,
                  status: str, retry_in: float = 0.0) -> None: ...
    def release_webhooks(self, holder: str) -> None: ...
    def webhook_deliveries(self, job_id: str) -> list[dict]: ...
    def close(self) -> None: ...


def job_from_row(row: tuple) -> Job:
    """A ``SELECT JOB_COLUMNS`` row as a ``Job``."""
    data = dict(zip(JOB_NAMES, row))
    data["result"] = json.loads(data["result"]) if data["result"] else None
    data["status"] = JobStatus(data["status"])
    return Job(**data)


def split_statements(script: str) -> list[str]:
    """Split one of our migration files into statements (they hold no ';' inside literals)."""
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


class LedgerReads:
    """The ledger's reads and the report mark, the same SQL on every store: written with ``?``
    placeholders, turned into the driver's own (``PARAM``). A store provides ``_exec``/``_one``."""

    PARAM = "?"
    NULL_SAFE_EQUAL = "IS"          # PostgreSQL: IS NOT DISTINCT FROM

    def _exec(self, sql: str, params: tuple) -> list[tuple]:
        """Run one statement (in the driver's placeholders) and return its rows."""
        raise NotImplementedError

    def _one(self, sql: str) -> Any:
        """The first column of the first row of a statement without parameters, or None."""
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql if self.PARAM == "?" else sql.replace("?", self.PARAM)

    def _job_row(self, where: str, params: tuple, *, lock: bool = False) -> Job | None:
        rows = self._exec(self._sql(f"SELECT {JOB_COLUMNS} FROM jobs WHERE {where}{' FOR UPDATE' if lock else ''}"),
                          params)
        return job_from_row(rows[0]) if rows else None

    def _content_holder(self, partner_id: str, sha256: str, *, lock: bool = False) -> Job | None:
        """The job that holds this content now: the newest of it that is no duplicate (the first
        job of it, or the latest to apply it again)."""
        return self._job_row("partner_id = ? AND sha256 = ? AND duplicate_of IS NULL"
                             " ORDER BY created_at DESC, id DESC LIMIT 1", (partner_id, sha256), lock=lock)

    def _settled_claim(self, original: Job, *, inbox: str, source: Source,
                       answered_if_same_file: bool) -> Claim | Literal["duplicate", "reapply"]:
        """The claim of content whose job is not to run (again) here, the same on every store:
        busy, unreported, reported, or the duplicate already recorded for this very file. Else
        what the caller records: a new "duplicate" of ``original``, or — content the partner
        applied before but has sent something else since — a job to "reapply" it."""
        if original.status == JobStatus.RUNNING:
            return Claim("busy", original)
        # the same place, version and delivery time: the very file again, not a re-send of its bytes
        # (a re-send that keeps name and mtime is delivered anew: local, a new inode change time;
        # S3, a new LastModified). Jobs from before delivery times were kept match on the rest
        same_file = (original.inbox, original.source_uri, original.source_version) == \
            (inbox, source.uri, source.version) and original.delivered_at in (None, source.delivered_at)
        if original.reported_at is None:
            # committed, not yet reported: the same file back (after a crash) reports it, unless
            # a process that lives holds it (the one that committed it, reporting it right now, or
            # another thread of this daemon that took the report over: two reports would be two
            # audit records of one outcome); another file of that content waits until it is
            # reported, then is its duplicate
            return Claim("unreported" if same_file and self._take_report(original) else "busy", original)
        if answered_if_same_file and same_file:
            return Claim("reported", original)       # the very file it came from, seen again
        # this very file recorded as a duplicate already: seen again (a kept file, a look that
        # raced the answer), or not reported yet (a crash between)
        mine = self._job_row(
            "partner_id = ? AND sha256 = ? AND duplicate_of IS NOT NULL AND inbox = ?"
            f" AND source_uri = ? AND source_version {self.NULL_SAFE_EQUAL} ?"
            " AND (delivered_at IS NULL OR delivered_at = ?) ORDER BY created_at DESC LIMIT 1",
            (original.partner_id, original.sha256, inbox, source.uri, source.version, source.delivered_at))
        if mine is not None and mine.reported_at is None:   # outcome recorded or not: finish and report it
            return Claim("unreported" if mine.result else "duplicate", mine)
        if mine is not None and answered_if_same_file:
            return Claim("reported", mine)
        if original.status in APPLIED and self._latest_applied_content(original.partner_id) != original.sha256:
            return "reapply"
        return "duplicate"

    def _take_report(self, job: Job) -> bool:
        """Take over the report of ``job`` (committed, not reported) unless someone holds it: a
        lease not run out whose holder is not a gone process of this host. A job keeps its lease
        from its claim until it is reported (or its report failed: ``let_report_go``)."""
        raise NotImplementedError

    def let_report_go(self, job: Job) -> None:
        """Its report failed (results unwritable): whoever tries again may take it at once."""
        with self._transaction():       # type: ignore[attr-defined]
            self._exec(self._sql("UPDATE jobs SET lease_until = NULL WHERE id = ? AND reported_at IS NULL"), (job.id,))

    identity: str | None = None          # the catalog's id, read when the store was opened

    def _read_identity(self) -> None:
        self.identity = self._one("SELECT id FROM store_identity")

    def _check_identity(self) -> None:
        """Before an outcome is recorded: is this still the catalog the daemon opened? A
        catalog deleted, replaced or emptied under it must stop the applying, not take answers
        nobody will read (see ``StoreReplaced``)."""
        try:
            current = self._one("SELECT id FROM store_identity")
        except StoreError as exc:
            raise StoreReplaced(f"the catalog's identity cannot be read ({exc}): it was emptied or "
                                "replaced under the daemon; nothing is applied until it is restarted") from exc
        if current != self.identity:
            raise StoreReplaced(f"the catalog is not the one this daemon opened (identity {current} instead of "
                                f"{self.identity}): nothing is applied until it is restarted")

    def _latest_applied_content(self, partner_id: str) -> str | None:
        """The sha256 of the partner's latest applied delivery (in delivery order): the partner's
        truth. The same content again is a duplicate; any earlier content is applied again."""
        rows = self._exec(self._sql(
            "SELECT sha256 FROM jobs WHERE partner_id = ? AND status IN (?, ?)"
            " ORDER BY delivered_at DESC NULLS LAST, source_name DESC, created_at DESC LIMIT 1"),
            (partner_id, *sorted(APPLIED)))
        return rows[0][0] if rows else None

    def job(self, job_id: str) -> Job:
        from config.errors import JobNotFound
        found = self._job_row("id = ?", (job_id,))
        if found is None:
            raise JobNotFound(f"no job {job_id!r}")
        return found

    def jobs(self, *, status: JobStatus | None = None, partner_id: str | None = None,
             limit: int | None = None) -> list[Job]:
        where = ["1 = 1"]
        params: list[object] = []
        if status:
            where.append("status = ?")
            params.append(status)
        if partner_id:
            where.append("partner_id = ?")
            params.append(partner_id)
        sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [job_from_row(r) for r in self._exec(self._sql(sql), tuple(params))]

    def attempts(self, job_id: str) -> list[dict]:
        rows = self._exec(self._sql("SELECT attempt, started_at, finished_at, status, error FROM job_attempts"
                                    " WHERE job_id = ? ORDER BY attempt"), (job_id,))
        return [dict(zip(("attempt", "started_at", "finished_at", "status", "error"), r)) for r in rows]

    def spool_paths(self, statuses: Iterable[JobStatus]) -> list[str]:
        """The spooled copies jobs of these statuses still read: one column, not whole jobs."""
        statuses = tuple(statuses)
        marks = ", ".join("?" * len(statuses)) or "NULL"
        return [r[0] for r in self._exec(self._sql(
            f"SELECT spool_path FROM jobs WHERE status IN ({marks}) AND spool_path IS NOT NULL"), statuses)]

    def _mark_interrupted(self, ids: Iterable[str]) -> None:
        """The unfinished attempts of jobs queued again because their daemon is gone: they end
        ``interrupted`` (``jobs show``), not open for ever."""
        from config.status import ATTEMPT_INTERRUPTED
        now = utcnow()
        for job_id in ids:
            self._exec(self._sql("UPDATE job_attempts SET finished_at = ?, status = ?, error = ?"
                                 " WHERE job_id = ? AND finished_at IS NULL"),
                       (now, ATTEMPT_INTERRUPTED, "its daemon stopped (killed, or its lease ran out) before the "
                        "attempt finished; nothing of it was committed", job_id))

    def mark_reported(self, job_id: str, audit: AuditHead | None = None) -> None:
        """The job's answer is out; ``audit``: the audit record it was written as, the trail's
        new head (kept for the chain it was first written for: see ``audit_head``).

        Synced before the file leaves its inbox: a job whose mark a power loss took back after
        its archive would be reported again only if its very file came back, and would hold
        every later delivery of its content as "busy" until then."""
        now = utcnow()
        with self._transaction():       # type: ignore[attr-defined]
            self._exec(self._sql("UPDATE jobs SET reported_at = ? WHERE id = ?"), (now, job_id))
            if audit is not None:
                self._exec(self._sql(
                    "INSERT INTO audit_heads (folder, chain, seq, hash, at) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (folder) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, at = excluded.at"
                    " WHERE audit_heads.chain = excluded.chain AND audit_heads.seq < excluded.seq"),
                    (audit.folder, audit.chain, audit.seq, audit.hash, now))

    def audit_head(self, folder: str) -> AuditHead | None:
        """The head of ``folder``'s trail as reported jobs left it."""
        rows = self._exec(self._sql("SELECT folder, chain, seq, hash FROM audit_heads WHERE folder = ?"), (folder,))
        return AuditHead(*rows[0]) if rows else None

    def reset_audit_head(self, head: AuditHead) -> None:
        """An operator acknowledged the trail as it is now (``audit ack``): its head from here."""
        self._exec(self._sql(
            "INSERT INTO audit_heads (folder, chain, seq, hash, at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (folder) DO UPDATE SET chain = excluded.chain, seq = excluded.seq,"
            " hash = excluded.hash, at = excluded.at"), (head.folder, head.chain, head.seq, head.hash, utcnow()))

    def seen(self, *, inbox: str, uri: str, version: str, delivered_at: str | None) -> Job | None:
        """The job that took in this exact version (same place, same ETag, same delivery) and
        reported its final outcome, else None. Only for inboxes whose version changes with the
        content (S3): there it need not be fetched again; the same bytes uploaded again are a
        delivery of their own (LastModified), which the claim decides on. An mtime says nothing
        of the content: such files are read and hashed, and the claim decides."""
        return self._job_row("inbox = ? AND source_uri = ? AND source_version = ?"
                             " AND (delivered_at IS NULL OR delivered_at = ?)"
                             " AND status NOT IN (?, ?, ?, ?) AND reported_at IS NOT NULL"
                             " ORDER BY created_at DESC LIMIT 1",
                             (inbox, uri, version, delivered_at, JobStatus.QUEUED, JobStatus.RUNNING,
                              JobStatus.FAILED, JobStatus.ABANDONED))
