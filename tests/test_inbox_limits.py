"""What an inbox must survive: its folder deleted and made again, names as long as the
filesystem allows, and files far bigger than a partner may send. Real ``inbox-daemon run``
processes, real folders, a real SFTP server on loopback."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from config.errors import LimitExceeded
from inbox_daemon.drop import Drop
from inbox_daemon.inboxes.base import NAME_MAX, archive_name, fitted
from tests.conftest import ledger, read_diagnostics
from tests.daemon_harness import DaemonProcess, config, healthz, manifests, wait_for, wait_manifests
from tests.test_sftp import _inbox, _outbound, _sftp_config, keys, secrets, server  # noqa: F401 (fixtures)


def _drop(inbox: Path, name: str, text: str) -> None:
    """Written under a temp name, then renamed into place, as careful uploaders do."""
    tmp = inbox / ".upload.part"
    tmp.write_text(text)
    tmp.rename(inbox / name)


def _longest_name(suffix: str = ".csv") -> str:
    """A file name of exactly ``NAME_MAX`` bytes, two-byte characters included (a cut must
    never split one)."""
    name = "é" * 100 + "x" * (NAME_MAX - 200 - len(suffix)) + suffix
    assert len(name.encode()) == NAME_MAX
    return name


# -- a deleted inbox folder ------------------------------------------------------------------------

def test_inbox_folder_deleted_and_made_again_is_reported_then_watched_again(tmp_path, daemons):
    d = daemons(tmp_path, config())
    inbox = tmp_path / "inbox" / "default"
    wait_for(lambda: healthz(d.health)[0] == 200, what="/healthz 200 at start")

    shutil.rmtree(inbox)

    def degraded():
        code, body = healthz(d.health)
        fault = body.get("degraded", {}).get("inbox local:inbox/default", {})
        return code == 503 and fault.get("folder_missing") == str(inbox.resolve())
    wait_for(degraded, timeout=10, what="/healthz 503 naming the missing folder")
    d.wait_event("inbox.folder_missing")

    inbox.mkdir()
    d.wait_event("inbox.folder_back", timeout=5)
    started = time.monotonic()
    _drop(inbox, "after.csv", "sku,name\nA,x\n")

    # well before the daemon's 60 s rescan: the watch itself saw it
    [manifest] = wait_manifests(tmp_path, 1, timeout=5)
    assert manifest["status"] == "succeeded" and time.monotonic() - started < 5
    wait_for(lambda: (inbox / "processed" / "after.csv").exists(), timeout=5, what="archived")
    wait_for(lambda: healthz(d.health)[0] == 200, timeout=5, what="/healthz 200 once the folder is watched again")
    assert d.stop() == 0


def test_a_file_dropped_while_the_folder_was_being_made_again_is_taken(tmp_path, daemons):
    """Made again and filled before the watch was back on it: nothing was seen, and still the
    file is taken at once, not at the next rescan."""
    d = daemons(tmp_path, config())
    inbox = tmp_path / "inbox" / "default"
    moved = tmp_path / "inbox" / "gone"
    inbox.rename(moved)                     # moved away: its watch follows the old folder
    d.wait_event("inbox.folder_missing", timeout=5)
    staging = tmp_path / "inbox" / ".staging"
    staging.mkdir()
    (staging / "early.csv").write_text("sku,name\nE,x\n")
    staging.rename(inbox)                   # a folder of that name, already holding a file

    [manifest] = wait_manifests(tmp_path, 1, timeout=5)
    assert manifest["source"]["name"] == "early.csv"
    (moved / "ignored.csv").write_text("sku,name\nI,x\n")     # the old folder is no inbox any more
    time.sleep(1.0)
    assert len(manifests(tmp_path)) == 1
    assert d.stop() == 0


# -- archive names that fit ------------------------------------------------------------------------

def test_collision_names_fit_name_max_and_keep_the_beginning_and_the_version():
    name = _longest_name()
    taken = {name}
    first = archive_name(name, "1767225600123456789", taken.__contains__)
    taken.add(first)
    second = archive_name(name, "1767225600123456789", taken.__contains__)

    assert len(first.encode()) <= NAME_MAX and len(second.encode()) <= NAME_MAX
    assert first.endswith(".1767225600123456789") and second.endswith(".1767225600123456789.2")
    assert first.startswith("é" * 100) and first != second
    # room for the markers archived next to it ("<name>.done")
    assert len(archive_name(name, "v", taken.__contains__, room=5).encode()) <= NAME_MAX - 5
    # two long names that share their beginning stay apart
    assert fitted("a" * 300, ".1") != fitted("a" * 299 + "b", ".1")
    assert fitted("short.csv", ".1") == "short.csv.1"


def test_a_longest_name_sent_twice_is_archived_both_times(tmp_path, daemons):
    d = daemons(tmp_path, config())
    inbox = tmp_path / "inbox" / "default"
    name = _longest_name()
    _drop(inbox, name, "sku,name\nL1,x\n")
    wait_manifests(tmp_path, 1)
    wait_for(lambda: not (inbox / name).exists(), what="first archive")
    _drop(inbox, name, "sku,name\nL2,y\n")

    found = wait_manifests(tmp_path, 2)

    assert {m["status"] for m in found} == {"succeeded"}
    wait_for(lambda: not (inbox / name).exists(), timeout=10, what="the second one archived too")
    [other] = set(os.listdir(inbox / "processed")) - {name}
    assert len(other.encode()) <= NAME_MAX and other.startswith("é" * 100)
    assert not [e for e in d.events() if e.get("event") == "inbox.archive_failed"]
    assert d.stop() == 0


def test_a_longest_name_sent_twice_over_sftp_is_archived_both_times(tmp_path, server, secrets):  # noqa: F811
    outbound = _outbound(server)
    name = _longest_name()
    d = DaemonProcess(tmp_path, _sftp_config(server, *secrets))
    try:
        (outbound / name).write_text("sku,name\nS1,x\n")
        wait_manifests(tmp_path, 1, partner="globex")
        wait_for(lambda: not (outbound / name).exists(), what="first archive by rename")
        # another size: SFTP versions are mtime and size, and both uploads may share a second
        (outbound / name).write_text("sku,name\nS2,yy\n")

        wait_manifests(tmp_path, 2, partner="globex")
        wait_for(lambda: not (outbound / name).exists(), timeout=10, what="the second one archived too")
        [other] = set(os.listdir(outbound / "processed")) - {name}
        assert len(other.encode()) <= NAME_MAX and other.startswith("é" * 100)
        assert d.stop() == 0
    finally:
        d.close()


# -- max_file_bytes ----------------------------------------------------------------------------------

def _state_bytes(root: Path) -> int:
    """Bytes the state folder takes on disk (allocated blocks: a sparse copy counts as it is)."""
    return sum(p.lstat().st_blocks * 512 for p in (root / "var").rglob("*") if p.is_file())


def test_a_sparse_file_over_max_file_bytes_is_rejected_unread(tmp_path, daemons):
    partners = '[[partners]]\nid = "default"\nmax_file_bytes = 1048576\n'
    d = daemons(tmp_path, config(partners=partners))
    inbox = tmp_path / "inbox" / "default"
    tmp = inbox / ".huge.part"
    with open(tmp, "wb") as fh:
        fh.write(b"sku,name\n")
        os.truncate(fh.fileno(), 2 << 30)       # 2 GiB listed, a few KiB on disk
    tmp.rename(inbox / "huge.csv")
    started = time.monotonic()

    [manifest] = wait_manifests(tmp_path, 1, timeout=10)

    assert time.monotonic() - started < 10
    assert manifest["status"] == "rejected" and manifest["errors"] == {"limit_exceeded": 1}
    [line] = read_diagnostics(manifest, tmp_path)
    assert line["code"] == "limit_exceeded"
    assert str(2 << 30) in line["message"] and "max_file_bytes = 1048576" in line["message"]
    wait_for(lambda: (inbox / "failed" / "huge.csv").exists(), what="archived to failed/")
    assert (inbox / "results" / f"{manifest['job_id']}.result.json").exists()
    time.sleep(1.0)                             # a retry loop would show by now (retry_base 50 ms)
    assert ledger(tmp_path) == [("huge.csv", "rejected", 1)]
    assert len(manifests(tmp_path)) == 1
    assert _state_bytes(tmp_path) < 4 << 20
    assert d.stop() == 0


def test_a_file_that_grows_past_max_file_bytes_while_copied_is_refused(tmp_path, server, secrets):  # noqa: F811
    """Listed small, bigger once read (an upload that went on): the copy stops at the limit,
    and the spool keeps nothing of it."""
    outbound = _outbound(server)
    (outbound / "grows.csv").write_bytes(b"sku,name\n" + b"G,x\n" * 10)
    inbox = _inbox(server, *secrets)
    try:
        [entry] = [e for e in inbox.list_entries() if e.name == "grows.csv"]
        drop: Drop = inbox.drop_for(entry)
        with open(outbound / "grows.csv", "ab") as fh:
            fh.write(b"G,x\n" * 600_000)           # 2.4 MB more since it was listed
        spool = tmp_path / "spool"

        with pytest.raises(LimitExceeded) as caught:
            inbox.fetch(drop, spool, max_bytes=1 << 20)

        assert caught.value.code == "limit_exceeded" and "max_file_bytes = 1048576" in str(caught.value)
        assert not [p for p in spool.rglob("*") if p.is_file()]
    finally:
        inbox.close()
