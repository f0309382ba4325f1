"""Faults injected for real into a running ``inbox-daemon run`` subprocess.

Each scenario: the fault is switched on while a file is on its way, then off again. What must
hold every time: the work is retried with backoff, it ends correctly once the fault clears, nothing
is applied twice, the daemon stays up (and never logs ``worker.unexpected_error``), and, where the
daemon can know about the fault, ``/healthz`` says so while it lasts.

Scenarios and how the fault is made:

1. SFTP (``tests/sftp_server.py``, asyncssh on loopback): a download stalled past the client's
   20 s timeout (``server.slow``); the server killed mid-download and kept down a while before it
   is restarted (``test_sftp.py::test_server_killed_mid_download_is_retried_and_applied_once``
   covers an immediate restart; here the outage lasts, and ``/healthz`` is watched); and an
   outage longer than the retry budget.
2. S3 (moto's server behind a proxy derived from ``test_s3.FaultProxy``): 500, 503 SlowDown and a
   connection reset answered to GetObject and ListObjectsV2 (botocore's retries absorb them), a
   download cut off mid-body by a TCP reset (the daemon's own retry), and an outage where every
   request is reset (``test_s3.py::test_throttling_and_5xx_are_retried_and_the_file_applied_once``
   covers 503/500 alone).
3. The catalog database locked by another process: ``BEGIN EXCLUSIVE`` held with Python's
   sqlite3 (a process of its own) shorter and longer than the store's 30 s busy timeout.
4. The results directory unusable: ``var/results/<partner>`` is made a regular file (tests run as
   root, so permissions would not stop a write), then restored.
5. The spool full: a real tmpfs of 4 MiB mounted on ``var/spool`` (``ENOSPC``), grown live by a
   remount; and, without mount permission or as a second way, ``RLIMIT_FSIZE`` set on the running
   daemon with ``prlimit`` (``EFBIG``) and lifted again the same way.

Where the daemon cannot know, /healthz is watched but not judged: a stalled download looks like a
slow one until the client's timeout; 5xx, SlowDown and resets that botocore retries within one
call never reach the daemon; a lock shorter than the store's busy timeout is ordinary contention.

At the end of the module a line tallies the scenarios that passed.
"""

from __future__ import annotations

import contextlib
import json
import resource
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ledger, products
from tests.daemon_harness import DaemonProcess, config, manifests, wait_for
from tests.sftp_server import SftpTestServer
from tests.test_s3 import (  # noqa: F401 — fixtures, used by name
    BUCKET,
    CSV,
    FaultProxy,
    _keys,
    _operation,
    _ProxyHandler,
    _s3_config,
    aws_env,
    moto,
    moto_server,
    s3,
)
from tests.test_sftp import _outbound, keys, secrets, server  # noqa: F401 — fixtures, used by name

# Retry without giving up while a fault lasts (the defaults give up after 5 attempts): every
# scenario asserts what happens once the fault clears, not how long the budget lasts.
RETRYING = 'max_attempts = 1000\nretry_max = "500ms"\n'
HEALTH_REFRESH = 1.0        # the daemon recomputes /healthz once a second (daemon.POLL_QUEUED)
# Once a fault clears, the retry (at most retry_max = 500 ms away) must finish a small local file
# within SOON: short enough that the daemon's safety-net rescan (every 60 s since its start) cannot
# stand in for a lost retry. Remote inboxes have no rescan; large files get LATER.
SOON = 10.0
LATER = 30.0


# -- what every scenario records ------------------------------------------------------------------

_TALLY: dict[str, dict] = {}


@pytest.fixture(scope="module", autouse=True)
def tally(request):
    yield
    if not _TALLY:
        return
    passed = sum(not t["problems"] for t in _TALLY.values())
    recovered = sum(not any(not h for _, h in t["problems"]) for t in _TALLY.values())
    health = [t["health"] for t in _TALLY.values() if t["health"] is not None]
    line = (f"fault scenarios passed: {passed} / {len(_TALLY)} (recovered correctly, /healthz aside: "
            f"{recovered} / {len(_TALLY)}; /healthz reported the fault: {sum(health)} / {len(health)} "
            f"where the daemon can know it)")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + line)


class Verdict:
    """Collects every problem of a scenario so the report shows all of them, not the first one."""

    def __init__(self, name: str):
        self.record = _TALLY.setdefault(name, {"problems": [], "health": None})
        self.record["problems"].clear()
        self.timed_out = False

    @property
    def problems(self) -> list[tuple[str, bool]]:
        return self.record["problems"]

    def check(self, ok, message: str, *, health: bool = False) -> bool:
        if not ok:
            self.problems.append((message, health))
        return bool(ok)

    def wait(self, condition, timeout: float, what: str):
        """``wait_for``, the timeout recorded as a problem. Once one wait timed out, the later
        ones only look (1 s): the scenario has failed, the rest is for the report."""
        try:
            return wait_for(condition, min(timeout, 1.0) if self.timed_out else timeout, what=what)
        except AssertionError as exc:
            self.timed_out = True
            self.problems.append((str(exc), False))
            return None

    def health_reported(self, sampler: HealthSampler, fault: str) -> None:
        """/healthz said something was wrong while the fault lasted, and says all is well again
        now that it cleared and the work went through."""
        degraded = sampler.degraded()
        self.check(degraded, f"/healthz answered 200 all through the fault ({fault}): "
                             f"{len(sampler.samples)} samples, last {sampler.samples[-1][1:] if sampler.samples else None}",
                   health=True)
        try:
            wait_for(lambda: healthz(sampler.address)[0] == 200, 5)
            back = True
        except AssertionError:
            back = False
        self.check(back, f"/healthz not 200 again 5 s after the fault cleared and the file went through: "
                         f"{healthz(sampler.address)}", health=True)
        self.record["health"] = bool(degraded) and back

    def conclude(self) -> None:
        if self.problems:
            pytest.fail("\n - " + "\n - ".join(m for m, _ in self.problems), pytrace=False)


@pytest.fixture
def verdict(request) -> Verdict:
    return Verdict(request.node.name)


def healthz(address: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://{address}/healthz", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


class HealthSampler:
    """GET /healthz five times a second on a thread, for as long as a fault lasts."""

    def __init__(self, daemon: DaemonProcess):
        self.address = daemon.health
        self.samples: list[tuple[float, int, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="healthz sampler", daemon=True)

    def __enter__(self) -> HealthSampler:
        wait_for(lambda: healthz(self.address)[0] == 200, what="/healthz 200 before the fault")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = healthz(self.address)
            except OSError as exc:              # the health server itself did not answer
                status, body = 0, {"error": str(exc)}
            self.samples.append((time.monotonic(), status, body))
            self._stop.wait(0.2)

    def degraded(self) -> list[tuple[int, dict]]:
        return [(status, body) for _, status, body in self.samples if status != 200]

    def had_time(self, since: float) -> bool:
        """The fault, known to the daemon since ``since``, had time to show in /healthz."""
        return bool(self.degraded()) or (bool(self.samples) and self.samples[-1][0] - since > 3 * HEALTH_REFRESH)


def _drop(inbox: Path, name: str, data: bytes) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    tmp = inbox / f".{name}.part"
    tmp.write_bytes(data)
    tmp.rename(inbox / name)


def _events(d: DaemonProcess, name: str, **match) -> list[dict]:
    return [e for e in d.events() if e.get("event") == name and all(e.get(k) == v for k, v in match.items())]


def _daemon_survived(verdict: Verdict, d: DaemonProcess) -> None:
    verdict.check(d.proc.poll() is None, f"the daemon exited with {d.proc.returncode}")
    crashes = _events(d, "worker.unexpected_error")
    verdict.check(not crashes, "worker.unexpected_error logged: "
                  + "; ".join(f"{e.get('file')}: {e.get('exception', '')[-300:]}" for e in crashes))


def _applied_once(verdict: Verdict, root: Path, partner: str, name: str, status: str, rows: int) -> None:
    mine = [m for m in manifests(root, partner) if m["source"]["name"] == name]
    verdict.check([m["status"] for m in mine] == [status],
                  f"{name}: manifests {[(m['status'], m.get('message')) for m in mine]}, expected one {status}")
    jobs = [j for j in ledger(root) if j[0] == name]
    verdict.check(len(jobs) == 1 and jobs[0][1] == status, f"{name}: jobs {jobs}, expected one {status}")
    if mine:
        verdict.check(mine[-1]["rows"]["inserted"] == rows,
                      f"{name}: inserted {mine[-1]['rows']['inserted']}, expected {rows}")


def _rows_csv(prefix: str, count: int, pad: int = 0) -> bytes:
    """A CSV of ``count`` distinct SKUs (``pad`` more bytes of description each), built as one
    string rather than written row by row."""
    filler = "," + "d" * pad if pad else ""
    body = "\n".join(f"{prefix}{i},name {i},1.00{filler}" for i in range(count))
    return (("sku,name,price,description\n" if pad else "sku,name,price\n") + body + "\n").encode()


# == 1. SFTP ======================================================================================

def _sftp_cfg(server: SftpTestServer, key_file, known_hosts, daemon: str = RETRYING) -> str:
    inbox = ('[[inboxes]]\npartner = "globex"\nkind = "sftp"\nhost = "127.0.0.1"\n'
             f'port = {server.port}\nusername = "globex"\nkey_file = "{key_file}"\n'
             f'known_hosts = "{known_hosts}"\npath = "/outbound"\npoll_interval = "200ms"\nsettle = "200ms"\n')
    return config(partners='[[partners]]\nid = "globex"\n', inboxes=inbox, daemon=daemon)


def _big_remote_file(tmp_path: Path, server: SftpTestServer, rows: int = 60_000) -> Path:
    outbound = _outbound(server)
    (tmp_path / "big.csv").write_bytes(_rows_csv("K", rows))
    (tmp_path / "big.csv").rename(outbound / "big.csv")
    return outbound


class _Progress:
    """Whether the daemon's copy of a download in progress (``.incoming-*`` in the spool) stopped
    growing: the stall, seen from the client's side."""

    def __init__(self, spool: Path):
        self.spool = spool
        self.last: tuple[int, float] | None = None

    def stalled_for(self, seconds: float) -> bool:
        sizes = [p.stat().st_size for p in self.spool.rglob(".incoming-*")] if self.spool.exists() else []
        if not sizes:
            self.last = None
            return False
        now = time.monotonic()
        if self.last is None or self.last[0] != sizes[0]:
            self.last = (sizes[0], now)
        return now - self.last[1] >= seconds


def test_sftp_download_stalled_past_the_timeout_is_retried_and_applied_once(tmp_path, server, secrets, verdict):
    """The server stops answering mid-download: one read takes 21 s, past paramiko's 20 s channel
    timeout (the reads queued behind it wait too). The attempt fails, the next one downloads the
    whole file once. The daemon cannot tell a stalled download from a slow one before the
    timeout, so /healthz is watched, not judged."""
    outbound = _big_remote_file(tmp_path, server, rows=150_000)    # ~3.4 MB: ~2 s at 20 ms a read
    server.slow = 0.02
    server.reading.clear()
    d = DaemonProcess(tmp_path, _sftp_cfg(server, *secrets))
    try:
        with HealthSampler(d) as sampler:
            assert server.reading.wait(20), "the download never started"
            progress = _Progress(tmp_path / "var" / "spool")
            server.slow = 21.0                                   # the next read stalls…
            wait_for(lambda: progress.stalled_for(2.0), timeout=20, what="the download to stop making progress")
            server.slow = 0.02                                   # …and only that one
            stalled = d.wait_event("file.transient_error", timeout=60, file="big.csv")
            server.slow = 0.0
        verdict.check("timeout" in stalled["error"].lower() or "timed out" in stalled["error"].lower(),
                      f"the stall ended in {stalled['error']!r}, not a timeout")
        verdict.wait(lambda: manifests(tmp_path, "globex"), LATER, "the manifest after the stall")
        verdict.wait(lambda: (outbound / "processed" / "big.csv").exists(), 20, "big.csv archived")
        _applied_once(verdict, tmp_path, "globex", "big.csv", "succeeded", 150_000)
        verdict.check(len(products(tmp_path, "globex")) == 150_000, "catalog does not hold the 150,000 rows")
        verdict.check(_events(d, "job.retry_scheduled", file="big.csv"), "no retry was scheduled for big.csv")
        _daemon_survived(verdict, d)
        verdict.record["note"] = f"/healthz non-200 samples during the stall: {len(sampler.degraded())}"
        assert d.stop() == 0
    finally:
        d.close()
    verdict.conclude()


def test_sftp_server_down_mid_download_is_reported_and_the_file_applied_once_after_restart(
        tmp_path, server, secrets, verdict):
    """Killed mid-download and kept down: downloads and polls fail (the daemon knows the inbox
    is unreachable: /healthz must say so); once it is back, the file is applied once."""
    outbound = _big_remote_file(tmp_path, server)
    server.slow = 0.02
    server.reading.clear()
    d = DaemonProcess(tmp_path, _sftp_cfg(server, *secrets))
    try:
        assert server.reading.wait(20), "the download never started"
        with HealthSampler(d) as sampler:
            server.kill()
            d.wait_event("file.transient_error", file="big.csv")
            wait_for(lambda: len(_events(d, "inbox.poll_failed")) >= 2, what="two failed polls")
            known = time.monotonic()
            wait_for(lambda: sampler.had_time(known), what="the outage to last past a health refresh")
            server.slow = 0.0
            server.start()
        verdict.wait(lambda: manifests(tmp_path, "globex"), LATER, "the manifest after the restart")
        verdict.wait(lambda: (outbound / "processed" / "big.csv").exists(), 20, "big.csv archived")
        _applied_once(verdict, tmp_path, "globex", "big.csv", "succeeded", 60_000)
        retries = _events(d, "job.retry_scheduled", file="big.csv")
        verdict.check(retries, "no retry was scheduled for big.csv")
        _daemon_survived(verdict, d)
        verdict.health_reported(sampler, "SFTP server down, every poll failing")
        assert d.stop() == 0
    finally:
        d.close()
    verdict.conclude()


def test_sftp_file_whose_retries_ran_out_during_an_outage_gets_an_outcome(tmp_path, server, secrets, verdict):
    """An outage outlasting the retry budget (default ``max_attempts`` 5 with a 50 ms base): the
    README promises "retried … up to max_attempts, then quarantined". Acceptable endings once
    the server is back: the file quarantined with a manifest, or applied. Not acceptable: the file
    forgotten with no job, no manifest and no further attempt for minutes."""
    outbound = _big_remote_file(tmp_path, server, rows=20_000)
    server.slow = 0.02
    server.reading.clear()
    d = DaemonProcess(tmp_path, _sftp_cfg(server, *secrets, daemon="max_attempts = 2\n"))
    try:
        assert server.reading.wait(20), "the download never started"
        server.kill()
        wait_for(lambda: any(e.get("attempt") == 2 for e in _events(d, "file.transient_error", file="big.csv")),
                 what="the second (last) attempt failing")
        server.slow = 0.0
        server.start()
        verdict.wait(lambda: manifests(tmp_path, "globex"), 20,
                     "an outcome for big.csv within 20 s of the server's return (quarantined or applied)")
        found = manifests(tmp_path, "globex")
        verdict.check(len(found) <= 1, f"several manifests: {[m['status'] for m in found]}")
        if found:
            verdict.check(found[0]["status"] in ("quarantined", "succeeded"), f"outcome {found[0]['status']}")
            if found[0]["status"] == "succeeded":
                verdict.check(len(products(tmp_path, "globex")) == 20_000, "not all rows applied")
        verdict.check([j for j in ledger(tmp_path) if j[0] == "big.csv"],
                      f"no job recorded for big.csv: its failed attempts are nowhere in the ledger {ledger(tmp_path)}")
        verdict.check((outbound / "big.csv").exists() or (outbound / "processed" / "big.csv").exists()
                      or (outbound / "failed" / "big.csv").exists(), "big.csv vanished")
        _daemon_survived(verdict, d)
        assert d.stop() == 0
    finally:
        d.close()
    verdict.conclude()


# == 2. S3 ========================================================================================

class _ResettingHandler(_ProxyHandler):
    """``_ProxyHandler`` plus two ways for a connection to die: "reset" (the request is read,
    nothing answered, a TCP RST instead) and "truncate" (the real answer's headers and half its
    body, then a RST). While ``proxy.down`` is set, every request is reset."""

    def _reset(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True

    def _forward(self) -> None:
        proxy: ResettingProxy = self.server.proxy
        operation = _operation(self.command, self.path)
        action = "reset" if proxy.down.is_set() else proxy.take_action(operation)
        if action is None:
            return super()._forward()
        body = self._body()
        proxy.record(operation, action)
        if action == "reset":
            return self._reset()
        status, data, answer = self._upstream(body)
        self.send_response(status)
        for name, value in answer:
            if name.lower() not in ("transfer-encoding", "connection", "server", "date", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self._reset()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


class ResettingProxy(FaultProxy):
    """``FaultProxy`` (statuses per operation) plus ``actions`` per operation ("reset",
    "truncate"), taken before statuses, and ``down`` (reset everything)."""

    def __init__(self, upstream: str, faults: dict[str, list[int]] | None = None,
                 actions: dict[str, list[str]] | None = None):
        self.actions = {op: list(a) for op, a in (actions or {}).items()}
        self.down = threading.Event()
        super().__init__(upstream, faults or {})
        self._server.RequestHandlerClass = _ResettingHandler

    def take_action(self, operation: str) -> str | None:
        with self._lock:
            pending = self.actions.get(operation)
            return pending.pop(0) if pending else None

    def outcomes(self, operation: str) -> list:
        with self._lock:
            return [status for op, status in self.seen if op == operation]


@pytest.fixture
def resetting_proxy(moto):
    proxies = []

    def start(**kw) -> ResettingProxy:
        proxy = ResettingProxy(moto, **kw)
        proxies.append(proxy)
        return proxy
    yield start
    for proxy in proxies:
        proxy.close()


def _s3_cfg(endpoint: str) -> str:
    return _s3_config(endpoint).replace("[daemon]\n", "[daemon]\n" + RETRYING, 1)


def test_s3_500_slowdown_and_resets_are_absorbed_and_the_file_applied_once(
        tmp_path, s3, resetting_proxy, aws_env, verdict):
    """botocore's standard retries take a 500, a 503 SlowDown and a reset on GetObject, and a
    reset and a 503 on ListObjectsV2, each within one call: the daemon never sees a failure, so
    /healthz cannot (and need not) report anything."""
    proxy = resetting_proxy(faults={"GetObject": [500, 503], "ListObjectsV2": [503]},
                            actions={"GetObject": ["reset"], "ListObjectsV2": ["reset"]})
    d = DaemonProcess(tmp_path, _s3_cfg(proxy.url), env=aws_env)
    try:
        s3.put_object(Bucket=BUCKET, Key="acme/catalog.csv", Body=CSV)
        verdict.wait(lambda: manifests(tmp_path, "acme"), 40, "the manifest")
        verdict.wait(lambda: "acme/processed/catalog.csv" in _keys(s3), 20, "the source archived")
        verdict.check(proxy.outcomes("GetObject")[:4] == ["reset", 500, 503, 200],
                      f"GetObject saw {proxy.outcomes('GetObject')}")
        verdict.check(proxy.outcomes("ListObjectsV2")[:3] == ["reset", 503, 200],
                      f"ListObjectsV2 saw {proxy.outcomes('ListObjectsV2')}")
        _applied_once(verdict, tmp_path, "acme", "catalog.csv", "succeeded", 2)
        verdict.check(manifests(tmp_path, "acme")[0]["attempt"] == 1 if manifests(tmp_path, "acme") else False,
                      "not applied on the first attempt")
        verdict.check(set(products(tmp_path, "acme")) == {"a1", "a2"}, "catalog rows")
        _daemon_survived(verdict, d)
        assert d.stop() == 0
    finally:
        d.close()
    verdict.conclude()


def test_s3_download_cut_off_by_a_reset_mid_body_is_retried_and_applied_once(
        tmp_path, s3, resetting_proxy, aws_env, verdict):
    """Headers and half the body, then a TCP reset: botocore has already returned the response,
    so its retries do not cover this; the daemon's own retry must, and the half read must not be
    applied."""
    proxy = resetting_proxy(actions={"GetObject": ["truncate"]})
    d = DaemonProcess(tmp_path, _s3_cfg(proxy.url), env=aws_env)
    body = _rows_csv("T", 5_000)
    try:
        s3.put_object(Bucket=BUCKET, Key="acme/cut.csv", Body=body)
        failed = verdict.wait(lambda: _events(d, "file.transient_error", file="cut.csv"), 30,
                              "the cut-off download failing as a transient error")
        verdict.wait(lambda: manifests(tmp_path, "acme"), 30, "the manifest after the retry")
        verdict.wait(lambda: "acme/processed/cut.csv" in _keys(s3), 20, "the source archived")
        verdict.check(proxy.outcomes("GetObject")[:2] == ["truncate", 200], f"GetObject saw {proxy.outcomes('GetObject')}")
        _applied_once(verdict, tmp_path, "acme", "cut.csv", "succeeded", 5_000)
        verdict.check(len(products(tmp_path, "acme")) == 5_000, "catalog rows")
        verdict.check(_events(d, "job.retry_scheduled", file="cut.csv"), "no retry was scheduled for cut.csv")
        if failed:
            verdict.check("cut.csv" in failed[0]["error"] or "s3://" in failed[0]["error"],
                          f"the error does not name the object: {failed[0]['error']}")
        _daemon_survived(verdict, d)
        assert d.stop() == 0
    finally:
        d.close()
    verdict.conclude()


def test_s3_outage_with_every_connection_reset_is_reported_and_the_file_applied_once(
        tmp_path, s3, resetting_proxy, aws_env, verdict):
    """Every request reset until the outage ends: each poll fails after botocore's retries; the
    daemon knows its inbox is unreachable (inbox.poll_failed): /healthz must say so."""
    proxy = resetting_proxy()
    d = DaemonProcess(tmp_path, _s3_cfg(proxy.url), env=aws_env)
    try:
        with HealthSampler(d) as sampler:
            proxy.down.set()
            s3.put_object(Bucket=BUCKET, Key="acme/during.csv", Body=CSV)
            d.wait_event("inbox.poll_failed", timeout=60)
            known = time.monotonic()
            wait_for(lambda: sampler.had_time(known), what="the outage to last past a health refresh")
            proxy.down.clear()
        verdict.wait(lambda: manifests(tmp_path, "acme"), LATER, "the manifest after the outage")
        verdict.wait(lambda: "acme/processed/during.csv" in _keys(s3), 20, "the source archived")
        _applied_once(verdict, tmp_path, "acme", "during.csv", "succeeded", 2)
        _daemon_survived(verdict, d)
        verdict.health_reported(sampler, "S3 endpoint resetting every connection, every poll failing")
        assert d.stop() == 0
    finally:
        d.close()
    verdict.conclude()


# == 3. the catalog database locked by another process ============================================

LOCKER = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))          # the fault's duration
con.execute("COMMIT")
con.close()
"""


@contextlib.contextmanager
def catalog_locked(db: Path, seconds: float):
    """Another process holds the write lock of the catalog for ``seconds``, then commits."""
    proc = subprocess.Popen([sys.executable, "-c", LOCKER, str(db), str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "locked", "the locker did not get the lock"
        yield proc
    finally:
        try:
            proc.wait(seconds + 30)
        finally:
            proc.stdout.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.timeout(150)
@pytest.mark.parametrize("seconds", [3, 45], ids=["shorter-than-busy-timeout", "longer-than-busy-timeout"])
def test_catalog_locked_by_another_process_is_waited_out_or_retried_and_applied_once(tmp_path, seconds, verdict):
    """3 s: the store's 30 s busy timeout waits it out (normal contention; nothing for /healthz).
    45 s: the worker's write fails with StoreBusy and is retried with backoff, and the heartbeat
    cannot renew: the daemon knows its store refuses writes, /healthz must say so."""
    d = DaemonProcess(tmp_path, config(daemon=RETRYING))
    inbox = tmp_path / "inbox" / "default"
    try:
        with HealthSampler(d) as sampler:
            with catalog_locked(tmp_path / "var" / "catalog.db", seconds) as locker:
                locked_at = time.monotonic()
                _drop(inbox, "locked.csv", b"sku,name,price\nL1,Lock,1.00\nL2,Key,2.00\n")
                if seconds > 30:
                    busy = d.wait_event("file.transient_error", timeout=45, file="locked.csv")
                    verdict.check("lock" in busy["error"] or "busy" in busy["error"].lower(),
                                  f"the failure does not say the store was busy: {busy['error']}")
                    d.wait_event("job.retry_scheduled", file="locked.csv")
                else:       # the file has long settled: only the lock holds it back, for 1 s more
                    time.sleep(max(0.0, locked_at + seconds - 1.0 - time.monotonic()))
                assert locker.poll() is None, "the lock was released before the daemon could be seen waiting"
                verdict.check(not manifests(tmp_path), "applied while the catalog was locked")
                locker.wait(seconds + 30)
        if seconds < 30:
            waited = _events(d, "file.transient_error", file="locked.csv")
            verdict.check(not waited, f"a lock shorter than the busy timeout was not waited out: {waited[:1]}")
        verdict.wait(lambda: manifests(tmp_path), SOON, f"the manifest within {SOON} s of the lock's release")
        verdict.wait(lambda: (inbox / "processed" / "locked.csv").exists(), 20, "locked.csv archived")
        _applied_once(verdict, tmp_path, "default", "locked.csv", "succeeded", 2)
        verdict.check(set(products(tmp_path)) == {"l1", "l2"}, "catalog rows")
        _daemon_survived(verdict, d)
        if seconds > 30:
            verdict.health_reported(sampler, "catalog write-locked past the busy timeout")
        assert d.stop() == 0
    finally:
        d.close()
    verdict.conclude()


# == 4. the results directory unusable ============================================================

def test_results_directory_unusable_is_retried_and_each_file_answered_once_it_is_back(tmp_path, verdict):
    """``var/results/default`` is a regular file while two files arrive (one clean, one with a
    bad row, so one with diagnostics): the outcome cannot be reported. That must be retried with
    backoff, never crash a worker, and end in exactly one manifest per file once the folder is
    back; the daemon knows it cannot answer partners: /healthz must say so."""
    d = DaemonProcess(tmp_path, config(daemon=RETRYING))
    inbox = tmp_path / "inbox" / "default"
    results = tmp_path / "var" / "results" / "default"
    try:
        with HealthSampler(d) as sampler:
            results.parent.mkdir(parents=True, exist_ok=True)
            if results.is_dir():
                shutil.rmtree(results)
            results.write_text("not a folder\n")
            _drop(inbox, "clean.csv", b"sku,name,price\nC1,Clean,1.00\n")
            _drop(inbox, "dirty.csv", b"sku,name,price\n" + b"".join(b"D%d,Dirty,1.00\n" % i for i in range(40))
                  + b"DX,Dirty,not-a-price\n")
            wait_for(lambda: {e.get("file") for e in d.events()
                              if e.get("event") in ("job.applied", "job.failed", "worker.unexpected_error",
                                                    "file.transient_error")} >= {"clean.csv", "dirty.csv"},
                     what="both files tried while the folder is unusable")
            known = time.monotonic()
            wait_for(lambda: sampler.had_time(known), what="the fault to last past a health refresh")
            retried = {e.get("file") for e in _events(d, "job.retry_scheduled")}
            verdict.check(retried >= {"clean.csv", "dirty.csv"},
                          f"no retry scheduled while results/ was unusable (retried: {sorted(retried)})")
            results.unlink()
        verdict.wait(lambda: len(manifests(tmp_path)) >= 2, SOON, f"both manifests within {SOON} s of the folder's return")
        verdict.wait(lambda: (inbox / "processed" / "clean.csv").exists() and (inbox / "processed" / "dirty.csv").exists(),
                     10, "both files archived")
        for name, status, rows in (("clean.csv", "succeeded", 1), ("dirty.csv", "partial", 40)):
            _applied_once(verdict, tmp_path, "default", name, status, rows)
        jobs = ledger(tmp_path)
        verdict.check(sorted((n, s) for n, s, _ in jobs) == [("clean.csv", "succeeded"), ("dirty.csv", "partial")],
                      f"jobs {jobs}")
        verdict.check(len(products(tmp_path)) == 41, f"catalog holds {len(products(tmp_path))} rows, expected 41")
        _daemon_survived(verdict, d)
        verdict.health_reported(sampler, "results folder unusable, no manifest can be written")
        assert d.stop() == 0
    finally:
        d.close()
        if results.is_file():
            results.unlink()
    verdict.conclude()


# == 5. the spool full ============================================================================

@contextlib.contextmanager
def _small_spool(spool: Path):
    """A real 4 MiB tmpfs on the spool; yields a function that grows it to 256 MiB."""
    spool.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(spool)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the RLIMIT_FSIZE variant covers it")
    try:
        yield lambda: subprocess.run(["mount", "-o", "remount,size=256m", str(spool)], check=True)
    finally:
        if subprocess.run(["umount", str(spool)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(spool)], capture_output=True)


@pytest.mark.parametrize("how", ["tmpfs-enospc", "rlimit-fsize-efbig"])
def test_spool_full_is_retried_and_the_file_applied_once_when_space_is_back(tmp_path, how, verdict):
    """A 17 MB file cannot be spooled: a 4 MiB filesystem (ENOSPC), or a file size limit of 8 MiB
    on the daemon process (EFBIG; Python ignores SIGXFSZ). Each attempt fails with SpoolError and is
    retried with backoff, no partial copy is left behind, and once the space is back (remount /
    limit lifted, both live) the file is applied once. The daemon knows it cannot spool: /healthz
    must say so."""
    spool = tmp_path / "var" / "spool"
    inbox = tmp_path / "inbox" / "default"
    data = _rows_csv("S", 200_000, pad=70)
    assert len(data) > 16 << 20
    with contextlib.ExitStack() as stack:
        if how == "tmpfs-enospc":
            lift = stack.enter_context(_small_spool(spool))
        d = DaemonProcess(tmp_path, config(daemon=RETRYING))
        stack.callback(d.close)
        if how == "rlimit-fsize-efbig":
            limit = 8 << 20
            resource.prlimit(d.proc.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))  # soft only: liftable
            lift = lambda: resource.prlimit(d.proc.pid, resource.RLIMIT_FSIZE,  # noqa: E731
                                            (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        (tmp_path / "full.csv").write_bytes(data)
        with HealthSampler(d) as sampler:
            (tmp_path / "full.csv").rename(inbox / "full.csv")
            wait_for(lambda: len(_events(d, "file.transient_error", file="full.csv")) >= 2,
                     what="two attempts failing to spool")
            known = time.monotonic()
            wait_for(lambda: sampler.had_time(known), what="the fault to last past a health refresh")
            errors = [e["error"] for e in _events(d, "file.transient_error", file="full.csv")]
            expected = "No space left" if how == "tmpfs-enospc" else "File too large"
            verdict.check(all("spool" in e and expected in e for e in errors), f"errors: {errors[:2]}")
            # an attempt may be copying right now (its copy is removed when it fails): a copy
            # left behind is one still there once no attempt could be running any more
            def copies() -> list[str]:
                return [p.name for p in spool.rglob(".incoming-*")]
            seen = copies()
            deadline = time.monotonic() + 10
            while seen and time.monotonic() < deadline:
                time.sleep(0.05)
                seen = [name for name in copies() if name in seen]      # the same copies, still there
            verdict.check(not seen, f"partial spool copies left behind: {seen}")
            lift()
        verdict.wait(lambda: manifests(tmp_path), LATER, f"the manifest within {LATER} s of space coming back")
        verdict.wait(lambda: (inbox / "processed" / "full.csv").exists(), 20, "full.csv archived")
        _applied_once(verdict, tmp_path, "default", "full.csv", "succeeded", 200_000)
        verdict.check(len(products(tmp_path)) == 200_000, "catalog rows")
        verdict.check(_events(d, "job.retry_scheduled", file="full.csv"), "no retry scheduled")
        _daemon_survived(verdict, d)
        verdict.health_reported(sampler, f"spool cannot be written ({how})")
        assert d.stop() == 0
    verdict.conclude()
