"""Real partner exports (Shopify, WooCommerce, Magento, Akeneo, Google) through ``ingest`` with
their presets, plus a Google Merchant Center TSV written to its published spec.

Every expectation is computed here from the file itself, with the standard library's csv/json
modules and each platform's documented row rules written out row by row (the slow, obvious
way), never taken from the pipeline. Then a few rows per file are pinned to literal values a
person reads off the file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import DATA, products, read_diagnostics

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
id = "ake-eur"
preset = "akeneo"
currency = "EUR"
[[partners]]
id = "goo"
preset = "google-retail"
[[partners]]
id = "gmc"
preset = "google-merchant"
"""

SHOPIFY = ["apparel.csv", "home-and-garden.csv", "jewelery.csv", "product_template.csv"]
MAGENTO = ["products.csv", "products_gear_bags.csv", "products_gear_watches.csv",
           "products_gear_fitness_equipment.csv", "products_training_video_download.csv"]


@pytest.fixture
def feeds(corpus, workdir):
    (workdir / "partners.toml").write_text(PARTNERS)
    return corpus / "feeds"


@pytest.fixture
def ingest_as(cli, workdir):
    def run(path: Path, partner: str):
        result = cli("ingest", path, "--partner", partner, "--config", workdir / "partners.toml", "--json")
        return result.code, json.loads(result.out)
    return run


def _records(path, delimiter=","):
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return list(csv.DictReader(fh, delimiter=delimiter))


def _cents(text):
    return round(float(text) * 100) if text and text.strip() else None


def _int(text):
    return int(float(text)) if text and text.strip() else None


def _catalog_view(workdir, partner):
    """sku → (name, price_cents, currency, stock, active): what each row promises."""
    return {r["sku"]: (r["name"], r["price_cents"], r["currency"], r["stock"], r["active"])
            for r in products(workdir, partner).values()}


# -- Shopify ---------------------------------------------------------------------------------------

def _shopify_expected(records):
    """Shopify's documented rules, row by row: a product's first row (by Handle) carries the
    product fields; variant rows inherit them; rows with no variant data are image rows."""
    expected, skipped, head = {}, 0, None
    variant_cols = ["Variant SKU", "Option1 Value", "Option2 Value", "Option3 Value", "Variant Price",
                    "Variant Inventory Qty", "Variant Barcode"]
    for r in records:
        if head is None or r["Handle"] != head["Handle"]:
            head = r
        elif not any(r.get(c, "").strip() for c in variant_cols):
            skipped += 1
            continue
        sku = r["Variant SKU"].strip()
        if not sku:
            options = [r[c].strip() for c in ("Option1 Value", "Option2 Value", "Option3 Value")
                       if r[c].strip() and r[c].strip() != "Default Title"]
            sku = "/".join([r["Handle"].strip(), *options])
        status = (r.get("Status") or head.get("Status") or "").strip().lower()
        if "Status" in r:
            active = int(status == "active")
        else:
            active = int((r["Published"] or head["Published"]).strip().lower() == "true")
        expected[sku] = ((r["Title"] or head["Title"]).strip(), _cents(r["Variant Price"]), "USD",
                         _int(r["Variant Inventory Qty"]), active)
    return expected, skipped


@pytest.mark.parametrize("name", SHOPIFY)
def test_shopify_export_lands_one_row_per_variant(feeds, workdir, ingest_as, name):
    records = _records(feeds / "shopify" / name)
    expected, skipped = _shopify_expected(records)

    code, manifest = ingest_as(feeds / "shopify" / name, "shop")

    assert code == 0 and manifest["status"] == "succeeded", manifest
    assert manifest["rows"]["read"] == len(expected) == len(records) - skipped
    assert manifest["rows"]["skipped"] == skipped
    assert manifest["rows"]["inserted"] == len(expected)
    assert _catalog_view(workdir, "shop") == expected


def test_shopify_variants_without_sku_get_a_key_from_handle_and_options(feeds, workdir, ingest_as):
    ingest_as(feeds / "shopify" / "apparel.csv", "shop")
    catalog = products(workdir, "shop")
    # three sizes of one product, only the first row titled; none has a Variant SKU
    for size in ("Small", "Medium", "Large"):
        row = catalog[f"classic-varsity-top/{size.lower()}"]
        assert (row["sku"], row["name"], row["price_cents"], row["stock"]) == \
            (f"classic-varsity-top/{size}", "Classic Varsity Top", 6000, 1)
        assert row["brand"] == "partners-demo"
    assert catalog["ocean-blue-shirt"]["name"] == "Ocean Blue Shirt"      # "Default Title": the handle


def test_shopify_template_status_decides_active_and_image_rows_are_skipped(feeds, workdir, ingest_as):
    code, manifest = ingest_as(feeds / "shopify" / "product_template.csv", "shop")
    catalog = products(workdir, "shop")
    assert manifest["rows"]["skipped"] == 1                 # example-pants' fourth image
    assert catalog["srt_cot_433"]["name"] == "Example T-Shirt" and catalog["srt_cot_433"]["active"] == 1
    assert catalog["pnt_den_305"]["active"] == 0            # Status "draft"
    assert catalog["hat_gry_275"]["active"] == 0            # Status "archived"
    assert catalog["pnt_den_405"]["price_cents"] == 9500 and catalog["pnt_den_405"]["stock"] == 10
    assert catalog["srt_cot_111"]["category"] == "Apparel & Accessories > Clothing > Clothing Tops > T-Shirts"
    # its barcodes are samples with wrong check digits: dropped with a warning, the variant lands
    warned = {d["sku"] for d in read_diagnostics(manifest, workdir) if d["code"] == "invalid_gtin"}
    assert "SRT_COT_111" in warned and catalog["srt_cot_111"]["gtin"] is None


def test_shopify_jewelery_image_rows_do_not_count_as_rows(feeds, workdir, ingest_as):
    code, manifest = ingest_as(feeds / "shopify" / "jewelery.csv", "shop")
    catalog = products(workdir, "shop")
    assert (manifest["rows"]["read"], manifest["rows"]["skipped"]) == (23, 18)
    assert catalog["leather-anchor/silver"]["price_cents"] == 5500
    assert catalog["leather-anchor/silver"]["name"] == "Anchor Bracelet Mens"
    assert catalog["chain-bracelet/black"]["stock"] == 0


# -- WooCommerce -----------------------------------------------------------------------------------

def _woo_expected(records):
    parents = {r["SKU"].strip(): r for r in records if r["Type"].strip() == "variable"}
    parents.update({f"id:{r['ID'].strip()}": r for r in records if r["Type"].strip() == "variable"})
    expected = {}
    for r in records:
        parent = parents.get(r["Parent"].strip(), {})
        category = r["Categories"].strip() or parent.get("Categories", "").strip() or None
        stock = _int(r["Stock"])
        if stock is None and r["In stock?"].strip() == "0":
            stock = 0
        expected[r["SKU"].strip()] = ((r["Name"].strip(), _cents(r["Regular price"]), "USD", stock,
                                       int(r["Published"].strip() == "1")), category)
    return expected


@pytest.mark.parametrize("folder", ["woocommerce", "classic-commerce"])
def test_woocommerce_export_lands_every_product_and_variation(feeds, workdir, ingest_as, folder):
    path = feeds / folder / "sample_products.csv"
    assert path.read_bytes().startswith(b"\xef\xbb\xbf") or folder == "classic-commerce"
    records = _records(path)
    expected = _woo_expected(records)

    code, manifest = ingest_as(path, "woo")

    assert code == 0 and manifest["status"] == "succeeded"
    assert manifest["rows"]["read"] == len(records) and manifest["rows"]["inserted"] == len(expected)
    catalog = products(workdir, "woo")
    assert _catalog_view(workdir, "woo") == {k: v for k, (v, _) in expected.items()}
    assert {r["sku"]: r["category"] for r in catalog.values()} == {k: c for k, (_, c) in expected.items()}


def test_woocommerce_variation_inherits_its_parents_categories_and_keeps_its_own_price(feeds, workdir, ingest_as):
    ingest_as(feeds / "woocommerce" / "sample_products.csv", "woo")
    row = products(workdir, "woo")["woo-hoodie-red"]
    assert (row["name"], row["price_cents"], row["category"]) == ("Hoodie - Red, No", 4500, "Clothing > Hoodies")
    attributes = json.loads(row["attributes"])
    assert attributes["Sale price"] == "42" and attributes["Parent"] == "woo-hoodie"
    # Images is a list of URLs: the first is the image
    beanie = products(workdir, "woo")["woo-beanie"]
    assert beanie["image_url"].startswith("https://") and "," not in beanie["image_url"]


# -- Magento ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MAGENTO)
def test_magento_export_lands_every_sku(feeds, workdir, ingest_as, name):
    path = feeds / "magento" / name
    records = _records(path)
    category = "categories" if "categories" in records[0] else "category"
    expected = {r["sku"].strip(): (r["name"].strip(), _cents(r["price"]), "USD", _int(r.get("qty")),
                                   int(r.get("product_online", "1").strip() != "2"))
                for r in records}

    code, manifest = ingest_as(path, "mag")

    assert code == 0 and manifest["status"] == "succeeded"
    assert manifest["rows"]["read"] == len(records) and manifest["rows"]["inserted"] == len(expected)
    assert _catalog_view(workdir, "mag") == expected
    stored = {r["sku"]: r["category"] for r in products(workdir, "mag").values()}
    assert stored == {r["sku"].strip(): r[category].strip() for r in records}     # multi-line cells intact


def test_magento_additional_attributes_become_attributes(feeds, workdir, ingest_as):
    ingest_as(feeds / "magento" / "products.csv", "mag")
    row = products(workdir, "mag")["mh01-xs-black"]
    attributes = json.loads(row["attributes"])
    assert (attributes["size"], attributes["color"], attributes["has_options"]) == ("XS", "Black", "0")
    assert "additional_attributes" not in attributes
    assert (row["name"], row["price_cents"], row["stock"]) == ("Chaz Kangeroo Hoodie-XS-Black", 5200, 100)


# -- Akeneo ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, key", [("products.csv", "sku"), ("product_models.csv", "code")])
def test_akeneo_export_lands_every_named_row_with_the_partners_currency(feeds, workdir, ingest_as, name, key):
    path = feeds / "akeneo" / name
    records = _records(path, ";")
    named = [r for r in records if r["name"].strip()]
    expected = {r[key].strip(): (r["name"].strip(), _cents(r["price-USD"]), "USD", None,
                                 int(r.get("enabled", "1") == "1")) for r in named}

    code, manifest = ingest_as(path, "ake")

    assert code == 0 and manifest["status"] == "partial"
    assert (manifest["rows"]["read"], manifest["rows"]["rejected"]) == (len(records), len(records) - len(named))
    # rows without a name are new products here (a first import): refused by the merge
    assert manifest["errors"] == {"name_required": len(records) - len(named)}
    assert _catalog_view(workdir, "ake") == expected


def test_akeneo_price_column_follows_the_partners_currency(feeds, workdir, ingest_as):
    ingest_as(feeds / "akeneo" / "products.csv", "ake")
    ingest_as(feeds / "akeneo" / "products.csv", "ake-eur")
    usd, eur = products(workdir, "ake")["aknstk"], products(workdir, "ake-eur")["aknstk"]
    assert (usd["price_cents"], usd["currency"]) == (300, "USD")
    assert (eur["price_cents"], eur["currency"]) == (200, "EUR")      # price-EUR of the same row
    assert usd["name"] == "Akeneo Sticker"


def test_akeneo_dummy_barcodes_are_warnings_not_rejections(feeds, workdir, ingest_as):
    code, manifest = ingest_as(feeds / "akeneo" / "products.csv", "ake")
    warned = [d for d in read_diagnostics(manifest, workdir) if d["severity"] == "warning"]
    assert manifest["rows"]["warnings"] == len(warned) > 0
    assert {d["column"] for d in warned} == {"ean"}
    assert all(products(workdir, "ake")[d["sku"].lower()]["gtin"] is None for d in warned)


# -- Google ----------------------------------------------------------------------------------------

def test_google_retail_ndjson_maps_nested_paths(feeds, workdir, ingest_as):
    path = feeds / "google-cloud-retail" / "products.json"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    code, manifest = ingest_as(path, "goo")

    assert code == 0 and manifest["status"] == "succeeded" and manifest["rows"]["read"] == len(records)
    catalog = products(workdir, "goo")
    assert len(catalog) == len(records)
    for r in records:
        row = catalog[r["id"].lower()]
        stock = r.get("availableQuantity", 0 if r["availability"] == "OUT_OF_STOCK" else None)
        assert (row["name"], row["price_cents"], row["currency"], row["stock"], row["active"]) == \
            (r["title"], _cents(r["priceInfo"]["price"]), r["priceInfo"]["currencyCode"], stock, 1)
        assert row["brand"] == (r["brands"][0] if r.get("brands") else None)
        assert row["category"] == r["categories"][0]
        assert row["image_url"] == r["images"][0]["uri"]


def test_google_retail_invalid_availability_is_named_and_rejects_the_small_file(feeds, workdir, ingest_as):
    code, manifest = ingest_as(feeds / "google-cloud-retail" / "products_some_invalid.json", "goo")
    assert code == 4 and manifest["status"] == "rejected"
    [line] = [d for d in read_diagnostics(manifest, workdir) if d["code"] == "invalid_availability"]
    assert (line["row"], line["sku"], line["column"], line["value"]) == \
        ("1", "GGCOGOAC101259", "availability", "INVALID_VALUE")
    assert products(workdir, "goo") == {}


def test_google_merchant_center_tsv_lands_with_prices_and_availability(workdir, ingest_as):
    (workdir / "partners.toml").write_text(PARTNERS)
    path = DATA / "merchant_center.tsv"
    records = _records(path, "\t")

    code, manifest = ingest_as(path, "gmc")

    assert code == 0 and manifest["status"] == "succeeded" and manifest["rows"]["read"] == len(records)
    catalog = products(workdir, "gmc")
    for r in records:
        amount, currency = r["price"].split()
        row = catalog[r["id"].lower()]
        stock = 0 if r["availability"] == "out of stock" else None
        assert (row["name"], row["price_cents"], row["currency"], row["stock"]) == \
            (r["title"], _cents(amount), currency, stock)
        assert (row["url"], row["image_url"], row["brand"]) == (r["link"], r["image_link"], r["brand"])
        assert json.loads(row["attributes"])["mpn"] == r["mpn"]
    assert catalog["gmc-1001"]["gtin"] == "4006381333931"
    assert json.loads(catalog["gmc-1002"]["attributes"])["sale_price"] == "12.50 EUR"
