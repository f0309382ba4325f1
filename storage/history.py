"""What each job changed: change sets, product history, revert, export, and the price-shock hold.

Every merge is one *version* of its partner's catalog (``catalog_versions.version``); the job
records the version it committed as (``jobs.catalog_version``). In the merge's own transaction:

- an **insert** costs one integer: the product's ``created_version`` (a fresh catalog of a
  million rows writes no second copy of itself);
- an **update** writes a ``changes`` row with the columns it changed, before and after, as JSON;
- a **deactivation** writes a ``changes`` row ``{"active": 1} → {"active": 0}``;
- every changed product carries the version in ``products.version``: ``catalog export --since``
  reads the catalog itself, so an export cursor stays good however much history was pruned.

An unchanged row writes nothing (the upsert skips it, and so does its change record).

A **revert** is a job of its own: it restores the before-images of the products the job changed
(an insert's before-image is "not active"), unless a later job changed them since (conflicts,
left alone; ``force`` restores them too, overwriting what the later jobs set in those columns).
Its own changes are recorded like any job's, so a revert can be reverted.

The SQL is written once, with ``?`` placeholders, for both stores; ``Json`` is what differs (JSON
text in SQLite, ``jsonb`` in PostgreSQL).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa

from config.canonical import MERGED_COLUMNS
from config.errors import JobNotFound, PriceShockHeld
from config.status import APPLIED, JobStatus
from storage.base import Columns, Job, Outcome, ledger_time, sku_key, utc_in, utcnow

UPDATED, DEACTIVATED, REACTIVATED, INSERTED = "updated", "deactivated", "reactivated", "inserted"
REVERT_MODE, FORCED_REVERT_MODE = "revert", "revert-force"
# the columns a change records, a diff shows and a revert restores
HISTORY_COLUMNS = MERGED_COLUMNS
_INTEGERS = ("price_cents", "stock")
_NO_KEY = "$.\"~\""            # a JSON path no object of ours has: json_remove leaves it be
PAGE = 5_000                  # rows read at a time: diff, history and export stay in flat memory
# a product as ``catalog export`` writes it
EXPORT_SCHEMA = pa.schema([
    ("sku", pa.string()), ("name", pa.string()), ("description", pa.string()), ("price_cents", pa.int64()),
    ("currency", pa.string()), ("stock", pa.int64()), ("active", pa.bool_()), ("brand", pa.string()),
    ("category", pa.string()), ("gtin", pa.string()), ("url", pa.string()), ("image_url", pa.string()),
    ("attributes", pa.string()), ("updated_at", pa.string()), ("source_job_id", pa.string()), ("version", pa.int64()),
])


@dataclass(frozen=True)
class PriceShockRule:
    """A file is held (not applied) when more than ``max_ratio`` of the products it updates, and
    at least ``min_products`` of them, change price by ``factor`` or more, either way."""
    factor: float
    max_ratio: float
    min_products: int


@dataclass(frozen=True)
class RevertCounts:
    updated: int
    deactivated: int
    reactivated: int
    forced: int                         # conflicts restored all the same (``force``)
    conflicts: tuple[tuple[str, str], ...]    # (sku, job that changed it since), left alone


@dataclass(frozen=True)
class RevertPreview:
    """What a revert would work on (products not changed since the job), read without writing."""
    restore: int                # updated by the job: their columns get the values before it
    deactivate: int             # inserted by it
    reactivate: int             # deactivated by it
    changed_since: int          # changed again by a later job: left alone unless forced
    conflicts: list[tuple]      # the first of those: (sku, change, the job that changed it since)


class _RolledBack(Exception):
    """A dry run's way out of its transaction, with what it would have done."""

    def __init__(self, counts: RevertCounts):
        super().__init__("dry run")
        self.counts = counts


class Json:
    """The SQL of the JSON a change is recorded in: SQLite's JSON1 over text."""

    inserted = "'{\"active\":0}'"       # an insert's before-image: the product was not active

    def pick(self, values: dict[str, str], keep: dict[str, str]) -> str:
        """A JSON object of ``values`` (column → SQL expression), only those whose ``keep``
        condition holds."""
        whole = "json_object(" + ", ".join(f"'{c}', {v}" for c, v in values.items()) + ")"
        return f"json_remove({whole}, " + ", ".join(
            f"CASE WHEN {keep[c]} THEN '{_NO_KEY}' ELSE '$.{c}' END" for c in values) + ")"

    def has(self, doc: str, column: str) -> str:
        return f"json_type({doc}, '$.{column}') IS NOT NULL"

    def get(self, doc: str, column: str) -> str:
        return f"json_extract({doc}, '$.{column}')"

    def text(self, doc: str) -> str:
        """The document as JSON text (for the reads)."""
        return doc

    rowid = "rowid"

    def some_rows(self, where: str, limit: int) -> str:
        return f"rowid IN (SELECT rowid FROM changes WHERE {where} LIMIT {limit})"


class Jsonb(Json):
    """PostgreSQL's ``jsonb``."""

    inserted = "'{\"active\": false}'::jsonb"

    def pick(self, values: dict[str, str], keep: dict[str, str]) -> str:
        whole = "jsonb_build_object(" + ", ".join(f"'{c}', {v}" for c, v in values.items()) + ")"
        return f"({whole} - array_remove(ARRAY[" + ", ".join(
            f"CASE WHEN {keep[c]} THEN NULL ELSE '{c}' END" for c in values) + "]::text[], NULL))"

    def has(self, doc: str, column: str) -> str:
        return f"jsonb_exists({doc}, '{column}')"

    def get(self, doc: str, column: str) -> str:
        cast = "bigint" if column in _INTEGERS else "boolean" if column == "active" else "text"
        return f"({doc} ->> '{column}')::{cast}"

    def text(self, doc: str) -> str:
        return f"{doc}::text"

    def some_rows(self, where: str, limit: int) -> str:
        return f"ctid = ANY(ARRAY(SELECT ctid FROM changes WHERE {where} LIMIT {limit}))"


# -- the merge's records ---------------------------------------------------------------------------

def updated_rows(last: str, columns: Columns, null_safe_not_equal: str, guard: str) -> str:
    """FROM … WHERE of the products a merge updates: the last staged row ``l`` of each key
    joined with its product (``products``), where the row changes it (parameter: partner)."""
    return (f" FROM {last} JOIN products ON products.partner_id = ? AND products.sku_key = l.sku_key"
            f" WHERE ({columns.differs(null_safe_not_equal, 'l')}){guard}")


def record_updates_sql(js: Json, rows: str, columns: Columns, null_safe_not_equal: str) -> str:
    """INSERT of a change record per product the merge updates (``rows``: ``updated_rows``),
    before the upsert writes them. Parameters: partner, version, then those of ``rows``."""
    changed = {c: f"products.{c} {null_safe_not_equal} {columns.value(c, 'l')}" for c in columns.written}
    before = js.pick({c: f"products.{c}" for c in columns.written}, changed)
    after = js.pick({c: columns.value(c, "l") for c in columns.written}, changed)
    return (f"INSERT INTO changes (partner_id, version, sku_key, kind, before, after)"
            f" SELECT ?, ?, l.sku_key, '{UPDATED}', {before}, {after}{rows}")


def record_deactivations_sql(js: Json, true: str, false: str, absent: str, guard: str) -> str:
    """INSERT of a change record per product a snapshot deactivates (``absent``: the condition on
    ``products``). Parameters: partner, version, partner, then the guard's."""
    return (f"INSERT INTO changes (partner_id, version, sku_key, kind, before, after)"
            f" SELECT ?, ?, sku_key, '{DEACTIVATED}', {js.pick({'active': true}, {'active': 'true'})},"
            f" {js.pick({'active': false}, {'active': 'true'})} FROM products"
            f" WHERE partner_id = ? AND active = {true} AND {absent}{guard}")


def price_shock_sql(rows: str, factor: float) -> str:
    """(products updated, of them price-shocked) over ``rows`` (``updated_rows``)."""
    return (f"SELECT count(*), coalesce(sum(CASE WHEN {_shocked(factor)} THEN 1 ELSE 0 END), 0){rows}")


def price_shock_examples_sql(rows: str, factor: float) -> str:
    return f"SELECT products.sku, products.price_cents, l.price_cents{rows} AND {_shocked(factor)} LIMIT 5"


def check_price_shock(store: HistoryReads, rows: str, params: tuple, rule: PriceShockRule) -> None:
    """Raises ``PriceShockHeld`` when the products ``rows`` updates break ``rule``."""
    updated, shocked = store._q(price_shock_sql(rows, rule.factor), params)[0]
    if shocked and shocked >= rule.min_products and shocked > rule.max_ratio * updated:
        examples = tuple({"sku": sku, "price_cents_before": before, "price_cents_after": after}
                         for sku, before, after in store._q(price_shock_examples_sql(rows, rule.factor), params))
        raise PriceShockHeld(updated=updated, shocked=shocked, examples=examples, factor=rule.factor,
                             max_ratio=rule.max_ratio)


def _shocked(factor: float) -> str:
    f = float(factor)
    return ("(products.price_cents > 0 AND l.price_cents > 0 AND (l.price_cents >= products.price_cents * "
            f"{f!r} OR products.price_cents >= l.price_cents * {f!r}))")


# the job commits as this version of its partner's catalog. Parameters: version, job
RECORD_VERSION = "UPDATE jobs SET catalog_version = ? WHERE id = ?"


def revert_identity(target: Job, force: bool) -> str:
    """The "content" of a revert job: one per job reverted (and per force), so it runs once;
    prefixed, so that no file's sha256 can ever be it."""
    return "revert:" + hashlib.sha256(f"revert {target.id}{' force' if force else ''}".encode()).hexdigest()


# -- reads and the revert, the same on every store -------------------------------------------------

class HistoryReads:
    """Diff, history, export, revert, approve and pruning over ``changes``; a store provides
    ``_exec``, ``_one``, ``_sql``, ``_transaction``, ``job`` and ``JSON``, ``TRUE``/``FALSE``."""

    JSON: Json = Json()
    TRUE, FALSE = "1", "0"
    HASHED = True               # products keep a row hash (SQLite): a restored row's is cleared

    def _exec(self, sql: str, params: tuple) -> list[tuple]:
        raise NotImplementedError

    def _one(self, sql: str, params: tuple = ()) -> Any:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        raise NotImplementedError

    def _q(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self._exec(self._sql(sql), params)

    def job(self, job_id: str) -> Job:
        raise NotImplementedError

    def _next_version(self, partner_id: str) -> int:
        """The partner's catalog moves on by one: the version a write commits as."""
        raise NotImplementedError

    # -- which version a job is ------------------------------------------------------------
    def change_set_of(self, job: Job) -> int:
        """The version whose changes are ``job``'s, or ``JobNotFound`` saying why there are none."""
        if job.status not in APPLIED:
            raise JobNotFound(f"job {job.id} is {job.status}: it changed nothing")
        if job.catalog_version is None:
            raise JobNotFound(f"job {job.id} was applied before change sets were kept: nothing to show or revert")
        pruned = self._one(self._sql("SELECT pruned_through FROM catalog_versions WHERE partner_id = ?"),
                           (job.partner_id,)) or 0
        if job.catalog_version <= pruned:
            raise JobNotFound(f"the change set of job {job.id} ({job.finished_at}) was pruned: history_days "
                              "keeps change sets that long")
        return job.catalog_version

    def _jobs_at(self, partner_id: str, versions: set[int]) -> dict[int, tuple]:
        """version → (job id, file name, finished at, mode, reverts)."""
        if not versions:
            return {}
        marks = ", ".join("?" * len(versions))
        rows = self._q(f"SELECT catalog_version, id, source_name, finished_at, mode, reverts FROM jobs"
                       f" WHERE partner_id = ? AND catalog_version IN ({marks})", (partner_id, *sorted(versions)))
        return {r[0]: r[1:] for r in rows}

    # -- diff -----------------------------------------------------------------------------------
    def job_changes(self, job: Job, *, page: int = PAGE) -> Iterator[dict]:
        """What ``job`` changed, product by product in key order: ``{sku, change, before, after}``
        (only the columns it changed; an insert's ``after`` is the row as it was inserted).
        ``page``: rows read at a time (a reader that wants the first few asks for few)."""
        version = self.change_set_of(job)         # now: a job without one is refused before any output
        return itertools.chain(self._changed(job.partner_id, version, page),
                               self._inserted(job.partner_id, version, page))

    def _changed(self, partner: str, version: int, page: int) -> Iterator[dict]:
        js, last = self.JSON, ""
        while True:
            rows = self._q(f"SELECT c.sku_key, p.sku, c.kind, {js.text('c.before')}, {js.text('c.after')}"
                           " FROM changes c JOIN products p ON p.partner_id = c.partner_id AND p.sku_key = c.sku_key"
                           " WHERE c.partner_id = ? AND c.version = ? AND c.sku_key > ? ORDER BY c.sku_key"
                           f" LIMIT {int(page)}", (partner, version, last))
            for _, sku, kind, before, after in rows:
                yield {"sku": sku, "change": kind, "before": _values(before), "after": _values(after)}
            if len(rows) < page:
                return
            last = rows[-1][0]

    def _inserted(self, partner: str, version: int, page: int) -> Iterator[dict]:
        """Products ``version`` inserted, as it inserted them: the row now, with the columns a
        later job changed put back as that job found them."""
        columns = ", ".join(HISTORY_COLUMNS)
        last = ""
        while True:
            rows = self._q(f"SELECT sku_key, sku, version, {columns} FROM products WHERE partner_id = ?"
                           f" AND created_version = ? AND sku_key > ? ORDER BY sku_key LIMIT {int(page)}",
                           (partner, version, last))
            later = self._later_befores(partner, [r[0] for r in rows if r[2] > version], version)
            for key, sku, _, *values in rows:
                row = _normalized(dict(zip(HISTORY_COLUMNS, values)))
                for before in later.get(key, ()):
                    row.update(before)
                yield {"sku": sku, "change": INSERTED, "before": {},
                       "after": {c: v for c, v in row.items() if v is not None}}
            if len(rows) < page:
                return
            last = rows[-1][0]

    def _later_befores(self, partner: str, keys: list[str], version: int) -> dict[str, list[dict]]:
        """Per key, the before-images of its changes after ``version``, newest first: laid over the
        row as it is now, one after the other, they give the row as ``version`` left it."""
        found: dict[str, list[dict]] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ", ".join("?" * len(chunk))
            for key, before in self._q(f"SELECT sku_key, {self.JSON.text('before')} FROM changes WHERE partner_id = ?"
                                       f" AND version > ? AND sku_key IN ({marks}) ORDER BY sku_key, version DESC",
                                       (partner, version, *chunk)):
                found.setdefault(key, []).append(_values(before))
        return found

    # -- history --------------------------------------------------------------------------------
    def product_history(self, partner: str, sku: str) -> list[dict]:
        """Every change to one product, newest first: ``{version, job, file, at, change, before,
        after}``; the oldest is its insert (when change sets were kept by then)."""
        key = sku_key(sku)
        product = self._q(f"SELECT created_version, {', '.join(HISTORY_COLUMNS)} FROM products"
                          " WHERE partner_id = ? AND sku_key = ?", (partner, key))
        if not product:
            raise JobNotFound(f"partner {partner} has no product {sku!r}")
        created, *values = product[0]
        pruned = self._one(self._sql("SELECT pruned_through FROM catalog_versions WHERE partner_id = ?"),
                           (partner,)) or 0
        js = self.JSON
        changes = self._q(f"SELECT version, kind, {js.text('before')}, {js.text('after')} FROM changes"
                          " WHERE partner_id = ? AND sku_key = ? ORDER BY version DESC", (partner, key))
        events = [{"version": v, "change": kind, "before": _values(b), "after": _values(a)}
                  for v, kind, b, a in changes]
        if created:
            # the row as inserted: the row now, each change's before laid over it, newest first;
            # unknown once changes between were pruned
            row = _normalized(dict(zip(HISTORY_COLUMNS, values)))
            for event in events:
                row.update(event["before"])
            events.append({"version": created, "change": INSERTED, "before": {},
                           "after": {} if created <= pruned else {c: v for c, v in row.items() if v is not None}})
        jobs = self._jobs_at(partner, {e["version"] for e in events})
        for event in events:
            job_id, name, at, mode, reverts = jobs.get(event["version"], (None, None, None, None, None))
            event.update(job=job_id, file=name, at=at)
            if reverts:
                event["reverts"] = reverts
        return events

    # -- export ---------------------------------------------------------------------------------
    def since_version(self, partner: str, since: str) -> int:
        """The version an export cursor names: a job id (what it committed as), or a time (the
        last version committed by then)."""
        row = self._q("SELECT catalog_version, partner_id FROM jobs WHERE id = ?", (since,))
        if row:
            if row[0][1] != partner:
                raise JobNotFound(f"job {since} is partner {row[0][1]}'s, not {partner}'s")
            if row[0][0] is None:
                raise JobNotFound(f"job {since} changed no catalog: give the cursor an export printed")
            return row[0][0]
        try:
            when = datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError:
            raise JobNotFound(f"--since {since!r} is neither a job id nor a time (2026-12-01T00:00:00Z)") from None
        at = ledger_time(when)
        # before any job: every product, those of a catalog older than change sets (version 0) too
        return self._one(self._sql("SELECT coalesce(max(catalog_version), -1) FROM jobs WHERE partner_id = ?"
                                   " AND finished_at <= ?"), (partner, at))

    def cursor(self, partner: str, version: int) -> str | None:
        """The job id that stands for ``version`` as the next export's ``--since``."""
        return self._one(self._sql("SELECT id FROM jobs WHERE partner_id = ? AND catalog_version = ?"),
                         (partner, version))

    # -- revert ---------------------------------------------------------------------------------
    def revert_plan(self, target: Job) -> list[tuple[str, str, str]]:
        """(sku, change, job that changed it since) of the products the revert of ``target``
        would find changed again: its conflicts."""
        version = self.change_set_of(target)
        return [tuple(r) for r in self._q(
            f"SELECT p.sku, t.kind, p.source_job_id FROM ({self._targets()}) t JOIN products p"
            f" ON p.partner_id = ? AND p.sku_key = t.sku_key WHERE {self._changed_since()} ORDER BY p.sku_key",
            (*self._target_params(target.partner_id, version), target.partner_id, version))]

    def _now_values(self) -> str:
        """The product's (``p``) values now, in the columns the change's before-image (``t``) holds."""
        js = self.JSON
        return js.pick({c: f"p.{c}" for c in HISTORY_COLUMNS}, {c: js.has("t.before", c) for c in HISTORY_COLUMNS})

    def _changed_since(self) -> str:
        """A conflict (one ``?``: the target's version): a product that moved on since the job
        changed it and does not hold the job's before-image already. One a first revert
        restored, or a later job set back, is no conflict: nothing of it is to restore."""
        return f"p.version <> ? AND {self._now_values()} <> t.before"

    def revert_preview(self, target: Job, *, shown: int = 20) -> RevertPreview:
        """Read only, for a confirmation page: what a revert of ``target`` would work on, and the
        first ``shown`` products changed again since (left alone unless forced)."""
        version = self.change_set_of(target)
        partner = target.partner_id
        join = (f" FROM ({self._targets()}) t JOIN products p ON p.partner_id = ? AND p.sku_key = t.sku_key")
        params = (*self._target_params(partner, version), partner)
        counts: dict[str, int] = {}
        later = 0
        for kind, unchanged, changed in self._q(
                f"SELECT t.kind, SUM(CASE WHEN p.version = ? THEN 1 ELSE 0 END),"
                f" SUM(CASE WHEN {self._changed_since()} THEN 1 ELSE 0 END){join} GROUP BY t.kind",
                (version, version, *params)):
            counts[kind] = int(unchanged or 0)
            later += int(changed or 0)
        conflicts = [tuple(r) for r in self._q(f"SELECT p.sku, t.kind, p.source_job_id{join} WHERE {self._changed_since()}"
                                               f" ORDER BY p.sku_key LIMIT {int(shown)}", (*params, version))]
        return RevertPreview(restore=sum(n for k, n in counts.items() if k not in (INSERTED, DEACTIVATED)),
                             deactivate=counts.get(INSERTED, 0), reactivate=counts.get(DEACTIVATED, 0),
                             changed_since=later, conflicts=conflicts)

    def _targets(self) -> str:
        """What a version changed: (sku_key, kind, before) of its updates and deactivations, and
        its inserts, whose before-image is "not active"."""
        return (f"SELECT sku_key, kind, before FROM changes WHERE partner_id = ? AND version = ?"
                f" UNION ALL SELECT sku_key, '{INSERTED}', {self.JSON.inserted} FROM products"
                " WHERE partner_id = ? AND created_version = ?")

    @staticmethod
    def _target_params(partner: str, version: int) -> tuple:
        return (partner, version, partner, version)

    def revert(self, job: Job | None, target: Job, *, force: bool,
               outcome: Callable[[RevertCounts], Outcome] | None = None) -> RevertCounts:
        """Restore what ``target`` changed, in one transaction with ``job``'s outcome (made by
        ``outcome`` from the counts). ``job`` None: a dry run, everything done and rolled back."""
        try:
            with self._transaction():
                counts = self._apply_revert(job.id if job else "dry-run", target, force=force, now=utcnow())
                if job is None or outcome is None:
                    raise _RolledBack(counts)
                self._record_outcome(job, outcome(counts))
        except _RolledBack as dry:
            return dry.counts
        return counts

    def _record_outcome(self, job: Job, outcome: Outcome) -> None:
        raise NotImplementedError

    def _apply_revert(self, job_id: str, target: Job, *, force: bool, now: str) -> RevertCounts:
        """Inside the revert job's transaction: restore what ``target`` changed, record the
        revert's own changes, move the partner's catalog to a new version."""
        partner, js = target.partner_id, self.JSON
        new = self._next_version(partner)       # first: the partner's writers (merges, prunes) wait now
        old = self.change_set_of(target)
        self.check_not_reverted(target, force=force, but=job_id)
        conflicts = self.revert_plan(target)
        only = "" if force else " AND p.version = ?"
        only_params = () if force else (old,)
        kind = (f"CASE t.kind WHEN '{INSERTED}' THEN '{DEACTIVATED}' WHEN '{DEACTIVATED}' THEN '{REACTIVATED}'"
                f" ELSE '{UPDATED}' END")
        now_values = self._now_values()
        self._q(f"INSERT INTO changes (partner_id, version, sku_key, kind, before, after)"
                f" SELECT ?, ?, t.sku_key, {kind}, {now_values}, t.before FROM ({self._targets()}) t"
                f" JOIN products p ON p.partner_id = ? AND p.sku_key = t.sku_key"
                f" WHERE {now_values} <> t.before{only}",
                (partner, new, *self._target_params(partner, old), partner, *only_params))
        sets = ", ".join(f"{c} = CASE WHEN {js.has('t.before', c)} THEN {js.get('t.before', c)} ELSE products.{c} END"
                         for c in HISTORY_COLUMNS)
        self._q(f"UPDATE products SET {sets},{' row_hash = NULL, record_hash = NULL,' if self.HASHED else ''} version = ?,"
                f" source_job_id = ?, updated_at = ? FROM ({self._targets()}) t"
                " WHERE products.partner_id = ? AND products.sku_key = t.sku_key AND products.sku_key IN"
                " (SELECT sku_key FROM changes WHERE partner_id = ? AND version = ?)",
                (new, job_id, now, *self._target_params(partner, old), partner, partner, new))
        self._q(RECORD_VERSION, (new, job_id))
        counts = dict(self._q("SELECT kind, count(*) FROM changes WHERE partner_id = ? AND version = ? GROUP BY kind",
                              (partner, new)))
        return RevertCounts(updated=counts.get(UPDATED, 0), deactivated=counts.get(DEACTIVATED, 0),
                            reactivated=counts.get(REACTIVATED, 0), forced=len(conflicts) if force else 0,
                            conflicts=() if force else tuple((sku, by) for sku, _, by in conflicts))

    def check_not_reverted(self, target: Job, *, force: bool, but: str | None = None) -> None:
        """``JobNotFound`` when a revert of ``target`` (other than ``but``) went through already.
        A forced one may follow a revert that was not: it restores what that one left as
        conflicts (the rest it finds restored already)."""
        rows = self._q(f"SELECT id, mode FROM jobs WHERE reverts = ? AND id <> ? AND status IN"
                       f" ({', '.join('?' * len(APPLIED))}) ORDER BY created_at DESC", (target.id, but or "", *sorted(APPLIED)))
        done = [job_id for job_id, mode in rows if not force or mode == FORCED_REVERT_MODE]
        if done:
            raise JobNotFound(f"job {target.id} was reverted by job {done[0]} already (jobs revert {done[0]} "
                              "undoes that revert)")

    # -- the hold -------------------------------------------------------------------------------
    def approve(self, job_id: str, by: str) -> Job:
        """A held file is released: queued to run again, its price check passed by ``by``."""
        rows = self._q("UPDATE jobs SET status = ?, approved_by = ?, lease_until = NULL WHERE id = ? AND status = ?"
                       " RETURNING id", (JobStatus.QUEUED, by, job_id, JobStatus.HELD))
        if not rows:
            raise JobNotFound(f"job {job_id} is {self.job(job_id).status}: only held jobs can be approved")
        return self.job(job_id)

    # -- retention ------------------------------------------------------------------------------
    def prune_history(self, days: float, *, batch: int = 5_000, max_batches: int | None = None) -> int:
        """Change sets of jobs finished more than ``days`` ago are deleted, ``batch`` rows per
        transaction (each holds the write lock only that long), at most ``max_batches`` of them
        per partner (the rest at the next call). Returns the rows deleted."""
        cutoff = utc_in(-days * 86_400)
        deleted = 0
        for partner, through in self._q("SELECT partner_id, max(catalog_version) FROM jobs WHERE finished_at < ?"
                                        " AND catalog_version IS NOT NULL GROUP BY partner_id", (cutoff,)):
            with self._transaction():
                self._q("UPDATE catalog_versions SET pruned_through = ? WHERE partner_id = ? AND pruned_through < ?",
                        (through, partner, through))
            batches = 0
            while True:
                with self._transaction():
                    where = self.JSON.some_rows(self._sql("partner_id = ? AND version <= ?"), batch)
                    rows = self._q(f"DELETE FROM changes WHERE {where} RETURNING 1", (partner, through))
                deleted += len(rows)
                batches += 1
                if len(rows) < batch or (max_batches is not None and batches >= max_batches):
                    break           # the rest of this partner's at the next call; the next partner now
        return deleted

    def _transaction(self):
        raise NotImplementedError


def _values(doc: Any) -> dict:
    """A change's JSON (text, or what the driver made of ``jsonb``) as a dict of plain values."""
    values = json.loads(doc) if isinstance(doc, str) else dict(doc)
    return _normalized(values)


def _normalized(values: dict) -> dict:
    """``active`` as a boolean on every store (SQLite keeps 1/0)."""
    if values.get("active") is not None:
        values["active"] = bool(values["active"])
    return values
