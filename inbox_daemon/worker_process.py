"""A worker's pipeline in a process of its own, so that workers add up.

A small file is ~15 ms of work that holds the GIL most of the time (mapping, judging, ~20
ledger and merge statements, the report): worker *threads* share one core whatever
``workers`` says. With ``worker_processes = true`` (the default) each worker thread hands
``Pipeline.process`` — the ledger claim, read, judge, stage, merge, commit and report — to a
process of its own and waits for its ``Result``. The daemon keeps what is one per daemon: the
inboxes and their watchers, the spool copy and its sha256, the file claims, the answer (the
partner's copy, the archive), retries, metrics and health.

What the process shares with the daemon:

- **its name in the store** (``holder``): the jobs it claims are the daemon's, renewed by the
  daemon's heartbeat and recovered as the daemon's after a crash;
- **the stop deadline**, a shared double: it stops between batches, as a thread did;
- **the configuration**, sent with the next file after a reload;
- **stdout**, where its log lines go, as the daemon's do;
- **one question back**: ``verify_source`` (is the partner's file still the one read?) is asked
  of the daemon's inbox right before the commit;
- **the read ahead**: the catalog a large file will be compared with is read in the process
  while the daemon spools the file.

The processes are lent to the daemon's worker threads a file at a time (``WorkerProcesses``),
once the file is spooled (a file of several blocks: before, so that the catalog is read while
it is copied) until its outcome. There are twice as many threads as processes: the answer (the
partner's copy, the archive, each synced) and the next file's spool copy are the daemon's work,
and a process bound to one thread sat idle through them. In a burst of 1,000 small files each
process waited for its next file a third of the time.

It never outlives the daemon: ``PR_SET_PDEATHSIG`` has the kernel kill it when the daemon dies,
so a killed daemon leaves nothing committing behind it. Stop signals are the daemon's to act on
(systemd's ``KillMode=mixed`` sends them to the daemon alone; a terminal's Ctrl-C reaches the
whole group): the process ignores them from the moment it logs ``worker.process_started``
(before, while its interpreter starts, one kills it, and the daemon starts another for the
next file). A crash test's failpoint reached in the process kills or freezes the daemon first,
as a power cut would (``failpoints.on_behalf_of``). A process that dies of anything else
while it holds a file (the OOM killer, a crash in a library) leaves a job the daemon cannot
account for: the daemon stops at once with an error, as it would have had the work run on one
of its threads, and the next start queues that job again.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from config import Config
from config.errors import Cancelled
from inbox_daemon import failpoints, logs, memory
from inbox_daemon.drop import Drop
from inbox_daemon.logs import get_logger
from inbox_daemon.pipeline import Pipeline, Result
from storage import open_store

_CONTEXT = multiprocessing.get_context("spawn")     # a fresh interpreter: the daemon has threads
_PR_SET_PDEATHSIG = 1
STARTUP_S = 120.0    # a fresh interpreter importing pyarrow: seconds at worst on a loaded host
_DAEMON_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}    # the daemon's to act on
DIED = 70           # the daemon's exit status when a worker process died under it (EX_SOFTWARE)


THREADS_PER_PROCESS = 2     # the daemon's worker threads per worker process (``WorkerProcesses``)
ORDER_GRACE_S = 0.5         # how long a file ready for a process waits for one taken before it to be copied


class WorkerProcesses:
    """The daemon's worker processes, lent to its worker threads a file at a time, in the order
    the threads took their files off the queue (``line_up``): one worker process applies files
    in the order they came, however the threads that hold them happen to run."""

    def __init__(self, config: Config, *, holder: str, stop_at: Any, count: int):
        started = [WorkerProcess(config, holder=holder, stop_at=stop_at, name=f"worker-{n}-process")
                   for n in range(count)]
        for process in started:         # started together, waited for together
            process.wait_ready()
        self._idle: deque[WorkerProcess] = deque(started)
        self._lent: set[WorkerProcess] = set()
        self._line: deque[Turn] = deque()
        self._changed = threading.Condition()
        self._closing = False

    def line_up(self) -> Turn:
        """A place in line for the file a thread has just taken off the queue (the thread takes
        it and lines up in one step, under the daemon's lock)."""
        turn = Turn(self)
        with self._changed:
            self._line.append(turn)
        return turn

    def _lend(self, turn: Turn) -> WorkerProcess:
        """A free process once no file taken before this one is waiting for one, and none is
        still being copied, or none has been for ``ORDER_GRACE_S``: a file whose copy (a hung
        mount, a re-check of a large spooled copy) takes longer holds up no other."""
        with self._changed:
            if turn not in self._line:
                self._line.append(turn)         # it left the line before: at its end again
            asked = time.monotonic()
            turn.asking = True
            try:
                while True:
                    if self._closing:
                        raise Cancelled("the daemon is stopping: the file is left in its inbox for the next start")
                    ahead = list(itertools.takewhile(lambda t: t is not turn, self._line))
                    waited = time.monotonic() - asked
                    if not self._idle or any(t.asking for t in ahead):
                        self._changed.wait()            # a process given back, a turn gone
                    elif ahead and waited < ORDER_GRACE_S:
                        self._changed.wait(ORDER_GRACE_S - waited)     # files ahead still being copied
                    else:
                        break
                self._line.remove(turn)
                self._changed.notify_all()      # the next in line, if another process is idle
                process = self._idle.popleft()
                self._lent.add(process)
                return process
            finally:
                turn.asking = False

    def _give_back(self, process: WorkerProcess) -> None:
        with self._changed:
            self._lent.discard(process)
            closing = self._closing
            if not closing:
                self._idle.append(process)
                self._changed.notify_all()
        if closing:
            process.close()             # given back after the stop: ended by its last borrower

    def _leave(self, turn: Turn) -> None:
        with self._changed:
            if turn in self._line:
                self._line.remove(turn)
                self._changed.notify_all()

    def kill_lent(self) -> list[str]:
        """Past the stop timeout: the processes still lent, in the middle of a file (a merge
        or a commit of a large one, between whose steps nothing is asked), killed. What they
        had not committed rolls back, and the next start takes the job again; an outcome
        committed but not reported is reported then. Their threads end their files quietly."""
        with self._changed:
            lent = list(self._lent)
        for process in lent:
            process.kill_for_stop()
        return [process.name for process in lent]

    def close(self) -> None:
        """At a stop: lend no more (a thread still in line gives its file up, never claimed) and
        end the idle processes; each one lent ends when its file is done and it is given back,
        or is killed past the stop timeout (``kill_lent``)."""
        with self._changed:
            self._closing = True
            idle, self._idle = list(self._idle), deque()
            self._changed.notify_all()
        for process in idle:
            process.ask_to_end()
        for process in idle:
            process.close()


class Turn:
    """A thread's place in line for a worker process (``WorkerProcesses.line_up``)."""

    def __init__(self, processes: WorkerProcesses):
        self._processes = processes
        self.asking = False             # waiting in ``lent`` (else its file is still being copied)

    @contextlib.contextmanager
    def lent(self) -> Iterator[WorkerProcess]:
        """A process for this file, once this turn has come and one is free; given back whatever
        became of the file. ``Cancelled`` when the daemon stops first."""
        process = self._processes._lend(self)
        try:
            yield process
        finally:
            self._processes._give_back(process)

    def leave(self) -> None:
        """Out of line, lent or not (a file answered without applying it, a duplicate)."""
        self._processes._leave(self)


class WorkerProcess:
    """The daemon's side of one process, used by one thread at a time (``WorkerProcesses``)."""

    def __init__(self, config: Config, *, holder: str, stop_at: Any, name: str):
        self._args = (holder, stop_at, os.getpid(), logs.settings(), failpoints.share(_CONTEXT))
        self._name = name
        self._killed_for_stop = False
        self._start(config)

    @property
    def name(self) -> str:
        return self._name

    def kill_for_stop(self) -> None:
        """Killed by the daemon's stop (``WorkerProcesses.kill_lent``): not a death to stop for."""
        self._killed_for_stop = True
        self._process.kill()

    def _start(self, config: Config) -> None:
        """A process that opens its store at once, as a worker thread does: the catalog it
        works on is the one there when the daemon started (``StoreReplaced`` otherwise)."""
        self._conn, child = _CONTEXT.Pipe()
        self._process = _CONTEXT.Process(target=serve, name=self._name, daemon=True,
                                         args=(child, config, *self._args))
        self._process.start()
        child.close()
        self._config: Config | None = config     # the configuration the process has
        self._ready = False

    def wait_ready(self, timeout: float = STARTUP_S) -> None:
        """Until its interpreter has started and it ignores stop signals (``worker.process_started``):
        a daemon is ready once its workers are."""
        if self._ready:
            return
        if not self._conn.poll(timeout):
            raise WorkerError(f"{self._name} did not start within {timeout:.0f} s")
        try:
            self._conn.recv()
        except EOFError:
            raise WorkerError(f"{self._name} died while it started (exit code {self._process.exitcode})") from None
        self._ready = True

    def read_ahead(self, config: Config, partner_id: str, *, size: int, mode: str) -> None:
        """The store's ``read_ahead`` in the process, whose load will use it: sent before the
        file is spooled, so the catalog is read while it is copied. No answer is waited for."""
        self._alive(config)
        try:
            self._conn.send(("ahead", self._config_for(config), (partner_id, size, mode)))
        except OSError:
            pass                # it died: ``process`` tells, and starts another for the next file

    def process(self, config: Config, spooled: Path, sha256: str, drop: Drop, *, fmt: str | None, mode: str,
                watching: bool, verify_source: Callable[[], None]) -> Result:
        """``Pipeline.process`` in the process; what it raises is raised here."""
        self._alive(config)
        try:
            self._conn.send(("process", self._config_for(config), (spooled, sha256, drop, fmt, mode, watching)))
            while True:
                kind, value = self._conn.recv()
                if kind == "verify":
                    self._conn.send(_sendable(_outcome(verify_source)))
                elif kind == "raised":
                    raise value
                else:
                    return value
        except (EOFError, BrokenPipeError, ConnectionResetError):
            if self._killed_for_stop:
                raise Cancelled("the daemon stopped past stop_timeout in the middle of the file: what was not "
                                "committed is rolled back, and the next start takes the job again") from None
            self._died(drop)
            raise

    def _alive(self, config: Config) -> None:
        if not self._process.is_alive():
            # it died between two files (killed by hand, the OOM killer): it held nothing
            get_logger(component="daemon").error("worker.process_restarted", process=self._name,
                                                  exitcode=self._process.exitcode, reason="it died between two files")
            self._conn.close()
            self._start(config)
        self.wait_ready()

    def _config_for(self, config: Config) -> Config | None:
        """``config`` to send: None when the process has it already (it is sent once a reload)."""
        if config is self._config:
            return None
        self._config = config
        return config

    def _died(self, drop: Drop) -> None:
        """It died holding a job the daemon cannot account for: stop, and let the next start
        recover it (systemd restarts a daemon that exits with an error)."""
        self._process.join(1.0)
        get_logger(component="daemon").critical(
            "worker.process_died", process=self._process.name, exitcode=self._process.exitcode, file=drop.name,
            reason="the job it held is queued again by the next start; the daemon stops now")
        sys.stdout.flush()
        os._exit(DIED)

    def ask_to_end(self) -> None:
        """It ends after the file it is on (told again by ``close``: the second is never read)."""
        try:
            self._conn.send(None)
        except OSError:
            pass            # gone already

    def close(self, timeout: float = 5.0) -> None:
        """Ask it to end (after the file it is on), then make sure it did."""
        self.ask_to_end()
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout)
        self._conn.close()


def deadline() -> Any:
    """The stop deadline the daemon shares with its worker processes (``time.monotonic()``,
    the same clock in every process of the host; infinity until a stop)."""
    return _CONTEXT.Value("d", float("inf"), lock=False)


class WorkerError(Exception):
    """What a worker process raised, where that exception cannot cross to the daemon as it is."""


def _outcome(call: Callable[[], None]) -> tuple[str, Any]:
    try:
        call()
        return "ok", None
    except Exception as exc:  # noqa: BLE001 — sent back and raised where the question was asked
        return "raised", exc


def _sendable(reply: tuple[str, Any]) -> tuple[str, Any]:
    """``reply`` as it can cross the pipe: an exception that does not survive pickling (its
    class takes other arguments than its message) crosses as a ``WorkerError`` naming it."""
    kind, value = reply
    if kind != "raised":
        return reply
    try:
        pickle.loads(pickle.dumps(value))
        return reply
    except Exception:  # noqa: BLE001 — any failure to cross is answered the same way
        return kind, WorkerError(f"{type(value).__name__}: {value}")


def serve(conn: Connection, config: Config, holder: str, stop_at: Any, daemon_pid: int,
          log_settings: dict[str, Any], failpoint_counts: Any) -> None:
    """The process: run each file it is sent through its pipeline, until told to end."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != daemon_pid:
        return                  # the daemon died before the line above: nothing to work for
    memory.tune()               # a fresh interpreter: the daemon's malloc settings are not inherited
    for signum in _DAEMON_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    failpoints.on_behalf_of(daemon_pid, failpoint_counts)
    logs.adopt(log_settings)
    log = get_logger(component="daemon", process=multiprocessing.current_process().name)
    pipeline: Pipeline | None = None
    store = None
    try:
        store = open_store(config.store, holder=holder)
    except Exception as exc:  # noqa: BLE001 — as a worker thread's: tried again with its first file
        log.error("worker.store_unavailable", error=str(exc), error_type=type(exc).__name__)
    log.info("worker.process_started", pid=os.getpid())
    conn.send(("ready", os.getpid()))

    def should_stop() -> bool:
        return time.monotonic() > stop_at.value

    def verify_source() -> None:
        conn.send(("verify", None))
        kind, value = conn.recv()
        if kind == "raised":
            raise value

    try:
        while True:
            try:
                message = conn.recv()
            except EOFError:
                return
            if message is None:
                return
            kind, sent, args = message
            try:
                if sent is not None:
                    config, pipeline = sent, None
                store = store or open_store(config.store, holder=holder)
                if kind == "ahead":
                    partner_id, size, mode = args
                    store.read_ahead(partner_id, size=size, mode=mode)
                    continue
                spooled, sha256, drop, fmt, mode, watching = args
                pipeline = pipeline or Pipeline(config, store, actor="daemon")
                reply: tuple[str, Any] = ("result", pipeline.process(
                    spooled, sha256, drop, fmt=fmt, mode=mode, should_stop=should_stop, watching=watching,
                    verify_source=verify_source))
            except BaseException as exc:  # noqa: BLE001 — the daemon's thread raises it, as it would have
                if kind == "ahead":
                    continue            # no read ahead: the load reads the catalog itself
                reply = ("raised", exc)
            conn.send(_sendable(reply))
    finally:
        if store is not None:
            store.close()
