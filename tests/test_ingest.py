"""``inbox-daemon ingest`` end to end, as a new user runs it: no config, an empty directory,
state in ./var. Each test checks the manifest, the catalog and the diagnostics file."""

from __future__ import annotations

import gzip
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import products, read_diagnostics, run_cli, write_csv

HEADER = ["sku", "name", "price", "stock", "gtin", "color"]
ROWS = [
    ["A-1", "Shirt", "9.99", "3", "4006381333931", "blue"],
    ["B-2", "Hat", "$5.00", "0", "", "red"],
    ["C-3", "Sock", "2.50 EUR", "10", "", ""],
]
EXPECTED = {
    "a-1": {"sku": "A-1", "name": "Shirt", "price_cents": 999, "currency": "USD", "stock": 3,
            "gtin": "4006381333931", "attributes": {"color": "blue"}},
    "b-2": {"sku": "B-2", "name": "Hat", "price_cents": 500, "currency": "USD", "stock": 0,
            "gtin": None, "attributes": {"color": "red"}},
    "c-3": {"sku": "C-3", "name": "Sock", "price_cents": 250, "currency": "EUR", "stock": 10,
            "gtin": None, "attributes": None},
}


def _records():
    return [dict(zip(HEADER, r)) for r in ROWS]


def _write(fmt: str, path):
    records = _records()
    if fmt == "csv":
        write_csv(path, HEADER, ROWS)
    elif fmt == "tsv":
        write_csv(path, HEADER, ROWS, delimiter="\t")
    elif fmt == "json":
        path.write_text(json.dumps(records))
    elif fmt == "ndjson":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(records), path)
    return path


def _catalog(root):
    out = {}
    for key, row in products(root).items():
        out[key] = {k: row[k] for k in ("sku", "name", "price_cents", "currency", "stock", "gtin")}
        out[key]["attributes"] = json.loads(row["attributes"]) if row["attributes"] else None
    return out


@pytest.mark.parametrize("name", [
    "feed.csv", "feed.tsv", "feed.json", "feed.ndjson", "feed.jsonl", "feed.parquet",
    "feed.csv.gz", "feed.tsv.gz", "feed.json.gz", "feed.ndjson.gz", "feed.parquet.gz",
])
def test_every_format_lands_the_same_catalog(workdir, ingest, name):
    fmt = {"jsonl": "ndjson"}.get(name.split(".")[1], name.split(".")[1])
    plain = _write(fmt, workdir / "plain")
    data = plain.read_bytes()
    (workdir / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)

    code, manifest = ingest(workdir / name)

    assert code == 0, manifest
    assert manifest["status"] == "succeeded"
    assert manifest["rows"]["read"] == 3 and manifest["rows"]["inserted"] == 3
    assert _catalog(workdir) == EXPECTED


def test_bom_prefixed_csv_is_read_with_a_clean_first_column(workdir, ingest):
    path = workdir / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + b"sku,name,price\nX1,Mug,4.00\n")
    code, manifest = ingest(path)
    assert code == 0
    assert products(workdir)["x1"]["price_cents"] == 400


def test_cp1252_partner_encoding_is_decoded(workdir, cli):
    (workdir / "partners.toml").write_text(
        '[[partners]]\nid = "latin"\nencoding = "cp1252"\ncurrency = "EUR"\n')
    path = workdir / "latin.csv"
    path.write_bytes("sku,name,price\nK1,Café crème,3,50 €\n".replace(",50", ".50").encode("cp1252"))
    result = cli("ingest", path, "--partner", "latin", "--config", workdir / "partners.toml", "--json")
    assert result.code == 0, result.out + result.err
    assert products(workdir, "latin")["k1"]["name"] == "Café crème"


def test_last_occurrence_of_a_sku_wins_case_insensitively(workdir, ingest):
    path = write_csv(workdir / "dups.csv", ["sku", "name", "price"], [
        ["abc-1", "first", "1.00"],
        ["ZZZ", "other", "2.00"],
        ["ABC-1", "second", "3.00"],
        ["Abc-1", "third", "4.00"],
    ])
    code, manifest = ingest(path)
    assert code == 0
    rows = manifest["rows"]
    assert rows["superseded"] == 2 and rows["inserted"] == 2 and rows["valid"] == 4
    catalog = products(workdir)
    assert set(catalog) == {"abc-1", "zzz"}
    assert catalog["abc-1"]["sku"] == "Abc-1" and catalog["abc-1"]["name"] == "third"
    assert catalog["abc-1"]["price_cents"] == 400


def test_counts_add_up_and_reimport_counts_unchanged_and_updated(workdir, ingest):
    first = write_csv(workdir / "v1.csv", ["sku", "name", "price"],
                      [[f"S{i}", f"n{i}", "1.00"] for i in range(10)])
    assert ingest(first)[0] == 0
    second = write_csv(workdir / "v2.csv", ["sku", "name", "price"],
                       [[f"S{i}", f"n{i}", "2.00" if i < 3 else "1.00"] for i in range(12)])
    before = products(workdir)

    code, manifest = ingest(second)

    rows = manifest["rows"]
    assert (rows["inserted"], rows["updated"], rows["unchanged"]) == (2, 3, 7)
    assert rows["read"] == rows["valid"] + rows["rejected"]
    assert rows["inserted"] + rows["updated"] + rows["unchanged"] == rows["valid"] - rows["superseded"]
    after = products(workdir)
    # unchanged rows were not rewritten: their provenance still names the first job
    assert after["s5"]["source_job_id"] == before["s5"]["source_job_id"]
    assert after["s1"]["source_job_id"] == manifest["job_id"]


def test_partial_file_lands_good_rows_and_names_each_bad_one(workdir, ingest):
    rows = [[f"OK{i}", "fine", "1.00", "1"] for i in range(40)]
    rows[4] = ["BAD1", "", "1.00", "1"]          # row 6: name missing
    rows[9] = ["BAD2", "x", "cheap", "1"]        # row 11: price unparseable
    rows[19] = ["BAD3", "x", "1.00", "1.5"]      # row 21: stock not a whole number
    rows[29] = ["WARN", "x", "1.00", "-2"]       # row 31: negative stock lands as 0, with a warning
    path = write_csv(workdir / "partial.csv", ["sku", "name", "price", "stock"], rows)
    (workdir / "partners.toml").write_text('[[partners]]\nid = "default"\nmax_reject_ratio = 0.1\n')

    code, manifest = ingest(path, "--config", str(workdir / "partners.toml"))

    assert code == 0 and manifest["status"] == "partial"
    assert manifest["rows"]["rejected"] == 3 and manifest["rows"]["inserted"] == 37
    assert manifest["rows"]["warnings"] == 1
    assert manifest["errors"] == {"invalid_price": 1, "invalid_stock": 1, "name_required": 1}
    lines = read_diagnostics(manifest, workdir)
    # lines of rows the merge refused (a new product without a name) come after the judged rows'
    assert [(d["row"], d["sku"], d["severity"], d["column"], d["code"], d["value"]) for d in lines] == [
        ("11", "BAD2", "error", "price", "invalid_price", "cheap"),
        ("21", "BAD3", "error", "stock", "invalid_stock", "1.5"),
        ("31", "WARN", "warning", "stock", "negative_stock", "'-2"),   # spreadsheet-safe
        ("6", "BAD1", "error", "name", "name_required", ""),
    ]
    assert not {"bad1", "bad2", "bad3"} & set(products(workdir))
    assert products(workdir)["warn"]["stock"] == 0


def test_gtin_with_wrong_check_digit_is_a_warning_and_the_row_lands(workdir, ingest):
    path = write_csv(workdir / "gtin.csv", ["sku", "name", "gtin"],
                     [["G1", "ok", "4006381333931"], ["G2", "dummy", "1234567890123"]])
    code, manifest = ingest(path)
    assert code == 0 and manifest["status"] == "succeeded"
    assert manifest["rows"]["warnings"] == 1 and manifest["rows"]["rejected"] == 0
    assert products(workdir)["g2"]["gtin"] is None
    [line] = read_diagnostics(manifest, workdir)
    assert (line["row"], line["severity"], line["code"]) == ("3", "warning", "invalid_gtin")


def test_too_many_bad_rows_reject_the_whole_file_and_change_nothing(workdir, ingest):
    rows = [[f"S{i}", "n", "1.00" if i % 2 else "free"] for i in range(20)]
    path = write_csv(workdir / "bad.csv", ["sku", "name", "price"], rows)
    code, manifest = ingest(path)
    assert code == 4 and manifest["status"] == "rejected"
    assert manifest["errors"] == {"invalid_price": 10, "too_many_rejects": 1}
    assert products(workdir) == {}
    lines = read_diagnostics(manifest, workdir)
    assert len(lines) == 11 and lines[-1]["code"] == "too_many_rejects"


def test_missing_required_column_rejects_the_file(workdir, ingest):
    path = write_csv(workdir / "nosku.csv", ["id", "name"], [["1", "x"]])
    code, manifest = ingest(path)
    assert code == 4 and manifest["errors"] == {"missing_column": 1}
    [line] = read_diagnostics(manifest, workdir)
    assert (line["column"], line["code"]) == ("sku", "missing_column")
    assert products(workdir) == {}


def test_garbage_bytes_are_rejected_with_a_diagnostics_line(workdir, ingest):
    import random
    path = workdir / "garbage.csv"
    path.write_bytes(b"sku,name\n" + random.Random(7).randbytes(50_000))
    code, manifest = ingest(path)
    assert code == 4 and manifest["status"] == "rejected"
    # rows of random bytes: each is refused on its own line (undecodable, too many cells...),
    # and there are too many of them for the file to be applied
    assert manifest["errors"]["too_many_rejects"] == 1
    lines = read_diagnostics(manifest, workdir)
    assert lines[-1]["code"] == "too_many_rejects" and {"invalid_encoding", "too_many_cells"} <= {d["code"] for d in lines}
    assert products(workdir) == {}


def test_invalid_json_late_in_the_file_rejects_it_as_a_whole(workdir, ingest):
    good = "".join(json.dumps({"sku": f"J{i}", "name": "n"}) + "\n" for i in range(50_000))
    path = workdir / "late.ndjson"
    path.write_text(good + '{"sku": "broken", "name": \n')
    code, manifest = ingest(path)
    assert code == 4 and manifest["status"] == "rejected"
    assert products(workdir) == {}          # the 50,000 good rows before it did not land either


@pytest.mark.parametrize("case", ["n_array_extra_comma.json", "n_object_trailing_comma.json",
                                  "n_structure_unclosed_array.json", "n_string_unescaped_newline.json"])
def test_json_test_suite_invalid_documents_are_rejected(workdir, ingest, corpus, case):
    path = corpus / "json-test-suite" / "test_parsing" / case
    code, manifest = ingest(path)
    assert code == 4 and manifest["status"] == "rejected"


def test_same_content_dropped_twice_is_a_duplicate(workdir, ingest):
    path = write_csv(workdir / "a.csv", ["sku", "name"], [["D1", "x"]])
    _, first = ingest(path)
    copy = workdir / "renamed.csv"
    copy.write_bytes(path.read_bytes())
    code, second = ingest(copy)
    assert code == 0 and second["status"] == "duplicate"
    assert second["duplicate_of"] == first["job_id"]
    assert second["rows"]["inserted"] == 0
    assert (workdir / "var" / "results" / "default" / f"{second['job_id']}.result.json").is_file()


def test_rejected_content_is_still_a_duplicate_until_requeued(workdir, ingest, cli):
    path = write_csv(workdir / "r.csv", ["id", "name"], [["1", "x"]])
    _, first = ingest(path)
    assert first["status"] == "rejected"
    code, duplicate = ingest(path)
    # nothing applied, now as then: the exit code says "rejected", not "applied"
    assert (code, duplicate["status"], duplicate["duplicate_of_status"]) == (4, "duplicate", "rejected")

    assert cli("jobs", "requeue", first["job_id"]).code == 0
    code, again = ingest(path)
    assert again["job_id"] == first["job_id"] and again["attempt"] == 2
    assert again["status"] == "rejected"


def test_snapshot_deactivates_what_the_file_omits(workdir, ingest):
    full = write_csv(workdir / "full.csv", ["sku", "name"], [[f"P{i}", "n"] for i in range(10)])
    ingest(full, "--mode", "snapshot")
    smaller = write_csv(workdir / "smaller.csv", ["sku", "name"], [[f"P{i}", "n"] for i in range(1, 10)])

    code, manifest = ingest(smaller, "--mode", "snapshot")

    assert code == 0 and manifest["rows"]["deactivated"] == 1
    catalog = products(workdir)
    assert catalog["p0"]["active"] == 0 and catalog["p1"]["active"] == 1


def test_snapshot_does_not_deactivate_skus_whose_rows_were_rejected(workdir, ingest):
    ingest(write_csv(workdir / "full.csv", ["sku", "name", "price"],
                     [[f"P{i}", "n", "1"] for i in range(40)]), "--mode", "snapshot")
    rows = [[f"P{i}", "n", "1"] for i in range(40)]
    rows[3][2] = "not-a-price"
    code, manifest = ingest(write_csv(workdir / "again.csv", ["sku", "name", "price"], rows),
                            "--mode", "snapshot")
    assert manifest["status"] == "partial" and manifest["rows"]["deactivated"] == 0
    assert products(workdir)["p3"]["active"] == 1


def test_snapshot_refuses_to_deactivate_too_much(workdir, ingest):
    ingest(write_csv(workdir / "full.csv", ["sku", "name"], [[f"P{i}", "n"] for i in range(10)]),
           "--mode", "snapshot")
    tiny = write_csv(workdir / "tiny.csv", ["sku", "name", "price"], [["P0", "renamed", "1"]])

    code, manifest = ingest(tiny, "--mode", "snapshot")

    assert code == 4 and manifest["errors"] == {"deactivation_refused": 1}
    catalog = products(workdir)
    assert all(row["active"] == 1 for row in catalog.values())
    assert catalog["p0"]["name"] == "n"            # not even the upsert part was applied


def test_reactivating_a_deactivated_sku_counts_as_updated(workdir, ingest):
    ingest(write_csv(workdir / "a.csv", ["sku", "name"], [[f"P{i}", "n"] for i in range(10)]), "--mode", "snapshot")
    ingest(write_csv(workdir / "b.csv", ["sku", "name"], [[f"P{i}", "n"] for i in range(1, 10)]), "--mode", "snapshot")
    code, manifest = ingest(write_csv(workdir / "c.csv", ["sku", "name", "active"], [["P0", "n", "yes"]]))
    assert manifest["rows"]["updated"] == 1
    assert products(workdir)["p0"]["active"] == 1


def test_validate_writes_nothing_to_the_catalog(workdir, cli):
    path = write_csv(workdir / "v.csv", ["sku", "name", "price"], [["V1", "x", "1"], ["V2", "", "1"]])
    result = cli("validate", path, "--json")
    manifest = result.json()
    assert result.code == 4          # 1 of 2 rows rejected: more than 5%
    assert manifest["dry_run"] is True and manifest["rows"]["rejected"] == 1
    assert read_diagnostics(manifest, workdir)[0]["row"] == "3"
    assert products(workdir) == {}
    con = sqlite3.connect(workdir / "var" / "catalog.db")
    assert con.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
    assert not list((workdir / "var" / "spool" / "default").iterdir())


def test_validate_reports_what_ingest_would_count(workdir, cli, ingest):
    ingest(write_csv(workdir / "a.csv", ["sku", "name"], [["A", "x"], ["B", "y"]]))
    result = cli("validate", write_csv(workdir / "b.csv", ["sku", "name"], [["A", "x"], ["B", "z"], ["C", "w"]]),
                 "--json")
    rows = result.json()["rows"]
    assert (rows["inserted"], rows["updated"], rows["unchanged"]) == (1, 1, 1)
    assert set(products(workdir)) == {"a", "b"} and products(workdir)["b"]["name"] == "y"


def test_manifest_has_every_contract_field(workdir, ingest):
    code, manifest = ingest(write_csv(workdir / "m.csv", ["sku", "name"], [["M", "x"]]))
    assert set(manifest) >= {"job_id", "partner", "inbox", "source", "sha256", "format", "mode", "status",
                             "attempt", "rows", "errors", "diagnostics", "started_at", "finished_at",
                             "duration_ms", "version"}
    assert set(manifest["rows"]) == {"read", "valid", "rejected", "warnings", "skipped", "superseded", "inserted",
                                     "updated", "unchanged", "deactivated", "stale"}
    assert set(manifest["source"]) >= {"uri", "name", "size"}
    on_disk = json.loads((workdir / "var" / "results" / "default" / f"{manifest['job_id']}.result.json").read_text())
    assert on_disk == manifest


def test_every_outcome_is_in_the_audit_trail(workdir, ingest, cli):
    _, ok = ingest(write_csv(workdir / "a.csv", ["sku", "name"], [["A", "x"]]))
    _, bad = ingest(write_csv(workdir / "b.csv", ["id"], [["1"]]))
    lines = [json.loads(line) for line in cli("audit", "tail", "-n", "10").out.splitlines()]
    assert [(r["event"], r["job_id"]) for r in lines] == [("job.succeeded", ok["job_id"]),
                                                          ("job.rejected", bad["job_id"])]
    assert cli("audit", "verify").code == 0


def test_unknown_partner_is_a_usage_error(workdir, cli):
    path = write_csv(workdir / "a.csv", ["sku", "name"], [["A", "x"]])
    assert cli("ingest", path, "--partner", "nobody").code == 2


def test_unknown_format_is_rejected_and_succeeds_when_requeued_with_format(workdir, cli, ingest):
    weird = workdir / "feed.xyz"
    weird.write_text("sku,name\nA,x\n")
    code, rejected = ingest(weird)
    assert code == 4 and rejected["errors"] == {"unknown_format": 1}
    assert cli("jobs", "requeue", "--status", "rejected").code == 0
    code, manifest = ingest(weird, "--format", "csv")
    assert code == 0 and manifest["status"] == "succeeded"
    assert manifest["job_id"] == rejected["job_id"] and manifest["attempt"] == 2


def test_jobs_list_json_and_show(workdir, ingest, cli):
    _, manifest = ingest(write_csv(workdir / "a.csv", ["sku", "name"], [["A", "x"]]))
    listed = cli("jobs", "list", "--json").json()
    assert [j["id"] for j in listed] == [manifest["job_id"]]
    shown = cli("jobs", "show", manifest["job_id"]).json()
    assert shown["status"] == "succeeded" and shown["attempts"][0]["status"] == "succeeded"
    assert cli("jobs", "show", "nope").code == 2


def test_a_jobs_option_its_action_has_no_use_for_is_refused_not_ignored(workdir, ingest, cli):
    """``jobs list --csv`` printed the table as if asked for CSV: a script took it for CSV."""
    _, manifest = ingest(write_csv(workdir / "a.csv", ["sku", "name"], [["A", "x"]]))
    refused = cli("jobs", "list", "--csv")
    assert refused.code == 2 and "--csv is for jobs diff, not jobs list" in refused.err
    assert cli("jobs", "approve", manifest["job_id"], "--force").code == 2
    assert cli("jobs", "diff", manifest["job_id"], "--csv").code == 0


def test_console_script_ingests_in_an_empty_directory(tmp_path):
    """The installed command, as a new user types it: no config, state lands in ./var."""
    write_csv(tmp_path / "feed.csv", ["sku", "name", "price"], [["A", "x", "1.00"]])
    done = run_cli("ingest", "feed.csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("succeeded: 1 read")
    assert (tmp_path / "var" / "catalog.db").is_file()
    manifest_path = tmp_path / done.stdout.splitlines()[1]
    assert json.loads(manifest_path.read_text())["status"] == "succeeded"


def test_rows_without_attributes_keep_their_place(workdir, ingest):
    """Attributes are built column-wise; rows whose unmapped cells are all empty must not shift
    the attributes of the rows after them."""
    path = write_csv(workdir / "attrs.csv", ["sku", "name", "a", "b"],
                     [["R1", "x", "1", ""], ["R2", "x", "", ""], ["R3", "x", "", "3"], ["R4", "x", "", ""]])
    ingest(path)
    catalog = products(workdir)
    assert [catalog[k]["attributes"] for k in ("r1", "r2", "r3", "r4")] == [
        '{"a":"1"}', None, '{"b":"3"}', None]


def test_a_sku_whose_last_row_is_rejected_keeps_its_catalog_value(workdir, ingest):
    """The partner's latest intent for A-1 is the rejected row: the earlier row must not be
    applied in its stead; it counts as superseded."""
    (workdir / "partners.toml").write_text('[[partners]]\nid = "default"\nmax_reject_ratio = 0.5\n')
    ingest(write_csv(workdir / "v1.csv", ["sku", "name", "price"], [["A-1", "Current", "2.00"]]),
           "--config", str(workdir / "partners.toml"))
    path = write_csv(workdir / "v2.csv", ["sku", "name", "price"],
                     [["A-1", "Old name", "1.00"], ["a-1", "New name", "oops"], ["B-2", "Other", "3.00"]])

    code, manifest = ingest(path, "--config", str(workdir / "partners.toml"))

    rows = manifest["rows"]
    assert manifest["status"] == "partial" and rows["rejected"] == 1 and rows["superseded"] == 1
    assert (rows["inserted"], rows["updated"], rows["unchanged"]) == (1, 0, 0)
    assert rows["inserted"] + rows["updated"] + rows["unchanged"] == rows["valid"] - rows["superseded"]
    catalog = products(workdir)
    assert (catalog["a-1"]["name"], catalog["a-1"]["price_cents"]) == ("Current", 200)


def test_decimal_comma_partner_refuses_dot_decimals_rather_than_multiplying_them(workdir, cli):
    (workdir / "p.toml").write_text('[[partners]]\nid = "eu"\ncurrency = "EUR"\ndecimal_separator = ","\n'
                                    'max_reject_ratio = 0.5\n')
    path = write_csv(workdir / "eu.csv", ["sku", "name", "price"],
                     [["E1", "x", "1.299,50"], ["E2", "x", "9,99"], ["E3", "x", "9.99"]], delimiter=";")
    manifest = cli("ingest", path, "--partner", "eu", "--config", workdir / "p.toml", "--json").json()
    catalog = products(workdir, "eu")
    assert (catalog["e1"]["price_cents"], catalog["e2"]["price_cents"]) == (129950, 999)
    assert "e3" not in catalog and manifest["errors"] == {"invalid_price": 1}


def test_numbers_in_json_are_not_read_with_the_partners_text_decimal_comma(workdir, cli):
    (workdir / "p.toml").write_text('[[partners]]\nid = "eu"\ncurrency = "EUR"\ndecimal_separator = ","\n')
    path = workdir / "eu.ndjson"
    path.write_text('{"sku": "J1", "name": "x", "price": 9.99}\n')
    assert cli("ingest", path, "--partner", "eu", "--config", workdir / "p.toml").code == 0
    assert products(workdir, "eu")["j1"]["price_cents"] == 999


def test_diagnostics_rows_count_blank_lines_like_a_spreadsheet(workdir, ingest):
    path = workdir / "gaps.csv"
    path.write_text("sku,name,price\nA,x,1\n\nB,y,bad\n" + "".join(f"S{i},n,1\n" for i in range(30)))
    code, manifest = ingest(path)
    assert manifest["rows"]["read"] == 32                   # the blank line is no row
    [line] = read_diagnostics(manifest, workdir)
    assert (line["row"], line["sku"]) == ("4", "B")         # header 1, A 2, blank 3, B 4


def test_a_requeued_job_that_goes_through_leaves_no_diagnostics_of_its_rejection(workdir, ingest, cli):
    path = write_csv(workdir / "r.csv", ["id", "name"], [["1", "x"]])
    _, first = ingest(path)
    diagnostics = workdir / "var" / "results" / "default" / first["diagnostics"]
    assert first["status"] == "rejected" and diagnostics.is_file()
    (workdir / "fixed.toml").write_text('[[partners]]\nid = "default"\ncolumns = { sku = "id" }\n')

    assert cli("jobs", "requeue", first["job_id"], "--config", "fixed.toml").code == 0
    code, again = ingest(path, "--config", "fixed.toml")

    assert code == 0 and again["job_id"] == first["job_id"] and again["status"] == "succeeded"
    assert again["diagnostics"] is None and not diagnostics.exists()


def test_the_applied_log_line_says_when_the_commit_ended_beside_the_manifests_duration(workdir):
    """The manifest is committed with the rows, so its ``duration_ms`` ends before the commit;
    ``committed_ms`` in ``job.applied`` runs to the commit's end. The process is held (SIGSTOP)
    right before its commit for a second and a half: only the second figure may show it."""
    feed = write_csv(workdir / "feed.csv", ["sku", "name", "price"], [["A-1", "Hat", "9.99"]])
    exe = Path(sys.executable).with_name("inbox-daemon")
    proc = subprocess.Popen([str(exe), "ingest", str(feed), "--json", "-v"], cwd=workdir, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "INBOX_DAEMON_FREEZE_AT": "before_commit"})
    try:
        deadline = time.monotonic() + 30
        while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
            assert time.monotonic() < deadline, "the ingest never reached its commit"
            time.sleep(0.02)
        time.sleep(1.5)
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    manifest = json.loads(out)
    [applied] = [json.loads(line) for line in err.splitlines() if '"job.applied"' in line]
    assert applied["duration_ms"] == manifest["duration_ms"] < 1500
    assert applied["committed_ms"] >= manifest["duration_ms"] + 1500
