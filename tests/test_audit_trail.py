"""An audit trail that cannot be cut quietly: the ledger keeps the chain's head, so records cut
off its end and a deleted folder no longer verify; a key makes every hash an HMAC, so a record
rewritten with every later hash recomputed does not verify; a garbage last line is moved aside
and the chain goes on, marked for an operator until acknowledged. Through ``ingest`` (the real
pipeline and store) and ``AuditLog``."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from config.model import StoreConfig
from inbox_daemon.audit import DAMAGED, AuditKeyMissing, AuditLog
from storage import open_store
from tests.conftest import write_csv

AUDIT = Path("var/audit")


def _head(workdir: Path):
    store = open_store(StoreConfig(url="sqlite:///var/catalog.db"))
    try:
        return store.audit_head(AuditLog(workdir / AUDIT).ledger_key())
    finally:
        store.close()


def _three_jobs(workdir, ingest) -> None:
    for i in range(3):
        code, _ = ingest(write_csv(workdir / f"f{i}.csv", ["sku", "name"], [[f"S{i}", "x"]]))
        assert code == 0


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records))


def test_the_ledger_keeps_the_head_of_the_chain(workdir, ingest):
    _three_jobs(workdir, ingest)

    head = _head(workdir)
    [day] = sorted((workdir / AUDIT).glob("audit-*.jsonl"))
    last = _records(day)[-1]
    assert (head.seq, head.hash) == (last["seq"], last["hash"]) == (3, last["hash"])
    assert AuditLog(AUDIT).verify(head) == (3, None)


def test_records_cut_off_the_end_no_longer_verify(workdir, ingest):
    _three_jobs(workdir, ingest)
    [day] = sorted((workdir / AUDIT).glob("audit-*.jsonl"))
    _write(day, _records(day)[:1])                  # the last two records removed

    assert AuditLog(AUDIT).verify() == (1, None)    # the chain alone cannot tell
    count, problem = AuditLog(AUDIT).verify(_head(workdir))
    assert "ends at seq 1" in problem.reason and "saw seq 3" in problem.reason


def test_a_deleted_audit_folder_no_longer_verifies_even_once_written_again(workdir, ingest):
    _three_jobs(workdir, ingest)
    shutil.rmtree(workdir / AUDIT)

    count, problem = AuditLog(AUDIT).verify(_head(workdir))
    assert count == 0 and "removed" in problem.reason

    code, _ = ingest(write_csv(workdir / "later.csv", ["sku", "name"], [["L", "x"]]))   # a new chain begins
    assert code == 0
    _, problem = AuditLog(AUDIT).verify(_head(workdir))
    assert "folder was replaced" in problem.reason


def test_a_keyed_chain_cannot_be_rewritten_without_the_key(tmp_path):
    key = b"k" * 32
    log = AuditLog(tmp_path, key=key)
    for i in range(3):
        log.append("job.succeeded", job_id=f"j{i}", details={"rows": i})
    [day] = sorted(tmp_path.glob("audit-*.jsonl"))
    assert AuditLog(tmp_path, key=key).verify() == (3, None)

    # rewrite the first record and every later hash, as someone without the key would
    records = _records(day)
    records[0]["details"] = {"rows": 999}
    prev = "0" * 64
    for r in records:
        r["prev"] = prev
        body = {k: v for k, v in r.items() if k != "hash"}
        r["hash"] = prev = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                                     ensure_ascii=False).encode()).hexdigest()
    _write(day, records)

    count, problem = AuditLog(tmp_path, key=key).verify()
    assert count == 0 and "altered" in problem.reason
    _, without = AuditLog(tmp_path).verify()
    assert "audit key is needed" in without.reason
    with pytest.raises(AuditKeyMissing):
        AuditLog(tmp_path).append("job.succeeded")


def test_a_garbage_last_line_is_moved_aside_and_reporting_goes_on(workdir, ingest):
    _three_jobs(workdir, ingest)
    [day] = sorted((workdir / AUDIT).glob("audit-*.jsonl"))
    with open(day, "a") as fh:
        fh.write("this is not a record\n")

    code, manifest = ingest(write_csv(workdir / "next.csv", ["sku", "name"], [["N", "x"]]))

    assert code == 0 and manifest["status"] == "succeeded"
    log = AuditLog(AUDIT)
    assert log.verify(_head(workdir)) == (4, None)
    damage = log.damaged()
    assert damage["lines"] == 1 and (workdir / AUDIT / damage["moved_to"]).read_text() == "this is not a record\n"
    assert _records(day)[-1]["details"]["quarantined"]["moved_to"] == damage["moved_to"]

    assert log.acknowledge() == damage
    assert log.damaged() is None and not (workdir / AUDIT / DAMAGED).exists()
    assert log.verify() == (5, None)                 # the acknowledgement is a record of its own


# -- through the command line ----------------------------------------------------------------------

def test_audit_verify_on_the_command_line_reports_records_cut_off_the_end(workdir, ingest, cli):
    _three_jobs(workdir, ingest)
    assert cli("audit", "verify").code == 0
    [day] = sorted((workdir / AUDIT).glob("audit-*.jsonl"))
    _write(day, _records(day)[:2])

    result = cli("audit", "verify")

    assert result.code == 1
    assert "ends at seq 2" in result.out and "saw seq 3" in result.out


def test_a_report_after_records_were_cut_off_the_end_marks_the_trail_damaged_until_ack(workdir, ingest, cli):
    """The day's file deleted, the next job's record starts again at seq 1: the daemon used to
    go on as if nothing happened (healthz ok), and only a verify someone ran would tell."""
    _three_jobs(workdir, ingest)
    [day] = sorted((workdir / AUDIT).glob("audit-*.jsonl"))
    day.unlink()

    ingest(write_csv(workdir / "later.csv", ["sku", "name"], [["L", "x"]]))

    damage = json.loads((workdir / AUDIT / DAMAGED).read_text())
    assert "ends before seq 3" in damage["reason"] and damage["new_seq"] == 1
    assert cli("audit", "verify").code == 1
    assert cli("audit", "ack").code == 0
    assert not (workdir / AUDIT / DAMAGED).exists() and cli("audit", "verify").code == 0
    ingest(write_csv(workdir / "after.csv", ["sku", "name"], [["M", "x"]]))
    assert not (workdir / AUDIT / DAMAGED).exists()            # a trail that goes on is no damage


def test_two_hosts_whose_trails_sit_at_the_same_path_each_verify_against_their_own_head(workdir, monkeypatch):
    """Daemons on two hosts share one store, each with its trail at the same path: the ledger
    kept one head per path, the first host's, and verify on the other said the folder had been
    replaced. (The second host's folder is stood in for by moving the first one's aside.)"""
    import socket

    from config import default_config
    from inbox_daemon.audit import Head
    from inbox_daemon.drop import Drop
    from inbox_daemon.pipeline import Pipeline

    def ingest_as(host: str, name: str) -> None:
        monkeypatch.setattr(socket, "gethostname", lambda: host)
        path = write_csv(workdir / name, ["sku", "name"], [[name, "x"]])
        config = default_config()
        store = open_store(config.store)
        try:
            Pipeline(config, store).process_path(path, Drop(
                inbox="cli", partner="default", key=str(path), name=name, uri=path.as_uri(),
                size=path.stat().st_size, version=str(path.stat().st_mtime_ns)))
        finally:
            store.close()

    ingest_as("host-a", "a1.csv")
    ingest_as("host-a", "a2.csv")
    (workdir / AUDIT).rename(workdir / "audit-of-host-a")
    ingest_as("host-b", "b1.csv")

    for host, folder, records in (("host-b", workdir / AUDIT, 1), ("host-a", workdir / "audit-of-host-a", 2)):
        monkeypatch.setattr(socket, "gethostname", lambda host=host: host)
        if host == "host-a":                    # host a's folder, back at the path it has there
            (workdir / AUDIT).rename(workdir / "audit-of-host-b")
            folder.rename(workdir / AUDIT)
        stored = _head(workdir)
        assert stored is not None and stored.seq == records
        assert AuditLog(workdir / AUDIT).verify(Head(stored.chain, stored.seq, stored.hash)) == (records, None)


def test_audit_ack_takes_the_quarantine_off_and_adopts_a_new_chain(workdir, ingest, cli):
    _three_jobs(workdir, ingest)
    shutil.rmtree(workdir / AUDIT)
    ingest(write_csv(workdir / "later.csv", ["sku", "name"], [["L", "x"]]))
    assert cli("audit", "verify").code == 1                   # the folder was replaced

    result = cli("audit", "ack")

    assert result.code == 0 and "now follows chain" in result.out
    assert cli("audit", "verify").code == 0


def test_a_keyed_trail_verifies_with_its_key_on_the_command_line(workdir, ingest, cli, monkeypatch):
    (workdir / "k.toml").write_text('[daemon]\naudit_key_env = "AUDIT_KEY"\n')
    monkeypatch.setenv("AUDIT_KEY", "a-long-random-key")
    code, _ = ingest(write_csv(workdir / "k.csv", ["sku", "name"], [["K", "x"]]), "--config", "k.toml")
    assert code == 0
    [day] = sorted((workdir / AUDIT).glob("audit-*.jsonl"))
    assert _records(day)[-1]["mac"] == "hmac-sha256"
    assert cli("audit", "verify", "--config", "k.toml").code == 0

    monkeypatch.setenv("AUDIT_KEY", "another-key")
    result = cli("audit", "verify", "--config", "k.toml")
    assert result.code == 1 and "altered" in result.out
