"""The hash-chained audit trail: ``AuditLog`` and ``inbox-daemon audit verify | tail``.

The ``cli`` fixture runs in an empty directory, so the built-in default puts the trail in
./var/audit. Hashes are recomputed here from the documented format, not with project code.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from pathlib import Path

import pytest

from inbox_daemon.audit import GENESIS, AuditLog

AUDIT_DIR = Path("var/audit")
FIELDS = {"seq", "ts", "event", "partner", "job_id", "sha256", "source", "actor", "details", "prev", "hash"}


def contract_hash(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def append_many(n: int, folder: Path = AUDIT_DIR) -> list[dict]:
    log = AuditLog(folder)
    return [log.append("job.finished", partner="acme", job_id=f"job-{i}", sha256=f"{i:064x}",
                       source={"uri": f"file:///in/feed-{i}.csv", "name": f"feed-{i}.csv", "size": i},
                       actor="tester", details={"rows": i, "note": "Müller ✓"})
            for i in range(1, n + 1)]


def day_files(folder: Path = AUDIT_DIR) -> list[Path]:
    return sorted(folder.glob("audit-*.jsonl"))


def only_file() -> Path:
    files = day_files()
    assert len(files) == 1, files
    return files[0]


def read_records(folder: Path = AUDIT_DIR) -> list[dict]:
    return [json.loads(line) for path in day_files(folder)
            for line in path.read_text(encoding="utf-8").splitlines()]


def rewrite(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


# -- the records ---------------------------------------------------------------------------------

def test_records_have_the_contract_fields_and_a_recomputable_hash(workdir):
    written = append_many(3)
    on_disk = read_records()
    assert on_disk == written
    for record in on_disk:
        assert set(record) == FIELDS
        assert record["hash"] == contract_hash(record)


def test_each_record_links_to_the_one_before_it(workdir):
    records = append_many(4)
    assert [r["seq"] for r in records] == [1, 2, 3, 4]
    assert records[0]["prev"] == GENESIS == "0" * 64
    for before, after in zip(records, records[1:]):
        assert after["prev"] == before["hash"]


def test_hash_covers_non_ascii_text_as_utf8(workdir):
    record = AuditLog(AUDIT_DIR).append("x", details={"name": "Crème brûlée 😀"})
    line = only_file().read_text(encoding="utf-8")
    assert "Crème brûlée 😀" in line                         # written unescaped, as hashed
    assert record["hash"] == contract_hash(json.loads(line))


def test_a_new_day_file_is_named_by_utc_date(workdir):
    record = AuditLog(AUDIT_DIR).append("x")
    assert only_file().name == f"audit-{record['ts'][:10]}.jsonl"


# -- verify --------------------------------------------------------------------------------------

def test_intact_chain_verifies(workdir, cli):
    append_many(5)
    assert AuditLog(AUDIT_DIR).verify() == (5, None)
    result = cli("audit", "verify")
    assert result.code == 0, result.out
    assert "intact: 5 record(s)" in result.out


def test_empty_trail_verifies(workdir, cli):
    result = cli("audit", "verify")
    assert result.code == 0
    assert "intact: 0 record(s)" in result.out


@pytest.mark.parametrize("field, value", [
    ("event", "job.deleted"), ("partner", "globex"), ("details", {"rows": 0}), ("ts", "2020-01-01T00:00:00.000Z"),
])
def test_altering_one_field_of_a_middle_record_is_reported_at_that_line(workdir, cli, field, value):
    append_many(5)
    path = only_file()
    lines = path.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[2])
    record[field] = value
    lines[2] = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    rewrite(path, lines)

    result = cli("audit", "verify")

    assert result.code == 1
    assert f"{path.name}:3 (seq 3)" in result.out
    assert "altered" in result.out
    count, problem = AuditLog(AUDIT_DIR).verify()
    assert (count, problem.file, problem.line, problem.seq) == (2, path.name, 3, 3)


def test_altered_record_with_a_recomputed_hash_breaks_the_next_link(workdir, cli):
    append_many(5)
    path = only_file()
    lines = path.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[2])
    record["partner"] = "mallory"
    record["hash"] = contract_hash(record)
    lines[2] = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    rewrite(path, lines)

    result = cli("audit", "verify")

    assert result.code == 1
    assert f"{path.name}:4 (seq 4)" in result.out


def test_deleting_a_middle_line_is_reported_at_the_line_after_the_gap(workdir, cli):
    append_many(5)
    path = only_file()
    lines = path.read_text(encoding="utf-8").splitlines()
    del lines[2]                                              # seq 3 goes; seq 4 is now line 3
    rewrite(path, lines)

    result = cli("audit", "verify")

    assert result.code == 1
    assert f"{path.name}:3 (seq 4)" in result.out
    assert "removed" in result.out


def test_swapping_two_lines_is_reported(workdir, cli):
    append_many(5)
    path = only_file()
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[1], lines[2] = lines[2], lines[1]
    rewrite(path, lines)

    result = cli("audit", "verify")

    assert result.code == 1
    assert f"{path.name}:2 (seq 3)" in result.out


def test_a_line_that_is_not_json_is_reported(workdir, cli):
    append_many(3)
    path = only_file()
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[1] = lines[1][:-5]
    rewrite(path, lines)
    result = cli("audit", "verify")
    assert result.code == 1
    assert f"{path.name}:2" in result.out


# -- across day files ----------------------------------------------------------------------------

def _split_into_two_days(workdir) -> tuple[Path, Path]:
    append_many(5)
    lines = only_file().read_text(encoding="utf-8").splitlines()
    only_file().unlink()
    first, second = AUDIT_DIR / "audit-2026-01-01.jsonl", AUDIT_DIR / "audit-2026-01-02.jsonl"
    rewrite(first, lines[:2])
    rewrite(second, lines[2:])
    return first, second


def test_chain_runs_across_day_files(workdir, cli):
    first, second = _split_into_two_days(workdir)
    last_of_first = json.loads(first.read_text(encoding="utf-8").splitlines()[-1])
    first_of_second = json.loads(second.read_text(encoding="utf-8").splitlines()[0])
    assert first_of_second["prev"] == last_of_first["hash"] == contract_hash(last_of_first)
    assert first_of_second["seq"] == last_of_first["seq"] + 1

    result = cli("audit", "verify")
    assert result.code == 0, result.out
    assert "intact: 5 record(s)" in result.out


def test_append_after_day_files_continues_the_chain(workdir, cli):
    _, second = _split_into_two_days(workdir)
    last = json.loads(second.read_text(encoding="utf-8").splitlines()[-1])
    record = AuditLog(AUDIT_DIR).append("next")
    assert (record["seq"], record["prev"]) == (6, last["hash"])
    assert len(day_files()) == 3                               # today's file, after the two 2026-01 days
    assert cli("audit", "verify").code == 0


def test_removing_the_first_line_of_a_later_day_file_is_reported_there(workdir, cli):
    _, second = _split_into_two_days(workdir)
    rewrite(second, second.read_text(encoding="utf-8").splitlines()[1:])
    result = cli("audit", "verify")
    assert result.code == 1
    assert f"{second.name}:1 (seq 4)" in result.out


def test_removing_a_whole_day_file_is_reported(workdir, cli):
    first, second = _split_into_two_days(workdir)
    first.unlink()
    result = cli("audit", "verify")
    assert result.code == 1
    assert f"{second.name}:1 (seq 3)" in result.out


# -- concurrent writers --------------------------------------------------------------------------

def _append_from_child(folder: str, writer: int, count: int, ready) -> None:
    ready.wait(30)                     # every writer starts at once, so they contend for the lock
    log = AuditLog(Path(folder))
    for i in range(count):
        log.append("concurrent", actor=f"writer-{writer}", details={"i": i})


def test_concurrent_appends_from_several_processes_keep_one_chain(workdir, cli):
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Barrier(5)
    folder = str(workdir / AUDIT_DIR)
    procs = [ctx.Process(target=_append_from_child, args=(folder, w, 50, ready)) for w in range(4)]
    for p in procs:
        p.start()
    ready.wait(30)
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]

    records = read_records()
    assert [r["seq"] for r in records] == list(range(1, 201))
    prev = GENESIS
    for record in records:
        assert record["prev"] == prev and record["hash"] == contract_hash(record)
        prev = record["hash"]
    per_writer = {}
    for record in records:
        per_writer.setdefault(record["actor"], []).append(record["details"]["i"])
    assert per_writer == {f"writer-{w}": list(range(50)) for w in range(4)}
    assert cli("audit", "verify").code == 0


# -- tail ----------------------------------------------------------------------------------------

def test_tail_prints_the_last_lines(workdir, cli):
    append_many(6)
    lines = only_file().read_text(encoding="utf-8").splitlines()
    result = cli("audit", "tail", "-n", "3")
    assert result.code == 0
    assert result.out.splitlines() == lines[-3:]


def test_tail_reaches_back_across_day_files(workdir, cli):
    first, second = _split_into_two_days(workdir)
    lines = first.read_text(encoding="utf-8").splitlines() + second.read_text(encoding="utf-8").splitlines()
    result = cli("audit", "tail", "-n", "4")
    assert result.out.splitlines() == lines[-4:]


def test_tail_of_more_lines_than_exist_prints_them_all(workdir, cli):
    append_many(2)
    lines = only_file().read_text(encoding="utf-8").splitlines()
    assert cli("audit", "tail", "-n", "10").out.splitlines() == lines
