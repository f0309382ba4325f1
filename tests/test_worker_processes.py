"""Workers whose pipeline runs in processes of their own (``worker_processes``, the default).

Real daemons, real processes, real signals: the worker processes are found as the daemon's
children in /proc, killed, signalled and waited for the way an operator, systemd or the OOM
killer would."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
from pathlib import Path

import pytest

from config.errors import Cancelled
from inbox_daemon import memory, settings
from inbox_daemon.worker_process import ORDER_GRACE_S, WorkerProcesses, deadline
from tests.conftest import ledger, products, write_csv
from tests.daemon_harness import config, wait_for, wait_manifests

INBOX = Path("inbox") / "default"


def _children(pid: int) -> set[int]:
    """The processes ``pid`` started that are still alive (every thread's children)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except FileNotFoundError:
            continue            # a thread that ended meanwhile
    return found


def _workers(pid: int) -> set[int]:
    """The daemon's worker processes (not multiprocessing's resource tracker)."""
    return {c for c in _children(pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()}


def _written(pid: int) -> int:
    """Bytes ``pid`` has written so far (``wchar``: files, the catalog, pipes)."""
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(io["wchar"])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _drop(root: Path, name: str, rows: list[list]) -> None:
    staged = root / f".{name}.part"
    write_csv(staged, ["sku", "name", "price"], rows)
    (root / INBOX).mkdir(parents=True, exist_ok=True)
    os.rename(staged, root / INBOX / name)


def test_each_worker_has_a_process_and_files_go_through_them(tmp_path, daemons):
    d = daemons(tmp_path, config())
    workers = wait_for(lambda: len(_workers(d.proc.pid)) == 2 and _workers(d.proc.pid), what="two worker processes")
    before = sum(_written(w) for w in workers)
    for i in range(10):
        _drop(tmp_path, f"f{i}.csv", [[f"P-{i}", f"item {i}", "1.00"]])
    done = wait_manifests(tmp_path, 10, status="succeeded")
    assert len(done) == 10 and set(products(tmp_path)) == {f"p-{i}" for i in range(10)}
    assert _workers(d.proc.pid) == workers          # the same processes did all of it
    # the manifests (and the catalog's pages, the audit records) were written by them
    manifest_bytes = sum(p.stat().st_size for p in (tmp_path / "var" / "results" / "default").glob("*.result.json"))
    assert sum(_written(w) for w in workers) - before >= manifest_bytes
    assert d.wait_event("daemon.started")["worker_processes"] is True
    assert d.stop() == 0
    assert not any(_alive(w) for w in workers)


def _huge_pages(pid: int) -> bool:
    """May ``pid`` be given transparent huge pages (``THP_enabled`` in /proc, Linux 4.15+)?"""
    status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if ":\t" in line)
    if "THP_enabled" not in status:
        pytest.skip("this kernel does not say whether a process may have transparent huge pages")
    return status["THP_enabled"].strip() == "1"


def test_the_daemon_and_its_worker_processes_run_without_transparent_huge_pages(tmp_path, daemons):
    # the flag is inherited: a command run in this test process (the cli fixture) set it here
    # too, so the daemon is started from a process with the kernel's default, huge pages allowed
    ctypes.CDLL(None).prctl(memory.PR_SET_THP_DISABLE, 0, 0, 0, 0)
    assert _huge_pages(os.getpid())
    d = daemons(tmp_path, config())
    workers = wait_for(lambda: len(_workers(d.proc.pid)) == 2 and _workers(d.proc.pid), what="two worker processes")
    assert not _huge_pages(d.proc.pid)
    assert not any(_huge_pages(w) for w in workers)


def test_a_killed_daemon_leaves_no_worker_process_behind(tmp_path, daemons):
    d = daemons(tmp_path, config())
    workers = wait_for(lambda: len(_workers(d.proc.pid)) == 2 and _workers(d.proc.pid), what="two worker processes")
    d.kill()
    wait_for(lambda: not any(_alive(w) for w in workers), what="the worker processes to die with their daemon")


def test_stop_signals_sent_to_worker_processes_are_left_to_the_daemon(tmp_path, daemons):
    """A terminal's Ctrl-C reaches the whole process group, systemd's default KillMode the whole
    cgroup: the worker processes go on, and the daemon stops them in order once it is told."""
    d = daemons(tmp_path, config())
    workers = wait_for(lambda: len(_workers(d.proc.pid)) == 2 and _workers(d.proc.pid), what="two worker processes")
    for worker in workers:              # from here on they ignore them
        d.wait_event("worker.process_started", pid=worker)
    for worker in workers:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            os.kill(worker, signum)
    _drop(tmp_path, "after.csv", [["A-1", "after", "2.00"]])
    wait_manifests(tmp_path, 1, status="succeeded")
    assert _workers(d.proc.pid) == workers
    assert d.stop() == 0


def test_a_worker_process_killed_between_files_is_started_again(tmp_path, daemons):
    d = daemons(tmp_path, config().replace("workers = 2", "workers = 1"))
    [worker] = wait_for(lambda: _workers(d.proc.pid), what="the worker process")
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: not _alive(worker), what="the worker process gone")
    _drop(tmp_path, "next.csv", [["N-1", "next", "3.00"]])
    [done] = wait_manifests(tmp_path, 1, status="succeeded")
    d.wait_event("worker.process_restarted")
    assert products(tmp_path)["n-1"]["price_cents"] == 300
    assert d.stop() == 0


def test_a_worker_process_killed_in_the_middle_of_a_file_stops_the_daemon_and_a_restart_applies_it_once(
        tmp_path, daemons):
    d = daemons(tmp_path, config().replace("workers = 2", "workers = 1"))
    [worker] = wait_for(lambda: _workers(d.proc.pid), what="the worker process")
    rows = [[f"B-{i:06d}", f"bulk {i}", "1.00"] for i in range(150_000)]
    _drop(tmp_path, "bulk.csv", rows)
    d.wait_event("job.started", timeout=60)
    os.kill(worker, signal.SIGKILL)
    assert d.proc.wait(30) == 70
    assert any(e.get("event") == "worker.process_died" for e in d.events())
    assert ledger(tmp_path) == [("bulk.csv", "running", 1)]       # what the next start recovers
    again = daemons(tmp_path, config().replace("workers = 2", "workers = 1"))
    [done] = wait_manifests(tmp_path, 1, status="succeeded", timeout=120)
    assert done["rows"]["inserted"] == 150_000 and len(products(tmp_path)) == 150_000
    assert [(name, status) for name, status, _ in ledger(tmp_path)] == [("bulk.csv", "succeeded")]
    assert again.stop() == 0


def test_a_stop_kills_a_worker_process_still_in_the_middle_of_a_file_at_stop_timeout_and_a_restart_applies_it(
        tmp_path, daemons):
    """A merge or commit of a large file asks nothing between its steps: at stop_timeout (1 s
    here) its process is killed, the daemon exits 0 at once, and nothing of the file was
    applied; the next start applies it once. (The worker is frozen, as if its merge took
    minutes: the daemon used to wait for it however long that took, logging after "stopped".)"""
    d = daemons(tmp_path, config().replace("workers = 2", "workers = 1"))
    [worker] = wait_for(lambda: _workers(d.proc.pid), what="the worker process")
    _drop(tmp_path, "bulk.csv", [[f"B-{i:06d}", f"bulk {i}", "1.00"] for i in range(50_000)])
    d.wait_event("job.started", timeout=60)
    os.kill(worker, signal.SIGSTOP)

    assert d.stop(timeout=15) == 0
    assert not _alive(worker)
    events = [e.get("event") for e in d.events()]
    assert "daemon.workers_stopped" in events and events[-1] == "daemon.stopped"
    assert products(tmp_path) == {} and ledger(tmp_path) == [("bulk.csv", "running", 1)]
    again = daemons(tmp_path, config().replace("workers = 2", "workers = 1"))
    [done] = wait_manifests(tmp_path, 1, status="succeeded", timeout=120)
    assert done["rows"]["inserted"] == 50_000 and len(products(tmp_path)) == 50_000
    assert again.stop() == 0


@pytest.mark.parametrize("processes", [True, False])
def test_files_are_applied_with_worker_processes_and_with_threads(tmp_path, daemons, processes):
    d = daemons(tmp_path, config(daemon=f"worker_processes = {str(processes).lower()}"))
    for i in range(6):
        _drop(tmp_path, f"f{i}.csv", [[f"S-{i}", f"item {i}", f"{i}.50"]])
    wait_manifests(tmp_path, 6, status="succeeded")
    assert {k: v["price_cents"] for k, v in products(tmp_path).items()} == {f"s-{i}": i * 100 + 50 for i in range(6)}
    assert bool(_workers(d.proc.pid)) is processes
    assert d.stop() == 0


def _lending(tmp_path: Path, monkeypatch) -> WorkerProcesses:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "daemon.toml").write_text(config())
    return WorkerProcesses(settings.load(str(tmp_path / "daemon.toml")), holder="test", stop_at=deadline(), count=1)


def test_one_worker_process_is_lent_in_the_order_the_threads_took_their_files(tmp_path, monkeypatch):
    processes = _lending(tmp_path, monkeypatch)
    try:
        busy = processes.line_up()
        turns = [processes.line_up() for _ in range(4)]      # four files taken off the queue, in order
        lent: list[tuple[int, int]] = []
        release = threading.Event()

        def hold() -> None:
            with busy.lent():
                release.wait(10)

        def apply(n: int) -> None:
            with turns[n].lent() as process:
                lent.append((n, process._process.pid))

        holder = threading.Thread(target=hold)
        holder.start()
        wait_for(lambda: not busy.asking and busy not in processes._line, what="the process lent to the first file")
        # the threads holding the later files ask first, the first file's thread last; all of
        # them wait while the process applies the file before
        threads = []
        for n in (3, 2, 1, 0):
            threads.append(threading.Thread(target=apply, args=(n,)))
            threads[-1].start()
            wait_for(lambda n=n: turns[n].asking, what=f"file {n} waiting in line")
        release.set()
        for thread in (holder, *threads):
            thread.join(10)
        assert [n for n, _ in lent] == [0, 1, 2, 3]
        assert len({pid for _, pid in lent}) == 1
        # a file answered without the pipeline (a duplicate) leaves the line: the next one goes on
        first, second = processes.line_up(), processes.line_up()
        first.leave()
        assert _borrow(second).wait(5), "no process lent"
    finally:
        processes.close()


def _borrow(turn) -> threading.Event:
    """``turn`` asks for a process on a thread (a regression fails the test, never hangs it);
    the event is set once it is lent."""
    got = threading.Event()

    def borrow() -> None:
        with turn.lent():
            got.set()

    threading.Thread(target=borrow, daemon=True).start()
    return got


def test_a_file_still_being_copied_holds_up_the_files_behind_it_only_briefly(tmp_path, monkeypatch):
    """The first file taken never asks for a process (its copy hangs on a dead mount, say): the
    file behind it, ready, gets the idle process after ``ORDER_GRACE_S`` instead of waiting."""
    processes = _lending(tmp_path, monkeypatch)
    try:
        copying, ready = processes.line_up(), processes.line_up()
        lent = _borrow(ready)
        assert not lent.wait(ORDER_GRACE_S / 5), "the file taken first, still being copied, kept its turn"
        assert lent.wait(5), "held up for good by a file still being copied"
        copying.leave()
    finally:
        processes.close()


def test_at_a_stop_a_thread_in_line_gives_its_file_up_and_the_lent_process_ends_when_given_back(tmp_path, monkeypatch):
    processes = _lending(tmp_path, monkeypatch)
    holding, waiting = processes.line_up(), processes.line_up()
    release, outcome = threading.Event(), []

    def hold() -> None:
        with holding.lent() as process:
            outcome.append(process._process)
            release.wait(10)

    def wait_in_line() -> None:
        try:
            with waiting.lent():
                outcome.append("lent")
        except Cancelled:
            outcome.append("cancelled")

    holder, waiter = threading.Thread(target=hold), threading.Thread(target=wait_in_line)
    holder.start()
    wait_for(lambda: outcome, what="the process lent")
    waiter.start()
    wait_for(lambda: waiting.asking, what="the second file waiting in line")
    processes.close()
    waiter.join(10)
    assert outcome[1:] == ["cancelled"]
    process = outcome[0]
    assert process.is_alive(), "a lent process is not ended under the file it is on"
    release.set()
    holder.join(10)
    assert not process.is_alive(), "given back after the stop: ended"
