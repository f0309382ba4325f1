"""What else runs on the host, or in the operator's terminal, must not stop the daemon: clients
that open health connections and go quiet, another process on the health port, signals in a
burst, a backlog at start-up under systemd's start timeout, and file names that are terminal
escape sequences. Real ``inbox-daemon`` processes, real sockets and pipes."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import time
import unicodedata
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import run_cli
from tests.daemon_harness import EXE, config, manifests, wait_for, wait_manifests

DAEMON_NOFILE = 1024        # systemd's default soft limit of open files for a service
IDLE_CONNECTIONS = 1000
STOP_TIMEOUT = 1.0          # ``stop_timeout`` of the harness's config
BACKLOG = 20_000


def _drop(inbox: Path, name: str, text: str) -> None:
    tmp = inbox / f".{name}.part"
    tmp.write_text(text)
    tmp.rename(inbox / name)


def _healthz(address: str):
    def answer():
        try:
            with urllib.request.urlopen(f"http://{address}/healthz", timeout=2) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:      # 503 is an answer too: the server is there
            with exc:
                return json.loads(exc.read())
        except OSError:
            return None
    return answer


@contextlib.contextmanager
def _own_open_files(at_least: int):
    """This test process may hold ``at_least`` descriptors (within its hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = soft if soft >= at_least else min(at_least, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _raw_controls(text: str) -> set[str]:
    return {c for c in text if c != "\n" and (unicodedata.category(c) == "Cc" or c in "\u2028\u2029")}


# -- the health port ---------------------------------------------------------------------------

def test_idle_connections_to_the_health_port_leave_the_workers_their_files(tmp_path, daemons):
    d = daemons(tmp_path, config())
    # the daemon under systemd's default limit of open files, as a service runs
    resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE, (DAEMON_NOFILE, DAEMON_NOFILE))
    host, port = d.health.rsplit(":", 1)
    idle: list[socket.socket] = []
    with _own_open_files(IDLE_CONNECTIONS + 256):
        try:
            give_up = time.monotonic() + 15
            while len(idle) < IDLE_CONNECTIONS and time.monotonic() < give_up:
                with contextlib.suppress(OSError):   # connect, send nothing, keep it open
                    idle.append(socket.create_connection((host, int(port)), timeout=3))
                time.sleep(0.002)                    # a leak, not a flood: SYNs beyond the listen
                                                     # backlog would wait a second each
            inbox = tmp_path / "inbox" / "default"
            for n in range(3):
                _drop(inbox, f"feed-{n}.csv", f"sku,name\nS-{n},x\n")

            with contextlib.suppress(AssertionError):
                wait_manifests(tmp_path, 3, timeout=20)
            found = manifests(tmp_path)

            print(f"{len(idle)} idle health connections: {len(found)} of 3 files answered")
            assert [m["status"] for m in found] == ["succeeded"] * 3
            assert wait_for(_healthz(d.health), timeout=10, what="/healthz answering")["store"] is True
        finally:
            for sock in idle:
                sock.close()
    assert d.stop() == 0


def test_a_taken_health_port_is_one_clear_line_and_exit_code_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        (tmp_path / "daemon.toml").write_text(
            config().replace('health = "127.0.0.1:0"', f'health = "{address}"'))

        done = subprocess.run([EXE, "run", "--config", "daemon.toml"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=30)

    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert address in line and "in use" in line.lower()
    events = [json.loads(text) for text in done.stdout.splitlines()]
    assert [(e["event"], e["address"]) for e in events if e["level"] == "error"] == [
        ("daemon.health_unavailable", address)]
    assert not (tmp_path / "var" / "catalog.db").exists()       # it stopped before touching state


# -- signals -----------------------------------------------------------------------------------

def test_reload_and_stop_signals_in_quick_succession_end_the_daemon_in_time_each_time(tmp_path, daemons):
    for attempt in range(3):
        root = tmp_path / f"start-{attempt}"
        root.mkdir()
        d = daemons(root, config())
        started = time.monotonic()
        while time.monotonic() - started < 0.5 and d.proc.poll() is None:
            d.signal(signal.SIGHUP)              # `systemctl reload` ...
            d.signal(signal.SIGTERM)             # ... and `systemctl stop` right behind it
        try:
            code = d.proc.wait(STOP_TIMEOUT + 5)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - started
        log = d.log_path.read_text()
        assert code == 0, f"start {attempt}: exit {code} after {took:.1f} s\n{log[-3000:]}"
        assert [e for e in d.events() if e["event"] == "raw"] == [], log[-3000:]
        assert d.events()[-1]["event"] == "daemon.stopped"


# -- start-up with a backlog -------------------------------------------------------------------

def test_ready_is_sent_while_a_backlog_of_20000_files_still_waits(tmp_path):
    inbox = tmp_path / "inbox" / "default"
    inbox.mkdir(parents=True)
    for n in range(BACKLOG):
        (inbox / f"f{n:05d}.csv").write_bytes(b"sku,name\nS-%d,x\n" % n)
    results = tmp_path / "var" / "results" / "default"

    def answered() -> int:
        return sum(1 for _ in os.scandir(results)) if results.is_dir() else 0

    (tmp_path / "daemon.toml").write_text(config())
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(25)
    with notify, open(tmp_path / "daemon.log", "w") as log:
        started = time.monotonic()
        proc = subprocess.Popen([EXE, "run", "--config", "daemon.toml"], cwd=tmp_path, stdout=log,
                                stderr=subprocess.STDOUT,
                                env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
        try:
            while "READY=1" not in notify.recv(4096).decode().split("\n"):
                pass
            ready_after, answered_at_ready = time.monotonic() - started, answered()
            print(f"READY=1 after {ready_after:.2f} s with {BACKLOG} files waiting, "
                  f"{answered_at_ready} answered by then")
            assert answered_at_ready < 1_000
            wait_for(lambda: answered() >= 100, timeout=20, what="the backlog being worked off")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(STOP_TIMEOUT + 10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


# -- the operator's terminal -------------------------------------------------------------------

ESCAPE_NAMES = ["\x1b]0;evil\x07.csv", "\x1b[2Jclear.csv", "c1\x9b2Jcsi.csv"]


def test_file_names_reach_the_terminal_escaped_and_json_output_keeps_them_exact(tmp_path):
    env = {"INBOX_DAEMON_CONFIG": ""}
    for n, name in enumerate(ESCAPE_NAMES):
        (tmp_path / name).write_text(f"sku,name\nE-{n},x\n")
        assert run_cli("ingest", name, cwd=tmp_path, env=env).returncode == 0

    listed = run_cli("jobs", "list", cwd=tmp_path, env=env)
    as_json = run_cli("jobs", "list", "--json", cwd=tmp_path, env=env)
    jobs = json.loads(as_json.stdout)
    shown = [run_cli("jobs", "show", job["id"], cwd=tmp_path, env=env).stdout for job in jobs]

    assert listed.returncode == 0 and not _raw_controls(listed.stdout), repr(listed.stdout)
    assert "\\x1b]0;evil\\x07.csv" in listed.stdout and "c1\\x9b2Jcsi.csv" in listed.stdout
    assert sorted(job["source_name"] for job in jobs) == sorted(ESCAPE_NAMES)
    assert not _raw_controls(as_json.stdout)
    for text in shown:
        assert not _raw_controls(text), repr(text)
        assert json.loads(text)["source_name"] in ESCAPE_NAMES


def test_a_reader_that_goes_away_ends_jobs_list_quietly(tmp_path):
    env = {**os.environ, "INBOX_DAEMON_CONFIG": ""}
    (tmp_path / "a.csv").write_text("sku,name\nA,x\n")
    assert run_cli("ingest", "a.csv", cwd=tmp_path).returncode == 0
    # `inbox-daemon jobs list | head -1`: the reader has what it wanted and closed the pipe
    proc = subprocess.Popen([EXE, "jobs", "list"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    code = proc.wait(30)
    proc.stderr.close()
    assert err == "" and code in (0, 141), (code, err)


def test_jobs_list_from_another_directory_is_refused_instead_of_showing_an_empty_catalog(tmp_path):
    home = tmp_path / "srv"
    home.mkdir()
    (home / "daemon.toml").write_text(config())         # state_dir = "var": relative
    (home / "a.csv").write_text("sku,name\nA,x\n")
    assert run_cli("ingest", "a.csv", "--config", "daemon.toml", cwd=home).returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    listed = run_cli("jobs", "list", "--config", home / "daemon.toml", cwd=elsewhere)

    assert listed.returncode == 2 and listed.stdout == ""
    assert str(elsewhere / "var" / "catalog.db") in listed.stderr and "relative" in listed.stderr
    assert not (elsewhere / "var").exists()                # no empty catalog made on the way
    assert len(json.loads(run_cli("jobs", "list", "--json", "--config", "daemon.toml", cwd=home).stdout)) == 1
