"""What the admin console reads from the ledger and the catalog, the same on every store.

Every read is bounded, whatever the size of the installation: jobs are paged by key (created
time, id) over an index, never by offset; activity and charts aggregate the narrow row-count
columns a job's outcome fills in (``rows_read``, ``rows_rejected``), not its manifest's JSON;
searches stop at ``limit`` matches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from config.status import APPLIED, JobStatus
from storage.base import JOB_COLUMNS, Job, job_from_row, sku_key

NAME_CHUNK = 25_000          # products a name search reads per query
NAME_SEARCH_BUDGET = 0.06    # seconds a name search reads for before it answers with what it found
SKU_END = "\U0010ffff"          # above every character: sku_key >= q AND sku_key < q + SKU_END is "starts with q"
PRODUCT_COLUMNS = ("sku", "name", "description", "price_cents", "currency", "stock", "active", "brand",
                   "category", "gtin", "url", "image_url", "attributes", "updated_at", "source_job_id", "version")


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a page of the jobs list shows; None: any."""
    partner: str | None = None
    inbox: str | None = None
    status: str | None = None
    since: str | None = None        # created at or after (ISO 8601, as the ledger writes times)
    until: str | None = None        # created before


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    older: tuple[str, str] | None      # the key to pass as ``after`` for the next (older) page
    newer: tuple[str, str] | None      # the key to pass as ``before`` for the previous page


@dataclass(frozen=True)
class Activity:
    """One inbox's jobs and rows over the last hour and day, and its last success."""
    jobs_hour: int = 0
    jobs_day: int = 0
    rows_hour: int = 0
    rows_day: int = 0
    waiting: int = 0                 # queued or running now
    last_success: str | None = None


@dataclass(frozen=True)
class NameSearch:
    products: list[dict]
    resume_after: str | None        # the key to go on from (``after``); None: the whole catalog was read


@dataclass(frozen=True)
class PartnerDay:
    day: str
    jobs: int
    duplicates: int
    rows_read: int
    rows_rejected: int

    @property
    def reject_rate(self) -> float:
        return self.rows_rejected / self.rows_read if self.rows_read else 0.0

    @property
    def duplicate_rate(self) -> float:
        return self.duplicates / self.jobs if self.jobs else 0.0


class ConsoleReads:
    """The console's pages' queries; a store provides ``_q`` (``?`` placeholders) and ``LIKE``,
    its case-insensitive substring match."""

    LIKE = "LIKE"

    def _q(self, sql: str, params: tuple = ()) -> list[tuple]:
        raise NotImplementedError

    # -- jobs -------------------------------------------------------------------------------------
    def job_page(self, where: JobFilter, *, after: tuple[str, str] | None = None,
                 before: tuple[str, str] | None = None, limit: int = 50) -> JobPage:
        """Newest first, ``limit`` jobs older than ``after`` (or newer than ``before``, or the
        newest). Keyset paging over (created_at, id): a page costs the same at the end of a
        million jobs as at the start, and jobs arriving meanwhile do not shift it."""
        clauses, params = ["1 = 1"], []
        for column, value in (("partner_id", where.partner), ("inbox", where.inbox), ("status", where.status)):
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        if where.since:
            clauses.append("created_at >= ?")
            params.append(where.since)
        if where.until:
            clauses.append("created_at < ?")
            params.append(where.until)
        if before is not None:
            clauses.append("(created_at, id) > (?, ?)")
            params.extend(before)
            order = "ASC"
        else:
            if after is not None:
                clauses.append("(created_at, id) < (?, ?)")
                params.extend(after)
            order = "DESC"
        rows = self._q(f"SELECT {JOB_COLUMNS} FROM jobs WHERE {' AND '.join(clauses)}"
                       f" ORDER BY created_at {order}, id {order} LIMIT {int(limit) + 1}", tuple(params))
        more = len(rows) > limit
        jobs = [job_from_row(r) for r in rows[:limit]]
        if before is not None:
            jobs.reverse()
            older = _key(jobs[-1]) if jobs else None
            newer = _key(jobs[0]) if more else None
        else:
            older = _key(jobs[-1]) if more else None
            newer = _key(jobs[0]) if after is not None and jobs else None
        return JobPage(jobs, older, newer)

    # -- the overview -----------------------------------------------------------------------------
    def activity(self, inboxes: list[str], hour_ago: str, day_ago: str) -> dict[str, Activity]:
        """Per inbox id: jobs and rows read in the last hour and day, jobs waiting, last success."""
        counts: dict[str, dict[str, Any]] = {i: {} for i in inboxes}
        for inbox, jobs_hour, jobs_day, rows_hour, rows_day in self._q(
                "SELECT inbox, SUM(CASE WHEN created_at >= ? THEN 1 ELSE 0 END), COUNT(*),"
                " SUM(CASE WHEN created_at >= ? THEN rows_read ELSE 0 END), SUM(rows_read)"
                " FROM jobs WHERE created_at >= ? GROUP BY inbox", (hour_ago, hour_ago, day_ago)):
            counts.setdefault(inbox, {}).update(jobs_hour=int(jobs_hour or 0), jobs_day=int(jobs_day or 0),
                                                rows_hour=int(rows_hour or 0), rows_day=int(rows_day or 0))
        for inbox, waiting in self._q("SELECT inbox, COUNT(*) FROM jobs WHERE status IN (?, ?) GROUP BY inbox",
                                      (JobStatus.QUEUED, JobStatus.RUNNING)):
            counts.setdefault(inbox, {})["waiting"] = int(waiting)
        for inbox in counts:
            # one status at a time: MAX over (inbox, status, finished_at) is one index probe each
            latest = [self._q("SELECT MAX(finished_at) FROM jobs WHERE inbox = ? AND status = ?", (inbox, status))[0][0]
                      for status in sorted(APPLIED)]
            counts[inbox]["last_success"] = max((t for t in latest if t), default=None)
        return {inbox: Activity(**values) for inbox, values in counts.items()}

    # -- partners ---------------------------------------------------------------------------------
    def partner_days(self, partner: str, since: str) -> list[PartnerDay]:
        """Per day since ``since`` (UTC): jobs, duplicates, rows read and rejected."""
        return [PartnerDay(day, int(jobs), int(dups or 0), int(read or 0), int(rejected or 0))
                for day, jobs, dups, read, rejected in self._q(
                    "SELECT substr(created_at, 1, 10) AS day, COUNT(*),"
                    " SUM(CASE WHEN status = ? THEN 1 ELSE 0 END), SUM(rows_read), SUM(rows_rejected)"
                    " FROM jobs WHERE partner_id = ? AND created_at >= ? GROUP BY substr(created_at, 1, 10)"
                    " ORDER BY day", (JobStatus.DUPLICATE, partner, since))]

    def catalog_size(self, partner: str) -> int:
        """The partner's products, active or not: the count every merge keeps, not a count of rows."""
        return int(self._q("SELECT coalesce(max(products), 0) FROM catalog_versions WHERE partner_id = ?",
                           (partner,))[0][0])

    # -- the catalog ------------------------------------------------------------------------------
    def products_by_sku(self, partner: str, text: str, *, limit: int = 50) -> list[dict]:
        """Products whose SKU starts with ``text``, in any case: a range of the key index."""
        key = sku_key(text)
        rows = self._q(f"SELECT {', '.join(PRODUCT_COLUMNS)} FROM products WHERE partner_id = ? AND sku_key >= ?"
                       f" AND sku_key < ? ORDER BY sku_key LIMIT {int(limit)}", (partner, key, key + SKU_END))
        return [dict(zip(PRODUCT_COLUMNS, r)) for r in rows]

    def products_by_name(self, partner: str, text: str, *, after: str = "", limit: int = 50,
                         budget: float = NAME_SEARCH_BUDGET, chunk: int = NAME_CHUNK) -> NameSearch:
        """Products whose name holds ``text`` (any case), in SKU order from after the key
        ``after``. No index serves a substring, so the catalog is read a slice of ``NAME_CHUNK``
        keys (``chunk``) at a time, until ``limit`` matches or ``budget`` seconds: a request costs about the
        same whatever the catalog's size, and the answer says where it stopped, so the next
        request goes on from there and nothing is skipped."""
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        columns = ", ".join(PRODUCT_COLUMNS)
        found: list[dict] = []
        deadline = time.monotonic() + budget
        while True:
            upper = self._q(f"SELECT sku_key FROM products WHERE partner_id = ? AND sku_key > ? ORDER BY sku_key"
                            f" LIMIT 1 OFFSET {int(chunk) - 1}", (partner, after))
            bound = upper[0][0] if upper else None
            rows = self._q(f"SELECT sku_key, {columns} FROM products WHERE partner_id = ? AND sku_key > ?"
                           + (" AND sku_key <= ?" if bound is not None else "")
                           + f" AND name {self.LIKE} ? ESCAPE '\\' ORDER BY sku_key LIMIT {int(limit - len(found))}",
                           (partner, after, *([bound] if bound is not None else []), pattern))
            found += [dict(zip(PRODUCT_COLUMNS, r[1:])) for r in rows]
            if len(found) >= limit:
                return NameSearch(found, rows[-1][0])
            if bound is None:
                return NameSearch(found, None)
            after = bound
            if time.monotonic() >= deadline:
                return NameSearch(found, after)

    def product(self, partner: str, sku: str) -> dict | None:
        """One product's current row, by its SKU in any case."""
        rows = self._q(f"SELECT {', '.join(PRODUCT_COLUMNS)} FROM products WHERE partner_id = ? AND sku_key = ?",
                       (partner, sku_key(sku)))
        return dict(zip(PRODUCT_COLUMNS, rows[0])) if rows else None


def _key(job: Job) -> tuple[str, str]:
    return job.created_at, job.id
