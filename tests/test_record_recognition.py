"""Records recognised before judging (``storage.changes.record_hashes``, the SQLite store): a
record the catalog last took as it is skips mapping and validation, and nothing else changes.
Every test runs ``inbox-daemon ingest`` as a user does and checks the catalog a user would
query, plus the ``recognised`` count of the ``job.applied`` log line (rows left unjudged): a
record must be recognised only when judging it again could not give anything new."""

from __future__ import annotations

import json

import pytest

from tests.conftest import products, read_diagnostics, write_csv

HEADER = ["sku", "name", "price", "stock"]
ROWS = [[f"SKU-{i}", f"Product {i}", f"{i}.50", str(i)] for i in range(1, 201)]


@pytest.fixture
def send(cli, workdir):
    """``send(rows, header=HEADER, *args)`` → (manifest, the ``job.applied`` log line); ``path``:
    a file written already, sent instead."""
    sent = []

    def run(rows, header=HEADER, *args: str, path=None):
        path = path or write_csv(workdir / f"feed{len(sent)}.csv", header, rows)
        sent.append(path)
        result = cli("ingest", path, "--json", "-v", *args)
        assert result.code in (0, 4), result.err
        applied = [json.loads(line) for line in result.err.splitlines()
                   if line.startswith("{") and '"job.applied"' in line]
        return json.loads(result.out), (applied[0] if applied else None)
    return run


def test_a_resent_catalog_skips_judging_its_unchanged_records_and_applies_the_changed_one(send, workdir):
    send(ROWS)
    changed = [*ROWS[:99], ["SKU-100", "Product 100", "9.99", "100"], *ROWS[100:]]
    manifest, applied = send(changed)
    assert applied["recognised"] == 199                     # every record but the changed one
    assert manifest["rows"] == {**manifest["rows"], "read": 200, "updated": 1, "unchanged": 199, "inserted": 0}
    assert products(workdir)["sku-100"]["price_cents"] == 999


def test_a_row_with_a_warning_is_judged_again_and_its_warning_given_again(send, workdir):
    """A record that had a diagnostics line is never stored: the partner is told again."""
    rows = [*ROWS[:10], ["SKU-W", "Warned", "1.00", "-3"]]         # negative stock: a warning
    first, _ = send(rows)
    again, applied = send([*rows, ["SKU-NEW", "New", "2.00", "1"]])
    assert first["rows"]["warnings"] == again["rows"]["warnings"] == 1
    assert applied["recognised"] == 10
    assert [d["sku"] for d in read_diagnostics(again, workdir)] == ["SKU-W"]


def test_another_configuration_recognises_nothing_and_its_values_are_applied(send, workdir):
    """The same records under another partner setting (its currency) must not be taken as they
    were: the salt changes, every record is judged, and the new currency is applied to all."""
    send(ROWS)
    (workdir / "eur.toml").write_text('[[partners]]\nid = "default"\ncurrency = "EUR"\n')
    manifest, applied = send([*ROWS, ["SKU-NEW", "New", "1", "1"]], HEADER, "--config", "eur.toml")
    assert applied["recognised"] == 0
    assert (manifest["rows"]["updated"], manifest["rows"]["inserted"]) == (200, 1)
    assert {p["currency"] for p in products(workdir).values()} == {"EUR"}


def test_reordered_columns_are_judged_once_then_recognised(send, workdir):
    """The same rows with the columns in another order become the same catalog rows: judged
    once (unchanged, and their new records stored), recognised from then on."""
    send(ROWS)
    swapped = [[r[1], r[0], r[3], r[2]] for r in ROWS]
    header = [HEADER[1], HEADER[0], HEADER[3], HEADER[2]]
    once, applied_once = send(swapped, header)
    assert (applied_once["recognised"], once["rows"]["unchanged"]) == (0, 200)
    twice, applied_twice = send([*swapped, ["New", "SKU-NEW", "1", "1"]], header)
    assert applied_twice["recognised"] == 200 and twice["rows"]["inserted"] == 1


def test_a_recognised_row_after_a_changed_row_of_the_same_key_keeps_the_catalog_as_it_is(send, workdir):
    """The later row wins, also when it is the one left unjudged: the earlier changed row of the
    same key must not be applied in its stead."""
    send(ROWS)
    manifest, applied = send([["SKU-1", "Product 1", "7.77", "1"], *ROWS])
    assert applied["recognised"] == 200
    assert products(workdir)["sku-1"]["price_cents"] == 150
    assert (manifest["rows"]["updated"], manifest["rows"]["superseded"]) == (0, 1)


def test_a_deactivated_product_sent_again_as_it_was_is_active_again(send, workdir):
    header, rows = [*HEADER, "active"], [[*r, "true"] for r in ROWS]
    send(rows, header)
    send(rows[1:], header, "--mode", "snapshot")
    assert products(workdir)["sku-1"]["active"] == 0
    manifest, applied = send(rows, header)
    assert applied["recognised"] == 199                        # SKU-1's record was forgotten
    assert products(workdir)["sku-1"]["active"] == 1 and manifest["rows"]["updated"] == 1


def test_a_reverted_product_takes_the_reverted_files_values_when_they_come_again(send, cli, workdir):
    send(ROWS)
    changed = [["SKU-1", "Product 1", "5.00", "1"], *ROWS[1:]]
    second, _ = send(changed)
    assert cli("jobs", "revert", second["job_id"]).code == 0
    assert products(workdir)["sku-1"]["price_cents"] == 150
    manifest, applied = send([*changed, ["SKU-NEW", "New", "1", "1"]])
    assert applied["recognised"] == 199                        # the restored product's record is unknown
    assert products(workdir)["sku-1"]["price_cents"] == 500 and manifest["rows"]["updated"] == 1


def test_rows_are_recognised_in_an_xlsx_file_too(send, workdir):
    """Readers of every format give text blocks: a spreadsheet re-sent is recognised the same way."""
    openpyxl = pytest.importorskip("openpyxl")

    def xlsx(name, rows):
        book = openpyxl.Workbook()
        sheet = book.active
        sheet.append(HEADER)
        for r in rows:
            sheet.append([r[0], r[1], float(r[2]), int(r[3])])       # numbers as numbers, as Excel keeps them
        book.save(workdir / name)
        return workdir / name

    send(None, path=xlsx("a.xlsx", ROWS))
    manifest, applied = send(None, path=xlsx("b.xlsx", [*ROWS, ["SKU-NEW", "New", "1", "1"]]))
    assert applied["recognised"] == 200 and manifest["rows"]["inserted"] == 1
    assert products(workdir)["sku-7"]["price_cents"] == 750


# -- a large file: the catalog is read while the file is spooled (``SqliteStore.read_ahead``) ----

LARGE_HEADER = [*HEADER, "description"]


def _large(n: int, changed: dict[int, str] | None = None) -> list[list[str]]:
    """Rows enough for a file of several reader blocks (> 4 MB)."""
    changed = changed or {}
    return [[f"SKU-{i}", f"Product {i}", changed.get(i, f"{i % 900 + 1}.50"), str(i % 50), "d" * 120]
            for i in range(n)]


def _ingest(config, store, path):
    """``path`` through the pipeline in this process, on ``store`` (closed after): for tests
    that give the pipeline a store of their own, with a race or a delay built in."""
    from inbox_daemon.drop import Drop
    from inbox_daemon.pipeline import Pipeline

    drop = Drop(inbox="cli", partner="default", key=str(path), name=path.name, uri=path.as_uri(),
                size=path.stat().st_size, version="1")
    try:
        return Pipeline(config, store).process_path(path, drop)
    finally:
        store.close()


def test_a_resent_file_of_several_blocks_is_recognised_but_for_its_changed_row(send, workdir):
    """Recognition across the reader's blocks (and the catalog read while the file is spooled:
    that it is used is the next test's)."""
    first, _ = send(_large(40_000), LARGE_HEADER)
    assert first["source"]["size"] > 4 << 20
    manifest, applied = send(_large(40_000, {7: "99.99"}), LARGE_HEADER)
    assert applied["recognised"] == 39_999
    assert (manifest["rows"]["updated"], manifest["rows"]["unchanged"]) == (1, 39_999)
    assert products(workdir)["sku-7"]["price_cents"] == 9999


def test_a_catalog_read_ahead_that_went_stale_is_noticed_and_the_file_read_again(workdir):
    """Another writer commits to the partner's catalog after it was read ahead: the merge sees
    the version moved, the file is read again with the catalog held, and its values stand."""
    from config import default_config
    from storage.base import Outcome, Source
    from storage.sqlite import SqliteStore
    from tests.test_change_detection import batch

    config = default_config()
    db = config.store.url[len("sqlite:///"):]
    loads = []

    class RacedStore(SqliteStore):
        def read_ahead(self, partner_id, *, size, mode):
            super().read_ahead(partner_id, size=size, mode=mode)
            if self._ahead is None:
                return
            self._ahead[3].result()                     # read; now another writer gets in
            other = SqliteStore(db, holder="host:2")
            job = other.claim(partner_id="default", sha256="9" * 64, inbox="local:in", fmt="csv", mode="delta",
                              spool_path=None, source=Source(uri="file:///x.csv", name="x.csv", size=1)).job
            with other.load(job) as meanwhile:
                meanwhile.stage(batch({"sku": "SKU-3", "sku_key": "sku-3", "name": "theirs"}))
                meanwhile.merge(mode="delta", max_deactivate_ratio=1)
                meanwhile.commit(Outcome("succeeded", {}))
            other.close()

        def load(self, job, *, exclusive=False):
            loads.append(exclusive)
            return super().load(job, exclusive=exclusive)

    _ingest(config, SqliteStore(db), write_csv(workdir / "large0.csv", LARGE_HEADER, _large(40_000)))
    loads.clear()
    result = _ingest(config, RacedStore(db), write_csv(workdir / "large1.csv", LARGE_HEADER,
                                                        _large(40_000, {3: "7.77"})))
    assert loads == [False, True]
    assert result.status == "succeeded"
    got = products(workdir)["sku-3"]
    assert (got["name"], got["price_cents"]) == ("Product 3", 777)


def test_a_resent_file_is_recognised_as_well_when_its_blocks_are_hashed_before_the_catalog_is_read(workdir):
    """The catalog read ahead is slow (a large catalog, a busy disk): the file is read and hashed
    further ahead meanwhile, and the blocks hashed before the catalog was there are looked up
    once it is. Every record but the changed one is recognised all the same."""
    import threading
    import time as clock

    from config import default_config
    from storage.sqlite import SqliteLoad, SqliteStore

    config = default_config()
    db = config.store.url[len("sqlite:///"):]
    known, by_reader = [], []

    class CountingLoad(SqliteLoad):
        def recognise(self, records):
            at = super().recognise(records)
            known.append(int((at >= 0).sum()))
            # the records thread looks a block up only once the catalog is there; a block it
            # hashed before is looked up by the thread that reads the file
            by_reader.append(not threading.current_thread().name.startswith("records"))
            return at

    class SlowStore(SqliteStore):
        def _take_read_ahead(self, job):
            read = super()._take_read_ahead(job)
            if read is None:
                return None

            def slowly():
                clock.sleep(1.5)
                return read()
            return slowly

        def load(self, job, *, exclusive=False):
            return CountingLoad(self, job, exclusive=exclusive)

    _ingest(config, SqliteStore(db), write_csv(workdir / "first.csv", LARGE_HEADER, _large(40_000)))
    result = _ingest(config, SlowStore(db), write_csv(workdir / "again.csv", LARGE_HEADER,
                                                       _large(40_000, {7: "99.99"})))
    assert any(by_reader), "no block was hashed before the catalog was read: the test tested nothing"
    assert sum(known) == 39_999
    assert result.status == "succeeded"
    assert (result.manifest["rows"]["updated"], result.manifest["rows"]["unchanged"]) == (1, 39_999)
    assert products(workdir)["sku-7"]["price_cents"] == 9999


@pytest.mark.parametrize("read_after", [0, 4, 100])
def test_the_file_is_read_ahead_of_its_judging_by_a_bound_whatever_its_size(read_after):
    """``_ahead`` over a file of 40 blocks, the catalog read once ``read_after`` blocks were
    judged: ``_EARLY`` blocks ahead while it is being read, back to ``_AHEAD`` once it is, and
    never more, however many blocks the file has."""
    from inbox_daemon.pipeline import _AHEAD, _EARLY, _ahead

    taken, leads, reading = [], [], [read_after > 0]

    def blocks():
        for i in range(40):
            taken.append(i)
            yield i

    for i, worked in _ahead(blocks(), lambda i: i * 2, True, further=lambda: reading[0]):   # type: ignore[arg-type]
        assert worked == i * 2
        leads.append(len(taken) - i - 1)             # blocks read beyond the one being judged
        if i + 1 == read_after:
            reading[0] = False
    assert len(leads) == 40
    assert max(leads) <= _EARLY - 1
    if read_after == 0:
        assert leads[:30] == [_AHEAD] * 30
    elif read_after == 4:
        assert leads[:4] == [_EARLY - 1] * 4
        assert leads[12:30] == [_AHEAD] * 18     # back down once the catalog is there
    else:
        assert leads[:30] == [_EARLY - 1] * 30
