"""SFTP inboxes against a real SFTP server on loopback (asyncssh, key auth, chroot per user)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import asyncssh
import pytest

from config import build_config
from config.errors import InboxMisconfigured, SourceGone
from inbox_daemon.inboxes.sftp import SftpInbox
from tests.conftest import products, run_cli, write_csv
from tests.daemon_harness import DaemonProcess, config, manifests, wait_for, wait_manifests
from tests.sftp_server import SftpTestServer


@pytest.fixture(scope="module")
def keys():
    return {"host": asyncssh.generate_private_key("ssh-ed25519"),
            "other_host": asyncssh.generate_private_key("ssh-ed25519"),
            "client": asyncssh.generate_private_key("ssh-ed25519")}


@pytest.fixture
def server(tmp_path, keys):
    srv = SftpTestServer(tmp_path / "sftp-root", host_key=keys["host"], client_key=keys["client"]).start()
    yield srv
    srv.close()


@pytest.fixture
def secrets(tmp_path, keys, server):
    key_file = tmp_path / "client_key"
    key_file.write_bytes(keys["client"].export_private_key("openssh"))
    key_file.chmod(0o600)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(server.known_hosts_line())
    return key_file, known_hosts


def _sftp_config(server, key_file, known_hosts, **extra) -> str:
    lines = [f'{k} = "{v}"' for k, v in extra.items()]
    inbox = ('[[inboxes]]\npartner = "globex"\nkind = "sftp"\nhost = "127.0.0.1"\n'
             f'port = {server.port}\nusername = "globex"\nkey_file = "{key_file}"\n'
             f'known_hosts = "{known_hosts}"\npath = "/outbound"\npoll_interval = "200ms"\nsettle = "200ms"\n'
             + "\n".join(lines) + "\n")
    return config(partners='[[partners]]\nid = "globex"\n', inboxes=inbox)


def _inbox(server, key_file, known_hosts) -> SftpInbox:
    import tomllib
    cfg = build_config(tomllib.loads(_sftp_config(server, key_file, known_hosts)))
    return SftpInbox(cfg.inboxes[0])


def _outbound(server) -> Path:
    folder = server.root / "globex" / "outbound"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_dropped_file_is_applied_and_the_answer_is_written_back_on_the_server(tmp_path, server, secrets):
    outbound = _outbound(server)
    d = DaemonProcess(tmp_path, _sftp_config(server, *secrets))
    try:
        write_csv(outbound / "catalog.csv", ["sku", "name", "price"], [["G1", "Gadget", "4.50"], ["G2", "Gizmo", "1"]])

        [manifest] = wait_manifests(tmp_path, 1, partner="globex")

        assert manifest["status"] == "succeeded" and manifest["rows"]["inserted"] == 2
        assert manifest["source"]["uri"] == f"sftp://globex@127.0.0.1:{server.port}/outbound/catalog.csv"
        assert set(products(tmp_path, "globex")) == {"g1", "g2"}
        written = outbound / "results" / f"{manifest['job_id']}.result.json"
        assert json.loads(wait_for(lambda: written.exists() and written.read_text(),
                                   what="result written back over SFTP"))["status"] == "succeeded"
        wait_for(lambda: (outbound / "processed" / "catalog.csv").exists(), what="archive by rename")
        assert not (outbound / "catalog.csv").exists()
        assert d.stop() == 0
    finally:
        d.close()


def test_unknown_host_key_is_refused(tmp_path, server, secrets):
    key_file, known_hosts = secrets
    known_hosts.write_text("")                                   # nothing known
    with pytest.raises(InboxMisconfigured, match="unknown"):
        list(_inbox(server, key_file, known_hosts).list_entries())
    assert known_hosts.read_text() == ""                        # and nothing was added


def test_changed_host_key_is_refused(tmp_path, server, secrets, keys):
    key_file, known_hosts = secrets
    known_hosts.write_text(server.known_hosts_line(keys["other_host"]))
    with pytest.raises(InboxMisconfigured, match="CHANGED"):
        list(_inbox(server, key_file, known_hosts).list_entries())


def test_daemon_never_reads_from_a_server_with_an_unknown_key(tmp_path, server, secrets):
    key_file, known_hosts = secrets
    known_hosts.write_text("")
    write_csv(_outbound(server) / "catalog.csv", ["sku", "name"], [["X", "x"]])
    d = DaemonProcess(tmp_path, _sftp_config(server, key_file, known_hosts))
    try:
        event = d.wait_event("inbox.poll_failed")
        assert "unknown" in event["error"] and str(known_hosts) in event["error"]
        assert manifests(tmp_path, "globex") == []
        assert d.stop() == 0
    finally:
        d.close()


def test_config_check_probe_reports_each_inbox(tmp_path, server, secrets):
    key_file, known_hosts = secrets
    _outbound(server)
    (tmp_path / "ok.toml").write_text(_sftp_config(server, key_file, known_hosts))
    done = run_cli("config", "check", "--probe", "--config", tmp_path / "ok.toml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [probe] = json.loads(done.stdout)["probe"]
    assert probe["ok"] and "host key verified" in probe["detail"]

    known_hosts.write_text("")
    done = run_cli("config", "check", "--probe", "--config", tmp_path / "ok.toml", cwd=tmp_path)
    assert done.returncode == 1
    [probe] = json.loads(done.stdout)["probe"]
    assert not probe["ok"] and "unknown" in probe["detail"]


def test_server_killed_mid_download_is_retried_and_applied_once(tmp_path, server, secrets):
    outbound = _outbound(server)
    rows = [[f"K{i}", f"name {i}", "1.00"] for i in range(60_000)]
    write_csv(tmp_path / "big.csv", ["sku", "name", "price"], rows)
    (tmp_path / "big.csv").rename(outbound / "big.csv")
    server.slow = 0.02
    server.reading.clear()
    d = DaemonProcess(tmp_path, _sftp_config(server, *secrets))
    try:
        assert server.reading.wait(20), "the download never started"
        server.kill()                                          # mid-download
        d.wait_event("file.transient_error")
        server.slow = 0.0
        server.start()                                         # same port: the daemon reconnects

        [manifest] = wait_manifests(tmp_path, 1, partner="globex", timeout=60)

        assert manifest["status"] == "succeeded" and manifest["rows"]["inserted"] == 60_000
        assert len(products(tmp_path, "globex")) == 60_000
        wait_for(lambda: (outbound / "processed" / "big.csv").exists(), what="archive after retry")
        assert len(manifests(tmp_path, "globex")) == 1
        assert d.stop() == 0
    finally:
        d.close()


def test_a_slow_server_keeps_neither_the_next_file_nor_a_stop_waiting(tmp_path, server, secrets):
    """A server answering each read of one file after 15 s (under the 20 s timeout): the
    download crawls, but the next file is listed and applied meanwhile (no lock is held while
    the server answers), and SIGTERM ends the daemon within stop_timeout (1 s) and a few seconds."""
    outbound = _outbound(server)
    write_csv(tmp_path / "slow-big.csv", ["sku", "name"], [[f"B{i}", "x" * 40] for i in range(20_000)])
    (tmp_path / "slow-big.csv").rename(outbound / "slow-big.csv")
    server.slow, server.slow_match = 15.0, "slow-"
    server.reading.clear()
    d = DaemonProcess(tmp_path, _sftp_config(server, *secrets))
    try:
        assert server.reading.wait(20), "the download never started"
        write_csv(tmp_path / "quick.csv", ["sku", "name"], [["Q", "quick"]])
        (tmp_path / "quick.csv").rename(outbound / "quick.csv")

        [manifest] = wait_manifests(tmp_path, 1, partner="globex", timeout=30)
        assert manifest["source"]["name"] == "quick.csv" and manifest["status"] == "succeeded"

        started = time.monotonic()
        assert d.stop(timeout=30) == 0
        elapsed = time.monotonic() - started
        print(f"\nSIGTERM while the server answers a read every 15 s: exit 0 in {elapsed:.2f} s (stop_timeout 1 s)")
        assert elapsed < 1 + 5
    finally:
        server.slow, server.slow_match = 0.0, None
        d.close()


def test_a_download_the_server_keeps_waiting_shows_as_stuck_and_a_close_ends_it(tmp_path, server, secrets):
    """/healthz's view of the inbox (``failing``): a download still waiting on the server past
    ``STUCK_S`` is reported (the inbox's clock moved on past it, the server really slow); closing
    the inbox ends the wait at once."""
    import threading

    from inbox_daemon.inboxes.sftp import STUCK_S
    outbound = _outbound(server)
    write_csv(outbound / "slow-one.csv", ["sku", "name"], [["S", "x"]])
    server.slow, server.slow_match = 15.0, "slow-"
    server.reading.clear()
    inbox = _inbox(server, *secrets)
    [entry] = list(inbox.list_entries())
    ended = threading.Event()

    def download():
        try:
            inbox.fetch(inbox.drop_for(entry), tmp_path / "spool")
        except Exception:  # noqa: BLE001 — the close ends it with an error: that is the point
            pass
        ended.set()
    threading.Thread(target=download, daemon=True).start()
    try:
        assert server.reading.wait(10), "the download never started"
        assert inbox.failing() is None
        real = inbox._clock
        inbox._clock = lambda: real() + STUCK_S + 1
        stuck = inbox.failing()
        assert stuck["stuck"] == "download" and "waiting for the server" in stuck["error"]

        inbox.close()
        assert ended.wait(5), "the download still waits after the inbox was closed"
    finally:
        server.slow, server.slow_match = 0.0, None


def test_a_requeued_job_that_goes_through_moves_its_file_out_of_failed_on_the_server(tmp_path, server, secrets):
    import signal
    outbound = _outbound(server)
    write_csv(tmp_path / "ids.csv", ["id", "name"], [["1", "x"]])
    (tmp_path / "ids.csv").rename(outbound / "ids.csv")
    cfg = _sftp_config(server, *secrets)
    d = DaemonProcess(tmp_path, cfg)
    try:
        [rejected] = wait_manifests(tmp_path, 1, partner="globex", timeout=30)
        assert rejected["status"] == "rejected"
        wait_for(lambda: (outbound / "failed" / "ids.csv").exists(), what="moved to failed/ on the server")
        assert (outbound / "results" / f"{rejected['job_id']}.diagnostics.csv").exists()

        d.config_path.write_text(cfg.replace('id = "globex"\n', 'id = "globex"\ncolumns = { sku = "id" }\n', 1))
        d.signal(signal.SIGHUP)
        d.wait_event("config.reloaded")
        assert run_cli("jobs", "requeue", rejected["job_id"], "--config", d.config_path, cwd=tmp_path).returncode == 0

        wait_for(lambda: (outbound / "processed" / "ids.csv").exists(), timeout=30, what="moved on to processed/")
        assert not (outbound / "failed" / "ids.csv").exists()
        # the answer that replaced the rejection's, without the rejection's diagnostics
        results = outbound / "results"
        assert json.loads((results / f"{rejected['job_id']}.result.json").read_text())["status"] == "succeeded"
        assert not (results / f"{rejected['job_id']}.diagnostics.csv").exists()
        assert d.stop() == 0
    finally:
        d.close()


def test_names_that_would_leave_the_folder_are_refused(tmp_path, server, secrets):
    inbox = _inbox(server, *secrets)
    from inbox_daemon.drop import Drop
    evil = Drop(inbox=inbox.id, partner="globex", key="../secret.csv", name="secret.csv", uri="x", size=1, version="1")
    with pytest.raises(InboxMisconfigured, match="leaves the inbox folder"):
        inbox.fetch(evil, tmp_path)
    inbox.close()


def test_a_file_gone_before_it_is_downloaded_is_no_fault_of_the_inbox(tmp_path, server, secrets):
    """Deleted by the partner, or taken in by another look at it: SourceGone (not retried, no
    /healthz fault), not the InboxUnavailable of a server that cannot be reached."""
    inbox = _inbox(server, *secrets)
    from inbox_daemon.drop import Drop
    gone = Drop(inbox=inbox.id, partner="globex", key="gone.csv", name="gone.csv", uri="x", size=1, version="1")
    _outbound(server)
    with pytest.raises(SourceGone):
        inbox.fetch(gone, tmp_path)
    inbox.close()


def test_password_from_the_environment_authenticates_and_never_reaches_the_log(tmp_path, keys):
    srv = SftpTestServer(tmp_path / "pw-root", host_key=keys["host"], client_key=keys["client"],
                         passwords={"globex": "correct horse battery"}).start()
    try:
        (tmp_path / "known_hosts").write_text(srv.known_hosts_line())
        folder = srv.root / "globex" / "outbound"
        folder.mkdir(parents=True)
        write_csv(folder / "pw.csv", ["sku", "name"], [["P1", "x"]])
        inbox = ('[[inboxes]]\npartner = "globex"\nkind = "sftp"\nhost = "127.0.0.1"\n'
                 f'port = {srv.port}\nusername = "globex"\npassword_env = "GLOBEX_SFTP_PASSWORD"\n'
                 f'known_hosts = "{tmp_path / "known_hosts"}"\npath = "/outbound"\npoll_interval = "200ms"\n'
                 'settle = "200ms"\n')
        cfg = config(partners='[[partners]]\nid = "globex"\n', inboxes=inbox)
        d = DaemonProcess(tmp_path, cfg, env={"GLOBEX_SFTP_PASSWORD": "correct horse battery"})
        try:
            [manifest] = wait_manifests(tmp_path, 1, partner="globex")
            assert manifest["status"] == "succeeded"
            assert d.stop() == 0
            assert "correct horse battery" not in d.log_path.read_text()
        finally:
            d.close()
        wrong = DaemonProcess(tmp_path, cfg, env={"GLOBEX_SFTP_PASSWORD": "wrong"})
        try:
            assert "authentication" in wrong.wait_event("inbox.poll_failed")["error"]
        finally:
            wrong.close()
    finally:
        srv.close()


def test_an_old_mtime_on_the_server_does_not_make_a_file_ready_at_first_sight(tmp_path, server, secrets):
    """The server's clock may be behind ours, and an upload in progress can carry an old mtime:
    only our own listings, unchanged across settle, make a remote file ready."""
    import os
    import time as clock
    folder = _outbound(server)
    write_csv(folder / "old.csv", ["sku", "name"], [["O", "x"]])
    os.utime(folder / "old.csv", (clock.time() - 3600,) * 2)
    inbox = _inbox(server, *secrets)                       # settle = 200 ms
    try:
        assert inbox.ready_entries() == []
        clock.sleep(0.3)
        assert [e.name for e in inbox.ready_entries()] == ["old.csv"]
        assert inbox.ready_entries() == []                 # handed over once, not every poll
    finally:
        inbox.close()


def test_a_broken_known_hosts_line_is_reported_and_the_inbox_recovers_once_fixed(tmp_path, server, secrets):
    key_file, known_hosts = secrets
    good = known_hosts.read_text()
    known_hosts.write_text(good.split(" ")[0] + " ssh-ed25519 AAAA-not-base64\n")
    write_csv(_outbound(server) / "later.csv", ["sku", "name"], [["L", "x"]])
    d = DaemonProcess(tmp_path, _sftp_config(server, key_file, known_hosts))
    try:
        event = d.wait_event("inbox.poll_failed")
        assert "known_hosts" in event["error"] or "unreadable" in event["error"]
        known_hosts.write_text(good)                       # the operator fixes the file
        [manifest] = wait_manifests(tmp_path, 1, partner="globex", timeout=30)
        assert manifest["status"] == "succeeded"
        assert d.stop() == 0
    finally:
        d.close()


def test_an_sftp_file_is_claimed_in_the_store_before_its_download_and_a_local_file_is_not(tmp_path, server,
                                                                                         secrets):
    """Other daemons on the store list the same SFTP folder: its file is claimed before it is
    downloaded. A local folder is this daemon's alone: its file is taken without a claim (two
    write transactions fewer a file). Each daemon is frozen right after its copy, claims held."""
    import sqlite3

    def frozen_with_claims(cfg: str, drop) -> list[tuple]:
        root = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
        root.mkdir()
        d = DaemonProcess(root, cfg, env={"INBOX_DAEMON_FREEZE_AT": "after_spool"})
        try:
            drop(root)
            wait_for(lambda: Path(f"/proc/{d.proc.pid}/stat").read_text().rpartition(")")[2].split()[0] == "T",
                     what="the daemon frozen after its copy")
            con = sqlite3.connect(root / "var" / "catalog.db")
            try:
                return con.execute("SELECT inbox, uri FROM drop_claims").fetchall()
            finally:
                con.close()
        finally:
            d.kill()

    key_file, known_hosts = secrets
    claims = frozen_with_claims(_sftp_config(server, key_file, known_hosts),
                                lambda root: write_csv(_outbound(server) / "remote.csv", ["sku", "name"], [["R", "r"]]))
    assert [uri.rpartition("/")[2] for _, uri in claims] == ["remote.csv"]
    assert frozen_with_claims(config(), lambda root: write_csv(root / "inbox" / "default" / "local.csv",
                                                               ["sku", "name"], [["L", "l"]])) == []
