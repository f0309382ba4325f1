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
