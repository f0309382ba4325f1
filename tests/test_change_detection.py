"""Change detection before staging (``storage/changes.py``, the SQLite store): the row hash tells
every change apart, a re-sent catalog stages only what differs, and a catalog that moves under a
load is noticed and the file read again. The outcomes themselves (counts, which row wins) are
the store contract of ``test_store.py``, run on both stores."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pytest

from config.canonical import CANONICAL_SCHEMA
from config.errors import CatalogChanged
from storage.base import MERGED_COLUMNS, Columns, Outcome, Source
from storage.changes import hash_binary, row_hashes
from storage.sqlite import SqliteLoad, SqliteStore

SOURCE = Source(uri="file:///in/feed.csv", name="feed.csv", size=10**9, version="1")   # "large"
BASE = {"row": 2, "sku": "SKU-1", "sku_key": "sku-1", "name": "Blue mug", "description": "A mug, blue.",
        "price_cents": 1299, "currency": "USD", "stock": 4, "active": 1, "brand": "Acme",
        "category": "Home > Kitchen", "gtin": "4006381333931", "url": "https://shop.example/p/1",
        "image_url": None, "attributes": '{"color":"blue"}'}


def batch(*records: dict) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([{**BASE, **r} for r in records], schema=CANONICAL_SCHEMA)


# -- the hash ------------------------------------------------------------------------------------

def test_equal_rows_hash_alike_wherever_they_sit_and_the_row_number_does_not_count():
    many = batch(*[{"sku": f"S{i}", "sku_key": f"s{i}", "description": "d" * (i % 23), "row": i + 2}
                   for i in range(300)])
    alone = batch({"sku": "S150", "sku_key": "s150", "description": "d" * (150 % 23), "row": 99})
    assert row_hashes(many)[150] == row_hashes(alone)[0]
    assert (row_hashes(many.slice(100, 50)) == row_hashes(many)[100:150]).all()
    assert len(set(row_hashes(many).tolist())) == 300


@pytest.mark.parametrize("column", [c for c in MERGED_COLUMNS])
def test_a_change_in_any_merged_column_changes_the_hash(column):
    changed = {"price_cents": 1300, "stock": 5, "active": 0}.get(column, f"{BASE[column] or ''}x")
    assert row_hashes(batch({}))[0] != row_hashes(batch({column: changed}))[0]


@pytest.mark.parametrize("one, other", [
    ({"name": "Blue mug", "description": "A mug"}, {"name": "Blue mu", "description": "gA mug"}),  # a byte moved
    ({"brand": "", "category": "x"}, {"brand": "x", "category": ""}),
    ({"image_url": None}, {"image_url": ""}),                                 # empty is not NULL
    ({"stock": None}, {"stock": 0}),                                          # nor is 0
    ({"description": "abcdefgh12345678"}, {"description": "12345678abcdefgh"}),   # words swapped
])
def test_look_alike_rows_hash_apart(one, other):
    assert row_hashes(batch(one))[0] != row_hashes(batch(other))[0]


def test_hash_binary_sees_every_byte_and_the_length():
    values = pa.array(["", "a", "a\x00", "ab", "ba", "abcdefgh", "abcdefgh\x00", "abcdefghi", "é"])
    assert len(set(hash_binary(values).tolist())) == len(values)
    assert hash_binary(pa.array([None], pa.string()))[0] == hash_binary(pa.array([""]))[0]   # keys: NULL as empty


# -- staging only what differs -------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    opened = []

    def make(holder="host:1"):
        s = SqliteStore(tmp_path / "catalog.db", holder=holder)
        opened.append(s)
        return s
    yield make
    for s in opened:
        s.close()


def _claim(store, sha, partner="p"):
    return store.claim(partner_id=partner, sha256=sha * 64, inbox="local:in", source=SOURCE, fmt="csv",
                       mode="delta", spool_path=None).job


def _catalog_rows(store) -> list[tuple]:
    script = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
              " print(repr(sorted(c.execute('SELECT sku_key, price_cents, row_hash IS NULL FROM products'))))")
    return eval(subprocess.run([sys.executable, "-c", script, str(store.path)], capture_output=True,
                               text=True, check=True).stdout)


def _load(store, job, b, *, exclusive=False):
    load = store.load(job, exclusive=exclusive)
    load.stage(b)
    return load


def test_a_resent_catalog_stages_only_the_rows_that_differ(store):
    """Into an empty catalog no row hash is kept (a re-sent file is recognised by its records:
    ``test_record_recognition.py``); the first file compared in SQL stores them, and from then
    on a re-sent catalog stages only the rows that differ."""
    s = store()
    first = batch(*[{"sku": f"S{i}", "sku_key": f"s{i}", "row": i + 2} for i in range(1000)])
    for sha, staged in (("1", (1000, 0)), ("1b", (1000, 0))):
        with s.load(_claim(s, sha)) as load:
            load.stage(first)
            load._drain()
            assert (load._staged_rows, load._unchanged_rows) == staged
            counts = load.merge(mode="delta", max_deactivate_ratio=1)
            load.commit(Outcome("succeeded", {}))
        stored = {nulls for _, _, nulls in _catalog_rows(s)}
        assert stored == ({1} if sha == "1" else {0})
    assert (counts.inserted, counts.unchanged) == (0, 1000)
    again = batch(*[{"sku": f"S{i}", "sku_key": f"s{i}", "row": i + 2, "price_cents": 1299 + (i % 100 == 0)}
                    for i in range(1000)], {"sku": "NEW", "sku_key": "new", "row": 2000})
    with s.load(_claim(s, "2")) as load:
        load.stage(again)
        load._drain()
        assert (load._staged_rows, load._unchanged_rows) == (11, 990)
        counts = load.merge(mode="delta", max_deactivate_ratio=1)
        load.commit(Outcome("succeeded", {}))
    assert (counts.inserted, counts.updated, counts.unchanged) == (1, 10, 990)
    assert dict((k, p) for k, p, _ in _catalog_rows(s))["s100"] == 1300


def test_rows_without_a_stored_hash_are_compared_in_sql_and_get_their_hash(store):
    s = store()
    with s.load(_claim(s, "1")) as load:
        load.stage(batch({}, {"sku": "B", "sku_key": "b", "row": 3}))
        load.merge(mode="delta", max_deactivate_ratio=1)
        load.commit(Outcome("succeeded", {}))
    subprocess.run([sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
                    " c.execute('UPDATE products SET row_hash = NULL'); c.commit()", str(s.path)], check=True)
    with s.load(_claim(s, "2")) as load:
        load.stage(batch({}, {"sku": "B", "sku_key": "b", "row": 3}))
        counts = load.merge(mode="delta", max_deactivate_ratio=1)
        load.commit(Outcome("succeeded", {}))
    assert (counts.updated, counts.unchanged) == (0, 2)            # equal values: not an update
    assert [nulls for _, _, nulls in _catalog_rows(s)] == [0, 0]    # but the hashes are back


def test_a_catalog_changed_by_another_job_during_staging_is_noticed_and_nothing_is_applied(store):
    s, other = store("host:1"), store("host:2")
    with s.load(_claim(s, "1")) as load:
        load.stage(batch({}))
        load.merge(mode="delta", max_deactivate_ratio=1)
        load.commit(Outcome("succeeded", {}))
    job = _claim(s, "2")
    load = _load(s, job, batch({"price_cents": 500}))
    load._drain()                                   # it has read the catalog's hashes
    with other.load(_claim(other, "3")) as meanwhile:
        meanwhile.stage(batch({"price_cents": 700}))
        meanwhile.merge(mode="delta", max_deactivate_ratio=1)
        meanwhile.commit(Outcome("succeeded", {}))
    with pytest.raises(CatalogChanged):
        load.merge(mode="delta", max_deactivate_ratio=1)
    load.abort()
    assert _catalog_rows(s) == [("sku-1", 700, 0)]
    with s.load(job, exclusive=True) as again:      # read again, holding the catalog throughout
        again.stage(batch({"price_cents": 500}))
        assert again.merge(mode="delta", max_deactivate_ratio=1).updated == 1
        again.commit(Outcome("succeeded", {}))
    assert _catalog_rows(s) == [("sku-1", 500, 0)]


def test_the_pipeline_reads_the_file_again_when_the_catalog_moved_under_it(workdir):
    """A real second writer commits between this job's staging and its merge: the job is read
    again with the catalog held, and its file's values are what the catalog ends with."""
    from config import default_config
    from inbox_daemon.drop import Drop
    from inbox_daemon.pipeline import Pipeline
    from tests.conftest import products, write_csv

    config = default_config()
    db = config.store.url[len("sqlite:///"):]
    loads = []

    class RacedLoad(SqliteLoad):
        def merge(self, **kw):
            if len(loads) == 1:                     # the first load: another writer gets in first
                other = SqliteStore(db, holder="host:2")
                with other.load(_claim(other, "9", partner="default")) as meanwhile:
                    meanwhile.stage(batch({"sku": "C1", "sku_key": "c1", "name": "theirs"}))
                    meanwhile.merge(mode="delta", max_deactivate_ratio=1)
                    meanwhile.commit(Outcome("succeeded", {}))
                other.close()
            return super().merge(**kw)

    class RacedStore(SqliteStore):
        def load(self, job, *, exclusive=False):
            loads.append(exclusive)
            return RacedLoad(self, job, exclusive=exclusive)

    store = RacedStore(db)
    path = write_csv(workdir / "feed.csv", ["sku", "name", "price"], [["C1", "ours", "1.00"], ["C2", "x", "2"]])
    stat = path.stat()
    drop = Drop(inbox="cli", partner="default", key=str(path), name=path.name, uri=path.as_uri(),
                size=stat.st_size, version=str(stat.st_mtime_ns))
    result = Pipeline(config, store).process_path(path, drop)
    store.close()
    assert loads == [False, True]
    assert result.status == "succeeded" and result.manifest["rows"]["read"] == 2
    got = products(workdir)
    assert (got["c1"]["name"], got["c2"]["name"]) == ("ours", "x")


def test_a_partial_file_sent_again_is_skipped_in_arrow_and_another_column_set_is_compared_in_sql(store):
    """The stored hash covers the columns the file set, with that set mixed in: the same stock
    file again stages nothing; a price file of the same rows is compared (its set differs)."""
    s = store()
    stock_only, price_only = Columns(frozenset({"sku", "stock"})), Columns(frozenset({"sku", "price_cents", "currency"}))

    def send(sha, rows, columns):
        with s.load(_claim(s, sha)) as load:
            load.stage(batch(*rows), None, columns)
            load._drain()
            staged = (load._staged_rows, load._unchanged_rows)
            counts = load.merge(mode="delta", max_deactivate_ratio=1, columns=columns)
            load.commit(Outcome("succeeded", {}))
        return staged, counts

    full = [{"sku": f"S{i}", "sku_key": f"s{i}", "name": "n", "row": i + 2, "stock": 5} for i in range(100)]
    send("1", full, Columns())
    stock = [{"sku": f"S{i}", "sku_key": f"s{i}", "name": None, "active": None, "row": i + 2, "stock": 7}
             for i in range(100)]
    assert send("2", stock, stock_only)[0] == (100, 0)           # stock changed: staged, updated
    staged, counts = send("3", stock, stock_only)
    assert staged == (0, 100) and counts.unchanged == 100       # the same again: skipped in Arrow
    price = [{**r, "stock": None, "price_cents": 1299} for r in stock]
    assert send("4", price, price_only)[0] == (100, 0)
    assert {p for _, p, _ in _catalog_rows(s)} == {1299}
