"""The catalog remembers: what each job changed (diff), a product's history, revert (also after a
crash mid-revert, and with conflicts), the price-shock hold and its approval, export with a
cursor, and retention — on SQLite and on a real PostgreSQL, through the command line as an
admin uses it."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import pg_products, products, run_cli, write_csv

HEADER = ["sku", "name", "price", "stock"]
FIRST = [["A1", "Apple", "1.00", "5"], ["B2", "Banana", "2.00", "6"], ["C3", "Cherry", "3.00", "7"]]


class Catalog:
    """One partner ``p`` on one store, driven through the CLI."""

    def __init__(self, root: Path, cli, url: str | None, **partner):
        self.root, self._cli, self.url = root, cli, url
        store = f'[store]\nurl = {json.dumps(url)}\n' if url else ""
        extra = "".join(f"{k} = {v if k == 'webhook' else json.dumps(v)}\n" for k, v in partner.items())
        self.cfg = root / "cfg.toml"
        self.cfg.write_text(f'{store}[[partners]]\nid = "p"\nmax_deactivate_ratio = 0.5\n{extra}')
        self._n = 0

    def cli(self, *args):
        return self._cli(*args, "--config", self.cfg)

    def ingest(self, rows, *, mode="delta", header=HEADER) -> dict:
        self._n += 1
        path = write_csv(self.root / f"file{self._n}.csv", header, rows)
        result = self.cli("ingest", path, "--partner", "p", "--mode", mode, "--json")
        assert result.out, result.err
        return result.json()

    def products(self) -> dict[str, dict]:
        if self.url:
            return pg_products(self.url, "p")
        return products(self.root, "p")

    def changes(self) -> int:
        if self.url:
            import psycopg
            with psycopg.connect(self.url) as conn:
                return conn.execute("SELECT count(*) FROM changes").fetchone()[0]
        con = sqlite3.connect(self.root / "var" / "catalog.db")
        try:
            return con.execute("SELECT count(*) FROM changes").fetchone()[0]
        finally:
            con.close()

    def diff(self, job_id: str) -> dict[str, dict]:
        result = self.cli("jobs", "diff", job_id, "--json")
        assert result.code == 0, result.err
        return {r["sku"]: r for r in map(json.loads, result.out.splitlines())}


@pytest.fixture(params=["sqlite", "postgres"])
def catalog(request, workdir, cli):
    def make(**partner) -> Catalog:
        url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
        return Catalog(workdir, cli, url, **partner)
    return make


def _to_file(path: Path, *args) -> Path:
    """The installed script's binary stdout into ``path`` (as ``> path`` in a shell)."""
    with path.open("wb") as fh:
        done = subprocess.run([Path(sys.executable).with_name("inbox-daemon"), *map(str, args)], stdout=fh,
                              stderr=subprocess.PIPE, cwd=path.parent, env=dict(os.environ), timeout=60, text=True)
    assert done.returncode == 0, done.stderr
    return path


def _price(catalog: Catalog, key: str) -> int:
    return catalog.products()[key]["price_cents"]


# -- diff and history ------------------------------------------------------------------------------

def test_diff_shows_what_a_job_inserted_updated_and_deactivated_and_unchanged_rows_cost_nothing(catalog):
    c = catalog()
    c.ingest(FIRST)
    before = c.changes()
    second = c.ingest([["A1", "Apple", "1.50", "5"], ["B2", "Banana", "2.00", "6"], ["D4", "Date", "4.00", "1"]],
                      mode="snapshot")

    diff = c.diff(second["job_id"])

    assert set(diff) == {"A1", "C3", "D4"}                      # B2 did not change: not in it
    assert diff["A1"] == {"sku": "A1", "change": "updated", "before": {"price_cents": 100},
                          "after": {"price_cents": 150}}
    assert diff["C3"]["change"] == "deactivated" and diff["C3"]["after"] == {"active": False}
    assert diff["D4"]["change"] == "inserted"
    assert diff["D4"]["after"] == {"sku": "D4", "name": "Date", "price_cents": 400, "currency": "USD", "stock": 1,
                                   "active": True}
    # an insert costs no change record; one update, one deactivation: two
    assert (before, c.changes()) == (0, 2)


def test_diff_as_csv_and_parquet_has_a_line_per_product_and_column(catalog, workdir):
    c = catalog()
    c.ingest(FIRST)
    second = c.ingest([["A1", "Apple!", "1.50", "5"]])
    as_csv = c.cli("jobs", "diff", second["job_id"], "--csv")
    lines = list(csv.DictReader(io.StringIO(as_csv.out)))
    assert sorted((r["sku"], r["column"], r["before"], r["after"]) for r in lines) == [
        ("A1", "name", "Apple", "Apple!"), ("A1", "price_cents", "100", "150")]
    out = _to_file(workdir / "diff.parquet", "jobs", "diff", second["job_id"], "--parquet", "--config", c.cfg)
    assert sorted(pq.read_table(out).column("column").to_pylist()) == ["name", "price_cents"]


def test_history_lists_every_change_newest_first_with_its_job_file_and_time(catalog):
    c = catalog()
    first = c.ingest(FIRST)
    second = c.ingest([["A1", "Apple", "1.50", "5"]])
    third = c.ingest([["a1", "Apple", "1.50", "9"]])         # the same product, its sku in another case

    result = c.cli("catalog", "history", "A1", "--partner", "p", "--json")
    events = json.loads(result.out)

    assert [(e["change"], e["job"]) for e in events] == [
        ("updated", third["job_id"]), ("updated", second["job_id"]), ("inserted", first["job_id"])]
    assert events[0]["before"] == {"sku": "A1", "stock": 5} and events[0]["after"] == {"sku": "a1", "stock": 9}
    assert events[1]["file"] == "file2.csv" and events[1]["at"]
    # the insert as it was, though two jobs changed the product since
    assert events[2]["after"]["price_cents"] == 100 and events[2]["after"]["stock"] == 5
    text = c.cli("catalog", "history", "a1", "--partner", "p")
    assert "file3.csv" in text.out and "100" in text.out and "→ 150" in text.out


def test_write_changes_puts_the_change_set_next_to_the_manifest(catalog, workdir):
    c = catalog(write_changes=True)
    c.ingest(FIRST)
    second = c.ingest([["B2", "Banana", "2.50", "6"]])
    path = workdir / "var" / "results" / "p" / second["changes"]
    lines = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    assert [(r["sku"], r["change"], r["column"], r["before"], r["after"]) for r in lines] == [
        ("B2", "updated", "price_cents", "200", "250")]


# -- revert ----------------------------------------------------------------------------------------

def test_revert_of_a_snapshot_restores_updates_inserts_and_deactivations_as_a_job_of_its_own(catalog, workdir):
    c = catalog(webhook='{ url = "http://127.0.0.1:9/hook", allow_private = true }')
    c.ingest(FIRST)
    second = c.ingest([["A1", "Apple", "1.50", "5"], ["B2", "Banana", "2.00", "6"], ["D4", "Date", "4.00", "1"]],
                      mode="snapshot")
    assert c.products()["c3"]["active"] == 0

    dry = c.cli("jobs", "revert", second["job_id"], "--dry-run")
    assert "restore 1 product(s), deactivate 1 it inserted, make 1 it deactivated active again" in dry.out
    assert _price(c, "a1") == 150                               # a dry run changes nothing

    reverted = c.cli("jobs", "revert", second["job_id"], "--json")
    manifest = reverted.json()

    assert reverted.code == 0 and manifest["status"] == "succeeded" and manifest["reverts"] == second["job_id"]
    catalog_now = c.products()
    assert (catalog_now["a1"]["price_cents"], catalog_now["c3"]["active"], catalog_now["d4"]["active"]) == (100, 1, 0)
    assert (workdir / "var" / "results" / "p" / f"{manifest['job_id']}.result.json").is_file()
    # the partner is told, like of any job (the running daemon's sender delivers it)
    webhooks = json.loads(c.cli("jobs", "show", manifest["job_id"]).out)["webhooks"]
    assert len(webhooks) == 1 and webhooks[0]["status"] == "pending"
    audit = "".join(p.read_text() for p in (workdir / "var" / "audit").glob("*.jsonl"))
    assert manifest["job_id"] in audit
    again = c.cli("jobs", "revert", second["job_id"])
    assert again.code == 2 and f"reverted by job {manifest['job_id']}" in again.err
    # a revert is a job like any other: its own diff, and it can be reverted in turn
    assert set(c.diff(manifest["job_id"])) == {"A1", "C3", "D4"}
    redo = c.cli("jobs", "revert", manifest["job_id"], "--json").json()
    catalog_now = c.products()
    assert redo["status"] == "succeeded"
    assert (catalog_now["a1"]["price_cents"], catalog_now["c3"]["active"], catalog_now["d4"]["active"]) == (150, 0, 1)


def test_revert_leaves_products_changed_later_as_conflicts_and_force_restores_them(catalog, workdir):
    c = catalog()
    c.ingest(FIRST)
    second = c.ingest([["A1", "Apple", "1.50", "5"], ["B2", "Banana", "2.50", "6"]])
    third = c.ingest([["A1", "Apple", "1.75", "5"]])

    dry = c.cli("jobs", "revert", second["job_id"], "--dry-run")
    assert "1 product(s) were changed again by a later job since" in dry.out and third["job_id"] in dry.out
    reverted = c.cli("jobs", "revert", second["job_id"], "--json").json()

    assert reverted["status"] == "partial" and reverted["rows"]["conflicts"] == 1
    assert (_price(c, "a1"), _price(c, "b2")) == (175, 200)
    lines = list(csv.DictReader(io.StringIO((workdir / "var" / "results" / "p" / reverted["diagnostics"]).read_text())))
    assert [(r["sku"], r["code"], r["value"]) for r in lines] == [("A1", "revert_conflict", third["job_id"])]
    # as its diagnostics say: --force afterwards restores the conflict too (the rest is restored:
    # B2, which the first revert set back, is no conflict of it, nor counted as forced)
    forced_dry = c.cli("jobs", "revert", second["job_id"], "--force", "--dry-run")
    assert "1 product(s) were changed again" in forced_dry.out and "B2" not in forced_dry.out
    forced_after = c.cli("jobs", "revert", second["job_id"], "--force", "--json").json()
    assert forced_after["status"] == "succeeded" and forced_after["rows"]["updated"] == 1
    assert forced_after["rows"]["forced"] == 1
    assert (_price(c, "a1"), _price(c, "b2")) == (100, 200)
    assert c.cli("jobs", "revert", second["job_id"], "--force").code == 2

    c2 = catalog()         # the same story, forced
    first2 = c2.ingest([["X", "Xylophone", "1.00", "1"]])
    second2 = c2.ingest([["X", "Xylophone", "2.00", "1"]])
    c2.ingest([["X", "Xylophone", "3.00", "1"]])
    forced = c2.cli("jobs", "revert", second2["job_id"], "--force", "--json").json()
    assert forced["status"] == "succeeded" and forced["rows"]["forced"] == 1 and first2["status"] == "succeeded"
    assert _price(c2, "x") == 100


def test_a_revert_killed_before_its_commit_runs_exactly_once_when_run_again(catalog, workdir):
    c = catalog()
    c.ingest(FIRST)
    second = c.ingest([["A1", "Apple", "1.50", "5"], ["E5", "Elder", "5.00", "1"]])

    killed = run_cli("jobs", "revert", second["job_id"], "--config", c.cfg, cwd=workdir,
                     env={"INBOX_DAEMON_CRASH_AT": "before_commit"})
    assert killed.returncode == -signal.SIGKILL
    assert (_price(c, "a1"), c.products()["e5"]["active"]) == (150, 1)       # nothing of it committed

    done = run_cli("jobs", "revert", second["job_id"], "--config", c.cfg, "--json", cwd=workdir)
    manifest = json.loads(done.stdout)
    assert done.returncode == 0, done.stderr
    assert (manifest["status"], manifest["attempt"]) == ("succeeded", 2)
    assert (_price(c, "a1"), c.products()["e5"]["active"]) == (100, 0)
    shown = json.loads(c.cli("jobs", "show", manifest["job_id"]).out)
    assert [a["status"] for a in shown["attempts"]][-1] == "succeeded" and len(shown["attempts"]) == 2
    assert c.changes() == 1 + 2     # the job updated one (its insert is no record); the revert two: once
    twice = c.cli("jobs", "revert", second["job_id"])
    assert twice.code == 2


# -- the price-shock hold --------------------------------------------------------------------------

def test_prices_in_cents_instead_of_units_are_held_and_approve_applies_them(catalog, workdir):
    c = catalog(price_shock_min_products=2)
    c.ingest(FIRST)
    cents = c.ingest([["A1", "Apple", "100", "5"], ["B2", "Banana", "200", "6"], ["C3", "Cherry", "3.10", "7"]])

    assert cents["status"] == "held"
    assert cents["price_shock"]["shocked"] == 2 and cents["price_shock"]["updated"] == 3
    assert {e["sku"] for e in cents["price_shock"]["examples"]} == {"A1", "B2"}
    assert f"inbox-daemon jobs approve {cents['job_id']}" in cents["message"]
    assert (_price(c, "a1"), _price(c, "c3")) == (100, 300)                # nothing applied

    approved = c.cli("jobs", "approve", cents["job_id"], "--by", "alice")
    assert approved.code == 0 and "queued" in approved.out
    audit = [json.loads(line) for p in sorted((workdir / "var" / "audit").glob("*.jsonl"))
             for line in p.read_text().splitlines()]
    assert [(r["event"], r["actor"]) for r in audit if r["event"] == "job.approved"] == [("job.approved", "alice")]
    assert c.cli("jobs", "approve", cents["job_id"]).code == 2             # once

    ran = run_cli("run", "--once", "--config", c.cfg, cwd=workdir, timeout=120)
    assert ran.returncode == 0, ran.stderr
    job = json.loads(c.cli("jobs", "show", cents["job_id"]).out)
    assert job["status"] == "succeeded" and job["result"]["approved_by"] == "alice"
    assert (_price(c, "a1"), _price(c, "c3")) == (10000, 310)


def test_a_few_real_price_changes_are_not_held(catalog):
    c = catalog()
    c.ingest([[f"S{i}", f"Thing {i}", "10.00", "1"] for i in range(30)])
    sale = c.ingest([["S1", "Thing 1", "1.00", "1"], *[[f"S{i}", f"Thing {i}", "11.00", "1"] for i in range(2, 30)]])
    assert sale["status"] == "succeeded" and sale["rows"]["updated"] == 29


# -- export ----------------------------------------------------------------------------------------

def test_export_streams_the_catalog_and_a_cursor_gives_only_what_changed_since(catalog, workdir):
    c = catalog()
    c.ingest(FIRST)
    full = c.cli("catalog", "export", "--partner", "p")
    assert len(list(csv.DictReader(io.StringIO(full.out)))) == 3
    cursor = full.err.strip().rsplit("--since ", 1)[1]

    c.ingest([["B2", "Banana", "2.20", "6"], ["A1", "Apple", "1.00", "5"]], mode="snapshot")   # C3 deactivated
    since = c.cli("catalog", "export", "--partner", "p", "--since", cursor)
    rows = list(csv.DictReader(io.StringIO(since.out)))

    assert sorted((r["sku"], r["price_cents"], r["active"]) for r in rows) == [
        ("B2", "220", "true"), ("C3", "300", "false")]
    nothing = c.cli("catalog", "export", "--partner", "p", "--since", since.err.strip().rsplit("--since ", 1)[1])
    assert list(csv.DictReader(io.StringIO(nothing.out))) == []
    assert c.cli("catalog", "export", "--partner", "p", "--since", "not-a-job").code == 2


def test_export_to_parquet_reads_back_with_types_and_nulls(catalog, workdir):
    c = catalog()
    c.ingest([["A1", "Apple", "1.00", ""], ["B2", "Banana", "", "6"]])
    out = _to_file(workdir / "catalog.parquet", "catalog", "export", "--partner", "p", "--format", "parquet",
                   "--config", c.cfg)
    table = pq.read_table(out)
    rows = {r["sku"]: r for r in table.to_pylist()}
    assert rows["A1"]["stock"] is None and rows["A1"]["price_cents"] == 100 and rows["A1"]["active"] is True
    assert rows["B2"]["price_cents"] is None and rows["B2"]["description"] is None


# -- retention -------------------------------------------------------------------------------------

def test_change_sets_past_history_days_are_pruned_and_diff_says_so_but_cursors_stay_good(catalog, workdir):
    c = catalog()
    first = c.ingest(FIRST)
    second = c.ingest([["A1", "Apple", "1.50", "5"]])
    old = "2020-01-01T00:00:00.000Z"
    if c.url:
        import psycopg
        with psycopg.connect(c.url, autocommit=True) as conn:
            conn.execute("UPDATE jobs SET finished_at = %s", (old,))
    else:
        con = sqlite3.connect(workdir / "var" / "catalog.db")
        with con:
            con.execute("UPDATE jobs SET finished_at = ?", (old,))
        con.close()
    from config.model import StoreConfig
    from storage import open_store
    store = open_store(StoreConfig(url=c.url or f"sqlite:///{workdir / 'var' / 'catalog.db'}"))
    try:
        assert store.prune_history(90, batch=1) == 1
    finally:
        store.close()

    diff = c.cli("jobs", "diff", second["job_id"])
    assert diff.code == 2 and "pruned" in diff.err
    assert c.cli("jobs", "revert", second["job_id"]).code == 2
    export = c.cli("catalog", "export", "--partner", "p", "--since", first["job_id"])
    assert [r["sku"] for r in csv.DictReader(io.StringIO(export.out))] == ["A1"]


# -- through a running daemon ----------------------------------------------------------------------

def test_a_held_file_waits_in_failed_and_once_approved_the_running_daemon_applies_and_archives_it(tmp_path, daemons,
                                                                                                cli):
    from tests.daemon_harness import config, wait_for, wait_manifests
    d = daemons(tmp_path, config(partners='[[partners]]\nid = "default"\nprice_shock_min_products = 2\n'))
    inbox = tmp_path / "inbox" / "default"
    (inbox / ".a.part").write_text("sku,name,price\nA,Apple,1.00\nB,Banana,2.00\nC,Cherry,3.00\n")
    (inbox / ".a.part").rename(inbox / "a.csv")
    wait_manifests(tmp_path, 1, status="succeeded")
    (inbox / ".b.part").write_text("sku,name,price\nA,Apple,100\nB,Banana,200\nC,Cherry,300\n")
    (inbox / ".b.part").rename(inbox / "b.csv")

    [held] = wait_manifests(tmp_path, 1, status="held")
    wait_for(lambda: (inbox / "failed" / "b.csv").exists(), what="the held file in failed/")
    assert products(tmp_path)["a"]["price_cents"] == 100
    assert json.loads((inbox / "results" / f"{held['job_id']}.result.json").read_text())["status"] == "held"

    assert cli("jobs", "approve", held["job_id"], "--by", "bob").code == 0

    [applied] = wait_manifests(tmp_path, 1, status="succeeded", approved_by="bob", timeout=30)
    assert applied["job_id"] == held["job_id"] and applied["rows"]["updated"] == 3
    wait_for(lambda: (inbox / "processed" / "b.csv").exists() and not (inbox / "failed" / "b.csv").exists(),
             what="the approved file moved from failed/ to processed/")
    assert products(tmp_path)["a"]["price_cents"] == 10000
    assert d.stop() == 0


def test_a_revert_killed_before_its_commit_is_finished_by_the_daemon_at_its_start(workdir, cli):
    c = Catalog(workdir, cli, None)
    c.ingest(FIRST)
    second = c.ingest([["A1", "Apple", "1.50", "5"]])
    killed = run_cli("jobs", "revert", second["job_id"], "--config", c.cfg, cwd=workdir,
                     env={"INBOX_DAEMON_CRASH_AT": "before_commit"})
    assert killed.returncode == -signal.SIGKILL and _price(c, "a1") == 150

    ran = run_cli("run", "--once", "--config", c.cfg, cwd=workdir, timeout=120)

    assert ran.returncode == 0, ran.stderr
    assert _price(c, "a1") == 100
    reverts = [j for j in json.loads(c.cli("jobs", "list", "--json").out) if j["reverts"] == second["job_id"]]
    assert [(j["status"], j["attempt"]) for j in reverts] == [("succeeded", 2)]


def test_the_running_daemon_prunes_change_sets_past_history_days(workdir, cli):
    c = Catalog(workdir, cli, None)
    c.ingest(FIRST)
    second = c.ingest([["A1", "Apple", "1.50", "5"]])
    assert c.changes() == 1
    c.cfg.write_text("[daemon]\nhistory_days = 0\n" + c.cfg.read_text())

    ran = run_cli("run", "--once", "--config", c.cfg, cwd=workdir, timeout=120)

    assert ran.returncode == 0, ran.stderr
    assert c.changes() == 0 and '"history.pruned"' in ran.stdout
    assert "pruned" in c.cli("jobs", "diff", second["job_id"]).err
    assert _price(c, "a1") == 150                       # the catalog itself is untouched


def test_export_since_a_time_gives_what_changed_after_it(catalog):
    c = catalog()
    c.ingest(FIRST)
    first_done = json.loads(c.cli("jobs", "list", "--json").out)[0]["finished_at"]
    c.ingest([["C3", "Cherry", "3.30", "7"]])
    rows = list(csv.DictReader(io.StringIO(c.cli("catalog", "export", "--partner", "p", "--since", first_done).out)))
    assert [(r["sku"], r["price_cents"]) for r in rows] == [("C3", "330")]
    before = c.cli("catalog", "export", "--partner", "p", "--since", "2000-01-01")
    assert len(list(csv.DictReader(io.StringIO(before.out)))) == 3


def test_history_finds_a_product_by_its_sku_as_the_catalog_keys_it(workdir, cli):
    c = Catalog(workdir, cli, None)
    c.ingest([["STRAßE-1", "Street sign", "1.00", "1"], ["İSTANBUL-2", "City map", "2.00", "1"]])
    for sku in ("straße-1", " STRAßE-1 ", "İSTANBUL-2"):
        result = c.cli("catalog", "history", sku, "--partner", "p", "--json")
        assert result.code == 0, result.err
        assert json.loads(result.out)[0]["change"] == "inserted"


def test_a_full_export_has_products_from_before_change_sets_and_text_that_looks_like_null(catalog, workdir):
    c = catalog()
    c.ingest([["A1", "N/A", "1.00", "5"], ["B2", "null", "2.00", "6"]])
    if c.url:
        import psycopg
        with psycopg.connect(c.url, autocommit=True) as conn:
            conn.execute("UPDATE products SET version = 0, created_version = 0")   # as migrated
    else:
        con = sqlite3.connect(workdir / "var" / "catalog.db")
        with con:
            con.execute("UPDATE products SET version = 0, created_version = 0")
        con.close()
    rows = list(csv.DictReader(io.StringIO(c.cli("catalog", "export", "--partner", "p").out)))
    assert sorted((r["sku"], r["name"]) for r in rows) == [("A1", "N/A"), ("B2", "null")]
    out = _to_file(workdir / "all.parquet", "catalog", "export", "--partner", "p", "--format", "parquet",
                   "--config", c.cfg)
    assert sorted(pq.read_table(out).column("name").to_pylist()) == ["N/A", "null"]
