"""The webhook outbox: the answers partners are to be told of, kept in the store until delivered.

A job's answer is put in the outbox by the transaction that records it (``enqueue``, called from
a store's ``_record_outcome``), so an answer is never lost to a full queue, a restart or a
crash. Whoever delivers (``inbox_daemon.webhooks``, in any daemon on the store) takes what is due
with a lease (``take_due``), so two daemons do not send the same answer at once, and writes back
each attempt (``delivered``). The same SQL on every store, written with ``?`` and turned into
the driver's placeholders by ``LedgerReads._sql``; times are UTC ISO 8601 text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from storage.base import utc_in, utcnow

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


@dataclass(frozen=True)
class Delivery:
    """One answer to send: the outbox row, the manifest it carries and how often it was tried."""
    id: int
    job_id: str
    partner_id: str
    body: str
    attempts: int


class WebhookOutbox:
    """Mixed into a store that has ``_exec``, ``_sql`` and ``_transaction``."""

    def _exec(self, sql: str, params: tuple) -> list[tuple]:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        raise NotImplementedError

    def _enqueue_webhook(self, job_id: str, attempt: int, partner_id: str, result: dict) -> None:
        """Inside the transaction that records the job's answer."""
        now = utcnow()
        self._exec(self._sql(
            "INSERT INTO webhook_outbox (job_id, job_attempt, partner_id, body, status, next_at, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, job_attempt) DO NOTHING"),
            (job_id, attempt, partner_id, json.dumps(result, ensure_ascii=False, sort_keys=True), PENDING, now, now))

    def take_due(self, holder: str, *, lease: float, limit: int = 100) -> list[Delivery]:
        """Answers due now that nobody holds (no lease, or one run out), oldest first, leased to
        ``holder``. The outer conditions repeat the inner ones: a daemon that waited for
        another's update of the same rows sees them held and leaves them."""
        now = utcnow()
        due = "status = ? AND next_at <= ? AND (lease_until IS NULL OR lease_until < ?)"
        rows = self._exec(self._sql(
            f"UPDATE webhook_outbox SET holder = ?, lease_until = ? WHERE {due}"
            f" AND id IN (SELECT id FROM webhook_outbox WHERE {due} ORDER BY next_at, id LIMIT ?)"
            " RETURNING id, job_id, partner_id, body, attempts"),
            (holder, utc_in(lease), PENDING, now, now, PENDING, now, now, limit))
        return sorted((Delivery(*row) for row in rows), key=lambda d: d.id)

    def delivered(self, delivery: Delivery, *, http_status: int | None, error: str | None,
                  status: str, retry_in: float = 0.0) -> None:
        """One attempt's end: ``DELIVERED``, ``FAILED`` for good, or ``PENDING`` again in ``retry_in`` s."""
        now, attempt = utcnow(), delivery.attempts + 1
        with self._transaction():          # type: ignore[attr-defined]
            self._exec(self._sql(
                "INSERT INTO webhook_attempts (outbox_id, attempt, at, http_status, error) VALUES (?, ?, ?, ?, ?)"),
                (delivery.id, attempt, now, http_status, error))
            self._exec(self._sql(
                "UPDATE webhook_outbox SET attempts = ?, status = ?, next_at = ?, holder = NULL, lease_until = NULL,"
                " last_error = ?, finished_at = ? WHERE id = ?"),
                (attempt, status, utc_in(retry_in), error, None if status == PENDING else now, delivery.id))

    def release_webhooks(self, holder: str) -> None:
        """What ``holder`` took and did not send (a stop): due again for anyone, at once."""
        self._exec(self._sql("UPDATE webhook_outbox SET holder = NULL, lease_until = NULL"
                             " WHERE holder = ? AND status = ?"), (holder, PENDING))

    def webhook_deliveries(self, job_id: str) -> list[dict]:
        """Every answer of a job to its partner's webhook and every attempt of each (``jobs show``)."""
        out = []
        for oid, attempt, status, tries, last_error in self._exec(self._sql(
                "SELECT id, job_attempt, status, attempts, last_error FROM webhook_outbox WHERE job_id = ?"
                " ORDER BY id"), (job_id,)):
            attempts = [{"attempt": n, "at": at, "http_status": code, "error": err}
                        for n, at, code, err in self._exec(self._sql(
                            "SELECT attempt, at, http_status, error FROM webhook_attempts WHERE outbox_id = ?"
                            " ORDER BY attempt"), (oid,))]
            out.append({"job_attempt": attempt, "status": status, "attempts": tries, "last_error": last_error,
                        "tries": attempts})
        return out

    def webhook_counts(self) -> dict[str, int]:
        """Answers in the outbox by status (the health page and the benchmark)."""
        return dict(self._exec("SELECT status, count(*) FROM webhook_outbox GROUP BY status", ()))
