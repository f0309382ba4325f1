"""Only complete files are applied: what a real writer does to a file while it is not done yet.

Real processes and real timing: the daemon as a subprocess, writers as shell and Python
subprocesses, the asyncssh server of ``tests/sftp_server.py`` for SFTP, moto for S3. A test that
must show that nothing happened *yet* gives the daemon a few ``settle`` periods to misbehave.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from config import ConfigError, build_config
from config.errors import SourceChanged, SourceGone, Transient
from inbox_daemon.inboxes.local import LocalInbox, _proc_writers, writers_holding
from tests.conftest import ledger, products
from tests.daemon_harness import config, manifests, wait_for, wait_manifests
from tests.test_sftp import keys, secrets, server  # noqa: F401 — fixtures

SETTLE = 1.0                    # seconds: the local inboxes' settle here
HEADER = "sku,name,price\n"


def _rows(start: int, stop: int) -> str:
    return "".join(f"S{i},Name {i},{i}.00\n" for i in range(start, stop))


def _local(extra: str = "") -> str:
    return config(inboxes='[[inboxes]]\npartner = "default"\nkind = "local"\npath = "inbox/default"\n'
                          f'settle = "{SETTLE}s"\n{extra}')


def _drop(inbox: Path, name: str, text: str) -> None:
    """Write under a temp name, then rename into place: the way careful uploaders do it."""
    tmp = inbox / f".{name}.part"
    tmp.write_text(text)
    tmp.rename(inbox / name)


def _healthz(address: str) -> dict:
    try:
        with urllib.request.urlopen(f"http://{address}/healthz", timeout=5) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as answer:           # 503 while degraded: the body says why
        return json.loads(answer.read())


def _grown_in_health(address: str, inbox_id: str) -> dict | None:
    return _healthz(address)["degraded"].get(f"inbox {inbox_id}", {}).get("grew_after_archive")


# == local: a quiet moment after close-write =======================================================

def test_a_shell_appending_line_by_line_is_one_delivery(tmp_path, daemons):
    """``>>`` opens, appends and closes the file for every line: 21 close-writes, one file."""
    d = daemons(tmp_path, _local())
    inbox = tmp_path / "inbox" / "default"
    script = ('echo "sku,name,price" > feed.csv; '
              'for i in $(seq 20); do echo "SKU$i,Name $i,$i.00" >> feed.csv; sleep 0.05; done')
    subprocess.run(["bash", "-c", script], cwd=inbox, check=True)

    [manifest] = wait_manifests(tmp_path, 1)
    wait_for(lambda: (inbox / "processed" / "feed.csv").exists(), what="feed.csv archived")
    time.sleep(SETTLE)                  # a second, wrongly early job would show by now

    assert manifest["status"] == "succeeded" and manifest["rows"]["read"] == 20
    assert ledger(tmp_path, "source_name, status") == [("feed.csv", "succeeded")]
    assert len(products(tmp_path)) == 20
    assert d.stop() == 0


def test_a_file_closed_in_the_middle_of_a_line_waits_for_settle(tmp_path, daemons):
    """A writer that closes after half a line and comes back within ``settle`` (longer than the
    quiet window): the text file's unterminated last line holds it back."""
    d = daemons(tmp_path, _local())
    path = tmp_path / "inbox" / "default" / "feed.csv"
    path.write_text(HEADER + "A1,Anvil,9.99\nA2,Ro")
    time.sleep(SETTLE / 2)              # the writer's pause: past the quiet window, within settle
    with open(path, "a") as fh:
        fh.write("pe,1.50\n")

    [manifest] = wait_manifests(tmp_path, 1)
    time.sleep(SETTLE)

    assert manifest["rows"]["read"] == 2
    assert ledger(tmp_path, "source_name, status") == [("feed.csv", "succeeded")]
    assert products(tmp_path)["a2"]["name"] == "Rope"
    assert d.stop() == 0


def test_a_header_written_alone_by_a_shell_waits_for_the_rows_appended_after_a_pause(tmp_path, daemons):
    """``echo header > f; sleep 1; echo row >> f``: the header alone, closed and quiet past the
    quiet window, was a delivery of its own (no rows), and the rows appended after it another
    (no header: rejected). A table of nothing but its header line waits for ``settle``."""
    d = daemons(tmp_path, _local())
    inbox = tmp_path / "inbox" / "default"
    script = (f'echo "sku,name,price" > feed.csv; sleep {SETTLE / 2}; '
              'echo "A1,Anvil,9.99" >> feed.csv; echo "A2,Rope,1.50" >> feed.csv')
    subprocess.run(["bash", "-c", script], cwd=inbox, check=True)

    [manifest] = wait_manifests(tmp_path, 1)
    time.sleep(SETTLE)                  # a second, wrongly early job would show by now

    assert manifest["status"] == "succeeded" and manifest["rows"]["read"] == 2
    assert ledger(tmp_path, "source_name, status") == [("feed.csv", "succeeded")]
    assert d.stop() == 0


# == local: no writer holding the file =============================================================

WRITER = """
import sys, time
path, rows, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
lines = [f"S{i},Name {i},{i}.00\\n" for i in range(rows)]
with open(path, "w") as fh:          # the header first, closed: as many exporters do
    fh.write("sku,name,price\\n")
with open(path, "a") as fh:          # then the rows through one open file, with a long pause
    fh.writelines(lines[:rows // 2])
    fh.flush()
    time.sleep(pause)
    fh.writelines(lines[rows // 2:])
"""


def test_a_writer_pausing_longer_than_settle_with_its_file_open_is_not_read_truncated(tmp_path, daemons):
    d = daemons(tmp_path, _local())
    path = tmp_path / "inbox" / "default" / "feed.csv"
    subprocess.run([sys.executable, "-c", WRITER, str(path), "1000", str(2.5 * SETTLE)], check=True)
    size = path.stat().st_size

    [manifest] = wait_manifests(tmp_path, 1)
    time.sleep(SETTLE)

    assert [s for (s,) in ledger(tmp_path, "size")] == [size]      # no job ever read less
    assert manifest["status"] == "succeeded" and manifest["rows"]["read"] == 1000
    assert len(products(tmp_path)) == 1000
    assert d.stop() == 0


HOLDER = """
import sys
path, rows = sys.argv[1], int(sys.argv[2])
fh = open(path, "w")
fh.write("sku,name,price\\n" + "".join(f"S{i},Name {i},{i}.00\\n" for i in range(10)))
fh.flush()
print("written", flush=True)
sys.stdin.readline()                 # the rest when the test says so, through the same open file
fh.write("".join(f"S{i},Name {i},{i}.00\\n" for i in range(10, rows)))
fh.close()
"""


def test_a_daemon_restarted_during_an_upload_applies_only_the_complete_file(tmp_path, daemons):
    first = daemons(tmp_path, _local())
    path = tmp_path / "inbox" / "default" / "feed.csv"
    # (leaving the block closes its stdin: the writer then finishes, whatever was asserted)
    with subprocess.Popen([sys.executable, "-c", HOLDER, str(path), "1010"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as writer:
        assert writer.stdout is not None and writer.stdin is not None
        assert writer.stdout.readline().strip() == "written"
        first.kill()                                    # SIGKILL in the middle of the upload
        second = daemons(tmp_path, _local())
        time.sleep(3 * SETTLE)                          # the writer holds the file, silent
        assert manifests(tmp_path) == []                # nothing of the first 10 rows taken
        writer.stdin.write("go\n")
        writer.stdin.flush()
    assert writer.returncode == 0

    [manifest] = wait_manifests(tmp_path, 1)
    time.sleep(SETTLE)

    assert manifest["rows"]["read"] == 1010
    assert ledger(tmp_path, "size") == [(path.parent.joinpath("processed", "feed.csv").stat().st_size,)]
    assert len(products(tmp_path)) == 1010
    assert second.stop() == 0


HOLD = """
import sys
fh = open(sys.argv[1], sys.argv[2])
print("open", flush=True)
sys.stdin.readline()
"""


def _by_lease_or_proc(path, key):
    return writers_holding({key: path})


def _by_proc_only(path, key):
    return _proc_writers({key})


@pytest.mark.skipif(not Path("/proc/self/fdinfo").is_dir(), reason="no /proc to look for writers in")
@pytest.mark.parametrize("ask", [_by_lease_or_proc, _by_proc_only], ids=["lease", "proc"])
def test_writers_holding_names_files_open_for_writing_not_for_reading(tmp_path, ask):
    """Both ways of asking (a read lease, and the /proc pass for files a lease cannot answer
    for: another owner's, a filesystem without leases) tell a writer from a reader."""
    path = tmp_path / "held.csv"
    path.write_text(HEADER)
    st = path.stat()
    key = (st.st_dev, st.st_ino)
    for mode, held in (("r", False), ("a", True), ("r+", True)):
        with subprocess.Popen([sys.executable, "-c", HOLD, str(path), mode], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) as proc:      # ends at stdin's close
            assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
            assert (key in ask(path, key)) is held, mode
    assert ask(path, key) == set()          # nobody holds it now


# == size and mtime unchanged from the readiness check to the commit ===============================

@pytest.fixture
def local_inbox(tmp_path):
    cfg = build_config({"inboxes": [{"partner": "default", "path": str(tmp_path / "in")}]})
    inbox = LocalInbox(cfg.inboxes[0])
    yield inbox
    inbox.close()


def _ready(inbox: LocalInbox, name: str, text: str):
    (inbox.root / name).write_text(text)
    return inbox._drop(name, os.lstat(inbox.root / name))


def test_fetch_refuses_a_local_file_appended_to_since_it_was_judged_ready(local_inbox, tmp_path):
    drop = _ready(local_inbox, "feed.csv", HEADER + _rows(0, 10))
    with open(local_inbox.root / "feed.csv", "a") as fh:       # the upload goes on
        fh.write(_rows(10, 20))

    with pytest.raises(SourceChanged):
        local_inbox.fetch(drop, tmp_path / "spool")
    assert list((tmp_path / "spool").glob("*")) == []           # no copy of a truncated read


def test_verify_unchanged_refuses_an_append_in_place_not_a_file_renamed_over_it(local_inbox, tmp_path):
    path = local_inbox.root / "feed.csv"
    drop = _ready(local_inbox, "feed.csv", HEADER + _rows(0, 10))
    local_inbox.fetch(drop, tmp_path / "spool")
    local_inbox.verify_unchanged(drop)                          # as read: fine
    with open(path, "a") as fh:
        fh.write(_rows(10, 20))
    with pytest.raises(SourceChanged):
        local_inbox.verify_unchanged(drop)

    drop = _ready(local_inbox, "feed.csv", HEADER + _rows(0, 10))
    local_inbox.fetch(drop, tmp_path / "spool")
    (local_inbox.root / ".next.part").write_text(HEADER + _rows(0, 30))
    (local_inbox.root / ".next.part").rename(path)              # a new delivery under that name
    local_inbox.verify_unchanged(drop)
    path.unlink()                                               # gone: what was read was whole
    local_inbox.verify_unchanged(drop)


def _same_size_same_mtime(tmp_path, first: str, second: str) -> tuple[Path, Path]:
    """Two versions of a file that differ only in a price (the same size), with one mtime:
    what ``cp -p`` of each leaves indistinguishable by size and mtime."""
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text(first)
    b.write_text(second)
    assert a.stat().st_size == b.stat().st_size
    os.utime(b, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns))
    return a, b


def test_a_same_size_rewrite_by_cp_p_after_the_read_is_refused_at_commit(local_inbox, tmp_path):
    a, b = _same_size_same_mtime(tmp_path, HEADER + "A,x,1.00\n", HEADER + "A,x,3.00\n")
    path = local_inbox.root / "feed.csv"
    subprocess.run(["cp", "-p", a, path], check=True)
    drop = local_inbox._drop("feed.csv", os.lstat(path))
    local_inbox.fetch(drop, tmp_path / "spool")
    subprocess.run(["cp", "-p", b, path], check=True)           # size and mtime as read

    with pytest.raises(SourceChanged):
        local_inbox.verify_unchanged(drop)


def test_a_same_size_rewrite_by_cp_p_after_the_commit_is_not_archived_as_what_was_applied(local_inbox, tmp_path):
    """Applied as read; rewritten in place before its archive: what is there now was never
    read, so it stays in the inbox, to be offered as a delivery of its own."""
    a, b = _same_size_same_mtime(tmp_path, HEADER + "A,x,1.00\n", HEADER + "A,x,3.00\n")
    path = local_inbox.root / "feed.csv"
    subprocess.run(["cp", "-p", a, path], check=True)
    drop = local_inbox._drop("feed.csv", os.lstat(path))
    local_inbox.fetch(drop, tmp_path / "spool")
    local_inbox.verify_unchanged(drop)                          # the commit: as read
    subprocess.run(["cp", "-p", b, path], check=True)

    local_inbox.archive(drop, "succeeded")

    assert path.read_text() == b.read_text()
    assert list((local_inbox.root / "processed").iterdir()) == []
    assert "feed.csv" in local_inbox._pending                   # looked at again


# == marker mode ===================================================================================

def test_a_file_gone_before_it_is_read_is_no_fault_of_the_inbox(local_inbox, tmp_path):
    """Deleted by the partner, or taken in and archived by another look at it (a retry and a
    rescan of one file under load): nothing to read, nothing to retry, nothing for /healthz."""
    drop = _ready(local_inbox, "feed.csv", HEADER + _rows(0, 10))
    (local_inbox.root / "feed.csv").unlink()
    with pytest.raises(SourceGone) as info:
        local_inbox.fetch(drop, tmp_path / "spool")
    assert not isinstance(info.value, Transient)             # the journey ends it quietly (file.gone)


def test_ready_marker_must_be_true_or_false():
    with pytest.raises(ConfigError) as info:
        build_config({"inboxes": [{"partner": "default", "ready_marker": "yes"}]})
    assert info.value.problems == ["inboxes[0].ready_marker: expected true or false, got str"]
    assert build_config({"inboxes": [{"partner": "default", "ready_marker": True}]}).inboxes[0].ready_marker


def test_local_marker_mode_applies_a_file_once_its_marker_is_there_and_archives_both(tmp_path, daemons):
    # patterns = ["*"]: the markers would be input if marker mode did not keep them out
    d = daemons(tmp_path, _local('ready_marker = true\npatterns = ["*"]\n'))
    inbox = tmp_path / "inbox" / "default"
    _drop(inbox, "feed.csv", HEADER + _rows(0, 5))
    (inbox / "orphan.csv.ok").touch()                          # a marker without its data file
    time.sleep(3 * SETTLE)
    assert manifests(tmp_path) == [] and (inbox / "feed.csv").exists()

    (inbox / "feed.csv.done").touch()

    [manifest] = wait_manifests(tmp_path, 1)
    # the marker is moved first, then its file
    wait_for(lambda: (inbox / "processed" / "feed.csv").exists(), what="the file archived")
    assert (inbox / "processed" / "feed.csv.done").exists()
    assert manifest["status"] == "succeeded" and manifest["rows"]["read"] == 5
    assert not (inbox / "feed.csv").exists() and not (inbox / "feed.csv.done").exists()
    time.sleep(SETTLE)
    assert (inbox / "orphan.csv.ok").exists()                  # left alone
    assert ledger(tmp_path, "source_name") == [("feed.csv",)]  # markers are never input
    assert d.stop() == 0


# == SFTP ==========================================================================================

@pytest.fixture
def sftp_config(secrets, server):
    """The daemon's config for an SFTP inbox on ``server`` (settle 500 ms), plus ``extra`` lines."""
    key_file, known_hosts = secrets
    (server.root / "globex" / "outbound").mkdir(parents=True)

    def make(extra: str = "") -> str:
        inbox = ('[[inboxes]]\npartner = "globex"\nkind = "sftp"\nhost = "127.0.0.1"\n'
                 f'port = {server.port}\nusername = "globex"\nkey_file = "{key_file}"\n'
                 f'known_hosts = "{known_hosts}"\npath = "/outbound"\npoll_interval = "100ms"\n'
                 f'settle = "500ms"\n{extra}')
        return config(partners='[[partners]]\nid = "globex"\n', inboxes=inbox)
    return make


def test_sftp_marker_mode_applies_a_file_once_its_marker_is_there_and_archives_both(
        tmp_path, daemons, server, sftp_config):
    outbound = server.root / "globex" / "outbound"
    d = daemons(tmp_path, sftp_config("ready_marker = true\n"))
    (outbound / "feed.csv").write_text(HEADER + _rows(0, 5))
    time.sleep(3)                                      # six settles, thirty polls
    assert manifests(tmp_path, "globex") == [] and (outbound / "feed.csv").exists()

    (outbound / "feed.csv.ok").touch()

    [manifest] = wait_manifests(tmp_path, 1, partner="globex")
    # the marker is moved first, then its file
    wait_for(lambda: (outbound / "processed" / "feed.csv").exists(), what="the file archived")
    assert (outbound / "processed" / "feed.csv.ok").exists()
    assert manifest["status"] == "succeeded" and manifest["rows"]["read"] == 5
    assert not (outbound / "feed.csv").exists() and not (outbound / "feed.csv.ok").exists()
    assert d.stop() == 0


def test_sftp_file_that_grows_after_it_was_archived_is_reported_and_applied_whole(
        tmp_path, daemons, server, sftp_config):
    """The client paused longer than settle: the first part was applied and archived (renamed
    into processed/), and the rest of its upload lands in the archived file."""
    outbound = server.root / "globex" / "outbound"
    d = daemons(tmp_path, sftp_config())
    inbox_id = f"sftp:globex@127.0.0.1:{server.port}/outbound"
    (outbound / "big.csv").write_text(HEADER + _rows(0, 100))
    [first] = wait_manifests(tmp_path, 1, partner="globex")
    archived = outbound / "processed" / "big.csv"
    wait_for(archived.exists, what="the first part archived")
    size_at_archive = archived.stat().st_size
    with open(archived, "a") as fh:                    # the rest of the upload
        fh.write(_rows(100, 1000))

    event = d.wait_event("file.grew_after_archive")
    assert (event["archived"], event["size_at_archive"]) == ("processed/big.csv", size_at_archive)
    assert event["size_now"] == archived.stat().st_size and event["level"] == "error"
    [reported] = wait_for(lambda: _grown_in_health(d.health, inbox_id), what="/healthz naming the file")
    assert reported["archived"] == "processed/big.csv"

    second = wait_manifests(tmp_path, 2, partner="globex", timeout=30)[-1]
    assert first["rows"]["read"] == 100
    assert second["status"] == "succeeded" and second["rows"]["read"] == 1000
    assert len(products(tmp_path, "globex")) == 1000
    wait_for(lambda: _healthz(d.health)["ok"], what="/healthz clear once the file was taken in")
    assert d.stop() == 0


def test_local_file_that_grows_after_it_was_archived_is_reported_and_applied_whole(tmp_path, daemons):
    d = daemons(tmp_path, _local())
    inbox = tmp_path / "inbox" / "default"
    _drop(inbox, "feed.csv", HEADER + _rows(0, 10))
    wait_manifests(tmp_path, 1)
    archived = inbox / "processed" / "feed.csv"
    wait_for(archived.exists, what="feed.csv archived")
    with open(archived, "a") as fh:                    # a writer the daemon could not see goes on
        fh.write(_rows(10, 200))

    event = d.wait_event("file.grew_after_archive")
    assert event["archived"] == "processed/feed.csv"
    [reported] = wait_for(lambda: _grown_in_health(d.health, "local:inbox/default"),
                          what="/healthz naming the file")
    assert reported["archived"] == "processed/feed.csv"

    second = wait_manifests(tmp_path, 2, timeout=30)[-1]
    assert second["status"] == "succeeded" and second["rows"]["read"] == 200
    assert len(products(tmp_path)) == 200
    wait_for(lambda: _healthz(d.health)["ok"], what="/healthz clear once the file was taken in")
    assert d.stop() == 0


# == S3: markers in listings and in events (moto in-process) =======================================

@pytest.fixture
def s3_client(monkeypatch):
    from moto import mock_aws
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": "/nonexistent",
                        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}.items():
        monkeypatch.setenv(name, value)
    import boto3
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket="drops")
        yield client


def test_s3_marker_mode_hands_over_a_file_once_its_marker_is_there_and_archives_both(s3_client):
    from inbox_daemon.inboxes.s3 import EventRecord, S3Inbox
    cfg = build_config(tomllib.loads('[[partners]]\nid = "acme"\n[[inboxes]]\npartner = "acme"\nkind = "s3"\n'
                                     'bucket = "drops"\nprefix = "acme/"\nsettle = "0s"\nready_marker = true\n'))
    inbox = S3Inbox(cfg.inboxes[0], client=s3_client)
    s3_client.put_object(Bucket="drops", Key="acme/feed.csv", Body=(HEADER + _rows(0, 3)).encode())
    assert inbox.ready_entries() == []
    assert inbox.announced(EventRecord("ObjectCreated:Put", "drops", "acme/feed.csv")) is None

    s3_client.put_object(Bucket="drops", Key="acme/feed.csv.done", Body=b"")

    assert [e.name for e in inbox.ready_entries()] == ["feed.csv"]
    drop = inbox.announced(EventRecord("ObjectCreated:Put", "drops", "acme/feed.csv.done"))
    assert drop is not None and (drop.key, drop.name) == ("acme/feed.csv", "feed.csv")
    inbox.archive(drop, "succeeded")
    keys = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket="drops")["Contents"])
    assert keys == ["acme/processed/feed.csv", "acme/processed/feed.csv.done"]
    inbox.close()
