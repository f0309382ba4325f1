"""What the console reads from the store (storage/console.py), on SQLite and PostgreSQL: keyset
pages, the catalog size every merge keeps, the name search that goes on where it stopped, and
each inbox's activity."""

from __future__ import annotations

import json

import pytest

from storage.console import JobFilter
from tests.conftest import write_csv

HEADER = ["sku", "name", "price"]


@pytest.fixture(params=["sqlite", "postgres"])
def setup(request, workdir, cli):
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    store_toml = f"[store]\nurl = {json.dumps(url)}\n" if url else ""
    cfg = workdir / "cfg.toml"
    cfg.write_text(f'{store_toml}[[partners]]\nid = "p"\nmax_reject_ratio = 0.5\nmax_deactivate_ratio = 1.0\n[[partners]]\nid = "q"\n')
    n = iter(range(1000))

    def ingest(rows, partner="p", mode="delta"):
        path = write_csv(workdir / f"f{next(n)}.csv", HEADER, rows)
        result = cli("ingest", path, "--partner", partner, "--mode", mode, "--json", "--config", cfg)
        return result.json()

    def store():
        from inbox_daemon import settings
        from storage import open_store
        return open_store(settings.load(cfg).store)
    return ingest, store


def test_job_pages_are_keyed_and_filters_combine(setup):
    ingest, open_ = setup
    ids = [ingest([[f"S{i}", "Thing", "1.00"]], partner="p" if i % 3 else "q")["job_id"] for i in range(7)]
    store = open_()
    try:
        seen, page = [], store.job_page(JobFilter(), limit=3)
        while True:
            seen += [j.id for j in page.jobs]
            if page.older is None:
                break
            page = store.job_page(JobFilter(), after=page.older, limit=3)
        assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen)) == 7
        assert [j.created_at for j in store.job_page(JobFilter(), limit=7).jobs] == \
            sorted((j.created_at for j in store.job_page(JobFilter(), limit=7).jobs), reverse=True)
        back = store.job_page(JobFilter(), before=page.newer, limit=3) if page.newer else None
        assert back is not None and [j.id for j in back.jobs] == seen[3:6]
        only_q = store.job_page(JobFilter(partner="q"), limit=10).jobs
        assert {j.id for j in only_q} == {ids[0], ids[3], ids[6]}
        assert store.job_page(JobFilter(partner="q", status="rejected"), limit=10).jobs == []
    finally:
        store.close()


def test_catalog_size_is_kept_by_every_merge(setup):
    ingest, open_ = setup
    ingest([["A", "Apple", "1"], ["B", "Banana", "2"], ["C", "Cherry", "3"]])
    ingest([["a", "Apple again", "1"], ["D", "Date", "4"]])            # one new, one the same key
    ingest([["E", "Elder", "5"]], mode="snapshot")                     # deactivates, deletes nothing
    ingest([["Z", "Zucchini", "9"]], partner="q")
    store = open_()
    try:
        assert store.catalog_size("p") == 5 and store.catalog_size("q") == 1 and store.catalog_size("none") == 0
    finally:
        store.close()


def test_name_search_goes_on_where_it_stopped_and_skips_nothing(setup):
    ingest, open_ = setup
    rows = [[f"K{i:03}", "Oak Table" if i % 4 == 0 else "Pine Chair", "1"] for i in range(40)]
    ingest(rows)
    store = open_()
    try:
        found, after, answers = [], "", 0
        while after is not None:
            answer = store.products_by_name("p", "oAK", after=after, chunk=7, budget=0, limit=50)
            found += [p["sku"] for p in answer.products]
            after, answers = answer.resume_after, answers + 1
        assert found == [f"K{i:03}" for i in range(0, 40, 4)] and answers == 6     # 40 keys, 7 a time
        first = store.products_by_name("p", "table", limit=3)
        assert [p["sku"] for p in first.products] == ["K000", "K004", "K008"] and first.resume_after == "k008"
        rest = store.products_by_name("p", "table", after=first.resume_after, limit=50)
        assert rest.products[0]["sku"] == "K012" and rest.resume_after is None
        assert store.products_by_name("p", "100%_", limit=5).products == []     # LIKE's wildcards are text
        assert [p["sku"] for p in store.products_by_sku("p", "k00")] == [f"K00{i}" for i in range(10)]
    finally:
        store.close()


def test_activity_counts_the_last_day_and_the_last_success(setup):
    ingest, open_ = setup
    ok = ingest([["A", "Apple", "1"], ["B", "Banana", "2"]])
    ingest([["C", "Cherry", "x"], ["D", "Date", "y"]], partner="q")        # rejected
    store = open_()
    try:
        activity = store.activity([ok["inbox"]], "2000-01-01T00:00:00.000Z", "2000-01-01T00:00:00.000Z")
        mine = activity[ok["inbox"]]
        assert mine.jobs_day == 2 and mine.rows_day == 4 and mine.waiting == 0
        assert mine.last_success == store.job(ok["job_id"]).finished_at
        days = store.partner_days("q", "2000-01-01")
        assert len(days) == 1 and days[0].rows_rejected == 2 and days[0].reject_rate == 1.0
    finally:
        store.close()


def test_the_audit_page_verifies_again_once_its_last_verification_is_old(tmp_path):
    """The verification made at the console's start said "0 records" for as long as the console
    ran, until someone pressed "Verify now"."""
    from inbox_daemon.audit import AuditLog
    from inbox_daemon.console.trail import TrailView
    audit = AuditLog(tmp_path / "audit")
    trail = TrailView(audit, lambda: None)
    trail.refresh(wait=5)
    assert trail.verification().records == 0
    audit.append("job.succeeded", job_id="j1")
    audit.append("job.succeeded", job_id="j2")

    trail.refresh(wait=5)                               # a moment later: the one it has is fresh
    assert trail.verification().records == 0
    trail.refresh(max_age=0, wait=5)                     # old: verified again, and waited for
    assert trail.verification().intact and trail.verification().records == 2
