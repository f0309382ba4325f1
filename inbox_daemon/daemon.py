"""``inbox-daemon run``: watch every inbox, schedule what partners drop, survive restarts.

The daemon only schedules: one watcher per inbox (watchdog, or polling) puts ready files on a
bounded queue; worker threads, each with its own store connection, take a work item
through its journey (``journey.py``) and act on the verdict it returns — run it again later, let
the inbox offer the file again, note a fault for /healthz, count the job. A scanner thread lists
every inbox at start-up and again every ``RESCAN_EVERY`` as a safety net; it may wait on the full
queue, so the daemon is ready (systemd's READY) before a backlog is listed. The main thread
handles signals, releases due retries, picks up requeued jobs, pings the systemd watchdog and
keeps the health state.

Several daemons may share one store (PostgreSQL) and the same remote inboxes: a heartbeat thread
renews every claim and job lease this daemon holds every ``lease``/3 and queues the jobs of
daemons whose leases ran out, which any daemon then runs again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import itertools
import queue
import select
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from config import Config, ConfigError, missing_secrets
from config.errors import InboxError
from config.status import KEEP_SPOOL, JobStatus
from inbox_daemon import __version__, settings, tempfiles, worker_process
from inbox_daemon.audit import AuditLog
from inbox_daemon.drop import Drop
from inbox_daemon.inboxes import open_inbox
from inbox_daemon.journey import Done, Fault, Journey, OfferAgainIn, RetryIn, Verdict, WorkItem
from inbox_daemon.logs import get_logger
from inbox_daemon.metrics import AddressUnavailable, HealthServer, Metrics
from inbox_daemon.sdnotify import Notifier
from inbox_daemon.spool import SPOOL_TEMP
from inbox_daemon.webhooks import WebhookSender
from storage import open_store
from storage.base import CatalogStore, default_holder

QUEUE_MAX = 10_000          # ready files waiting for a worker; watchers and the scanner block beyond this
PUT_WAIT = 0.2              # seconds between looks at ``stopping`` while the queue is full
POLL_QUEUED = 1.0           # seconds between looks for requeued jobs
RESCAN_EVERY = 60.0         # seconds: a full scan catches anything an event missed
TICK = 0.05                 # main loop period (retries, watchdog); a signal wakes it at once
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
ALL_SCANS = "*"             # a scan request for every inbox (else: an inbox id)
# the keys of what an inbox's ``failing()`` reports, cleared once it reports nothing
INBOX_REPORTS = frozenset({"polls", "grew_after_archive", "folder_missing", "stuck"})
BLOCK_GRACE = 1.0           # seconds past stop_timeout for a file being read to stop at its next block
STOP_MARGIN = 3.0           # seconds past stop_timeout a stop waits for workers a closed inbox set free


PRUNE_EVERY_S = 60.0         # how often the pruner deletes change sets past history_days
PRUNE_BATCHES = 4            # at most this many batches (of 5,000 rows, each its own transaction) per partner a time

class Daemon:
    def __init__(self, config: Config, *, config_path: str | None = None, once: bool = False,
                 notifier: Notifier | None = None):
        self.config = config
        self.config_path = config_path
        self.once = once
        self.notifier = notifier or Notifier()
        self.metrics = Metrics()
        self.log = get_logger(component="daemon")
        self.queue: queue.Queue[WorkItem | None] = queue.Queue(maxsize=QUEUE_MAX)     # None: stop
        self.inboxes: dict = {}
        self._pending: set[tuple] = set()          # queued or in flight: never twice at once
        # files seen again while their item was queued or in flight: a re-send that kept name and
        # mtime looks the same; the inbox offers them again once that item is done
        self._sighted_again: set[tuple] = set()
        self._lock = threading.Lock()
        self._retries: list[tuple[float, int, WorkItem]] = []
        self._seq = itertools.count()
        self._stopping = threading.Event()
        # when in-flight jobs must have stopped (``time.monotonic()``; infinity until a stop):
        # shared with the worker processes, which read it between batches as the threads do
        self._stop_at = worker_process.deadline()
        # set by the signal handlers, read by the main loop: a plain attribute store is all a
        # handler does (one that takes a lock can deadlock the thread it interrupted)
        self._stop_signalled = False
        self._reload_signalled = False
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self._scan_requests: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._scans_pending = 0                     # requested, not yet done (``--once`` waits)
        self._scanner: threading.Thread | None = None
        self._heartbeat: threading.Thread | None = None
        self._pruner: threading.Thread | None = None
        self._in_flight = 0
        self._workers: list[threading.Thread] = []
        self._processes: worker_process.WorkerProcesses | None = None
        self._taking = threading.Lock()
        self._health_state: tuple[bool, dict] = (False, {"starting": True})
        self._faults: dict[str, dict] = {}       # component -> the last transient error, until a job succeeds
        self.last_job: str = "none yet"

    # -- lifecycle ------------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until a stop signal (or, ``--once``, until drained); 0 when stopped in order.
        Raises ``AddressUnavailable`` before touching any state when the health address
        cannot be listened on."""
        self._install_signals()        # first: a SIGHUP during start-up must not end the process
        try:
            return self._run()
        finally:
            self._uninstall_signals()

    def _run(self) -> int:
        cfg = self.config
        self.health = None
        if cfg.daemon.health:
            try:
                self.health = HealthServer(cfg.daemon.health, self.metrics, lambda: self._health_state)
            except AddressUnavailable as exc:
                self.log.error("daemon.health_unavailable", address=exc.address, reason=exc.reason)
                raise
        self.console = None
        if cfg.console.address:
            from inbox_daemon.console.server import ConsoleServer  # Flask: only where a console is served
            try:
                self.console = ConsoleServer(lambda: self.config, self.console_state)
            except (AddressUnavailable, ConfigError) as exc:
                self.log.error("console.unavailable", address=cfg.console.address, reason=str(exc))
                if self.health:
                    self.health.close()
                raise
        for folder in (cfg.daemon.spool_dir, cfg.daemon.results_dir, cfg.daemon.audit_dir):
            folder.mkdir(parents=True, exist_ok=True)
        # what a killed process was writing (copies, manifests, diagnostics): never finished
        debris = (tempfiles.remove_debris(cfg.daemon.spool_dir, (SPOOL_TEMP, ".unpacked-"))
                  + tempfiles.remove_debris(cfg.daemon.results_dir, (".",)))
        if debris:
            self.log.info("daemon.debris_removed", files=[str(p) for p in debris])
        self.store = open_store(cfg.store)
        # the outbox's deliveries, on a store connection of their own, to the partners configured now
        self.webhooks = WebhookSender(config=lambda: self.config, open_store=lambda: open_store(self.config.store),
                                      metrics=self.metrics)
        if self.health:
            self.health.start()
        if self.console:
            self.console.start()
            self.log.info("console.serving", url=f"{self.console.scheme}://{self.console.address}/",
                          login=cfg.console.login)
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
        self._pruner = threading.Thread(target=self._pruner_loop, name="pruner", daemon=True)
        self._pruner.start()
        threads = cfg.daemon.workers
        if cfg.daemon.worker_processes:
            self._processes = worker_process.WorkerProcesses(cfg, holder=default_holder(), stop_at=self._stop_at,
                                                             count=cfg.daemon.workers)
            threads *= worker_process.THREADS_PER_PROCESS
        for n in range(threads):
            worker = threading.Thread(target=self._worker, name=f"worker-{n}", daemon=True)
            worker.start()
            self._workers.append(worker)
        # ready once it serves: watchers, workers and health are up. What waits in the inboxes is
        # listed by the scanner from here on (a backlog of thousands takes minutes to queue, as
        # the queue is bounded, and systemd gives a start 90 s by default)
        self._request_scan(ALL_SCANS)
        self._scanner = threading.Thread(target=self._scanner_loop, name="scanner", daemon=True)
        self._scanner.start()
        self.log.info("daemon.started", inboxes=list(self.inboxes), workers=cfg.daemon.workers,
                      worker_processes=cfg.daemon.worker_processes,
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
        next_poll = next_ping = 0.0
        interval = self.notifier.watchdog_interval
        while not self._stopping.is_set() and not self._stop_signalled:
            now = time.monotonic()
            if self._reload_signalled:
                self._reload_signalled = False
                self._reload_config()
                continue                     # a stop signal that came meanwhile goes first
            self._release_due_retries(now)
            if now >= next_poll:
                self._poll_queued()
                self._health_state = self._check_health()
                self.notifier.status(self._status())
                next_poll = now + POLL_QUEUED
            if interval and now >= next_ping:
                self.notifier.watchdog()
                next_ping = now + interval
            if self.once and self._idle():
                self.log.info("daemon.drained")
                break
            self._sleep(TICK)

    def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less when a signal arrives (the interpreter's C-level handler
        writes its number to the wakeup socket)."""
        if self._wakeup is None:
            time.sleep(seconds)
            return
        receiver = self._wakeup[0]
        if select.select([receiver], [], [], seconds)[0]:
            try:
                while receiver.recv(512):
                    pass
            except BlockingIOError:
                pass

    def _shutdown(self) -> None:
        self.log.info("daemon.stopping", in_flight=self._in_flight,
                      grace_s=self.config.daemon.stop_timeout)
        self.notifier.stopping()
        deadline = time.monotonic() + self.config.daemon.stop_timeout
        self._stop_at.value = deadline       # the worker processes stop between batches past it
        self._stopping.set()                 # no new work is queued from here on
        self._scan_requests.put(None)
        for _ in self._workers:              # an idle worker ends now, not at its next look
            with contextlib.suppress(queue.Full):
                self.queue.put_nowait(None)  # (a full queue: every worker is busy)
        if self._processes is not None:      # a worker process ends after the file it is on
            self._processes.close()
        for worker in self._workers:         # in-flight jobs still archive through their inbox
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
        inboxes = list(self.inboxes.values())
        if any(w.is_alive() for w in self._workers):
            # past stop_timeout a worker still merges or commits a large file, between whose steps
            # nothing asks whether to stop: its process is killed, and what it had not committed
            # rolls back (taken again at the next start; committed, answered then). One that waits
            # on a peer (a server answering slowly): closing the inboxes ends that wait with an
            # error. Whatever still runs after the margin is left behind.
            for worker in self._workers:     # a file being read stops at its next block: a moment
                worker.join(timeout=max(0.0, deadline + BLOCK_GRACE - time.monotonic()))
            if self._processes is not None and (killed := self._processes.kill_lent()):
                self.log.warning("daemon.workers_stopped", processes=killed,
                                 reason="still in the middle of a file at stop_timeout: what they had not "
                                        "committed is rolled back and taken again at the next start")
            for inbox in inboxes:
                inbox.close()
            inboxes = []
            for worker in self._workers:
                worker.join(timeout=max(0.0, deadline + STOP_MARGIN - time.monotonic()))
            stuck = [w.name for w in self._workers if w.is_alive()]
            if stuck:
                self.log.error("daemon.workers_left_behind", workers=stuck,
                               reason="still waiting on a peer past stop_timeout; their jobs are taken again "
                                      "at the next start")
        if self._scanner is not None:        # it stops at its next file, or its next look at the queue
            self._scanner.join(timeout=STOP_MARGIN)
        if self._heartbeat is not None:      # after the workers: their leases live until they end
            self._heartbeat.join(timeout=STOP_MARGIN)
        if self._pruner is not None:
            self._pruner.join(timeout=STOP_MARGIN)
        for inbox in inboxes:
            inbox.close()
        self.webhooks.close(timeout=2.0)
        if self.console:
            self.console.close()
        if self.health:
            self.health.close()
        self.store.close()
        self.log.info("daemon.stopped")

    def stop(self) -> None:
        self._stopping.set()

    def _install_signals(self) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reloads. The handlers only set a flag: they run in the
        main thread between any two of its bytecodes, also while it holds a lock (inside
        ``Event.wait``, say), and a handler that takes a lock can deadlock there or, with signals
        coming fast, recurse until the interpreter gives up. The wakeup socket makes the main
        loop notice at once instead of at its next tick."""
        if threading.current_thread() is not threading.main_thread():
            return
        receiver, sender = socket.socketpair()
        for sock in (receiver, sender):
            sock.setblocking(False)
        self._wakeup = (receiver, sender)
        signal.set_wakeup_fd(sender.fileno(), warn_on_full_buffer=False)
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)

    def _on_stop_signal(self, signum, frame) -> None:
        self._stop_signalled = True

    def _on_reload_signal(self, signum, frame) -> None:
        self._reload_signalled = True

    def _uninstall_signals(self) -> None:
        """Once stopped, stop and reload signals are ignored: the interpreter puts the default
        actions back while it exits, and a SIGTERM arriving then would turn an orderly exit 0
        into death by signal.

        A signal that arrives while the handlers are swapped is caught by Python's C handler
        but found, when the interpreter next looks, with "ignore" as its handler: CPython then
        prints "Signal 15 ignored due to race condition" as an unraisable error (bpo-43406).
        Ignoring it is what is meant here, so that one message is kept out of the log, and the
        last ``signal.signal`` call (which first runs the signals that came in) makes sure it
        cannot come later, once the hook is back."""
        if self._wakeup is None:
            return
        hook = sys.unraisablehook

        def quiet(unraisable) -> None:
            if not (isinstance(unraisable.exc_value, OSError)
                    and "ignored due to race condition" in str(unraisable.exc_value)):
                hook(unraisable)

        sys.unraisablehook = quiet
        try:
            for signum in (*STOP_SIGNALS, signal.SIGHUP):
                signal.signal(signum, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)     # first runs any signal caught meanwhile
        finally:
            sys.unraisablehook = hook
        signal.set_wakeup_fd(-1)
        for sock in self._wakeup:
            sock.close()
        self._wakeup = None

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

    def _request_scan(self, what: str) -> None:
        """Ask the scanner to list every inbox (``ALL_SCANS``) or the one with this id."""
        with self._lock:
            self._scans_pending += 1
        self._scan_requests.put(what)

    def _scanner_loop(self) -> None:
        """Work off scan requests; list every inbox again every ``RESCAN_EVERY`` (not with
        ``--once``). Its own thread: a scan waits whenever the queue is full."""
        next_rescan = time.monotonic() + RESCAN_EVERY
        while not self._stopping.is_set():
            timeout = None if self.once else max(next_rescan - time.monotonic(), 0.0)
            try:
                what, requested = self._scan_requests.get(timeout=timeout), True
            except queue.Empty:
                what, requested = ALL_SCANS, False
            if what is None:
                break
            try:
                if what == ALL_SCANS:
                    next_rescan = time.monotonic() + RESCAN_EVERY
                    for inbox in list(self.inboxes.values()):
                        self._scan(inbox)
                elif (inbox := self.inboxes.get(what)) is not None:
                    self._scan(inbox)
            finally:
                if requested:
                    with self._lock:
                        self._scans_pending -= 1

    def _scan(self, inbox) -> None:
        try:
            for drop in inbox.scan():
                # an inbox a reload closed or replaced meanwhile: the new one is scanned anew
                if self._stopping.is_set() or self.inboxes.get(inbox.id) is not inbox:
                    return
                self._on_ready(drop)
        except (InboxError, OSError) as exc:
            self.log.error("inbox.scan_failed", inbox=inbox.id, error=str(exc))

    def _on_ready(self, drop: Drop) -> None:
        self._enqueue(WorkItem(drop))

    def _enqueue(self, item: WorkItem, *, wait: bool = True) -> bool:
        """Queue ``item`` unless it is queued or in flight already, or the daemon stops. The
        queue is bounded: watchers and the scanner wait for room; the main thread (``wait`` false)
        never does, it has signals and the watchdog to see to, and tries again later."""
        with self._lock:
            if item.key in self._pending or self._stopping.is_set():
                if item.job_id is None and item.key in self._pending:
                    self._sighted_again.add(item.key)
                return False
            self._pending.add(item.key)
        while True:
            try:
                self.queue.put(item, timeout=PUT_WAIT if wait else 0)
                break
            except queue.Full:
                if self._stopping.is_set() or not wait:
                    with self._lock:
                        self._pending.discard(item.key)
                    return False
        if item.job_id is None:
            self.metrics.files_seen.labels(item.drop.inbox).inc()
        self.metrics.queue_depth.set(self.queue.qsize())
        return True

    def _reload_config(self) -> None:
        self.notifier.reloading()
        try:
            new = settings.load(self.config_path)
        except ConfigError as exc:
            self.log.error("config.reload_failed", problems=exc.problems, kept="previous configuration")
            self.notifier.ready(self._status())
            return
        kept = self.config.daemon
        if (new.store.url != self.config.store.url or new.daemon.workers != kept.workers
                or new.daemon.worker_processes != kept.worker_processes):
            self.log.warning("config.reload_partial",
                             reason="store url, workers and worker_processes change on restart only")
        if new.console != self.config.console:
            self.log.warning("config.reload_partial", reason="[console] changes on restart only")
        old = {i.id: i for i in self.config.inboxes}
        fresh = {i.id: i for i in new.inboxes}
        self.config = dataclasses.replace(new, store=self.config.store, console=self.config.console,
                                          daemon=dataclasses.replace(new.daemon, workers=kept.workers,
                                                                     worker_processes=kept.worker_processes))
        for inbox_id in old.keys() - fresh.keys() | {k for k in old.keys() & fresh.keys() if old[k] != fresh[k]}:
            inbox = self.inboxes.pop(inbox_id, None)
            if inbox:
                inbox.close()
                self.log.info("inbox.stopped", inbox=inbox_id)
        for inbox_id, inbox_cfg in fresh.items():
            if inbox_id not in self.inboxes:
                self._start_inbox(inbox_cfg)
                if inbox_id in self.inboxes:
                    self._request_scan(inbox_id)
        self.log.info("config.reloaded", inboxes=list(self.inboxes), partners=list(new.partners))
        self.notifier.ready(self._status())

    # -- retries and requeued jobs --------------------------------------------------------------
    def _schedule_retry(self, retry: RetryIn) -> None:
        item = retry.item
        with self._lock:
            heapq.heappush(self._retries, (time.monotonic() + retry.seconds, next(self._seq), item))
        self.metrics.retries.labels(item.drop.inbox).inc()
        self.log.info("job.retry_scheduled", file=item.drop.name, job_id=item.job_id, attempt=retry.attempt,
                      delay_s=round(retry.seconds, 3))

    def _release_due_retries(self, now: float) -> None:
        due = []
        with self._lock:
            while self._retries and self._retries[0][0] <= now:
                due.append(heapq.heappop(self._retries)[2])
        for item in due:
            # not queued: its last run is still finishing, or the queue is full: soon
            if not self._enqueue(item, wait=False) and not self._stopping.is_set():
                with self._lock:
                    heapq.heappush(self._retries, (now + 0.1, next(self._seq), item))

    def _poll_queued(self) -> None:
        for job in self.store.queued(partners=self.config.partners):
            self._enqueue(WorkItem.for_job(job), wait=False)    # a full queue: at the next poll

    def _idle(self) -> bool:
        with self._lock:
            waiting = bool(self._pending) or bool(self._retries) or self._scans_pending > 0
        settling = any(i.settling() for i in self.inboxes.values())
        runnable = bool(self.store.queued(partners=self.config.partners, limit=1))
        return not waiting and not settling and self.queue.empty() and not runnable

    # -- leases ---------------------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        """Renew what this daemon holds; queue what dead daemons held. It stops only once the
        workers are done: an in-flight job keeps its lease to the end."""
        def beat(store) -> None:
            store.renew()
            expired = store.expire_leases()
            if expired:
                self.log.warning("jobs.lease_expired", jobs=expired,
                                 reason="their daemon stopped renewing them; queued to run again")
            self._heartbeat_ok = True

        def failed(exc: Exception) -> None:
            self._heartbeat_ok = False
            self.log.error("store.heartbeat_failed", error=str(exc), error_type=type(exc).__name__)
        self._periodically(max(self.config.store.lease / 3, 0.2), beat, failed,
                           until=lambda: self._stopping.is_set() and not any(w.is_alive() for w in self._workers))

    def _pruner_loop(self) -> None:
        """Change sets past ``history_days``: a few small batches per partner a minute, each its
        own short transaction (waiting for a partner's merge to commit never holds up the heartbeat)."""
        def prune(store) -> None:
            pruned = store.prune_history(self.config.daemon.history_days, max_batches=PRUNE_BATCHES)
            if pruned:
                self.log.info("history.pruned", changes=pruned, history_days=self.config.daemon.history_days)
        self._periodically(PRUNE_EVERY_S, prune, until=self._stopping.is_set,
                           failed=lambda exc: self.log.warning("history.prune_failed", error=str(exc),
                                                               error_type=type(exc).__name__))

    def _periodically(self, period: float, work: Callable[[CatalogStore], None],
                      failed: Callable[[Exception], None], *, until: Callable[[], bool]) -> None:
        """``work`` every ``period`` seconds until ``until()``, on a store connection of this
        thread's own (the workers' are busy inside their transactions). Whatever fails is told to
        ``failed`` and tried again next period, on a new connection."""
        store, due = None, 0.0
        while not until():
            if time.monotonic() < due:
                time.sleep(0.1)
                continue
            due = time.monotonic() + period
            try:
                store = store or open_store(self.config.store)
                work(store)
            except Exception as exc:  # noqa: BLE001 — these threads must outlive any store trouble
                failed(exc)
                if store is not None:
                    store.close()
                    store = None
        if store is not None:
            store.close()

    # -- workers --------------------------------------------------------------------------------
    def _should_stop(self) -> bool:
        return time.monotonic() > self._stop_at.value

    def _worker(self) -> None:
        """Take items off the queue and through their journey. The pipeline runs in a worker
        process lent for the file (its jobs are this daemon's: claimed under its holder,
        renewed by its heartbeat), else on this thread."""
        store = open_store(self.config.store)
        try:
            while not self._stopping.is_set():
                with self._taking:          # a file and its place in line for a process, together
                    try:
                        item = self.queue.get(timeout=0.2)
                    except queue.Empty:
                        continue
                    if item is None or self._stopping.is_set():
                        break
                    turn = self._processes.line_up() if self._processes is not None else None
                self.metrics.queue_depth.set(self.queue.qsize())
                with self._lock:
                    self._in_flight += 1
                self.metrics.in_flight.inc()
                started = time.monotonic()
                journey: Journey | None = None
                try:
                    # made inside the ``try``: whatever goes wrong, the file's place in line is
                    # given up below, or it would hold up the files behind it
                    journey = Journey(self.config, store, self.inboxes, webhooks=self.webhooks,
                                      should_stop=self._should_stop, turn=turn)
                    self._act(item, journey.run(item), started)
                except Exception:  # noqa: BLE001 — a defect must not take the worker down with it
                    self.log.exception("worker.unexpected_error", file=item.drop.name, job_id=item.job_id)
                finally:
                    if turn is not None:
                        turn.leave()
                    if journey is not None:
                        journey.release(item)
                    with self._lock:
                        self._in_flight -= 1
                        self._pending.discard(item.key)
                        again = item.key in self._sighted_again
                        self._sighted_again.discard(item.key)
                    self.metrics.in_flight.dec()
                    if again and (inbox := self.inboxes.get(item.drop.inbox)) is not None:
                        inbox.offer_again_in(item.drop, 0)      # read again: the content decides
        finally:
            store.close()

    def _act(self, item: WorkItem, verdict: Verdict, started: float) -> None:
        """Do what a journey's verdict says. Nothing is scheduled again once stopping: a job
        left ``failed`` is queued again by the next start (``store.recover``), a file is still
        in its inbox."""
        while isinstance(verdict, Fault):
            self._note_fault(verdict.component, verdict.error)
            verdict = verdict.then
        if self._stopping.is_set() and not isinstance(verdict, Done):
            return
        match verdict:
            case RetryIn():
                self._schedule_retry(verdict)
            case OfferAgainIn(seconds=seconds):
                inbox = self.inboxes.get(item.drop.inbox)
                if inbox is not None:
                    inbox.offer_again_in(item.drop, seconds)
            case Done(manifest=manifest) if manifest is not None:
                self.metrics.job_done(item.drop.inbox, manifest, time.monotonic() - started)
                self.last_job = f"{manifest['job_id']} {manifest['status']}"
                if manifest["status"] != JobStatus.QUARANTINED:
                    self._clear_faults(item.drop)   # a job went all the way through: spool, store, results work

    # -- health ---------------------------------------------------------------------------------
    def _note_fault(self, component: str, error: str) -> None:
        """Remember what is failing, for /healthz, until a job goes through again."""
        with self._lock:
            self._faults[component] = {"error": error, "since": time.time()}

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
                # what the inbox reported (failing polls, archived files that grew, its folder
                # gone) ends when it no longer does: the polls work again, the grown file was
                # taken in, the folder is back and watched
                elif self._faults.get(f"inbox {inbox_id}", {}).keys() & INBOX_REPORTS:
                    del self._faults[f"inbox {inbox_id}"]
        # lines moved out of the audit trail, or records cut off its end, wait for an operator's
        # look (audit ack)
        damage = AuditLog(self.config.daemon.audit_dir).damaged()
        with self._lock:
            if damage:
                what = ("lines of the audit trail were quarantined: look at them" if "moved_to" in damage
                        else "records were cut off the end of the audit trail: inbox-daemon audit verify")
                self._faults["audit"] = {"error": f"{what}, then inbox-daemon audit ack", **damage}
            else:
                self._faults.pop("audit", None)
        try:
            self.store.queued(limit=1)
            store_ok = True
        except Exception as exc:  # noqa: BLE001 — any store failure means unhealthy, reported as such
            store_ok = False
            self.log.error("store.unhealthy", error=str(exc))
        workers = sum(w.is_alive() for w in self._workers)
        heartbeat = self._heartbeat is not None and self._heartbeat.is_alive() and self._heartbeat_ok
        scanner = self._scanner is not None and self._scanner.is_alive()
        with self._lock:
            degraded = dict(self._faults)
        ok = not dead and store_ok and heartbeat and scanner and workers == len(self._workers) and not degraded
        return ok, {"inboxes": len(self.inboxes), "dead_inboxes": dead, "store": store_ok,
                    "heartbeat": heartbeat, "scanner": scanner, "workers": workers,
                    "queue": self.queue.qsize(), "degraded": degraded}

    # -- what the console shows -----------------------------------------------------------------
    def console_state(self) -> dict:
        """Health as /healthz last saw it, and each configured inbox's state: watching or polling,
        degraded (and why) while its looks fail, down when it could not be opened or its watcher
        ended; with the files it has seen settling and queued for a worker."""
        with self._lock:
            queued = Counter(key[1] for key in self._pending if key[0] == "drop")
            faults = dict(self._faults)
        inboxes = []
        for inbox_cfg in self.config.inboxes:
            inbox = self.inboxes.get(inbox_cfg.id)
            fault = faults.get(f"inbox {inbox_cfg.id}")
            state, how = inbox.looks() if inbox is not None else ("down", "")
            why = None
            if inbox is None:
                why = "it could not be opened (the log says why: inbox.unavailable)"
            elif not inbox.alive():
                state, why = "down", "its watcher stopped"
            elif fault:
                state, why = "degraded", str(fault.get("error", fault))
            inboxes.append({"id": inbox_cfg.id, "partner": inbox_cfg.partner, "kind": inbox_cfg.kind,
                            "state": state, "why": why, "how": how,
                            "settling": inbox.settling() if inbox is not None else 0,
                            "in_queue": queued.get(inbox_cfg.id, 0)})
        return {"health": self._health_state, "inboxes": inboxes, "in_flight": self._in_flight,
                "last_job": self.last_job}

    def _status(self) -> str:
        listing = ", listing inboxes" if self._scans_pending else ""
        return f"queue {self.queue.qsize()}{listing}, in flight {self._in_flight}, last job {self.last_job}"
