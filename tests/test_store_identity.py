"""The catalog is who it says it is: a catalog deleted, replaced or emptied under a running
daemon stops the applying (``/healthz`` degraded, the files left in their inbox), never answers
``succeeded`` into a catalog nobody will read again; after a restart the files are applied."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from config.errors import StoreReplaced
from config.status import JobStatus
from storage.base import Outcome, Source
from storage.sqlite import SqliteStore
from tests.conftest import products, write_csv
from tests.daemon_harness import config, healthz, manifests, wait_for


def test_a_catalog_deleted_under_a_running_daemon_stops_the_applying(tmp_path, daemons):
    cfg = config(daemon='max_attempts = 2\nretry_max = "200ms"')
    d = daemons(tmp_path, cfg)
    inbox = tmp_path / "inbox" / "default"
    write_csv(inbox / "first.csv", ["sku", "name"], [["F", "first"]])
    wait_for(lambda: len(manifests(tmp_path)) == 1, what="the first file answered")

    for suffix in ("", "-wal", "-shm"):                        # what `rm var/catalog.db*` does
        (tmp_path / "var" / f"catalog.db{suffix}").unlink(missing_ok=True)
    for i in range(5):
        write_csv(inbox / f"after-{i}.csv", ["sku", "name"], [[f"A{i}", "after"]])

    def degraded():
        code, body = healthz(d.health)
        return (code, body) if code == 503 and "store" in body.get("degraded", {}) else None
    code, body = wait_for(degraded, 30, what="/healthz degraded by the store")
    assert "deleted or replaced" in body["degraded"]["store"]["error"]
    d.wait_event("file.transient_error", error_type="StoreReplaced")
    # nothing was answered or archived after the catalog went
    assert [m["source"]["name"] for m in manifests(tmp_path)] == ["first.csv"]
    assert sorted(p.name for p in inbox.glob("after-*.csv")) == [f"after-{i}.csv" for i in range(5)]
    assert d.stop() == 0

    # the operator restarts it: a new catalog, and the files still in the inbox are applied there
    d = daemons(tmp_path, cfg)
    wait_for(lambda: len([m for m in manifests(tmp_path) if m["source"]["name"].startswith("after-")]) == 5,
             30, what="the five files applied after the restart")
    assert sorted(products(tmp_path)) == [f"a{i}" for i in range(5)]
    assert d.stop() == 0


def _claimed(store: SqliteStore):
    claim = store.claim(partner_id="p", sha256="ab" * 32, inbox="local:in",
                        source=Source(uri="file:///in/f.csv", name="f.csv", size=1, version="1"),
                        fmt="csv", mode="delta", spool_path="spool/x")
    return claim.job


@pytest.mark.parametrize("change", ["replaced", "emptied"])
def test_an_outcome_is_not_recorded_into_a_catalog_replaced_or_emptied_since_it_was_opened(tmp_path, change):
    path = tmp_path / "catalog.db"
    store = SqliteStore(path)
    job = _claimed(store)
    if change == "replaced":                      # a backup copied over it: another file, another identity
        other = tmp_path / "other.db"
        SqliteStore(other).close()
        shutil.copy(other, tmp_path / "swap.db")
        (tmp_path / "swap.db").rename(path)
    else:                                         # its tables dropped by hand, the file the same
        with sqlite3.connect(path) as raw:
            raw.execute("DROP TABLE store_identity")

    with pytest.raises(StoreReplaced):
        store.finish(job, Outcome(status=JobStatus.REJECTED, result={}))
    store.close()


def test_a_postgres_catalog_made_again_behind_the_same_url_is_noticed(pg_url):
    from storage.postgres import PostgresStore
    store = PostgresStore(pg_url)
    job = _claimed(store)
    other = PostgresStore(pg_url)
    other._exec("UPDATE store_identity SET id = 'another-catalog'")      # what a restore of another one leaves
    other.close()

    with pytest.raises(StoreReplaced):
        store.finish(job, Outcome(status=JobStatus.REJECTED, result={}))
    store.close()
