"""``inbox-daemon run``: watch every inbox, process what partners drop, survive restarts.

Threads: one watcher per inbox (watchdog) puts ready files on a bounded queue; ``workers``
worker threads, each with its own store connection, run the pipeline; the main thread handles
signals, schedules retries, picks up requeued jobs, rescans inboxes as a safety net, pings the
systemd watchdog and keeps the health state.

Retry policy lives here and nowhere else: a job that ``failed`` (a Transient error) is run again
after an exponential backoff with full jitter, up to ``max_attempts``, then ``quarantined``.

Several daemons may share one store (PostgreSQL) and the same remote inboxes. A worker claims a
file in the store before downloading it (another daemon's claim: skipped, offered again once
that claim could have expired); a heartbeat thread renews every claim and job lease this daemon
holds every ``lease``/3 and queues the jobs of daemons whose leases ran out, which any daemon
then runs again.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import queue
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from config import Config, ConfigError, load_config, missing_secrets
from inbox_daemon import __version__, failpoints, tempfiles
from inbox_daemon.drop import Drop
from inbox_daemon.errors import Cancelled, InboxError, ResultsUnwritable, SpoolError, StoreError, Transient
from inbox_daemon.inboxes import open_inbox
from inbox_daemon.inboxes.base import SUCCESS
from inbox_daemon.logs import get_logger
from inbox_daemon.metrics import HealthServer, Metrics
from inbox_daemon.pipeline import KEEP_SPOOL, Pipeline, Result
from inbox_daemon.results import diagnostics_name, manifest_bytes
from inbox_daemon.sdnotify import Notifier
from inbox_daemon.spool import SPOOL_TEMP
from inbox_daemon.backoff import backoff
from inbox_daemon.webhooks import WebhookSender
from storage import open_store
from storage.base import Job

QUEUE_MAX = 10_000          # ready files waiting for a worker; watchers block beyond this
POLL_QUEUED = 1.0           # seconds between looks for requeued jobs
RESCAN_EVERY = 60.0         # seconds: a full scan catches anything an event missed
TICK = 0.05                 # main loop period (signals, retries, watchdog)
RUNNABLE = ("queued", "failed")   # job states a work item may (re)start
BUSY_BACKOFF_STEPS = 4      # a file whose content is being applied right now: backoff grows to 2^4 × retry_base


@dataclass(frozen=True)
class WorkItem:
    drop: Drop
    job_id: str | None = None     # set: run this ledger job from its spool (requeue, retry)
    attempt: int = 0              # fetch-level retries of a drop that never reached the ledger

    @property
    def key(self) -> tuple:
        return ("job", self.job_id) if self.job_id else ("drop", self.drop.inbox, self.drop.key, self.drop.version)


def _drop_of(job: Job) -> Drop:
    """The drop a ledger job came from (its inbox finds the file by name, if it is still there)."""
    return Drop(inbox=job.inbox, partner=job.partner_id, key=job.source_name, name=job.source_name,
                uri=job.source_uri, size=job.size, version=job.source_version or "")


class Daemon:
    def __init__(self, config: Config, *, config_path: str | None = None, once: bool = False,
                 notifier: Notifier | None = None):
        self.config = config
        self.config_path = config_path
        self.once = once
        self.notifier = notifier or Notifier()
        self.metrics = Metrics()
        self.log = get_logger(component="daemon")
        self.queue: queue.Queue[WorkItem] = queue.Queue(maxsize=QUEUE_MAX)
        self.inboxes: dict = {}
        self._pending: set[tuple] = set()          # queued or in flight: never twice at once
        self._lock = threading.Lock()
        self._retries: list[tuple[float, int, WorkItem]] = []
        self._seq = itertools.count()
        self._stopping = threading.Event()
        self._stop_deadline = float("inf")
        self._reload = threading.Event()
        self._in_flight = 0
        self._workers: list[threading.Thread] = []
        self._health_state: tuple[bool, dict] = (False, {"starting": True})
        self._faults: dict[str, dict] = {}       # component -> the last transient error, until a job succeeds
        self.last_job: str = "none yet"

    # -- lifecycle ------------------------------------------------------------------------------
    def run(self) -> int:
        cfg = self.config
        for folder in (cfg.daemon.spool_dir, cfg.daemon.results_dir, cfg.daemon.audit_dir):
            folder.mkdir(parents=True, exist_ok=True)
        # what a killed process was writing (copies, manifests, diagnostics): never finished
        debris = (tempfiles.remove_debris(cfg.daemon.spool_dir, (SPOOL_TEMP, ".unpacked-"))
                  + tempfiles.remove_debris(cfg.daemon.results_dir, (".",)))
        if debris:
            self.log.info("daemon.debris_removed", files=[str(p) for p in debris])
        self.store = open_store(cfg.store)
        self.webhooks = WebhookSender(metrics=self.metrics)
        self.health = None
        if cfg.daemon.health:
            self.health = HealthServer(cfg.daemon.health, self.metrics, lambda: self._health_state)
            self.health.start()
        self._install_signals()
        for warning in missing_secrets(cfg):
            self.log.warning("config.secret_missing", problem=warning)
        for inbox_cfg in cfg.inboxes:
            self._start_inbox(inbox_cfg)
        recovered = self.store.recover()
        if recovered:
            self.log.warning("daemon.recovered", jobs=recovered, reason="left running by a stopped daemon")
        self._remove_orphaned_copies()
        self._heartbeat_ok = True
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        self._heartbeat.start()
        for n in range(cfg.daemon.workers):
            worker = threading.Thread(target=self._worker, name=f"worker-{n}", daemon=True)
            worker.start()
            self._workers.append(worker)
        for inbox in list(self.inboxes.values()):
            self._scan(inbox)
        self.log.info("daemon.started", inboxes=list(self.inboxes), workers=cfg.daemon.workers,
                      store=cfg.store.url.split("://")[0], health=self.health.address if self.health else None,
                      once=self.once, version=__version__)
        self.notifier.ready(self._status())
        try:
            self._main_loop()
        finally:
            self._shutdown()
        return 0

    def _remove_orphaned_copies(self) -> None:
        """Spooled copies no job will read again (a kill after the copy, before its claim or
        after its outcome): the partner's file is still in the inbox and is copied again."""
        # by (partner folder, content name): the ledger's paths may be relative to another cwd
        keep = {Path(path).parts[-2:] for path in self.store.spool_paths(KEEP_SPOOL)}
        orphans = [p for p in self.config.daemon.spool_dir.glob("*/*")
                   if p.is_file() and not p.name.startswith(".") and p.parts[-2:] not in keep]
        for path in orphans:
            path.unlink(missing_ok=True)
        if orphans:
            self.log.info("daemon.orphaned_copies_removed", files=[str(p) for p in orphans])

    def _main_loop(self) -> None:
        next_poll = next_rescan = next_ping = 0.0
        interval = self.notifier.watchdog_interval
        while not self._stopping.is_set():
            now = time.monotonic()
            if self._reload.is_set():
                self._reload.clear()
                self._reload_config()
            self._release_due_retries(now)
            if now >= next_poll:
                self._poll_queued()
                self._health_state = self._check_health()
                self.notifier.status(self._status())
                next_poll = now + POLL_QUEUED
            if now >= next_rescan and not self.once:
                if next_rescan:
                    for inbox in list(self.inboxes.values()):
                        self._scan(inbox)
                next_rescan = now + RESCAN_EVERY
            if interval and now >= next_ping:
                self.notifier.watchdog()
                next_ping = now + interval
            if self.once and self._idle():
                self.log.info("daemon.drained")
                break
            self._stopping.wait(TICK)

    def _shutdown(self) -> None:
        self.log.info("daemon.stopping", in_flight=self._in_flight,
                      grace_s=self.config.daemon.stop_timeout)
        self.notifier.stopping()
        self._stop_deadline = time.monotonic() + self.config.daemon.stop_timeout
        self._stopping.set()                 # no new work is queued from here on
        for worker in self._workers:         # in-flight jobs still archive through their inbox
            worker.join(timeout=self.config.daemon.stop_timeout + 30)
        self._heartbeat.join(timeout=10)     # after the workers: their leases live until they end
        for inbox in list(self.inboxes.values()):
            inbox.close()
        self.webhooks.close(timeout=2.0)
        if self.health:
            self.health.close()
        self.store.close()
        self.log.info("daemon.stopped")

    def stop(self) -> None:
        self._stopping.set()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, lambda *_: self._stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self._stopping.set())
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())

    # -- inboxes --------------------------------------------------------------------------------
    def _start_inbox(self, inbox_cfg) -> None:
        try:
            inbox = open_inbox(inbox_cfg)
            inbox.watch(self._on_ready)
        except (InboxError, OSError) as exc:
            self.log.error("inbox.unavailable", inbox=inbox_cfg.id, error=str(exc))
            return
        self.inboxes[inbox.id] = inbox
        self.log.info("inbox.watching", inbox=inbox.id, partner=inbox_cfg.partner, mode=inbox_cfg.mode)

    def _scan(self, inbox) -> None:
        try:
            for drop in inbox.scan():
                self._on_ready(drop)
        except (InboxError, OSError) as exc:
            self.log.error("inbox.scan_failed", inbox=inbox.id, error=str(exc))

    def _on_ready(self, drop: Drop) -> None:
        self._enqueue(WorkItem(drop))

    def _enqueue(self, item: WorkItem) -> bool:
        with self._lock:
            if item.key in self._pending or self._stopping.is_set():
                return False
            self._pending.add(item.key)
        if item.job_id is None:
            self.metrics.files_seen.labels(item.drop.inbox).inc()
        self.queue.put(item)
        self.metrics.queue_depth.set(self.queue.qsize())
        return True

    def _reload_config(self) -> None:
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            self.log.error("config.reload_failed", problems=exc.problems, kept="previous configuration")
            self.notifier.ready(self._status())
            return
        if new.store.url != self.config.store.url or new.daemon.workers != self.config.daemon.workers:
            self.log.warning("config.reload_partial", reason="store url and workers change on restart only")
        old = {i.id: i for i in self.config.inboxes}
        fresh = {i.id: i for i in new.inboxes}
        self.config = dataclasses.replace(new, store=self.config.store,
                                          daemon=dataclasses.replace(new.daemon, workers=self.config.daemon.workers))
        for inbox_id in old.keys() - fresh.keys() | {k for k in old.keys() & fresh.keys() if old[k] != fresh[k]}:
            inbox = self.inboxes.pop(inbox_id, None)
            if inbox:
                inbox.close()
                self.log.info("inbox.stopped", inbox=inbox_id)
        for inbox_id, inbox_cfg in fresh.items():
            if inbox_id not in self.inboxes:
                self._start_inbox(inbox_cfg)
                if inbox_id in self.inboxes:
                    self._scan(self.inboxes[inbox_id])
        self.log.info("config.reloaded", inboxes=list(self.inboxes), partners=list(new.partners))
        self.notifier.ready(self._status())

    # -- retries and requeued jobs --------------------------------------------------------------
    def _schedule_retry(self, item: WorkItem, attempt: int) -> None:
        delay = backoff(attempt, self.config.daemon.retry_base, self.config.daemon.retry_max)
        with self._lock:
            heapq.heappush(self._retries, (time.monotonic() + delay, next(self._seq), item))
        self.metrics.retries.labels(item.drop.inbox).inc()
        self.log.info("job.retry_scheduled", file=item.drop.name, job_id=item.job_id, attempt=attempt,
                      delay_s=round(delay, 3))

    def _release_due_retries(self, now: float) -> None:
        due = []
        with self._lock:
            while self._retries and self._retries[0][0] <= now:
                due.append(heapq.heappop(self._retries)[2])
        for item in due:
            if not self._enqueue(item) and not self._stopping.is_set():
                with self._lock:
                    if item.key in self._pending:    # its last run is still finishing: soon
                        heapq.heappush(self._retries, (now + 0.1, next(self._seq), item))

    def _poll_queued(self) -> None:
        for job in self.store.queued(partners=self.config.partners):
            self._enqueue(WorkItem(_drop_of(job), job_id=job.id))

    def _idle(self) -> bool:
        with self._lock:
            waiting = bool(self._pending) or bool(self._retries)
        settling = any(i.settling() for i in self.inboxes.values())
        runnable = bool(self.store.queued(partners=self.config.partners, limit=1))
        return not waiting and not settling and self.queue.empty() and not runnable

    # -- leases ---------------------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        """Renew what this daemon holds; queue what dead daemons held. Own store connection:
        the workers' are busy inside their transactions."""
        period = max(self.config.store.lease / 3, 0.2)
        store, next_beat = None, 0.0
        while True:
            if time.monotonic() < next_beat:
                # stop only once the workers are done: an in-flight job keeps its lease to the end
                if self._stopping.is_set() and not any(w.is_alive() for w in self._workers):
                    break
                time.sleep(0.1)
                continue
            next_beat = time.monotonic() + period
            try:
                store = store or open_store(self.config.store)
                store.renew()
                expired = store.expire_leases()
                if expired:
                    self.log.warning("jobs.lease_expired", jobs=expired,
                                     reason="their daemon stopped renewing them; queued to run again")
                self._heartbeat_ok = True
            except Exception as exc:  # noqa: BLE001 — the heartbeat must outlive any store trouble
                self._heartbeat_ok = False
                self.log.error("store.heartbeat_failed", error=str(exc), error_type=type(exc).__name__)
                if store is not None:
                    store.close()
                    store = None
        if store is not None:
            store.close()

    # -- workers --------------------------------------------------------------------------------
    def _should_stop(self) -> bool:
        return time.monotonic() > self._stop_deadline

    def _worker(self) -> None:
        store = open_store(self.config.store)
        try:
            while not self._stopping.is_set():
                try:
                    item = self.queue.get(timeout=0.2)
                except queue.Empty:
                    continue
                self.metrics.queue_depth.set(self.queue.qsize())
                if self._stopping.is_set():
                    break
                with self._lock:
                    self._in_flight += 1
                self.metrics.in_flight.inc()
                try:
                    self._process(store, item)
                except Exception:  # noqa: BLE001 — a defect must not take the worker down with it
                    self.log.exception("worker.unexpected_error", file=item.drop.name, job_id=item.job_id)
                finally:
                    self._release_file(store, item.drop)
                    with self._lock:
                        self._in_flight -= 1
                        self._pending.discard(item.key)
                    self.metrics.in_flight.dec()
        finally:
            store.close()

    def _process(self, store, item: WorkItem) -> None:
        drop, cfg = item.drop, self.config
        inbox = self.inboxes.get(drop.inbox)
        inbox_cfg = inbox.config if inbox else None
        log = self.log.bind(inbox=drop.inbox, partner=drop.partner, file=drop.name)
        started = time.monotonic()
        pipeline = Pipeline(cfg, store, actor="daemon")
        try:
            if drop.partner not in cfg.partners:
                log.warning("job.skipped", reason="partner no longer configured")
                return
            if item.job_id:
                job = store.job(item.job_id)
                if job.status not in RUNNABLE:
                    return          # done meanwhile (its file was picked up too): nothing to redo
                spooled = Path(job.spool_path) if job.spool_path else None
                sha256 = job.sha256
                if spooled is None or not spooled.exists():
                    if not self._claim_file(store, inbox, drop, log):
                        return
                    try:
                        if inbox is None:
                            raise InboxError("its inbox is not watched by this daemon")
                        spooled, sha256, _ = inbox.fetch(drop, cfg.daemon.spool_dir / drop.partner)
                        if sha256 != job.sha256:
                            raise InboxError("the file under its name has other content now")
                    except InboxError as exc:
                        # neither our copy nor the partner's file is left: only a new drop can help
                        reason = f"the spooled copy and the source file are gone ({exc}): drop the file again"
                        if store.job(job.id).status in RUNNABLE:     # an operator must act: quarantine
                            log.error("job.unrecoverable", job_id=job.id, reason=reason)
                            result = pipeline.give_up(job, reason, log)
                            self.metrics.job_done(drop.inbox, result.manifest, time.monotonic() - started)
                        return
                fmt, mode = job.format, job.mode
            else:
                if inbox is None or not self._claim_file(store, inbox, drop, log):
                    return
                seen = store.seen(inbox=drop.inbox, uri=drop.uri, version=drop.version)
                if seen:
                    # taken in and answered before: kept ("keep"), or a daemon stopped after its
                    # report, before the archive; answered again as any replay is
                    log.debug("file.already_taken_in", version=drop.version, status=seen.status)
                    if seen.result is None:         # nothing to tell again: only the archive
                        inbox.archive(drop, seen.status)
                    else:
                        self._after(store, pipeline, inbox, item, Result(seen.status, seen.result, None, replay=True),
                                    started, log)
                    return
                spooled, sha256, _ = inbox.fetch(drop, cfg.daemon.spool_dir / drop.partner)
                fmt, mode = inbox_cfg.format, inbox_cfg.mode
            result = pipeline.process(spooled, sha256, drop, fmt=fmt, mode=mode, should_stop=self._should_stop,
                                      watching=True)
        except Cancelled:
            return
        except Transient as exc:
            attempt = item.attempt + 1
            self._note_fault(exc, drop)
            log.warning("file.transient_error", error=str(exc), error_type=type(exc).__name__, attempt=attempt)
            if attempt < cfg.daemon.max_attempts and not self._stopping.is_set():
                self._schedule_retry(dataclasses.replace(item, attempt=attempt), attempt)
            elif inbox is not None and not self._stopping.is_set():
                # it never reached the ledger (the download kept failing): not forgotten, the
                # inbox offers it again at its next look, for another round of attempts
                log.error("file.retries_exhausted", error=str(exc), attempts=attempt)
                inbox.offer_again_in(drop, 0)
            return
        except InboxError as exc:
            # Terminal trouble with the inbox itself (permission denied, archived object): the
            # file stays where it is; the operator sees this line, the next scan tries again.
            log.error("file.unusable", error=str(exc), error_type=type(exc).__name__)
            return
        self._after(store, pipeline, inbox, item, result, started, log)

    def _claim_file(self, store, inbox, drop: Drop, log) -> bool:
        """This file version is ours to download, unless another daemon sharing the store holds
        it: then its inbox offers it again once that claim could have run out."""
        if store.claim_drop(inbox=drop.inbox, uri=drop.uri, version=drop.version):
            return True
        log.debug("file.claimed_elsewhere", version=drop.version)
        inbox.offer_again_in(drop, self.config.store.lease)
        return False

    def _release_file(self, store, drop: Drop) -> None:
        """Whatever became of it, this daemon no longer holds the file (archived, or left for
        the next look); released at once rather than kept alive by the heartbeat."""
        try:
            store.release_drop(inbox=drop.inbox, uri=drop.uri, version=drop.version)
        except Exception as exc:  # noqa: BLE001 — an unreleased claim only expires later
            self.log.warning("file.release_failed", file=drop.name, error=str(exc))

    def _after(self, store, pipeline: Pipeline, inbox, item: WorkItem, result: Result, started: float,
               log) -> None:
        """The outcome is durable: retry, quarantine, or archive; then tell the partner."""
        drop = item.drop
        manifest = result.manifest
        status = result.status
        if result.replay:                   # answered before: only the partner's copy and the archive
            if inbox is not None and drop.inbox == inbox.id:
                self._answer(inbox, drop, manifest, status, log, replay=True)
            return
        if status == "running":
            # the same content is being applied right now (another name, another worker): look
            # again once that is done; it will be this file's duplicate, answered and archived
            # (a requeued job found running is simply someone else's now: nothing to retry)
            if item.job_id is None and not self._stopping.is_set():
                attempt = min(item.attempt + 1, BUSY_BACKOFF_STEPS)
                self._schedule_retry(dataclasses.replace(item, attempt=attempt), attempt)
            return
        if status == "failed":
            with self._lock:      # e.g. the catalog locked by another process: retried, and reported
                self._faults["jobs"] = {"error": str(manifest.get("message", "failed"))[:300], "since": time.time()}
            job = store.job(manifest["job_id"])
            if job.attempt < self.config.daemon.max_attempts:
                if not self._stopping.is_set():
                    self._schedule_retry(WorkItem(drop, job_id=job.id), job.attempt)
                # stopping: the job stays "failed"; the next start queues it again (store.recover)
                return
            reason = f"{manifest.get('message', 'failed')} (gave up after {job.attempt} attempts)"
            result = pipeline.give_up(job, reason, log)
            manifest, status = result.manifest, "quarantined"
        if inbox is not None and drop.inbox == inbox.id and self._answer(inbox, drop, manifest, status, log):
            failpoints.reached("after_archive")
        partner = self.config.partners.get(drop.partner)
        if partner and partner.webhook:
            self.webhooks.submit(partner.webhook, manifest)
        self.metrics.job_done(drop.inbox, manifest, time.monotonic() - started)
        self.last_job = f"{manifest['job_id']} {status}"
        if status != "quarantined":
            self._clear_faults(drop)        # a job went all the way through: spool, store, results work

    def _answer(self, inbox, drop: Drop, manifest: dict, status: str, log, *, replay: bool = False) -> bool:
        """The partner's copy of the answer in the inbox's ``results/``, then the archive; each
        failure is logged, neither depends on the other. True when archived.

        A replay is a file answered before, seen again: the daemon that answered may have stopped
        after its report, before the copy or the archive, so both are done (again). A file the
        inbox keeps ("keep") is seen at every look: its copy is not rewritten each time."""
        kept = status in SUCCESS and inbox.config.on_success == "keep"
        if not (replay and kept):
            try:
                self._write_back(inbox, drop, manifest, replay=replay)
            except (InboxError, OSError) as exc:
                log.error("inbox.write_back_failed", job_id=manifest["job_id"], error=str(exc))
        try:
            inbox.archive(drop, status)
            return True
        except (InboxError, OSError) as exc:
            log.error("inbox.archive_failed", job_id=manifest["job_id"], error=str(exc))
            return False

    def _write_back(self, inbox, drop: Drop, manifest: dict, *, replay: bool = False) -> None:
        """The partner sees the outcome where they dropped the file (``results/``). A replay
        may run on another host than the one that applied the job, without its diagnostics
        file: the manifest is written back all the same."""
        inbox.write_back(drop, f"{manifest['job_id']}.result.json", manifest_bytes(manifest))
        if manifest.get("diagnostics"):
            path = self.config.daemon.results_dir / manifest["partner"] / diagnostics_name(manifest["job_id"])
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                if not replay:
                    raise
                self.log.warning("inbox.write_back_without_diagnostics", job_id=manifest["job_id"],
                                 reason="the diagnostics are on the host that applied the job")
                return
            inbox.write_back(drop, path.name, data)

    # -- health ---------------------------------------------------------------------------------
    _FAULT_COMPONENTS = ((SpoolError, "spool"), (ResultsUnwritable, "results"), (StoreError, "store"),
                         (InboxError, "inbox"))

    def _note_fault(self, exc: Exception, drop: Drop) -> None:
        """Remember what is failing, for /healthz, until a job goes through again."""
        component = next((c for kind, c in self._FAULT_COMPONENTS if isinstance(exc, kind)), "other")
        if component == "inbox":
            component = f"inbox {drop.inbox}"
        with self._lock:
            self._faults[component] = {"error": str(exc)[:300], "since": time.time()}

    def _clear_faults(self, drop: Drop) -> None:
        with self._lock:
            for component in list(self._faults):
                if not component.startswith("inbox ") or component == f"inbox {drop.inbox}":
                    del self._faults[component]

    def _check_health(self) -> tuple[bool, dict]:
        dead = [i for i, inbox in self.inboxes.items() if not inbox.alive()]
        for inbox_id, inbox in list(self.inboxes.items()):
            failing = inbox.failing()
            with self._lock:
                if failing:
                    self._faults[f"inbox {inbox_id}"] = failing
                elif f"inbox {inbox_id}" in self._faults and self._faults[f"inbox {inbox_id}"].get("polls"):
                    del self._faults[f"inbox {inbox_id}"]
        try:
            self.store.queued(limit=1)
            store_ok = True
        except Exception as exc:  # noqa: BLE001 — any store failure means unhealthy, reported as such
            store_ok = False
            self.log.error("store.unhealthy", error=str(exc))
        workers = sum(w.is_alive() for w in self._workers)
        heartbeat = self._heartbeat.is_alive() and self._heartbeat_ok
        with self._lock:
            degraded = dict(self._faults)
        ok = not dead and store_ok and heartbeat and workers == len(self._workers) and not degraded
        return ok, {"inboxes": len(self.inboxes), "dead_inboxes": dead, "store": store_ok,
                    "heartbeat": heartbeat, "workers": workers, "queue": self.queue.qsize(),
                    "degraded": degraded}

    def _status(self) -> str:
        return f"queue {self.queue.qsize()}, in flight {self._in_flight}, last job {self.last_job}"
