"""Presets and row models on small files written here: each rule of a platform, alone, through
``ingest``; and the shapers across block boundaries, where a product's rows are split between
two batches."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from adapters.mapping import key_value_members
from adapters.presets import PRESETS
from adapters.readers import Block
from adapters.rows import GroupShaper, ParentShaper
from tests.conftest import products, read_diagnostics, write_csv


def _partner(workdir, **keys) -> str:
    body = "\n".join(f"{k} = {v if isinstance(v, str) and v.startswith('{') else json.dumps(v)}"
                     for k, v in keys.items())
    (workdir / "p.toml").write_text(f'[[partners]]\nid = "p"\nmax_reject_ratio = 1.0\n{body}\n')
    return str(workdir / "p.toml")


def _ingest(ingest, workdir, path, **keys):
    return ingest(path, "--partner", "p", "--config", _partner(workdir, **keys))


def test_every_preset_is_accepted_by_config_check(workdir, cli):
    for name in PRESETS:
        result = cli("config", "check", "--config", _partner(workdir, preset=name))
        assert result.code == 0, (name, result.err)


def test_unknown_preset_is_a_configuration_error_naming_the_known_ones(workdir, cli):
    result = cli("config", "check", "--config", _partner(workdir, preset="oscommerce"))
    assert result.code == 2 and "unknown preset 'oscommerce'" in result.err and "shopify" in result.err


# -- Shopify: groups --------------------------------------------------------------------------------

SHOPIFY_HEADER = ["Handle", "Title", "Vendor", "Published", "Option1 Name", "Option1 Value",
                  "Variant SKU", "Variant Price", "Image Src"]


def test_partner_columns_compose_with_the_preset(workdir, ingest):
    path = write_csv(workdir / "s.csv", SHOPIFY_HEADER + ["Our Code"], [
        ["tee", "Tee", "Acme", "true", "Size", "S", "ignored", "10", "https://i/1.jpg", "T-S"],
        ["tee", "", "", "", "", "M", "ignored-too", "11", "", "T-M"],
    ])
    code, manifest = _ingest(ingest, workdir, path, preset="shopify", columns='{ sku = "Our Code" }')
    catalog = products(workdir, "p")
    assert set(catalog) == {"t-s", "t-m"}
    assert catalog["t-m"]["name"] == "Tee" and catalog["t-m"]["price_cents"] == 1100     # the rest: preset


def test_shopify_variants_inherit_across_block_boundaries():
    shaper = GroupShaper(PRESETS["shopify"].rows)
    names = ["Handle", "Title", "Vendor", "Option1 Value", "Variant SKU", "Variant Price", "Image Src"]

    def block(rows, first):
        return Block(pa.RecordBatch.from_arrays([pa.array(c, pa.string()) for c in zip(*rows)], names=names), first)

    one = shaper.shape(block([["a", "Alpha", "V", "S", None, "1", "img-a"],
                              ["b", "Beta", None, "S", "B-S", "2", "img-b"]], 2))
    two = shaper.shape(block([["b", None, None, "M", "B-M", "3", None],       # continues product b
                              ["b", None, None, None, None, None, "img-b2"],  # an image row
                              ["c", "Gamma", "W", "Default Title", None, "4", None]], 4))

    assert one.batch.column("Variant SKU").to_pylist() == ["a/S", "B-S"]
    assert two.batch.column("Title").to_pylist() == ["Beta", "Gamma"]
    assert two.batch.column("Image Src").to_pylist() == ["img-b", None]
    assert two.batch.column("Variant SKU").to_pylist() == ["B-M", "c"]
    assert two.row_numbers().to_pylist() == [4, 6]                 # the image row (5) is gone
    assert shaper.skipped == 1


def test_shopify_variant_without_a_product_row_is_rejected_not_guessed(workdir, ingest):
    path = write_csv(workdir / "s.csv", SHOPIFY_HEADER, [
        ["a", "Alpha", "V", "true", "Size", "S", "A-S", "1", ""],
        ["", "", "", "", "", "M", "X-M", "2", ""],          # no Handle: belongs to nothing
    ])
    code, manifest = _ingest(ingest, workdir, path, preset="shopify")
    [line] = read_diagnostics(manifest, workdir)
    assert (line["row"], line["sku"], line["column"]) == ("3", "X-M", "Title")
    assert set(products(workdir, "p")) == {"a-s"}


def test_shopify_published_false_without_status_is_inactive(workdir, ingest):
    path = write_csv(workdir / "s.csv", SHOPIFY_HEADER, [
        ["a", "Alpha", "V", "false", "Size", "S", "A-S", "1", ""], ["a", "", "", "", "", "M", "A-M", "1", ""],
    ])
    _ingest(ingest, workdir, path, preset="shopify")
    assert {r["active"] for r in products(workdir, "p").values()} == {0}


# -- WooCommerce: parents ----------------------------------------------------------------------------

WOO_HEADER = ["ID", "Type", "SKU", "Name", "Published", "In stock?", "Stock", "Regular price",
              "Categories", "Images", "Parent"]


def test_woocommerce_rules_private_out_of_stock_and_parent_by_id(workdir, ingest):
    path = write_csv(workdir / "w.csv", WOO_HEADER, [
        ["10", "variable", "tee", "Tee", "1", "1", "", "", "Shirts", "https://i/a.jpg, https://i/b.jpg", ""],
        ["11", "variation", "tee-s", "Tee S", "1", "0", "", "9", "", "", "id:10"],
        ["12", "simple", "cap", "Cap", "-1", "1", "7", "5", "Hats", "", ""],
    ])
    code, manifest = _ingest(ingest, workdir, path, preset="woocommerce")
    catalog = products(workdir, "p")
    assert (catalog["tee-s"]["category"], catalog["tee-s"]["image_url"], catalog["tee-s"]["stock"]) == \
        ("Shirts", "https://i/a.jpg", 0)                   # inherited by id:, out of stock without Stock
    assert catalog["tee"]["image_url"] == "https://i/a.jpg"
    assert (catalog["cap"]["active"], catalog["cap"]["stock"]) == (0, 7)     # private, with a quantity


def test_parent_shaper_inherits_from_the_closest_definition_above_else_the_first_below():
    shaper = ParentShaper(PRESETS["woocommerce"].rows)
    names = ["ID", "Type", "SKU", "Parent", "Categories"]

    def block(rows):
        return Block(pa.RecordBatch.from_arrays([pa.array(c, pa.string()) for c in zip(*rows)], names=names), 2)

    first = shaper.shape(block([["1", "variation", "v-early", "p", None],         # parent below: the first one
                                ["2", "variable", "p", None, "Old"]]))
    second = shaper.shape(block([["3", "variable", "p", None, "New"],
                                 ["4", "variation", "v-late", "p", None],
                                 ["5", "variation", "v-own", "p", "Own"]]))
    assert first.batch.column("Categories").to_pylist() == ["Old", "Old"]
    assert second.batch.column("Categories").to_pylist() == ["New", "New", "Own"]


# -- Magento: key=value attributes ------------------------------------------------------------------

def test_key_value_cells_become_json_members_with_continued_values():
    members = key_value_members(pa.array(['size=XS,color=Black', None, 'material=Wool,Cotton,fit="slim"', '']))
    objects = [json.loads("{" + m.rstrip(",") + "}") if m else {} for m in members.to_pylist()]
    assert objects == [{"size": "XS", "color": "Black"}, {}, {"material": "Wool,Cotton", "fit": "slim"}, {}]


def test_magento_disabled_product_is_inactive_and_attributes_merge(workdir, ingest):
    path = write_csv(workdir / "m.csv", ["sku", "name", "price", "qty", "product_online", "weight",
                                         "additional_attributes"], [
        ["M-1", "Mug", "12", "100.0000", "1", "1", "color=Red,size=L"],
        ["M-2", "Cup", "8", "0", "2", "", ""],
    ])
    _ingest(ingest, workdir, path, preset="magento")
    catalog = products(workdir, "p")
    assert json.loads(catalog["m-1"]["attributes"]) == {"weight": "1", "color": "Red", "size": "L"}
    assert (catalog["m-1"]["stock"], catalog["m-2"]["active"], catalog["m-2"]["attributes"]) == (100, 0, None)


# -- Akeneo: locale, channel, currency --------------------------------------------------------------

def test_akeneo_columns_follow_the_partners_locale_and_channel(workdir, ingest):
    path = write_csv(workdir / "a.csv", ["sku", "enabled", "name-en_US", "name-fr_FR", "description-fr_FR-print",
                                         "description-fr_FR-ecommerce", "price-EUR", "price-USD"],
                     [["A-1", "0", "Shirt", "Chemise", "imprimé", "en ligne", "10.50", "12.00"]], delimiter=";")
    _ingest(ingest, workdir, path, preset="akeneo", locale="fr_FR", channel="print", currency="EUR")
    row = products(workdir, "p")["a-1"]
    assert (row["name"], row["description"], row["price_cents"], row["currency"], row["active"]) == \
        ("Chemise", "imprimé", 1050, "EUR", 0)
    assert json.loads(row["attributes"])["name-en_US"] == "Shirt"


# -- Google: paths into nested records ---------------------------------------------------------------

@pytest.mark.parametrize("layout", ["ndjson", "array"])
def test_paths_into_lists_are_null_where_the_list_is_short(workdir, ingest, layout):
    records = [
        {"id": "G-1", "title": "Pen", "brands": ["Acme", "Other"], "categories": ["Office"],
         "priceInfo": {"price": "1.5", "currencyCode": "EUR"}, "images": [{"uri": "https://i/1"}]},
        {"id": "G-2", "title": "Cap", "brands": [], "categories": ["Apparel"],
         "priceInfo": {"price": "3", "currencyCode": "USD"}, "availability": "OUT_OF_STOCK"},
    ]
    text = ("\n".join(json.dumps(r) for r in records) if layout == "ndjson" else json.dumps(records)) + "\n"
    (workdir / "g.json").write_text(text)

    code, manifest = _ingest(ingest, workdir, workdir / "g.json", preset="google-retail")

    assert code == 0, manifest
    catalog = products(workdir, "p")
    assert (catalog["g-1"]["brand"], catalog["g-1"]["image_url"], catalog["g-1"]["currency"]) == \
        ("Acme", "https://i/1", "EUR")
    assert (catalog["g-2"]["brand"], catalog["g-2"]["image_url"], catalog["g-2"]["stock"]) == (None, None, 0)
    assert "brands[0]" not in json.loads(catalog["g-1"]["attributes"])        # not kept twice


def test_a_path_may_name_any_position_of_a_list(workdir, ingest):
    records = [{"id": "G-1", "title": "Pen", "images": [{"uri": "https://i/front"}, {"uri": "https://i/back"}]},
               {"id": "G-2", "title": "Cap", "images": [{"uri": "https://i/only"}]}]
    (workdir / "g.ndjson").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    _ingest(ingest, workdir, workdir / "g.ndjson",
            columns='{ sku = "id", name = "title", image_url = "images[1].uri" }')
    catalog = products(workdir, "p")
    assert (catalog["g-1"]["image_url"], catalog["g-2"]["image_url"]) == ("https://i/back", None)


# -- contract ----------------------------------------------------------------------------------------

def test_contract_shows_the_effective_mapping(workdir, cli):
    result = cli("contract", "--partner", "p", "--config",
                 _partner(workdir, preset="akeneo", locale="de_DE", currency="EUR", columns='{ brand = "marke" }'))
    assert result.code == 0
    contract = result.json()
    mapping = contract["x-mapping"]
    assert mapping["preset"] == "akeneo" and mapping["delimiter"] == ";"
    assert mapping["columns"]["name"][:2] == ["name-de_DE", "name"]
    assert mapping["columns"]["price"][0] == "price-EUR"
    assert mapping["columns"]["brand"] == ["marke"] and mapping["overrides"] == {"brand": "marke"}
    assert contract["required"] == ["sku"]           # name-de_DE: only to create products
