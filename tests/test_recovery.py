"""What must hold when things go wrong around a job: files replaced or swapped under the same
name, a torn audit line after a power cut, unreadable configuration, ambiguous headers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from config import build_config
from config.errors import InboxMisconfigured, InboxUnavailable
from inbox_daemon.audit import AuditLog
from inbox_daemon.inboxes.local import LocalInbox
from tests.conftest import read_diagnostics


@pytest.fixture
def local_inbox(tmp_path):
    cfg = build_config({"inboxes": [{"partner": "default", "path": str(tmp_path / "in")}]})
    return LocalInbox(cfg.inboxes[0])


def _drop_for(inbox: LocalInbox, name: str):
    return inbox._drop(name, os.lstat(inbox.root / name))


def test_a_newer_upload_under_the_same_name_is_not_archived_by_the_older_job(local_inbox, tmp_path):
    path = local_inbox.root / "feed.csv"
    path.write_text("sku,name\nOLD,x\n")
    old = _drop_for(local_inbox, "feed.csv")
    time.sleep(0.01)
    replacement = local_inbox.root / ".feed.part"
    replacement.write_text("sku,name\nNEW,x\n")
    os.utime(replacement, ns=(time.time_ns(), time.time_ns() + 10**9))
    replacement.rename(path)                     # the partner uploads again while v1 is applied

    local_inbox.archive(old, "succeeded")

    assert path.read_text() == "sku,name\nNEW,x\n"                  # left for its own job
    assert not (local_inbox.root / "processed" / "feed.csv").exists()


def test_a_newer_upload_renamed_over_the_read_file_with_the_same_mtime_is_not_archived(local_inbox, tmp_path):
    """rsync -t: the new content is written to a temp name, given the old mtime and renamed over
    the file the job read. Same name, same mtime: only the inode tells them apart."""
    path = local_inbox.root / "feed.csv"
    path.write_text("sku,name\nOLD,x\n")
    old = _drop_for(local_inbox, "feed.csv")
    local_inbox.fetch(old, tmp_path / "spool")
    replacement = local_inbox.root / ".feed.csv.tmp"
    replacement.write_text("sku,name\nNEW,x\n")
    os.utime(replacement, ns=(os.stat(path).st_atime_ns, int(old.version)))
    replacement.rename(path)

    local_inbox.archive(old, "succeeded")

    assert path.read_text() == "sku,name\nNEW,x\n"                  # left for its own job
    assert not (local_inbox.root / "processed" / "feed.csv").exists()


def test_archiving_never_overwrites_an_earlier_archive(local_inbox):
    for content in ("sku,name\nA,x\n", "sku,name\nB,x\n"):
        path = local_inbox.root / "daily.csv"
        path.write_text(content)
        local_inbox.archive(_drop_for(local_inbox, "daily.csv"), "succeeded")
    archived = sorted(p.read_text() for p in (local_inbox.root / "processed").iterdir())
    assert archived == ["sku,name\nA,x\n", "sku,name\nB,x\n"]


def test_a_file_swapped_for_a_symlink_is_not_followed_at_fetch(local_inbox, tmp_path):
    secret = tmp_path / "secret.env"
    secret.write_text("OTHER_PARTNER_SECRET=hunter2\n")
    path = local_inbox.root / "feed.csv"
    path.write_text("sku,name\nA,x\n")
    drop = _drop_for(local_inbox, "feed.csv")
    path.unlink()
    path.symlink_to(secret)                      # swapped while the drop waited in the queue

    with pytest.raises(InboxMisconfigured, match="not a regular file"):
        local_inbox.fetch(drop, tmp_path / "spool")
    assert not (tmp_path / "spool").exists() or not any((tmp_path / "spool").iterdir())


def test_a_file_changed_after_it_was_seen_is_not_read_as_that_version(local_inbox, tmp_path):
    path = local_inbox.root / "feed.csv"
    path.write_text("sku,name\nA,x\n")
    drop = _drop_for(local_inbox, "feed.csv")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(InboxUnavailable, match="changed since it was seen"):
        local_inbox.fetch(drop, tmp_path / "spool")


def test_a_torn_last_audit_line_is_moved_aside_and_reported_in_the_chain(tmp_path):
    audit = AuditLog(tmp_path / "audit")
    audit.append("job.succeeded", job_id="j1")
    [day] = list((tmp_path / "audit").glob("audit-*.jsonl"))
    with open(day, "a") as fh:
        fh.write('{"seq":2,"ts":"2026-')          # power cut in the middle of an append

    record = audit.append("job.succeeded", job_id="j2")

    torn = record["details"]["recovered_torn_tail"]
    assert record["seq"] == 2 and torn["bytes"] == len('{"seq":2,"ts":"2026-')
    # the bytes are kept, in a file of their own, not thrown away
    assert (tmp_path / "audit" / torn["moved_to"]).read_text() == '{"seq":2,"ts":"2026-\n'
    count, problem = audit.verify()
    assert problem is None and count == 2


def test_a_whole_last_audit_record_that_lost_only_its_newline_is_kept(tmp_path):
    audit = AuditLog(tmp_path / "audit")
    audit.append("job.succeeded", job_id="j1")
    second = audit.append("job.succeeded", job_id="j2")
    [day] = list((tmp_path / "audit").glob("audit-*.jsonl"))
    with open(day, "rb+") as fh:
        fh.truncate(day.stat().st_size - 1)          # the newline alone is gone

    record = audit.append("job.succeeded", job_id="j3")

    assert record["seq"] == 3 and record["prev"] == second["hash"]
    assert record["details"]["recovered_torn_tail"] == {"file": day.name, "bytes": 0, "newline_restored": True}
    assert not list((tmp_path / "audit").glob("quarantine-*"))
    count, problem = audit.verify()
    assert problem is None and count == 3


def test_a_config_that_is_not_utf8_is_a_configuration_error(cli, workdir):
    (workdir / "bad.toml").write_bytes("# caf\xe9\n[daemon]\n".encode("latin-1"))
    result = cli("config", "check", "--config", workdir / "bad.toml")
    assert result.code == 2 and "not UTF-8" in result.err


def test_a_config_path_that_is_a_folder_is_a_configuration_error(cli, workdir):
    (workdir / "folder.toml").mkdir()
    assert cli("config", "check", "--config", workdir / "folder.toml").code == 2


def test_two_columns_with_the_same_name_reject_the_file(workdir, ingest):
    path = workdir / "dup.csv"
    path.write_text("sku,name,Tag,Tag\nA,x,1,2\n")
    code, manifest = ingest(path)
    assert code == 4 and manifest["errors"] == {"duplicate_column": 1}
    assert read_diagnostics(manifest, workdir)[0]["column"] == "Tag"


def test_the_same_local_folder_cannot_be_bound_to_two_partners(cli, workdir):
    (workdir / "c.toml").write_text(
        '[[partners]]\nid = "a"\n[[partners]]\nid = "b"\n'
        '[[inboxes]]\npartner = "a"\npath = "inbox/shared"\n[[inboxes]]\npartner = "b"\npath = "./inbox/shared/"\n')
    result = cli("config", "check", "--config", workdir / "c.toml")
    assert result.code == 2 and "same location" in result.err


def test_an_outcome_committed_but_never_reported_is_reported_by_the_next_run(workdir, ingest):
    """A crash after the commit and before the manifest: the file is seen again; the committed
    outcome is reported (manifest, audit) instead of being taken for a duplicate."""
    from config import default_config
    from inbox_daemon.drop import Drop, delivery_time
    from inbox_daemon.pipeline import Pipeline
    from storage import open_store
    from tests.conftest import products, write_csv
    path = write_csv(workdir / "feed.csv", ["sku", "name"], [["C1", "x"]])
    config = default_config()
    # the process that commits it is gone by the next run: its claims name a process that ended
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    store = open_store(config.store, holder=f"{socket.gethostname()}:{gone}")
    pipeline = Pipeline(config, store)
    reported = []
    pipeline.report = lambda *args, **kw: reported.append(args)       # the crash: never reported
    stat = path.stat()
    drop = Drop(inbox="cli", partner="default", key=str(path), name=path.name, uri=path.as_uri(),
                size=stat.st_size, version=str(stat.st_mtime_ns), delivered=delivery_time(stat.st_ctime_ns / 1e9))
    pipeline.process_path(path, drop)
    store.close()
    assert reported and products(workdir)["c1"]["name"] == "x"
    assert not list((workdir / "var" / "results" / "default").glob("*.result.json"))

    code, manifest = ingest(path)

    assert code == 0 and manifest["status"] == "succeeded" and "duplicate_of" not in manifest
    assert manifest["rows"]["inserted"] == 1
    assert len(list((workdir / "var" / "results" / "default").glob("*.result.json"))) == 1


def test_a_file_that_changed_before_the_commit_is_abandoned_and_its_content_taken_again_if_complete(workdir):
    """The inbox says, right before the commit, that the partner's file changed since it was
    read (an upload went on after a pause): nothing is applied, no answer is written, the job is
    ``abandoned``. If the same bytes come back (the upload really ended there), they run again."""
    from config import default_config
    from config.errors import SourceChanged
    from inbox_daemon.drop import Drop
    from inbox_daemon.pipeline import Pipeline
    from inbox_daemon.spool import spool_file
    from storage import open_store
    from tests.conftest import ledger, products, write_csv
    path = write_csv(workdir / "feed.csv", ["sku", "name"], [["C1", "x"], ["C2", "y"]])
    config = default_config()
    store = open_store(config.store)
    stat = path.stat()
    drop = Drop(inbox="cli", partner="default", key=str(path), name=path.name, uri=path.as_uri(),
                size=stat.st_size, version=str(stat.st_mtime_ns), delivered="2026-12-06T08:00:00.000000Z")
    spooled, sha256, _ = spool_file(
        path, config.daemon.spool_dir / "default")

    import sys

    from inbox_daemon.logs import configure
    configure(fmt="json", level="warning", stream=sys.stderr)   # not a capture an earlier test closed

    def changed() -> None:
        raise SourceChanged("feed.csv grew from 16 to 40 bytes since it was read")
    try:
        abandoned = Pipeline(config, store).process(spooled, sha256, drop, verify_source=changed)
        assert abandoned.status == "abandoned" and abandoned.manifest_path is None
        assert products(workdir) == {} and not spooled.exists()
        assert not list((workdir / "var" / "results" / "default").glob("*.result.json"))
        assert ledger(workdir, "source_name, status") == [("feed.csv", "abandoned")]

        spooled, sha256, _ = spool_file(
            path, config.daemon.spool_dir / "default")
        again = Pipeline(config, store).process(spooled, sha256, drop)
    finally:
        store.close()
    assert again.status == "succeeded" and set(products(workdir)) == {"c1", "c2"}
    assert ledger(workdir, "source_name, status, attempt") == [("feed.csv", "succeeded", 2)]


def test_a_spooled_copy_is_intact_only_while_whole_and_unchanged(tmp_path):
    """What a job run again from its copy checks first (``spool.intact``): the copy still holds
    the content its sha256 names. A torn copy (a power loss before it was written out, since
    copies are synced only once kept) or one changed since is not."""
    import io

    from inbox_daemon.spool import intact, keep, spool_stream
    data = b"sku,name\n" + b"".join(b"S%d,item\n" % i for i in range(50_000))
    copy, sha256, size = spool_stream(io.BytesIO(data), tmp_path / "spool")
    assert size == len(data) and intact(copy, sha256)
    keep(copy)                                        # a copy kept for a requeue: synced, unchanged
    assert copy.read_bytes() == data and intact(copy, sha256)

    with open(copy, "r+b") as fh:
        fh.seek(size // 2)
        fh.write(b"X")
    assert not intact(copy, sha256)
    copy.write_bytes(data[: size // 2])
    assert not intact(copy, sha256)
    copy.unlink()
    assert not intact(copy, sha256)


class _Trickle:
    """A source that gives at most ``most`` bytes a read, the way a network stream can."""

    def __init__(self, data: bytes, most: int):
        self._data, self._most, self._at = data, most, 0

    def read(self, n: int) -> bytes:
        chunk = self._data[self._at:self._at + min(n, self._most)]
        self._at += len(chunk)
        return chunk


@pytest.mark.parametrize("size, most", [(0, 1 << 20), (100, 1 << 20), (1 << 20, 1 << 20), (3 << 20, 1 << 20),
                                        ((5 << 20) + 7, 1 << 20), ((3 << 20) + 1, 300_000)],
                         ids=["empty", "one-short-read", "one-whole-chunk", "whole-chunks", "chunks-and-a-tail",
                              "short-reads"])
def test_a_spooled_copy_is_named_by_the_sha256_of_every_byte_in_order(tmp_path, size, most):
    """Chunks are hashed on a thread while the next is read (``spool._Hasher``): whatever the
    reads' sizes, the name is the content's sha256 and the copy the content."""
    import hashlib
    import os

    from inbox_daemon.spool import spool_stream
    data = os.urandom(size)
    copy, sha256, spooled = spool_stream(_Trickle(data, most), tmp_path / "spool")
    assert sha256 == hashlib.sha256(data).hexdigest() and copy.name == sha256
    assert spooled == size and copy.read_bytes() == data
