"""A platform's export sent by a partner set up without its preset: the manifest and the log say
which preset to set, or, with ``preset = "auto"``, the file is read with the preset its header
shows (recorded in the manifest). Files written in the test in each platform's documented
export format."""

from __future__ import annotations

import pytest

from adapters.platforms import detect_preset
from config.model import PartnerConfig
from tests.conftest import products, write_csv

WOO_HEADER = ["ID", "Type", "SKU", "Name", "Published", "Is featured?", "Visibility in catalog", "Short description",
              "Description", "In stock?", "Stock", "Regular price", "Sale price", "Categories", "Images", "Parent"]
WOO_ROWS = [["11", "simple", "WOO-1", "Hoodie", "1", "0", "visible", "", "Warm", "1", "12", "45", "", "Clothing",
             "https://shop.example/h.jpg", ""]]
MAGENTO_HEADER = ["sku", "store_view_code", "attribute_set_code", "product_type", "categories", "name", "price",
                  "qty", "product_online", "url_key", "additional_attributes"]
MAGENTO_ROWS = [["24-MB01", "", "Bag", "simple", "Gear/Bags", "Joust Duffle Bag", "34.00", "100", "1",
                 "joust-duffle-bag", "color=Black"]]
SHOPIFY_HEADER = ["Handle", "Title", "Body (HTML)", "Vendor", "Variant SKU", "Variant Price", "Variant Inventory Qty"]


@pytest.mark.parametrize("header, preset", [
    (WOO_HEADER, "woocommerce"), (MAGENTO_HEADER, "magento"), (SHOPIFY_HEADER, "shopify"),
    (["sku", "name", "price", "stock", "categories", "images"], None),        # generic: no guess
    (["id", "title", "price"], None),                                         # too few names of anyone's
])
def test_a_header_tells_the_platform_only_when_it_is_clear(header, preset):
    assert detect_preset(header, PartnerConfig(id="p")) == preset


def _config(workdir, preset: str | None) -> str:
    path = workdir / "daemon.toml"
    text = '[daemon]\nstate_dir = "var"\n\n[[partners]]\nid = "default"\nmax_reject_ratio = 1.0\n'
    if preset:
        text += f'preset = "{preset}"\n'
    path.write_text(text)
    return str(path)


def test_a_woocommerce_export_without_a_preset_says_which_to_set(workdir, ingest):
    path = write_csv(workdir / "wc-product-export.csv", WOO_HEADER, WOO_ROWS)
    code, manifest = ingest(path, "--config", _config(workdir, None))
    assert 'preset = "woocommerce"' in manifest["hint"]
    assert "preset" not in manifest
    assert products(workdir)["woo-1"]["price_cents"] is None        # read by names alone, as the hint says


def test_a_shopify_export_sent_to_a_woocommerce_partner_says_whose_export_it_looks_like(workdir, ingest):
    path = write_csv(workdir / "export.csv", SHOPIFY_HEADER, [["hat", "Hat", "", "Acme", "HAT-1", "9.99", "3"]])
    code, manifest = ingest(path, "--config", _config(workdir, "woocommerce"))
    assert code == 4 and manifest["errors"] == {"missing_column": 1}
    assert manifest["hint"].startswith("this file looks like an export of shopify, and partner default has preset")


@pytest.mark.parametrize("header, rows, key, expected", [
    (WOO_HEADER, WOO_ROWS, "woo-1", ("woocommerce", 4500, 12)),
    (MAGENTO_HEADER, MAGENTO_ROWS, "24-mb01", ("magento", 3400, 100)),
])
def test_preset_auto_reads_each_file_as_the_platform_its_header_shows(workdir, ingest, header, rows, key, expected):
    path = write_csv(workdir / "export.csv", header, rows)
    code, manifest = ingest(path, "--config", _config(workdir, "auto"))
    got = products(workdir)[key]
    assert (manifest["preset"], got["price_cents"], got["stock"]) == expected
    assert "hint" not in manifest


def test_preset_auto_with_a_plain_file_reads_canonical_names(workdir, ingest):
    path = write_csv(workdir / "plain.csv", ["sku", "name", "price"], [["A-1", "Pen", "1.00"]])
    code, manifest = ingest(path, "--config", _config(workdir, "auto"))
    assert manifest["status"] == "succeeded" and manifest["preset"] is None
    assert products(workdir)["a-1"]["price_cents"] == 100


# Google Merchant Center's product feed as its specification writes it: RSS 2.0 with the g:
# namespace, and the Atom 1.0 form of the same
GOOGLE_RSS = """<?xml version="1.0"?>
<rss xmlns:g="http://base.google.com/ns/1.0" version="2.0">
<channel>
<title>Example shop</title>
<link>https://shop.example</link>
<description>Products</description>
<item>
<g:id>TV_123456</g:id>
<g:title>LG 22LB4510 - 22" LED TV - 1080p (FullHD)</g:title>
<g:description>Attractively styled and boasting stunning picture quality</g:description>
<g:link>https://shop.example/tv/123456</g:link>
<g:image_link>https://shop.example/image1.jpg</g:image_link>
<g:condition>new</g:condition>
<g:availability>in stock</g:availability>
<g:price>159.00 USD</g:price>
<g:brand>LG</g:brand>
<g:gtin>71919219405200</g:gtin>
</item>
</channel>
</rss>
"""
GOOGLE_ATOM = """<?xml version="1.0"?>
<feed xmlns="http://www.w3.org/2005/Atom" xmlns:g="http://base.google.com/ns/1.0">
<title>Example shop</title>
<entry>
<g:id>DB_1</g:id>
<g:title>Dog Bowl In Blue</g:title>
<g:description>Solid plastic Dog Bowl in marine blue color</g:description>
<g:link>https://shop.example/bowls/db-1.html</g:link>
<g:availability>in stock</g:availability>
<g:price>9.99 GBP</g:price>
<g:brand>Example</g:brand>
</entry>
</feed>
"""


@pytest.mark.parametrize("name, text, key, expected", [
    ("feed.xml", GOOGLE_RSS, "tv_123456", (15900, "USD")),
    ("atom.xml", GOOGLE_ATOM, "db_1", (999, "GBP")),
])
def test_preset_auto_finds_the_records_of_a_google_merchant_feed_and_reads_it_as_one(workdir, ingest, name,
                                                                                      text, key, expected):
    """An XML feed has no header to tell its platform by until its records are found: with
    ``auto`` they are looked for where the presets' feeds keep them (it was refused with
    "record_path is not set")."""
    (workdir / name).write_text(text)
    code, manifest = ingest(workdir / name, "--config", _config(workdir, "auto"))
    got = products(workdir)[key]
    assert (code, manifest["preset"], got["price_cents"], got["currency"]) == (0, "google-merchant", *expected)


def test_preset_auto_with_an_xml_feed_of_no_platform_still_says_where_its_records_are(workdir, ingest):
    (workdir / "feed.xml").write_text("<products><product><sku>A</sku><name>x</name></product>"
                                      "<product><sku>B</sku><name>y</name></product></products>")
    code, manifest = ingest(workdir / "feed.xml", "--config", _config(workdir, "auto"))
    assert code == 4 and 'set record_path = "products/product"' in manifest["message"]


def test_shopifys_2025_template_columns_land_with_the_shopify_preset(workdir, ingest):
    """Shopify's current product CSV template names columns SKU, Price, Inventory quantity,
    Barcode (the admin export still writes Variant SKU, Variant Price…): both are read."""
    path = write_csv(workdir / "product_template.csv",
                     ["Title", "URL handle", "SKU", "Price", "Inventory quantity", "Barcode", "Status"],
                     [["The Band T-Shirt", "the-band-t-shirt", "TheBandTShirt-SG", "19.99", "47", "'4006381333931",
                       "active"],
                      ["", "the-band-t-shirt", "TheBandTShirt-SA", "21.99", "42", "", ""]])     # a variant row
    code, manifest = ingest(path, "--config", _config(workdir, "shopify"))
    got = products(workdir)
    assert (got["thebandtshirt-sg"]["price_cents"], got["thebandtshirt-sg"]["stock"], got["thebandtshirt-sg"]["gtin"],
            got["thebandtshirt-sg"]["active"]) == (1999, 47, "4006381333931", 1)
    # grouped by "URL handle": the variant inherits the product's title and status
    assert (got["thebandtshirt-sa"]["name"], got["thebandtshirt-sa"]["price_cents"],
            got["thebandtshirt-sa"]["active"]) == ("The Band T-Shirt", 2199, 1)
