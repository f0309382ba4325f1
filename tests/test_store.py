"""The ``CatalogStore`` contract, run on both stores: SQLite (embedded) and PostgreSQL (a real
server on 127.0.0.1:5432, a schema per test; skipped with the reason where there is none).

Rows are read back with plain sqlite3/psycopg, not with the store under test. SQLite is read
from another process: two copies of the SQLite library in one process (ADBC's and Python's)
do not see each other's POSIX locks, and closing one's file descriptor drops the other's."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pytest

from config.canonical import CANONICAL_SCHEMA
from config.errors import DeactivationRefused, LeaseLost, StoreUnavailable
from config.model import StoreConfig
from storage import open_store
from storage.base import Outcome, Source
from tests.conftest import pg_products
from tests.daemon_harness import wait_for

SOURCE = Source(uri="file:///in/feed.csv", name="feed.csv", size=10, version="1")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def make_store(store_url):
    opened = []

    def make(*, holder: str = "host-a:1", lease: float = 30.0):
        store = open_store(StoreConfig(url=store_url, lease=lease), holder=holder)
        opened.append(store)
        return store
    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store):
    return make_store()


@pytest.fixture
def catalog(store_url):
    def read(partner: str = "p") -> dict[str, dict]:
        if store_url.startswith("postgresql"):
            return pg_products(store_url, partner)
        script = ("import json, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.row_factory = sqlite3.Row;"
                  " print(json.dumps([dict(r) for r in c.execute("
                  "'SELECT * FROM products WHERE partner_id = ?', (sys.argv[2],))]))")
        out = subprocess.run([sys.executable, "-c", script, store_url[len("sqlite:///"):], partner],
                             capture_output=True, text=True, check=True).stdout
        return {r["sku_key"]: r for r in json.loads(out)}
    return read


def rows(*items, first_row: int = 2) -> pa.RecordBatch:
    """Canonical rows from (sku, name[, price_cents]) tuples, numbered from ``first_row``."""
    records = []
    for i, item in enumerate(items):
        sku, name, *rest = item
        records.append({"row": first_row + i, "sku": sku, "sku_key": sku.lower(), "name": name,
                        "price_cents": rest[0] if rest else None, "currency": "USD", "active": 1,
                        "description": None if name != "quoted" else 'a "b", c\nd', "attributes": None})
    return pa.RecordBatch.from_pylist(records, schema=CANONICAL_SCHEMA)


def claim(store, sha="a" * 64, partner="p", size=SOURCE.size):
    """``size``: SQLite compares a file's rows with the catalog in Arrow when the file may be
    large next to the catalog, in SQL alone when it is small; both must give the same outcome."""
    source = Source(uri=SOURCE.uri, name=SOURCE.name, size=size, version=SOURCE.version)
    return store.claim(partner_id=partner, sha256=sha, inbox="local:in", source=source, fmt="csv",
                       mode="delta", spool_path=None)


FILE_SIZES = pytest.mark.parametrize("size", [10, 10**9], ids=["small-file", "large-file"])


def apply(store, job, *batches, mode="delta", rejected=None, ratio=0.2):
    with store.load(job) as load:
        for batch in batches:
            load.stage(batch, rejected)
        counts = load.merge(mode=mode, max_deactivate_ratio=ratio)
        load.commit(Outcome(status="succeeded", result={"job_id": job.id}))
    store.mark_reported(job.id)
    return counts


# -- the ledger ----------------------------------------------------------------------------------

def test_same_content_is_new_then_busy_then_a_duplicate(store):
    first = claim(store)
    assert (first.kind, first.job.status, first.job.attempt) == ("new", "running", 1)
    assert claim(store).kind == "busy"
    apply(store, first.job, rows(("A", "a")))
    again = claim(store)
    assert again.kind == "duplicate" and again.job.duplicate_of == first.job.id


def _commit_unreported(store):
    job = claim(store).job
    with store.load(job) as load:
        load.stage(rows(("A", "a")))
        load.merge(mode="delta", max_deactivate_ratio=0.2)
        load.commit(Outcome(status="succeeded", result={"job_id": job.id}))
    return job


def test_committed_but_unreported_is_reported_not_duplicated(make_store):
    """The process that committed it died before its report (a holder of this host whose
    process is gone): the next claim of its file reports it."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    job = _commit_unreported(make_store(holder=f"{socket.gethostname()}:{gone}"))
    again = claim(make_store())
    assert (again.kind, again.job.id) == ("unreported", job.id)


def test_an_outcome_its_living_holder_is_reporting_is_busy_to_everyone_else(make_store):
    """Four ``jobs revert`` of one job at once, or a restarted daemon's thread that runs the job
    again while another finds its file in the inbox: whoever claims it between the commit and
    the report must not report it as well (one outcome, one audit record)."""
    committer, other = make_store(holder="host-a:1"), make_store(holder="host-b:2")
    job = _commit_unreported(committer)
    assert claim(other).kind == "busy"
    assert claim(committer).kind == "busy"          # another thread of the same daemon
    # a report that failed lets it go: the next claim, whoever makes it, takes it up
    committer.let_report_go(job)
    again = claim(other)
    assert (again.kind, again.job.id) == ("unreported", job.id)
    assert claim(committer).kind == "busy"          # taken over: held by the one reporting it now


def test_an_outcome_whose_holder_stopped_before_its_report_is_reported_by_the_next_claim(make_store):
    job = _commit_unreported(make_store(holder="host-a:1", lease=0.3))
    time.sleep(0.5)                     # its lease runs out: the holder stopped renewing it
    again = claim(make_store(holder="host-b:2"))
    assert (again.kind, again.job.id) == ("unreported", job.id)


def test_requeue_queued_attempts_and_listing(store):
    job = claim(store).job
    store.finish(job, Outcome(status="rejected", result={}, error="bad"))
    assert store.requeue(status="rejected", partner_id="p") == [job.id]
    assert [j.id for j in store.queued(partners=["p"])] == [job.id]
    assert store.queued(partners=["other"]) == []
    resumed = claim(store)
    assert (resumed.kind, resumed.job.attempt) == ("resumed", 2)
    assert [a["attempt"] for a in store.attempts(job.id)] == [1, 2]
    assert [j.id for j in store.jobs(partner_id="p")] == [job.id]
    assert store.requeue(status="rejected") == []


def test_a_claim_gives_the_job_as_the_store_then_reads_it(store):
    """The job a claim returns is made from what it inserted, not read back: it must be the
    same job, field for field, whether new or a duplicate."""
    new = claim(store).job
    assert store.job(new.id) == new
    store.finish(new, Outcome(status="succeeded", result={"job_id": new.id}))
    store.mark_reported(new.id)
    duplicate = claim(store).job
    assert duplicate.duplicate_of == new.id
    assert store.job(duplicate.id) == duplicate


def test_two_daemons_claiming_the_same_content_at_once_one_wins(make_store):
    stores = [make_store(holder=f"host-{i}:1") for i in range(4)]
    kinds, barrier = [], threading.Barrier(len(stores))

    def race(store):
        barrier.wait()
        kinds.append(claim(store).kind)
    threads = [threading.Thread(target=race, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(kinds) == ["busy"] * 3 + ["new"]


def test_processes_opening_a_new_catalog_at_the_same_moment_all_open_it(store_url, tmp_path):
    """Two daemons, or a daemon and a command, started together on a catalog not made yet: one
    creates the schema, the others find it made (none runs a script twice and fails)."""
    go = tmp_path / "go"
    script = ("import os, sys, time\n"
              "from config.model import StoreConfig\nfrom storage import open_store\n"
              "print('ready', flush=True)\n"
              "while not os.path.exists(sys.argv[2]):\n    time.sleep(0.001)\n"
              "open_store(StoreConfig(url=sys.argv[1])).close()")
    procs = [subprocess.Popen([sys.executable, "-c", script, store_url, str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(6)]
    for p in procs:                 # every interpreter started and waiting, whatever the machine's speed
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    go.touch()
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, "\n".join(errors)


# -- the catalog ---------------------------------------------------------------------------------

def test_last_occurrence_wins_case_insensitively_and_counts_add_up(store, catalog):
    job = claim(store).job
    counts = apply(store, job, rows(("A-1", "first", 100), ("b", "bee", 5)),
                   rows(("a-1", "second", 200), ("C", "quoted"), first_row=4))
    assert (counts.staged, counts.superseded, counts.inserted, counts.updated, counts.unchanged) == (4, 1, 3, 0, 0)
    got = catalog()
    assert (got["a-1"]["sku"], got["a-1"]["name"], got["a-1"]["price_cents"]) == ("a-1", "second", 200)
    assert got["c"]["description"] == 'a "b", c\nd' and got["b"]["description"] is None


@FILE_SIZES
def test_unchanged_rows_are_not_written_and_changed_ones_are(store, catalog, size):
    apply(store, claim(store, "1" * 64, size=size).job, rows(("A", "a", 1), ("B", "b", 2)))
    written_by = catalog()["a"]["source_job_id"]
    counts = apply(store, claim(store, "2" * 64, size=size).job, rows(("A", "a", 1), ("B", "b", 3), ("C", "c")))
    assert (counts.inserted, counts.updated, counts.unchanged) == (1, 1, 1)
    assert catalog()["a"]["source_job_id"] == written_by          # untouched
    assert catalog()["b"]["price_cents"] == 3


@FILE_SIZES
def test_inserts_are_counted_right_when_other_partners_products_were_added_after_its_own(store, catalog, size):
    apply(store, claim(store, "1" * 64, size=size).job, rows(("A", "a", 1), ("B", "b", 2)))
    apply(store, claim(store, "2" * 64, partner="q", size=size).job, rows(("X", "x"), ("Y", "y"), ("Z", "z")))
    counts = apply(store, claim(store, "3" * 64, size=size).job,
                   rows(("A", "a", 5), ("C", "c"), ("D", "d"), ("B", "b", 2)))
    assert (counts.inserted, counts.updated, counts.unchanged) == (2, 1, 1)
    assert set(catalog()) == {"a", "b", "c", "d"} and len(catalog("q")) == 3


@FILE_SIZES
def test_what_a_committed_load_staged_and_saw_is_gone_for_the_next_load(store, catalog, size):
    rejected = pa.table({"sku_key": ["r"], "row": [5]})
    first = apply(store, claim(store, "1" * 64, size=size).job, rows(("A", "a"), ("R", "r")), rows(("B", "b"), first_row=4),
                  rejected=rejected)
    assert (first.inserted, first.superseded) == (2, 1)       # r's last row was rejected: its first is not applied
    second = apply(store, claim(store, "2" * 64, size=size).job, rows(("C", "c"), ("R", "r")))
    assert (second.staged, second.superseded, second.inserted, second.updated) == (2, 0, 2, 0)
    assert set(catalog()) == {"a", "b", "c", "r"}


def test_a_load_left_without_commit_leaves_nothing(store, catalog):
    job = claim(store).job
    with store.load(job) as load:
        load.stage(rows(("A", "a")))
        load.merge(mode="delta", max_deactivate_ratio=0.2)
    assert catalog() == {}
    assert store.job(job.id).status == "running"


def test_a_load_abandoned_while_staging_leaves_nothing_and_the_store_goes_on(store, catalog):
    job = claim(store, "1" * 64).job
    with pytest.raises(RuntimeError):
        with store.load(job) as load:
            load.stage(rows(("A", "a")))
            raise RuntimeError("the reader gave up mid-file")
    assert catalog() == {}
    apply(store, claim(store, "2" * 64).job, rows(("B", "b")))
    assert set(catalog()) == {"b"}


@FILE_SIZES
def test_snapshot_deactivates_what_the_file_omits_within_the_ratio(store, catalog, size):
    apply(store, claim(store, "1" * 64, size=size).job, rows(*[(f"S{i}", "x") for i in range(10)]))
    counts = apply(store, claim(store, "2" * 64, size=size).job, rows(*[(f"S{i}", "x") for i in range(9)]), mode="snapshot")
    assert counts.deactivated == 1 and catalog()["s9"]["active"] == 0
    job = claim(store, "3" * 64, size=size).job
    with pytest.raises(DeactivationRefused):
        apply(store, job, rows(("S0", "x")), mode="snapshot")
    assert sum(r["active"] for r in catalog().values()) == 9        # nothing of the refused file


@FILE_SIZES
def test_a_rejected_last_occurrence_keeps_the_catalog_value(store, catalog, size):
    apply(store, claim(store, "1" * 64, size=size).job, rows(("A", "old")))
    rejected = pa.table({"sku_key": ["a"], "row": pa.array([9], pa.int64())})
    counts = apply(store, claim(store, "2" * 64, size=size).job, rows(("A", "new"), ("B", "b")), rejected=rejected)
    assert catalog()["a"]["name"] == "old"
    assert (counts.staged, counts.superseded, counts.inserted, counts.updated, counts.unchanged) == (2, 1, 1, 0, 0)


@FILE_SIZES
def test_a_first_file_creates_only_its_kept_rows_that_have_a_name(store, catalog, size):
    """Into a partner's empty catalog (PostgreSQL merges it in the upsert alone): a key whose
    last row was rejected is not created, nor a product without a name; the others are."""
    rejected = pa.table({"sku_key": ["a"], "row": pa.array([9], pa.int64())})
    counts = apply(store, claim(store, size=size).job, rows(("A", "a", 1), ("B", "b", 2), ("C", None, 3)),
                   rejected=rejected)
    assert set(catalog()) == {"b"}
    assert _counts(counts) == (3, 1, 1, 0, 0, 0) and counts.unnamed == ((4, "C"),)


def _counts(c):
    return (c.staged, c.superseded, c.inserted, c.updated, c.unchanged, c.deactivated)


@FILE_SIZES
def test_a_reimport_whose_last_occurrence_equals_the_catalog_leaves_the_key_as_it_is(store, catalog, size):
    apply(store, claim(store, "1" * 64, size=size).job, rows(("A", "a", 1), ("B", "b", 2)))
    written_by = catalog()["a"]["source_job_id"]
    # A differs first, then comes back as the catalog holds it: the later row wins, nothing changes
    counts = apply(store, claim(store, "2" * 64, size=size).job, rows(("A", "a", 5), ("A", "a", 1), ("B", "b", 2)))
    assert _counts(counts) == (3, 1, 0, 0, 2, 0)
    assert (catalog()["a"]["price_cents"], catalog()["a"]["source_job_id"]) == (1, written_by)
    # the other way round: equal first, different last → updated to the last
    counts = apply(store, claim(store, "3" * 64, size=size).job, rows(("A", "a", 1), ("a", "a", 7), ("B", "b", 2)))
    assert _counts(counts) == (3, 1, 0, 1, 1, 0)
    assert (catalog()["a"]["price_cents"], catalog()["a"]["sku"]) == (7, "a")


@FILE_SIZES
def test_a_snapshot_keeps_unchanged_rows_active_and_a_deactivated_row_comes_back(store, catalog, size):
    apply(store, claim(store, "1" * 64, size=size).job, rows(*[(f"S{i}", "x", i) for i in range(10)]))
    counts = apply(store, claim(store, "2" * 64, size=size).job, rows(*[(f"S{i}", "x", i + (i == 0)) for i in range(9)]),
                   mode="snapshot")
    assert _counts(counts) == (9, 0, 0, 1, 8, 1)
    got = catalog()
    assert [k for k, r in got.items() if not r["active"]] == ["s9"] and got["s0"]["price_cents"] == 1
    # the same values as before its deactivation: it is a change now (active again)
    counts = apply(store, claim(store, "3" * 64, size=size).job, rows(*[(f"S{i}", "x", i + (i == 0)) for i in range(10)]),
                   mode="snapshot")
    assert _counts(counts) == (10, 0, 0, 1, 9, 0)
    assert all(r["active"] == 1 for r in catalog().values())


@FILE_SIZES
def test_an_unchanged_row_followed_by_a_rejected_one_is_superseded_not_unchanged(store, catalog, size):
    apply(store, claim(store, "1" * 64, size=size).job, rows(("A", "a", 1), ("B", "b", 2)))
    rejected = pa.table({"sku_key": ["a"], "row": pa.array([9], pa.int64())})
    counts = apply(store, claim(store, "2" * 64, size=size).job, rows(("A", "a", 1), ("B", "b", 2)), rejected=rejected)
    assert _counts(counts) == (2, 1, 0, 0, 1, 0)
    assert catalog()["a"]["price_cents"] == 1


@FILE_SIZES
def test_rows_left_out_by_a_later_row_change_nothing_among_keys_that_do_change(store, catalog, size):
    """A re-sent catalog with duplicates: earlier rows of a key whose last row equals the
    catalog, or is rejected, are left out (and counted superseded); a key with an equal row
    between two changed ones takes its last; the other keys change as the file says."""
    first = rows(("A", "a", 1), ("B", "b", 2), ("C", "c", 3), ("D", "d", 4), ("E", "e", 5))
    for sha in ("1", "2"):          # the second file compared in SQL stores each row's hash
        apply(store, claim(store, sha * 64, size=size).job, first)
    rejected = pa.table({"sku_key": ["b"], "row": pa.array([100], pa.int64())})
    counts = apply(store, claim(store, "3" * 64, size=size).job,
                   rows(("A", "a", 5), ("A", "a", 1), ("B", "b", 6), ("C", "c", 7), ("C", "c", 3), ("C", "c", 9),
                        ("D", "d", 10), ("E", "e", 5)), rejected=rejected)
    assert _counts(counts) == (8, 4, 0, 2, 2, 0)
    assert {k: r["price_cents"] for k, r in catalog().items()} == {"a": 1, "b": 2, "c": 9, "d": 10, "e": 5}


# -- leases, fencing and file claims across daemons -----------------------------------------------

def test_a_job_whose_daemon_stopped_renewing_is_taken_over_and_the_old_attempt_cannot_commit(make_store, catalog):
    slow, other = make_store(holder="host-a:1", lease=1), make_store(holder="host-b:2", lease=1)
    job = claim(slow).job
    wait_for(lambda: other.expire_leases(), timeout=10, what="the lease to run out")
    taken = claim(other)
    assert (taken.kind, taken.job.attempt) == ("resumed", 2)

    with pytest.raises(LeaseLost):
        apply(slow, job, rows(("A", "from the slow daemon")))
    assert catalog() == {}
    apply(other, taken.job, rows(("A", "from the new holder")))
    assert catalog()["a"]["name"] == "from the new holder"
    assert other.job(job.id).status == "succeeded"


def test_the_attempt_of_a_daemon_that_died_ends_interrupted_not_open(make_store):
    """kill -9 leaves an attempt started and never finished: once the job is queued again (its
    lease ran out, or the next start found its daemon dead), ``jobs show`` says what became of it."""
    dead, other = make_store(holder="host-a:1", lease=1), make_store(holder="host-b:2", lease=1)
    job = claim(dead).job
    wait_for(lambda: other.expire_leases(), timeout=10, what="the lease to run out")

    [attempt] = other.attempts(job.id)
    assert attempt["status"] == "interrupted" and attempt["finished_at"] is not None
    assert "before the attempt finished" in attempt["error"]


def test_renewed_leases_do_not_expire(make_store):
    holder, other = make_store(holder="host-a:1", lease=1), make_store(holder="host-b:2", lease=1)
    job = claim(holder).job
    for _ in range(4):
        holder.renew()
        assert other.expire_leases() == []
        threading.Event().wait(0.4)                  # between renewals, less than the lease
    assert other.job(job.id).status == "running"


def test_a_file_claimed_by_one_daemon_is_refused_to_another_until_released_or_expired(make_store):
    a, b = make_store(holder="host-a:1", lease=1), make_store(holder="host-b:2", lease=1)
    key = dict(inbox="s3:drops/p/", uri="s3://drops/p/feed.csv", version='"etag-1"')
    assert a.claim_drop(**key) and a.claim_drop(**key)          # its own claim, again
    assert not b.claim_drop(**key)
    assert b.claim_drop(**{**key, "version": '"etag-2"'})         # another version is another file
    a.release_drop(**key)
    assert b.claim_drop(**key)
    wait_for(lambda: a.claim_drop(**key), timeout=10, what="b's claim to run out")


# -- PostgreSQL specifics ------------------------------------------------------------------------

def test_postgres_refuses_a_database_it_did_not_create(pg_url):
    import psycopg

    from config import ConfigError
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE products (id int)")
    with pytest.raises(ConfigError, match="did not create"):
        open_store(StoreConfig(url=pg_url))


def test_postgres_schema_newer_than_the_daemon_is_a_clear_error(pg_url):
    from config import ConfigError
    open_store(StoreConfig(url=pg_url)).close()
    import psycopg
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO inbox_schema_version VALUES (999, 'later')")
    with pytest.raises(ConfigError, match="newer than this inbox-daemon"):
        open_store(StoreConfig(url=pg_url))


def test_postgres_unreachable_is_transient():
    with pytest.raises(StoreUnavailable):
        open_store(StoreConfig(url="postgresql://127.0.0.1:1/test?connect_timeout=2"))


# -- the command line on PostgreSQL ----------------------------------------------------------------

def test_ingest_jobs_and_requeue_through_the_cli_on_postgres(pg_url, workdir, cli):
    from tests.conftest import write_csv
    (workdir / "pg.toml").write_text(f'[store]\nurl = {json.dumps(pg_url)}\n[[partners]]\nid = "p"\n')
    good = write_csv(workdir / "good.csv", ["sku", "name", "price"], [["A-1", "Shirt", "9.99"], ["a-1", "Shirt 2", "8"]])
    bad = write_csv(workdir / "bad.csv", ["sku", "title"], [["B", "x"]])

    first = cli("ingest", good, "--partner", "p", "--config", workdir / "pg.toml", "--json")
    rejected = cli("ingest", bad, "--partner", "p", "--config", workdir / "pg.toml", "--json")

    assert first.code == 0 and first.json()["rows"]["superseded"] == 1
    assert rejected.code == 4
    catalog = pg_products(pg_url, "p")
    assert (catalog["a-1"]["name"], catalog["a-1"]["price_cents"], catalog["a-1"]["active"]) == ("Shirt 2", 800, 1)
    listed = cli("jobs", "list", "--json", "--config", workdir / "pg.toml").json()
    assert sorted(j["status"] for j in listed) == ["rejected", "succeeded"]
    requeued = cli("jobs", "requeue", "--status", "rejected", "--config", workdir / "pg.toml")
    assert requeued.code == 0 and rejected.json()["job_id"] in requeued.out


def test_the_very_file_seen_again_by_a_watching_daemon_is_answered_not_a_duplicate(store):
    job = claim(store).job
    apply(store, job, rows(("A", "a")))
    again = store.claim(partner_id="p", sha256="a" * 64, inbox="local:in", source=SOURCE, fmt="csv",
                        mode="delta", spool_path=None, answered_if_same_file=True)
    assert (again.kind, again.job.id) == ("reported", job.id)
    other = Source(uri="file:///in/copy.csv", name="copy.csv", size=10, version="1")
    copy = store.claim(partner_id="p", sha256="a" * 64, inbox="local:in", source=other, fmt="csv",
                       mode="delta", spool_path=None, answered_if_same_file=True)
    assert copy.kind == "duplicate"


def test_after_a_failed_statement_its_rollback_the_same_statement_and_later_transactions_run(tmp_path):
    """SQLite keeps each statement prepared on a cursor of its own (``SqliteStore._exec``). A
    statement that failed (a unique key taken) must leave nothing behind that breaks the
    ROLLBACK after it (an ADBC cursor keeps a failed statement's bound values), nor the same
    statement run again with other values, nor the transactions that follow."""
    from config.errors import StoreError
    store = open_store(StoreConfig(url=f"sqlite:///{tmp_path / 'catalog.db'}"))
    insert = "INSERT INTO audit_heads (folder, chain, seq, hash, at) VALUES (?, ?, ?, ?, ?)"
    try:
        store._exec(insert, ("f1", "c", 1, "h", "now"))
        with pytest.raises(StoreError):
            with store._transaction():
                store._exec(insert, ("f2", "c", 1, "h", "now"))
                store._exec(insert, ("f1", "c", 2, "h", "now"))       # f1 is taken: rolled back
        with store._transaction():
            store._exec(insert, ("f3", "c", 3, "h", "now"))
        assert store._exec("SELECT folder, seq FROM audit_heads ORDER BY folder") == [("f1", 1), ("f3", 3)]
    finally:
        store.close()


def test_sqlite_stages_in_pages_of_16_kib_while_the_catalog_keeps_its_own(tmp_path):
    """The staging tables' database takes the page size set for it (``TEMP_PAGE_BYTES``) only
    if nothing created it before: read back after a load, on the connection that staged."""
    from storage.sqlite import TEMP_CACHE_KIB, SqliteStore
    store = SqliteStore(tmp_path / "catalog.db")
    try:
        apply(store, claim(store).job, rows(("A", "a")))
        assert store._one("PRAGMA temp.page_size") == 16_384
        assert store._one("PRAGMA temp.cache_size") == -TEMP_CACHE_KIB
        assert store._one("PRAGMA page_size") == 4096
    finally:
        store.close()
