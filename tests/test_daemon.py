"""The daemon as operators run it: a real ``inbox-daemon run`` subprocess on temp directories."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import signal
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import ledger, products, run_cli, write_csv
from tests.daemon_harness import DaemonProcess, config, manifests, wait_for, wait_manifests


def _drop(inbox, name: str, text: str) -> None:
    """Write under a temp name, then rename into place: the way careful uploaders do it."""
    tmp = inbox / f".{name}.part"
    tmp.write_text(text)
    tmp.rename(inbox / name)


@pytest.fixture
def daemon(tmp_path, daemons):
    """``daemons`` (conftest) on this test's directory, the default config unless told."""
    def start(cfg: str | None = None, **kw) -> DaemonProcess:
        return daemons(tmp_path, cfg or config(), **kw)
    return start


def test_renamed_file_is_applied_archived_and_answered_in_results(tmp_path, daemon):
    d = daemon()
    inbox = tmp_path / "inbox" / "default"
    _drop(inbox, "feed.csv", "sku,name,price\nA,Shirt,9.99\nB,Hat,5\n")

    [manifest] = wait_manifests(tmp_path, 1)

    assert manifest["status"] == "succeeded" and manifest["rows"]["inserted"] == 2
    assert manifest["inbox"] == "local:inbox/default"
    wait_for(lambda: (inbox / "processed" / "feed.csv").exists(), what="archive to processed/")
    assert not (inbox / "feed.csv").exists()
    written_back = inbox / "results" / f"{manifest['job_id']}.result.json"
    assert json.loads(wait_for(lambda: written_back.exists() and written_back.read_text()))["status"] == "succeeded"
    assert set(products(tmp_path)) == {"a", "b"}
    assert d.stop() == 0


def test_slow_in_place_write_is_read_once_and_whole(tmp_path, daemon):
    d = daemon()
    path = tmp_path / "inbox" / "default" / "slow.csv"
    with open(path, "w") as fh:            # one open, written in bursts, as a slow upload would
        fh.write("sku,name\n")
        for burst in range(5):
            fh.write("".join(f"S{burst}-{i},n\n" for i in range(100)))
            fh.flush()
            time.sleep(0.3)                # the writer is slow; the daemon must not read yet
    [manifest] = wait_manifests(tmp_path, 1)
    assert manifest["rows"]["read"] == 500 and manifest["status"] == "succeeded"
    time.sleep(1.0)                        # give a wrongly early second read the chance to show
    assert len(manifests(tmp_path)) == 1
    assert d.stop() == 0


def test_temp_names_and_unknown_patterns_are_ignored(tmp_path, daemon):
    d = daemon()
    inbox = tmp_path / "inbox" / "default"
    for name in ("upload.csv.part", "x.tmp", "y.filepart", "z.crdownload", ".hidden.csv", "notes.docx"):
        (inbox / name).write_text("sku,name\nI,x\n")
    _drop(inbox, "real.csv", "sku,name\nR,x\n")

    [manifest] = wait_manifests(tmp_path, 1)

    assert manifest["source"]["name"] == "real.csv"
    time.sleep(1.0)                        # settle (0.5 s) has passed twice: still nothing else
    assert len(manifests(tmp_path)) == 1
    assert (inbox / "upload.csv.part").exists() and (inbox / ".hidden.csv").exists()
    assert d.stop() == 0


def test_symlinks_are_not_followed(tmp_path, daemon):
    secret = tmp_path / "outside.csv"
    secret.write_text("sku,name\nLEAK,x\n")
    d = daemon()
    inbox = tmp_path / "inbox" / "default"
    (inbox / "link.csv").symlink_to(secret)
    _drop(inbox, "after.csv", "sku,name\nOK,x\n")
    wait_manifests(tmp_path, 1)
    time.sleep(1.0)
    assert [m["source"]["name"] for m in manifests(tmp_path)] == ["after.csv"]
    assert "leak" not in products(tmp_path)
    assert d.stop() == 0


def test_garbage_file_is_rejected_and_the_next_file_still_goes_through(tmp_path, daemon):
    import random
    d = daemon()
    inbox = tmp_path / "inbox" / "default"
    tmp = inbox / ".g.part"
    tmp.write_bytes(random.Random(3).randbytes(20_000))
    tmp.rename(inbox / "garbage.csv")
    _drop(inbox, "good.csv", "sku,name\nG,x\n")

    found = wait_manifests(tmp_path, 2)

    by_name = {m["source"]["name"]: m for m in found}
    assert by_name["garbage.csv"]["status"] == "rejected"
    assert by_name["good.csv"]["status"] == "succeeded"
    wait_for(lambda: (inbox / "failed" / "garbage.csv").exists(), what="garbage moved to failed/")
    assert d.stop() == 0


def test_files_dropped_while_down_are_processed_at_start(tmp_path, daemon):
    inbox = tmp_path / "inbox" / "default"
    inbox.mkdir(parents=True)
    for i in range(3):
        write_csv(inbox / f"f{i}.csv", ["sku", "name"], [[f"D{i}", "x"]])
    old = time.time() - 60                 # dropped a while ago: settled
    import os
    for i in range(3):
        os.utime(inbox / f"f{i}.csv", (old, old))

    d = daemon(once=True)
    assert d.wait(30) == 0

    assert sorted(m["status"] for m in manifests(tmp_path)) == ["succeeded"] * 3
    assert set(products(tmp_path)) == {"d0", "d1", "d2"}


def test_keep_leaves_the_file_and_the_ledger_prevents_a_second_apply(tmp_path, daemon):
    cfg = config(inboxes='[[inboxes]]\npartner = "default"\npath = "inbox/default"\non_success = "keep"\n'
                         'settle = "500ms"\n')
    inbox = tmp_path / "inbox" / "default"
    inbox.mkdir(parents=True)
    write_csv(inbox / "kept.csv", ["sku", "name"], [["K", "x"]])
    import os
    os.utime(inbox / "kept.csv", (time.time() - 60,) * 2)
    assert daemon(cfg, once=True).wait(30) == 0
    assert daemon(cfg, once=True).wait(30) == 0      # the same file is still there
    assert (inbox / "kept.csv").exists()
    assert [(name, status) for name, status, _ in ledger(tmp_path)] == [("kept.csv", "succeeded")]


def _drop_big_and_wait_for_its_start(tmp_path, d, rows: int) -> None:
    """A file large enough to be cut off mid-job: written aside, renamed in, job started."""
    big = tmp_path / "big.csv"
    write_csv(big, ["sku", "name", "price"], [[f"B{i}", "n", "1.00"] for i in range(rows)])
    big.rename(tmp_path / "inbox" / "default" / "big.csv")
    d.wait_event("job.started", file="big.csv")


def test_sigterm_exits_zero_quickly_and_nothing_is_half_applied(tmp_path, daemon):
    d = daemon()
    _drop_big_and_wait_for_its_start(tmp_path, d, 400_000)

    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0
    assert time.monotonic() - t0 < 10

    [(name, status, attempt)] = ledger(tmp_path)
    applied = len(products(tmp_path))
    # either the job finished within the grace period, or it was released with nothing applied,
    # or its process was killed in the middle of its merge (rolled back: taken again at start)
    assert (status, applied) in (("succeeded", 400_000), ("queued", 0), ("running", 0))
    # and the next start finishes it exactly once
    assert daemon(once=True).wait(60) == 0
    assert len(products(tmp_path)) == 400_000
    assert [s for _, s, _ in ledger(tmp_path)] == ["succeeded"]


def test_killed_mid_job_the_restart_applies_it_exactly_once(tmp_path, daemon):
    d = daemon()
    _drop_big_and_wait_for_its_start(tmp_path, d, 300_000)
    d.kill()                                          # SIGKILL: no cleanup at all

    assert len(products(tmp_path)) in (0, 300_000)    # never a part of the file
    assert daemon(once=True).wait(60) == 0

    assert len(products(tmp_path)) == 300_000
    [(name, status, attempt)] = ledger(tmp_path)
    assert status == "succeeded"
    done = [m for m in manifests(tmp_path) if m["status"] == "succeeded"]
    assert len(done) == 1 and done[0]["rows"]["inserted"] == 300_000


def test_sighup_adds_an_inbox(tmp_path, daemon):
    d = daemon()
    added = config(partners='[[partners]]\nid = "default"\n\n[[partners]]\nid = "acme"\n',
                   inboxes='[[inboxes]]\npartner = "default"\npath = "inbox/default"\nsettle = "500ms"\n\n'
                           '[[inboxes]]\npartner = "acme"\npath = "inbox/acme"\nsettle = "500ms"\n')
    d.config_path.write_text(added)
    d.signal(signal.SIGHUP)
    d.wait_event("config.reloaded")
    _drop(tmp_path / "inbox" / "acme", "acme.csv", "sku,name\nAC,x\n")

    [manifest] = wait_manifests(tmp_path, 1, partner="acme")

    assert manifest["partner"] == "acme" and set(products(tmp_path, "acme")) == {"ac"}
    assert d.stop() == 0


def test_sighup_with_a_broken_config_keeps_the_old_one(tmp_path, daemon):
    d = daemon()
    d.config_path.write_text("[daemon]\nworkers = 0\n")
    d.signal(signal.SIGHUP)
    d.wait_event("config.reload_failed")
    _drop(tmp_path / "inbox" / "default", "still.csv", "sku,name\nS,x\n")
    assert wait_manifests(tmp_path, 1)[0]["status"] == "succeeded"
    assert d.stop() == 0


def test_requeued_job_is_processed_again_by_the_running_daemon(tmp_path, daemon):
    d = daemon()
    _drop(tmp_path / "inbox" / "default", "ids.csv", "id,title\n1,Mug\n")
    [rejected] = wait_manifests(tmp_path, 1)
    assert rejected["errors"] == {"missing_column": 1}
    # the partner's columns are explained in the config, then the job is requeued
    d.config_path.write_text(config(
        partners='[[partners]]\nid = "default"\ncolumns = { sku = "id", name = "title" }\n'))
    d.signal(signal.SIGHUP)
    d.wait_event("config.reloaded")

    done = run_cli("jobs", "requeue", rejected["job_id"], "--config", d.config_path, cwd=tmp_path)
    assert done.returncode == 0, done.stderr

    [again] = wait_manifests(tmp_path, 1, status="succeeded")
    assert again["job_id"] == rejected["job_id"] and again["attempt"] == 2
    assert products(tmp_path)["1"]["name"] == "Mug"
    assert d.stop() == 0


class _Receiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def webhook_receiver(handler):
    """A real HTTP server on loopback recording POSTs in ``handler.received``; yields its URL."""
    handler.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_webhook_is_signed_and_received(tmp_path, daemon):
    with webhook_receiver(_Receiver) as url:
        cfg = config(partners=f'[[partners]]\nid = "default"\n'
                              f'webhook = {{ url = "{url}", secret_env = "HOOK_SECRET", allow_private = true }}\n')
        d = daemon(cfg, env={"HOOK_SECRET": "s3cr3t-value"})
        _drop(tmp_path / "inbox" / "default", "hooked.csv", "sku,name\nH,x\n")
        [manifest] = wait_manifests(tmp_path, 1)

        headers, body = wait_for(lambda: _Receiver.received and _Receiver.received[0], what="webhook POST")

        expected = "sha256=" + hmac.new(b"s3cr3t-value", body, hashlib.sha256).hexdigest()
        assert headers["X-Inbox-Signature"] == expected
        assert int(headers["X-Inbox-Timestamp"]) > 0
        assert json.loads(body)["job_id"] == manifest["job_id"]
        assert d.stop() == 0
        assert "s3cr3t-value" not in d.log_path.read_text()


def test_metrics_and_healthz_answer(tmp_path, daemon):
    d = daemon()
    _drop(tmp_path / "inbox" / "default", "m.csv", "sku,name\nM,x\nN,y\n")
    wait_manifests(tmp_path, 1)
    base = f"http://{d.health}"

    def metrics_show_the_job():
        text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        return text if 'inbox_jobs_total{partner="default",status="succeeded"} 1.0' in text else None
    text = wait_for(metrics_show_the_job, what="job counted in /metrics")
    assert 'inbox_rows_total{outcome="inserted",partner="default"} 2.0' in text
    assert "inbox_job_duration_seconds_bucket" in text and "inbox_queue_depth" in text
    assert 'inbox_last_success_timestamp_seconds{inbox="local:inbox/default"}' in text
    def healthy():
        try:
            return json.loads(urllib.request.urlopen(base + "/healthz", timeout=5).read())
        except urllib.error.HTTPError:          # 503 until the first health check has run
            return None
    health = wait_for(healthy, what="/healthz answering 200")
    assert health["ok"] is True and health["store"] is True and health["dead_inboxes"] == []
    assert d.stop() == 0


def test_run_without_config_creates_and_watches_inbox_default(tmp_path):
    import subprocess

    from tests.daemon_harness import EXE
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen([EXE, "run"], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                env={**__import__("os").environ, "INBOX_DAEMON_CONFIG": ""})
        try:
            inbox = wait_for(lambda: (tmp_path / "inbox" / "default").is_dir() and tmp_path / "inbox" / "default",
                             what="./inbox/default")
            wait_for(lambda: "daemon.started" in (tmp_path / "log").read_text(), what="start")
            _drop(inbox, "first.csv", "sku,name\nF,x\n")
            assert wait_manifests(tmp_path, 1)[0]["status"] == "succeeded"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0


_LIBRARIES_OF_INBOXES = """
import sys
from inbox_daemon import settings
from inbox_daemon.daemon import Daemon
from inbox_daemon.inboxes import inbox_class
remote = ("boto3", "botocore", "paramiko", "cryptography")
code = Daemon(settings.load("daemon.toml"), once=True).run()
print("RAN", code, sorted(m for m in remote if m in sys.modules))
inbox_class("sftp"), inbox_class("s3")
print("ASKED", sorted(m for m in remote if m in sys.modules))
"""


def test_a_daemon_watching_local_folders_alone_never_imports_the_sftp_and_s3_libraries(tmp_path):
    """boto3 and paramiko (with cryptography) took ~0.3 s of a daemon's ~1.9 s start: a kind's
    module is imported when an inbox of that kind is opened. A whole daemon runs here (``--once``:
    its local inbox watched, its worker processes started, then stopped), and only then are the
    other kinds asked for."""
    import subprocess
    import sys
    (tmp_path / "daemon.toml").write_text('[daemon]\nstate_dir = "var"\nhealth = ""\n')
    out = subprocess.run([sys.executable, "-c", _LIBRARIES_OF_INBOXES], cwd=tmp_path, capture_output=True,
                         text=True, check=True, timeout=120)
    said = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.stdout.splitlines()
            if line.startswith(("RAN ", "ASKED "))}
    assert said["RAN"] == "0 []"
    assert (tmp_path / "inbox" / "default").is_dir()          # it did watch its local inbox
    assert said["ASKED"] == "['boto3', 'botocore', 'cryptography', 'paramiko']"


class _FlakyReceiver(_Receiver):
    """Answers 503 to the first POST, then 204: the sender must try again."""

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        self.send_response(503 if len(type(self).received) == 1 else 204)
        self.end_headers()


def test_webhook_is_retried_after_a_server_error(tmp_path, daemon):
    with webhook_receiver(_FlakyReceiver) as url:
        d = daemon(config(partners=f'[[partners]]\nid = "default"\nwebhook = {{ url = "{url}", allow_private = true }}\n'))
        _drop(tmp_path / "inbox" / "default", "retry.csv", "sku,name\nW,x\n")
        wait_for(lambda: len(_FlakyReceiver.received) >= 2, what="a second delivery attempt")
        first, second = _FlakyReceiver.received[:2]
        assert first[1] == second[1]                               # the same manifest, again
        # the daemon logs an attempt once the answer is in: wait for the second line too
        wait_for(lambda: len([e for e in d.events() if e.get("event") == "webhook.attempt"]) >= 2,
                 what="the second attempt logged")
        attempts = [e for e in d.events() if e.get("event") == "webhook.attempt"]
        assert [e.get("http_status") for e in attempts[:2]] == [503, 204]
        assert d.stop() == 0


def test_requeued_job_with_nothing_left_to_read_is_quarantined_once_with_a_reason(tmp_path, daemon):
    d = daemon()
    inbox = tmp_path / "inbox" / "default"
    _drop(inbox, "gone.csv", "id\n1\n")
    [rejected] = wait_manifests(tmp_path, 1)
    wait_for(lambda: (inbox / "failed" / "gone.csv").exists(), what="moved to failed/")
    (inbox / "failed" / "gone.csv").unlink()
    for spooled in (tmp_path / "var" / "spool" / "default").iterdir():
        spooled.unlink()

    assert run_cli("jobs", "requeue", rejected["job_id"], "--config", d.config_path, cwd=tmp_path).returncode == 0

    event = d.wait_event("job.unrecoverable", job_id=rejected["job_id"])
    assert "drop the file again" in event["reason"]
    wait_for(lambda: ledger(tmp_path)[0][1] == "quarantined", what="job quarantined")
    time.sleep(1.5)                                   # the queued-job poll (1 s) must not pick it up again
    assert len([e for e in d.events() if e.get("event") == "job.unrecoverable"]) == 1
    assert d.stop() == 0


def test_systemd_is_told_ready_status_watchdog_and_stopping(tmp_path, daemon):
    import socket
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(10)
    try:
        d = daemon(env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"})
        messages = []
        while not any("WATCHDOG=1" in m for m in messages) or not any("STATUS=" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        assert any("READY=1" in m for m in messages)
        assert any(m.startswith("STATUS=queue ") or "\nSTATUS=queue " in m for m in messages)
        assert d.stop() == 0
        while not any("STOPPING=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
    finally:
        sock.close()


def test_run_once_ends_while_an_empty_file_waits_in_the_inbox(tmp_path, daemon):
    inbox = tmp_path / "inbox" / "default"
    inbox.mkdir(parents=True)
    (inbox / "placeholder.csv").touch()                     # an uploader that never wrote
    write_csv(inbox / "real.csv", ["sku", "name"], [["R", "x"]])
    import os
    os.utime(inbox / "real.csv", (time.time() - 60,) * 2)
    # settle far longer than the start-up, even on a loaded machine: the placeholder is young
    # when found, so it waits (a run that waited for it would answer it: an empty file)
    cfg = config(inboxes='[[inboxes]]\npartner = "default"\npath = "inbox/default"\nsettle = "10s"\n')
    t0 = time.monotonic()
    assert daemon(cfg, once=True).wait(30) == 0
    assert time.monotonic() - t0 < 15
    assert [m["source"]["name"] for m in manifests(tmp_path)] == ["real.csv"]
    assert (inbox / "placeholder.csv").exists()


def test_a_job_that_keeps_failing_is_retried_then_quarantined(tmp_path, daemon):
    import sqlite3
    cfg = config(daemon="max_attempts = 2\n")
    d = daemon(cfg)                              # creates the catalog
    con = sqlite3.connect(tmp_path / "var" / "catalog.db")
    con.execute("CREATE TRIGGER broken_disk BEFORE INSERT ON products "
                "BEGIN SELECT RAISE(ABORT, 'simulated storage failure'); END")
    con.commit()
    con.close()
    inbox = tmp_path / "inbox" / "default"
    _drop(inbox, "doomed.csv", "sku,name\nD,x\n")

    [manifest] = wait_manifests(tmp_path, 1, status="quarantined")

    assert "gave up after 2 attempts" in manifest["message"]
    wait_for(lambda: (inbox / "failed" / "doomed.csv").exists(), what="quarantined file moved to failed/")
    shown = json.loads(run_cli("jobs", "show", manifest["job_id"], "--config", d.config_path, cwd=tmp_path).stdout)
    assert [a["status"] for a in shown["attempts"]] == ["failed", "quarantined"]
    assert products(tmp_path) == {}
    assert d.stop() == 0


def test_a_requeued_job_that_goes_through_moves_its_file_out_of_failed(tmp_path, daemon):
    """Rejected (no sku column), archived to failed/; the mapping fixed, reloaded and the job
    requeued: it succeeds, its file moves on to processed/ with it, and the diagnostics of its
    rejection leave the inbox's results/."""
    d = daemon()
    inbox = tmp_path / "inbox" / "default"
    _drop(inbox, "ids.csv", "id,name\n1,x\n")
    [rejected] = wait_manifests(tmp_path, 1)
    assert rejected["status"] == "rejected"
    wait_for(lambda: (inbox / "failed" / "ids.csv").exists(), what="moved to failed/")
    diagnostics = inbox / "results" / f"{rejected['job_id']}.diagnostics.csv"
    assert "missing_column" in diagnostics.read_text()          # the partner's answer, in the inbox

    d.config_path.write_text(config(partners='[[partners]]\nid = "default"\ncolumns = { sku = "id" }\n'))
    d.signal(signal.SIGHUP)
    d.wait_event("config.reloaded")
    assert run_cli("jobs", "requeue", rejected["job_id"], "--config", d.config_path, cwd=tmp_path).returncode == 0

    wait_for(lambda: (inbox / "processed" / "ids.csv").exists(), what="moved on to processed/")
    assert not (inbox / "failed" / "ids.csv").exists()
    [again] = [m for m in manifests(tmp_path) if m["job_id"] == rejected["job_id"]]
    assert again["status"] == "succeeded" and again["attempt"] == 2
    # the partner's folder no longer shows the rejection beside the answer that replaced it
    answer = json.loads((inbox / "results" / f"{rejected['job_id']}.result.json").read_text())
    assert answer["status"] == "succeeded" and not diagnostics.exists()
    assert d.stop() == 0


def test_a_job_cut_off_by_a_kill_whose_spooled_copy_was_torn_is_never_applied_from_it(tmp_path, daemon):
    """Spooled copies are not synced while their job runs (``inbox_daemon.spool``): after a power
    loss one may be torn while its claim survived. The job, run again from the ledger, checks
    its copy against its sha256; the partner's file is gone too here, so nothing is applied and
    the job is quarantined with a reason, instead of half the file landing as if it were whole."""
    inbox = tmp_path / "inbox" / "default"
    rows = "".join(f"S{i},item {i},{i}.50\n" for i in range(200))
    killed = daemon(env={"INBOX_DAEMON_CRASH_AT": "before_commit:1"})
    _drop(inbox, "feed.csv", "sku,name,price\n" + rows)
    assert killed.wait(30) != 0                         # killed itself before its commit
    [(job_id, status)] = ledger(tmp_path, "id, status")
    assert status == "running"
    [copy] = (tmp_path / "var" / "spool" / "default").iterdir()
    with open(copy, "r+b") as fh:                       # as a power loss leaves an unsynced file
        fh.truncate(copy.stat().st_size // 2)
    (inbox / "feed.csv").unlink()                       # only the ledger's job is left to run

    d = daemon()
    d.wait_event("job.spooled_copy_damaged", job_id=job_id)
    event = d.wait_event("job.unrecoverable", job_id=job_id)

    assert "gone or damaged" in event["reason"] and "drop the file again" in event["reason"]
    wait_for(lambda: ledger(tmp_path)[0][1] == "quarantined", what="job quarantined")
    assert products(tmp_path) == {}
    assert d.stop() == 0
