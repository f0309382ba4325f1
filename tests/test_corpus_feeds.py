"""Real partner exports (Shopify, WooCommerce, Magento, Akeneo, Google) through ``ingest`` with
their presets. Every expectation is computed here from the file itself with the standard
library's csv/json modules, not taken from the pipeline."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import products, read_diagnostics

PARTNERS = """
[[partners]]
id = "shop"
preset = "shopify"
[[partners]]
id = "woo"
preset = "woocommerce"
[[partners]]
id = "mag"
preset = "magento"
[[partners]]
id = "ake"
preset = "akeneo"
[[partners]]
id = "goo"
preset = "google-retail"
"""


@pytest.fixture
def feeds(corpus, workdir):
    (workdir / "partners.toml").write_text(PARTNERS)
    return corpus / "feeds"


def _ingest(cli, workdir, path, partner):
    result = cli("ingest", path, "--partner", partner, "--config", workdir / "partners.toml", "--json")
    return result.code, json.loads(result.out)


def _records(path, delimiter=","):
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return list(csv.DictReader(fh, delimiter=delimiter))


def _gs1_ok(code: str) -> bool:
    digits = code.replace(" ", "").replace("-", "")
    if not digits.isdigit() or len(digits) not in (8, 12, 13, 14):
        return False
    body, check = digits[:-1], int(digits[-1])
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10 == check


def test_akeneo_export_lands_with_dummy_barcodes_as_warnings(feeds, workdir, cli):
    path = feeds / "akeneo" / "products.csv"
    records = _records(path, ";")
    nameless = [r for r in records if not (r["name"] or "").strip()]
    bad_ean = [r for r in records if (r["ean"] or "").strip() and not _gs1_ok(r["ean"].strip())]

    code, manifest = _ingest(cli, workdir, path, "ake")

    assert code == 0 and manifest["status"] == "partial"
    assert manifest["rows"]["read"] == len(records)
    assert manifest["rows"]["rejected"] == len(nameless)
    assert manifest["errors"] == {"missing_value": len(nameless)}
    assert manifest["rows"]["warnings"] == len(bad_ean)
    warned = {d["sku"] for d in read_diagnostics(manifest, workdir) if d["severity"] == "warning"}
    assert warned == {r["sku"] for r in bad_ean}
    catalog = products(workdir, "ake")
    assert len(catalog) == len(records) - len(nameless)
    for r in bad_ean:
        if r in nameless:
            continue
        assert catalog[r["sku"].lower()]["gtin"] is None


def test_woocommerce_export_with_bom_maps_sku_name_and_regular_price(feeds, workdir, cli):
    path = feeds / "woocommerce" / "sample_products.csv"
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    records = _records(path)

    code, manifest = _ingest(cli, workdir, path, "woo")

    assert code == 0 and manifest["rows"]["read"] == len(records)
    catalog = products(workdir, "woo")
    for r in records:
        row = catalog[r["SKU"].strip().lower()]
        assert row["name"] == r["Name"].strip()
        if r["Regular price"].strip():
            assert row["price_cents"] == round(float(r["Regular price"]) * 100)
        assert json.loads(row["attributes"])["ID"] == r["ID"]      # unmapped columns are kept


def test_magento_catalog_upserts_every_distinct_sku(feeds, workdir, cli):
    path = feeds / "magento" / "products.csv"
    records = _records(path)
    code, manifest = _ingest(cli, workdir, path, "mag")
    assert code == 0
    distinct = {r["sku"].strip().lower() for r in records}
    assert manifest["rows"]["inserted"] == len(distinct)
    assert manifest["rows"]["superseded"] == len(records) - len(distinct)
    assert set(products(workdir, "mag")) == distinct


def test_google_retail_ndjson_maps_nested_price_and_currency(feeds, workdir, cli):
    path = feeds / "google-cloud-retail" / "products.json"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    code, manifest = _ingest(cli, workdir, path, "goo")
    assert code == 0 and manifest["format"] == "json" and manifest["rows"]["read"] == len(records)
    catalog = products(workdir, "goo")
    for r in records:
        row = catalog[r["id"].lower()]
        assert row["name"] == r["title"]
        assert row["price_cents"] == round(float(r["priceInfo"]["price"]) * 100)
        assert row["currency"] == r["priceInfo"]["currencyCode"]
        if "availableQuantity" in r:
            assert row["stock"] == r["availableQuantity"]


def test_shopify_template_variant_rows_without_title_are_named_in_diagnostics(feeds, workdir, cli):
    """Shopify spreads one product over several rows (variants and images without a Title);
    each such row is reported with its own row number."""
    path = feeds / "shopify" / "product_template.csv"
    records = _records(path)
    untitled = [i + 2 for i, r in enumerate(records) if not r["Title"].strip()]

    code, manifest = _ingest(cli, workdir, path, "shop")

    lines = read_diagnostics(manifest, workdir)
    assert sorted(int(d["row"]) for d in lines if d["column"] == "Title") == untitled
    assert len(untitled) > 0.05 * len(records)          # far more than max_reject_ratio
    assert code == 4 and manifest["status"] == "rejected"
    assert products(workdir, "shop") == {}
