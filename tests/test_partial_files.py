"""A file sets only what it carries, on both stores, through ``inbox-daemon ingest``.

Stock-only and price-only files are the feeds partners send most (hourly stock, daily prices;
Magento's own ``disable_product.csv`` is ``sku,product_online``). A column the file does not
have leaves the stored value alone; an empty cell in a column it has clears an optional value;
``active`` absent keeps an existing product's state and makes a new one active; ``name`` is
needed only to create a product. The catalog is read back with plain sqlite3/psycopg.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import pg_products, products, read_diagnostics, write_csv

FULL = ["sku", "name", "description", "price", "currency", "stock", "active", "brand", "category", "gtin", "url",
        "image_url", "color"]
FULL_ROWS = [
    ["P-1", "Pen", "Blue ink", "1.50", "EUR", "10", "true", "Acme", "Office", "4006381333931",
     "https://shop.example/p-1", "https://shop.example/p-1.jpg", "blue"],
    ["P-2", "Pad", "A5, ruled", "3.00", "EUR", "4", "false", "Acme", "Office", "",
     "https://shop.example/p-2", "", "white"],
]


@pytest.fixture(params=["sqlite", "postgresql"])
def shop(request, workdir, ingest):
    """(send(name, header, rows, *args) → manifest, catalog() → sku_key → row) on one store."""
    config = workdir / "daemon.toml"
    text = ('[daemon]\nstate_dir = "var"\n\n[[partners]]\nid = "default"\ncurrency = "EUR"\n'
            'max_reject_ratio = 0.5\nmax_deactivate_ratio = 1.0\n')
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        text += f'\n[store]\nurl = "{url}"\n'
    config.write_text(text)

    def send(name: str, header: list[str], rows: list[list], *args: str) -> dict:
        code, manifest = ingest(write_csv(workdir / name, header, rows), "--config", str(config), *args)
        assert manifest is not None, code
        return manifest

    def catalog() -> dict[str, dict]:
        got = pg_products(url, "default") if request.param == "postgresql" else products(workdir)
        return {k: {**v, "active": int(v["active"])} for k, v in got.items()}

    send("full.csv", FULL, FULL_ROWS)
    return send, catalog


def _without(row: dict, *columns: str) -> dict:
    return {k: v for k, v in row.items() if k not in (*columns, "updated_at", "source_job_id", "row_hash", "record_hash", "version")}


@pytest.mark.parametrize("mode", ["delta", "snapshot"])
def test_a_stock_only_file_changes_stock_and_nothing_else(shop, mode):
    send, catalog = shop
    before = catalog()
    manifest = send("stock.csv", ["sku", "stock"], [["P-1", "7"], ["P-2", "0"]], "--mode", mode)
    after = catalog()
    assert manifest["status"] == "succeeded" and manifest["rows"]["updated"] == 2
    assert manifest["columns"] == ["sku", "stock"]
    assert (after["p-1"]["stock"], after["p-2"]["stock"]) == (7, 0)
    for key in ("p-1", "p-2"):
        assert _without(after[key], "stock") == _without(before[key], "stock")
    assert after["p-2"]["active"] == 0            # a draft stays a draft
    assert json.loads(after["p-1"]["attributes"]) == {"color": "blue"}


def test_a_price_only_file_sets_price_and_its_currency(shop):
    send, catalog = shop
    send("prices.csv", ["sku", "price"], [["P-1", "2.25"]])
    got = catalog()["p-1"]
    assert (got["price_cents"], got["currency"], got["stock"], got["name"]) == (225, "EUR", 10, "Pen")


def test_an_empty_cell_in_a_column_the_file_has_clears_that_value(shop):
    send, catalog = shop
    send("clear.csv", ["sku", "description", "stock"], [["P-1", "", ""]])
    got = catalog()["p-1"]
    assert (got["description"], got["stock"], got["price_cents"], got["brand"]) == (None, None, 150, "Acme")


def test_a_file_without_name_updates_existing_products_and_refuses_new_ones(shop):
    send, catalog = shop
    manifest = send("stock.csv", ["sku", "stock"], [["P-1", "3"], ["NEW-9", "5"]])
    got = catalog()
    assert got["p-1"]["stock"] == 3 and got["p-1"]["name"] == "Pen"
    assert "new-9" not in got
    assert manifest["status"] == "partial"
    assert (manifest["rows"]["rejected"], manifest["rows"]["updated"], manifest["rows"]["inserted"]) == (1, 1, 0)
    assert manifest["errors"] == {"name_required": 1}
    [line] = read_diagnostics(manifest, Path.cwd())
    assert (line["row"], line["sku"], line["column"], line["code"]) == ("3", "NEW-9", "name", "name_required")


def test_an_empty_name_keeps_the_products_name(shop):
    send, catalog = shop
    send("names.csv", ["sku", "name", "price"], [["P-1", "", "9.00"], ["P-2", "Notepad", "3.00"]])
    got = catalog()
    assert (got["p-1"]["name"], got["p-1"]["price_cents"]) == ("Pen", 900)
    assert got["p-2"]["name"] == "Notepad"


def test_active_absent_keeps_the_state_and_makes_new_products_active(shop):
    send, catalog = shop
    send("more.csv", ["sku", "name", "price"], [["P-2", "Pad", "3.50"], ["P-3", "Clip", "0.10"]])
    got = catalog()
    assert (got["p-2"]["active"], got["p-2"]["price_cents"]) == (0, 350)     # still a draft
    assert got["p-3"]["active"] == 1
    assert got["p-1"]["active"] == 1


def test_a_disable_file_sets_only_active(shop):
    send, catalog = shop
    before = catalog()["p-1"]
    send("disable.csv", ["sku", "active"], [["P-1", "false"]])
    after = catalog()["p-1"]
    assert after["active"] == 0 and _without(after, "active") == _without(before, "active")


def test_a_partial_snapshot_still_deactivates_products_it_does_not_list(shop):
    send, catalog = shop
    manifest = send("stock.csv", ["sku", "stock"], [["P-2", "8"]], "--mode", "snapshot")
    got = catalog()
    assert manifest["rows"]["deactivated"] == 1
    assert (got["p-1"]["active"], got["p-1"]["stock"], got["p-2"]["stock"]) == (0, 10, 8)


def test_the_same_stock_values_again_change_nothing(shop):
    send, catalog = shop
    first = send("stock.csv", ["sku", "stock"], [["P-1", "7"]])
    manifest = send("stock-2.csv", ["sku", "stock"], [["P-1", "7"], ["P-2", "4"]])
    assert (manifest["rows"]["updated"], manifest["rows"]["unchanged"]) == (0, 2)
    got = catalog()
    assert got["p-1"]["source_job_id"] == first["job_id"]      # not rewritten


def test_a_full_file_after_a_partial_one_is_compared_whole_again(shop):
    """A partial update stores the hash of what that file set (its column set mixed in), which a
    full file never matches: the next full file is compared in SQL, finds the row equal, and
    stores its own hash, so the one after skips it."""
    send, catalog = shop
    send("stock.csv", ["sku", "stock"], [["P-1", "7"]])
    rows = [list(r) for r in FULL_ROWS]
    rows[0][5] = "7"
    manifest = send("full-2.csv", FULL, rows)
    assert (manifest["rows"]["updated"], manifest["rows"]["unchanged"]) == (0, 2)
    manifest = send("full-3.csv", FULL, [*rows, ["P-4", "Tape", "", "1.00", "EUR", "1", "", "", "", "", "", "", ""]])
    assert (manifest["rows"]["inserted"], manifest["rows"]["updated"], manifest["rows"]["unchanged"]) == (1, 0, 2)
