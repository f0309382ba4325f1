"""One drop's journey, from the inbox to its answer, in one place:

    claim the file → spool (fetch + sha256) → pipeline (ledger claim … commit … report)
        → answer: the partner's copy in results/, the archive, the webhook → a verdict

``Journey.run(item)`` takes one work item through those steps and returns a ``Verdict``; it
never calls back into the scheduler. The daemon acts on the verdict alone: it schedules a run
again (``RetryIn``), lets the inbox offer the file again later (``OfferAgainIn``), notes a fault
for /healthz (``Fault``) and counts what is ``Done``. What each kind of trouble means for a drop
is decided here: a Transient error is another attempt after a backoff, then the inbox's next
look; a job that ``failed`` is run again up to ``max_attempts``, then quarantined. A file over its
partner's ``max_file_bytes`` is never copied: it is a rejected job at once (``_refuse``).

Several daemons may share a store and remote inboxes: a remote file is claimed in the store
before it is downloaded (another daemon's claim: offered again once that claim could have
expired), and released (``release``) once the daemon has acted on the verdict, whatever became
of it. A local folder belongs to one daemon, which never takes the same file twice at once: its
files are not claimed (two write transactions a file saved).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from config import Config
from config.errors import (
    Cancelled,
    InboxError,
    LimitExceeded,
    ResultsUnwritable,
    SourceChanged,
    SourceGone,
    SpoolError,
    StoreError,
    Transient,
)
from config.status import ARCHIVED_AS_SUCCESS, RUNNABLE, JobStatus
from inbox_daemon import failpoints, spool
from inbox_daemon.backoff import backoff
from inbox_daemon.drop import Drop, delivery_time
from inbox_daemon.inboxes.base import Inbox
from inbox_daemon.logs import get_logger
from inbox_daemon.pipeline import Pipeline, Result
from inbox_daemon.results import diagnostics_name, diagnostics_path, manifest_bytes
from inbox_daemon.webhooks import WebhookSender
from inbox_daemon.worker_process import Turn, WorkerProcess
from storage.base import SEVERAL_BLOCKS, TO_RUN, CatalogStore, Job, Source

BUSY_BACKOFF_STEPS = 4            # content being applied right now: backoff grows to 2^4 × retry_base
FAULT_COMPONENTS = ((SpoolError, "spool"), (ResultsUnwritable, "results"), (StoreError, "store"),
                    (InboxError, "inbox"))


@dataclass(frozen=True)
class WorkItem:
    """A file to take in (``job_id`` None), or a ledger job to run again from its spooled copy."""
    drop: Drop
    job_id: str | None = None     # set: run this ledger job from its spool (requeue, retry)
    attempt: int = 0              # fetch-level retries of a drop that never reached the ledger

    @property
    def key(self) -> tuple:
        return ("job", self.job_id) if self.job_id else ("drop", self.drop.inbox, self.drop.key, self.drop.version)

    @classmethod
    def for_job(cls, job: Job) -> WorkItem:
        """Run ``job`` again; its inbox finds the file by name, if it is still there."""
        drop = Drop(inbox=job.inbox, partner=job.partner_id, key=job.source_name, name=job.source_name,
                    uri=job.source_uri, size=job.size, version=job.source_version or "",
                    delivered=job.delivered_at)     # its place in the partner's order stays
        return cls(drop, job_id=job.id)


# -- verdicts: what the scheduler is to do next -------------------------------------------------

@dataclass(frozen=True)
class Done:
    """Nothing more to do. ``manifest``: the answer a job got on this run (counted by the
    daemon), None when there was none to give (skipped, released on stop, answered before)."""
    manifest: dict | None = None


@dataclass(frozen=True)
class RetryIn:
    """Run ``item`` again in ``seconds`` (``attempt`` is what the log says it will be)."""
    seconds: float
    item: WorkItem
    attempt: int


@dataclass(frozen=True)
class OfferAgainIn:
    """Leave the file in its inbox; the inbox offers it again in ``seconds``."""
    seconds: float


@dataclass(frozen=True)
class Fault:
    """``component`` is failing (``/healthz`` says so until a job goes through); then ``then``."""
    component: str
    error: str
    then: Verdict


Verdict = Done | RetryIn | OfferAgainIn | Fault


class Journey:
    """Takes work items through their journey on one worker's store connection."""

    def __init__(self, config: Config, store: CatalogStore, inboxes: Mapping[str, Inbox], *,
                 webhooks: WebhookSender, should_stop: Callable[[], bool], turn: Turn | None = None):
        self.config = config
        self.store = store
        self.inboxes = inboxes
        self.webhooks = webhooks
        self.should_stop = should_stop      # asked between batches: past the stop deadline?
        self.pipeline = Pipeline(config, store, actor="daemon")
        # this file's place in line for a worker process, where it goes through the pipeline;
        # None: through it on this thread
        self.turn = turn

    def run(self, item: WorkItem) -> Verdict:
        drop = item.drop
        log = get_logger(component="daemon", inbox=drop.inbox, partner=drop.partner, file=drop.name)
        inbox = self.inboxes.get(drop.inbox)
        try:
            if drop.partner not in self.config.partners:
                log.warning("job.skipped", reason="partner no longer configured")
                return Done()
            if item.job_id:
                return self._run_job(item, item.job_id, inbox, log)
            if inbox is None:
                return Done()           # its inbox was stopped (reload) since the file was seen
            return self._take_in(item, inbox, log)
        except Cancelled:
            return Done()
        except SourceChanged as exc:
            # written to while it was read: no fault, the upload simply is not over; the inbox
            # offers it again once it is ready (nothing reached the ledger)
            log.info("file.changed_while_read", reason=str(exc))
            return OfferAgainIn(inbox.config.settle if inbox is not None else 0)
        except LimitExceeded as exc:
            # refused before (or while) it was copied: too big to read at all (``_refuse``)
            return self._refuse(item, inbox, exc, log)
        except Transient as exc:
            return self._transient(item, inbox, exc, log)
        except SourceGone as exc:
            log.info("file.gone", reason=str(exc))
            return Done()
        except InboxError as exc:
            # Terminal trouble with the inbox itself (permission denied, archived object): the
            # file stays where it is; the operator sees this line, the next scan tries again.
            log.error("file.unusable", error=str(exc), error_type=type(exc).__name__)
            return Done()

    def release(self, item: WorkItem) -> None:
        """Whatever became of it, this daemon no longer holds the file (archived, or left for
        the next look); released at once rather than kept alive by the heartbeat. The worker
        calls this after acting on the verdict: with the store locked by another process the
        release waits out the busy timeout, and the retry must be scheduled before that."""
        drop = item.drop
        inbox = self.inboxes.get(drop.inbox)
        if inbox is not None and not inbox.shared:
            return                      # never claimed (``_claim_file``)
        try:
            self.store.release_drop(inbox=drop.inbox, uri=drop.uri, version=drop.version)
        except Exception as exc:  # noqa: BLE001 — an unreleased claim only expires later
            get_logger(component="daemon").warning("file.release_failed", file=drop.name, error=str(exc))

    # -- the two ways in ----------------------------------------------------------------------
    def _take_in(self, item: WorkItem, inbox: Inbox, log) -> Verdict:
        """A file seen in its inbox: claim it, spool it (sha256), run it through the pipeline.

        A delivery is what arrived: the file is read and hashed before anything is decided, and
        the ledger decides by content (a file answered before and seen again is a replay of
        that answer; new content under an old name and mtime — ``cp -p``, ``rsync -t``, a
        filesystem with 1-second timestamps — is a new job). Only where the version the inbox
        lists is itself derived from the content (an S3 ETag) is a version answered before
        replayed without downloading it again."""
        drop = item.drop
        if inbox.shared:
            # a remote inbox's download may take any time: the files behind it in line for a
            # worker process do not wait for it (nor for its claim); it lines up again once here
            self._no_process()
        if not self._claim_file(inbox, drop, log):
            return OfferAgainIn(self.config.store.lease)
        seen = self.store.seen(inbox=drop.inbox, uri=drop.uri, version=drop.version, delivered_at=drop.delivered) \
            if inbox.version_is_content else None
        if seen is not None and seen.result is not None:
            # taken in and answered before: kept ("keep"), or a daemon stopped after its report,
            # before the archive; answered again as any replay is
            log.debug("file.already_taken_in", version=drop.version, status=seen.status)
            self._answer(inbox, drop, seen.result, seen.status, log, replay=True)
            return Done()
        spooled: Path | None = None
        if (drop.size or 0) < SEVERAL_BLOCKS:
            # copied before a process is lent: none waits on the copy (nothing is read ahead)
            spooled, sha256, _ = self._spool(inbox, drop, None)
        with self._applier() as process:
            if spooled is None:         # the process reads the catalog while the file is copied
                spooled, sha256, _ = self._spool(inbox, drop, process)
            result = self._process(process, spooled, sha256, drop, fmt=inbox.config.format, mode=inbox.config.mode,
                                   verify_source=lambda: inbox.verify_unchanged(drop))
        return self._conclude(item, inbox, result, log)

    def _run_job(self, item: WorkItem, job_id: str, inbox: Inbox | None, log) -> Verdict:
        """A ledger job run again (retry, requeue): from its spooled copy, else from the inbox.
        It keeps no order among files: it leaves the line for a worker process at once (its
        copy is checked, or fetched again, out of line) and lines up again when it needs one."""
        self._no_process()
        job = self.store.job(job_id)
        if job.status not in RUNNABLE or job.status == JobStatus.ABANDONED:
            return Done()       # done meanwhile (its file was picked up too): nothing to redo
        if job.reverts is not None:
            # a revert whose runner stopped before its commit: no file, no inbox to answer in
            return self._conclude(item, None, self.pipeline.run_revert_job(job), log)
        spooled = Path(job.spool_path) if job.spool_path else None
        if spooled is not None and not spool.intact(spooled, job.sha256):
            if spooled.exists():
                # torn by a power loss (copies are synced only when kept: ``spool``), or damaged since
                log.warning("job.spooled_copy_damaged", job_id=job.id, spooled=str(spooled),
                            action="the file is fetched again from its inbox")
            spooled = None          # fetched again, the copy replaced whole
        if spooled is None and not self._claim_file(inbox, item.drop, log):
            return OfferAgainIn(self.config.store.lease)
        with self._applier() as process:
            if spooled is None:
                try:
                    spooled = self._fetch_again(job, item.drop, inbox, process)
                except InboxError as exc:
                    # neither our copy nor the partner's file is left: only a new drop can help
                    reason = f"the spooled copy is gone or damaged, and so is the source file ({exc}): drop the file again"
                    if self.store.job(job.id).status not in RUNNABLE:
                        return Done()
                    log.error("job.unrecoverable", job_id=job.id, reason=reason)
                    return Done(self.pipeline.give_up(job, reason, log).manifest)   # an operator must act
            result = self._process(process, spooled, job.sha256, item.drop, fmt=job.format, mode=job.mode)
        return self._conclude(item, inbox, result, log)

    def _no_process(self) -> None:
        """This file needs no worker process (it is answered without the pipeline), or not
        yet: the threads behind it in line need not wait for it."""
        if self.turn is not None:
            self.turn.leave()

    @contextlib.contextmanager
    def _applier(self) -> Iterator[WorkerProcess | None]:
        """Where a file goes through the pipeline: a worker process lent for it until its
        outcome, not for the answer; None: this thread."""
        if self.turn is None:
            yield None
            return
        with self.turn.lent() as process:
            yield process

    def _process(self, process: WorkerProcess | None, spooled: Path, sha256: str, drop: Drop, *,
                 fmt: str | None, mode: str, verify_source: Callable[[], None] = lambda: None) -> Result:
        """The spooled file through the pipeline: in ``process``, else on this thread."""
        if process is not None:
            return process.process(self.config, spooled, sha256, drop, fmt=fmt, mode=mode, watching=True,
                                   verify_source=verify_source)
        return self.pipeline.process(spooled, sha256, drop, fmt=fmt, mode=mode, should_stop=self.should_stop,
                                     watching=True, verify_source=verify_source)

    def _fetch_again(self, job: Job, drop: Drop, inbox: Inbox | None, process: WorkerProcess | None) -> Path:
        if inbox is None:
            raise InboxError("its inbox is not watched by this daemon")
        spooled, sha256, _ = self._spool(inbox, drop, process)
        if sha256 != job.sha256:
            raise InboxError("the file under its name has other content now")
        return spooled

    def _spool(self, inbox: Inbox, drop: Drop, process: WorkerProcess | None) -> tuple[Path, str, int]:
        """The file copied into the spool and hashed; a file over its partner's
        ``max_file_bytes`` (as listed, or once its copy passes it) is ``FileTooLarge`` instead:
        limits come before work, and a sparse or endless file never fills the state disk."""
        limit = self.config.partner(drop.partner).max_file_bytes
        if process is not None:             # the catalog is read where the file is applied
            process.read_ahead(self.config, drop.partner, size=drop.size or 0, mode=inbox.config.mode)
        elif self.turn is None:
            self.store.read_ahead(drop.partner, size=drop.size or 0, mode=inbox.config.mode)
        return inbox.fetch(drop, self.config.daemon.spool_dir / drop.partner, max_bytes=limit)

    def _refuse(self, item: WorkItem, inbox: Inbox | None, exc: LimitExceeded, log) -> Verdict:
        """A file refused unread (``FileTooLarge``) is a rejected job like any other: a
        diagnostics line ``limit_exceeded`` naming its size and the limit, a manifest, an audit
        record, the partner's answer and the archive to failed/; never retried (nothing changes
        by trying again). Its content was never read, so the job is keyed by the delivery itself
        (``unread_identity``), not by a hash of its content: this very file seen again (its
        archive failed) is this job, answered again; any other delivery is a job of its own."""
        self._no_process()
        drop = item.drop
        partner = self.config.partner(drop.partner)
        mode = inbox.config.mode if inbox is not None else "delta"
        source = Source(uri=drop.uri, name=drop.name, size=drop.size, version=drop.version,
                        delivered_at=drop.delivered or delivery_time(time.time()))
        claim = self.store.claim(partner_id=partner.id, sha256=unread_identity(drop), inbox=drop.inbox,
                                 source=source, fmt=inbox.config.format if inbox is not None else None,
                                 mode=mode, spool_path=None, answered_if_same_file=True)
        job = claim.job
        log = log.bind(job_id=job.id)
        if claim.kind == "busy":
            return OfferAgainIn(self.config.store.lease)
        if claim.kind not in TO_RUN:
            if job.result is None:
                return Done()
            if claim.kind == "unreported":
                return self._answered(inbox, drop, self.pipeline.report(job, job.result, None, log).manifest, log)
            if inbox is not None:
                self._answer(inbox, drop, job.result, job.status, log, replay=True)
            return Done()
        log.info("job.started", attempt=job.attempt, kind=claim.kind, size=drop.size, delivered_at=job.delivered_at)
        return self._answered(inbox, drop, self.pipeline.reject_unread(job, partner, exc, log).manifest, log)

    # -- what the outcome means ---------------------------------------------------------------
    def _conclude(self, item: WorkItem, inbox: Inbox | None, result: Result, log) -> Verdict:
        """The outcome is durable: run again, quarantine, or answer."""
        drop, manifest, status = item.drop, result.manifest, result.status
        if result.replay:                   # answered before: only the partner's copy and the archive
            if inbox is not None:
                self._answer(inbox, drop, manifest, status, log, replay=True)
            return Done()
        if status == JobStatus.ABANDONED:
            # the file changed after it was read: left in its inbox, read again once it is ready
            return OfferAgainIn(inbox.config.settle if inbox is not None else 0)
        if status == JobStatus.RUNNING:
            # the same content is being applied right now (another name, another worker): look
            # again once that is done; it will be this file's duplicate, answered and archived
            # (a requeued job found running is simply someone else's now: nothing to retry)
            if item.job_id is not None:
                return Done()
            attempt = min(item.attempt + 1, BUSY_BACKOFF_STEPS)
            return self._retry(dataclasses.replace(item, attempt=attempt), attempt)
        if status == JobStatus.FAILED:
            # e.g. the catalog locked by another process: run again, and reported meanwhile
            message = str(manifest.get("message", "failed"))[:300]
            job = self.store.job(manifest["job_id"])
            if job.attempt < self.config.daemon.max_attempts:
                return Fault("jobs", message, self._retry(WorkItem(drop, job_id=job.id), job.attempt))
            reason = f"{manifest.get('message', 'failed')} (gave up after {job.attempt} attempts)"
            quarantined = self.pipeline.give_up(job, reason, log).manifest
            return Fault("jobs", message, self._answered(inbox, drop, quarantined, log))
        return self._answered(inbox, drop, manifest, log)

    def _transient(self, item: WorkItem, inbox: Inbox | None, exc: Transient, log) -> Verdict:
        """Trouble before the ledger had the file (download, spool): another attempt after a
        backoff; after ``max_attempts`` it is not forgotten: the inbox offers it again at its
        next look, for another round."""
        attempt = item.attempt + 1
        component = next((c for kind, c in FAULT_COMPONENTS if isinstance(exc, kind)), "other")
        if component == "inbox":
            component = f"inbox {item.drop.inbox}"
        log.warning("file.transient_error", error=str(exc), error_type=type(exc).__name__, attempt=attempt)
        then: Verdict
        if attempt < self.config.daemon.max_attempts:
            then = self._retry(dataclasses.replace(item, attempt=attempt), attempt)
        elif inbox is not None:
            log.error("file.retries_exhausted", error=str(exc), attempts=attempt)
            then = OfferAgainIn(0)
        else:
            then = Done()
        return Fault(component, str(exc)[:300], then)

    def _retry(self, item: WorkItem, attempt: int) -> RetryIn:
        return RetryIn(backoff(attempt, self.config.daemon.retry_base, self.config.daemon.retry_max),
                       item, attempt)

    # -- the answer ---------------------------------------------------------------------------
    def _answered(self, inbox: Inbox | None, drop: Drop, manifest: dict, log) -> Done:
        """Tell the partner (results/, then the archive, then the webhook); the job is done."""
        if inbox is not None and self._answer(inbox, drop, manifest, manifest["status"], log):
            failpoints.reached("after_archive")
        partner = self.config.partners.get(drop.partner)
        if partner and partner.webhook:
            self.webhooks.submit(partner.webhook, manifest)
        return Done(manifest)

    def _answer(self, inbox: Inbox, drop: Drop, manifest: dict, status: str, log, *, replay: bool = False) -> bool:
        """The partner's copy of the answer in the inbox's ``results/``, then the archive; each
        failure is logged, neither depends on the other. True when archived.

        A replay is a file answered before, seen again: the daemon that answered may have stopped
        after its report, before the copy or the archive, so both are done (again). A file the
        inbox keeps ("keep") is seen at every look: its copy is not rewritten each time."""
        kept = status in ARCHIVED_AS_SUCCESS and inbox.config.on_success == "keep"
        if not (replay and kept):
            try:
                self._write_back(inbox, drop, manifest, log, replay=replay)
            except (InboxError, OSError) as exc:
                log.error("inbox.write_back_failed", job_id=manifest["job_id"], error=str(exc))
        try:
            inbox.archive(drop, status)
            return True
        except (InboxError, OSError) as exc:
            log.error("inbox.archive_failed", job_id=manifest["job_id"], error=str(exc))
            return False

    def _write_back(self, inbox: Inbox, drop: Drop, manifest: dict, log, *, replay: bool) -> None:
        """The partner sees the outcome where they dropped the file (``results/``). A replay
        may run on another host than the one that applied the job, without its diagnostics
        file: the manifest is written back all the same."""
        inbox.write_back(drop, f"{manifest['job_id']}.result.json", manifest_bytes(manifest))
        if not manifest.get("diagnostics") and manifest.get("attempt", 1) > 1:
            # a job run again (requeued, approved) that went through: the diagnostics of its
            # rejection go, as they went from the daemon's own results
            inbox.withdraw(drop, diagnostics_name(manifest["job_id"]))
        if manifest.get("diagnostics"):
            path = diagnostics_path(self.config.daemon.results_dir, manifest["partner"], manifest["job_id"])
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                if not replay:
                    raise
                log.warning("inbox.write_back_without_diagnostics", job_id=manifest["job_id"],
                            reason="the diagnostics are on the host that applied the job")
                return
            inbox.write_back(drop, path.name, data)

    # -- the file claim (several daemons, one store) --------------------------------------------
    def _claim_file(self, inbox: Inbox | None, drop: Drop, log) -> bool:
        """This file version is ours to download, unless another daemon sharing the store holds
        it. Files of an inbox no other daemon lists (a local folder) are this daemon's alone."""
        if inbox is None or not inbox.shared:
            return True
        if self.store.claim_drop(inbox=drop.inbox, uri=drop.uri, version=drop.version):
            return True
        log.debug("file.claimed_elsewhere", version=drop.version)
        return False


def unread_identity(drop: Drop) -> str:
    """What stands for the content of a file that was never read (refused for its size): a
    sha256 of the delivery (inbox, file, version, size, delivery time), marked so that it can
    never be the hash of a file's content by accident."""
    delivery = "\n".join(("unread delivery", drop.inbox, drop.uri, drop.version, str(drop.size),
                          drop.delivered or ""))
    return hashlib.sha256(delivery.encode()).hexdigest()
