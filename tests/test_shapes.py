"""Files of shapes that real exports have and that were once refused whole, through ``ingest``
on files written here in each format's documented shape: JSON that wraps its records
(Shopify's Admin API), nested lists expanded to rows, CSV rows shorter or longer than the
header (WooCommerce's batch exporter), title rows above the header, products without SKU, and a
partner's own preset tables (lists, row models, values) or preset file."""

from __future__ import annotations

import gzip
import json

import pytest

from adapters.readers import BLOCK_SIZE
from tests.conftest import products, read_diagnostics, write_csv


def _config(workdir, body: str, name: str = "p.toml") -> str:
    (workdir / name).write_text('[[partners]]\nid = "p"\n' + body)
    return str(workdir / name)


def _ingest(ingest, workdir, path, body: str, expect: int = 0):
    code, manifest = ingest(path, "--partner", "p", "--config", _config(workdir, body))
    assert code == expect, manifest
    return manifest


# -- JSON that wraps its records: Shopify's Admin API --------------------------------------------

def _shopify_products() -> list[dict]:
    """The shape of GET /admin/api/2024-10/products.json: products with variants, images, options."""
    out = []
    for i, sizes in enumerate([["Default Title"], ["S", "M"], ["S", "M", "L"]]):
        out.append({
            "id": 632910392 + i, "title": f"IPod Nano {i}", "body_html": "<p>It's the small iPod.</p>",
            "vendor": "Apple", "product_type": "Cult Products", "handle": f"ipod-nano-{i}",
            "status": "draft" if i == 0 else "active", "tags": "Emotive, Flash Memory",
            "variants": [{"id": 808950810 + 10 * i + j, "product_id": 632910392 + i, "title": size,
                          "price": f"{199 + j}.00", "sku": f"IPOD-{i}-{size}", "position": j + 1,
                          "inventory_quantity": 10 * j, "barcode": "1234_pink" if j else None,
                          "option1": size} for j, size in enumerate(sizes)],
            "options": [{"id": 594680422 + i, "name": "Size", "position": 1, "values": sizes}],
            "images": [{"id": 850703190 + i, "position": 1, "src": f"https://cdn.shopify.com/s/files/ipod-{i}.png"}],
            "image": {"id": 850703190 + i, "position": 1, "src": f"https://cdn.shopify.com/s/files/ipod-{i}.png"},
        })
    return out


@pytest.mark.parametrize("indent", [None, 2], ids=["minified", "pretty"])
def test_shopify_admin_api_products_become_one_row_per_variant(workdir, ingest, indent):
    path = workdir / "products.json"
    path.write_text(json.dumps({"products": _shopify_products()}, indent=indent))

    manifest = _ingest(ingest, workdir, path, 'preset = "shopify"\n')

    stored = products(workdir, "p")
    assert sorted(stored) == ["ipod-0-default title", "ipod-1-m", "ipod-1-s", "ipod-2-l", "ipod-2-m", "ipod-2-s"]
    m = stored["ipod-2-m"]
    assert (m["name"], m["brand"], m["category"], m["price_cents"], m["stock"], m["active"]) == \
        ("IPod Nano 2", "Apple", "Cult Products", 20000, 10, 1)
    assert m["image_url"] == "https://cdn.shopify.com/s/files/ipod-2.png"
    assert m["description"] == "<p>It's the small iPod.</p>"
    assert stored["ipod-0-default title"]["active"] == 0            # status draft
    assert manifest["rows"]["read"] == 6 and manifest["status"] == "succeeded"


def test_one_shopify_product_object_is_read_too(workdir, ingest):
    path = workdir / "product.json"
    path.write_text(json.dumps({"product": _shopify_products()[1]}, indent=2))

    _ingest(ingest, workdir, path, 'preset = "shopify"\n')

    assert sorted(products(workdir, "p")) == ["ipod-1-m", "ipod-1-s"]


def test_a_wrapped_document_without_record_path_names_the_key_to_set(workdir, ingest):
    path = workdir / "export.json"
    path.write_text(json.dumps({"count": 2, "data": {"items": [{"sku": "A"}, {"sku": "B"}]}}, indent=2))

    manifest = _ingest(ingest, workdir, path, "", expect=4)

    assert 'Set record_path = "data/items"' in manifest["message"]
    assert '"data/items" holds 2 objects' in manifest["message"]
    assert read_diagnostics(manifest, workdir)[0]["code"] == "unreadable"


def test_record_path_reads_the_records_where_the_partner_says(workdir, ingest):
    path = workdir / "export.json"
    path.write_text(json.dumps({"count": 2, "data": {"items": [{"sku": "A", "name": "a"}, {"sku": "B", "name": "b"}]}}))

    _ingest(ingest, workdir, path, 'record_path = "data/items"\n')

    assert sorted(products(workdir, "p")) == ["a", "b"]


def test_a_record_path_the_document_lacks_says_what_it_has(workdir, ingest):
    path = workdir / "export.json"
    path.write_text(json.dumps({"items": [{"sku": "A"}]}))

    manifest = _ingest(ingest, workdir, path, 'record_path = "products"\n', expect=4)

    assert manifest["message"] == 'record_path "products" is not in this JSON document; in it, "items" holds 1 object'


def test_json_lines_expand_a_nested_list_in_arrow(workdir, ingest):
    lines = [{"title": "Tee", "vendor": "Acme", "variants": [{"sku": "T-S", "price": 10}, {"sku": "T-M", "price": 11}]},
             {"title": "Cap", "vendor": "Acme", "variants": []},
             {"title": "Mug", "vendor": "Acme", "variants": [{"sku": "M-1", "price": 5.5}]}]
    path = workdir / "feed.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(line) + "\n" for line in lines).encode()))
    body = ('expand = "variants"\nmax_reject_ratio = 0.5\n'
            'columns = { sku = "variants.sku", name = "title", price = "variants.price", brand = "vendor" }\n')

    manifest = _ingest(ingest, workdir, path, body)

    stored = products(workdir, "p")
    assert {k: (v["name"], v["price_cents"], v["brand"]) for k, v in stored.items()} == {
        "t-s": ("Tee", 1000, "Acme"), "t-m": ("Tee", 1100, "Acme"), "m-1": ("Mug", 550, "Acme")}
    # the product without variants is one row, without a SKU: refused, and said so on row 3
    assert [(d["row"], d["code"]) for d in read_diagnostics(manifest, workdir)] == [("3", "missing_value")]


# -- CSV rows shorter or longer than the header: WooCommerce's batch exporter ---------------------

WOO_HEADER = ["ID", "Type", "SKU", "Name", "Published", "Short description", "Description", "In stock?",
              "Stock", "Regular price", "Categories", "Images", "Parent"]
WOO_META = ["Meta: _wpcom_is_markdown", "Meta: _yoast_wpseo_title"]


def test_woocommerce_export_with_batch_ragged_rows_lands_whole(workdir, ingest):
    """The exporter writes 50 rows at a time and adds meta columns as later batches find them:
    early rows have fewer cells than the final header. Products without SKU are keyed id:<ID>,
    as their variations' Parent names them."""
    early = [["10", "variable", "", "Hoodie", "1", "Warm", "A warm hoodie", "1", "", "", "Clothing", "https://s/h.jpg", ""],
             ["11", "variation", "", "Hoodie - Red", "1", "", "", "1", "4", "45", "", "", "id:10"]]
    late = [["12", "simple", "CAP-1", "Cap", "1", "Cap", "", "1", "9", "15", "Accessories", '"https://s/c.jpg,https://s/c2.jpg"',
             "", "1", "Cap | Shop"],
            ["13", "variation", "", "Hoodie - Blue", "1", "", "", "0", "0", "45", "", "", "id:10", "", ""]]
    path = workdir / "wc-product-export-5-12-2026.csv"
    header = ",".join(WOO_HEADER + WOO_META)
    path.write_text(header + "\n" + "".join(",".join(r) + "\n" for r in early + late), encoding="utf-8-sig")

    manifest = _ingest(ingest, workdir, path, 'preset = "woocommerce"\n')

    stored = products(workdir, "p")
    assert sorted(stored) == ["cap-1", "id:10", "id:11", "id:13"]
    assert (stored["id:11"]["name"], stored["id:11"]["price_cents"], stored["id:11"]["category"]) == \
        ("Hoodie - Red", 4500, "Clothing")                  # inherited from its parent id:10
    assert stored["cap-1"]["image_url"] == "https://s/c.jpg"
    assert json.loads(stored["cap-1"]["attributes"])["Meta: _yoast_wpseo_title"] == "Cap | Shop"
    assert manifest["rows"]["read"] == 4 and manifest["status"] == "succeeded"


def test_a_row_with_more_cells_than_the_header_is_refused_on_its_own_line(workdir, ingest):
    rows = [[f"S{i}", f"Item {i}", "1.00"] for i in range(1, 200)]
    rows[149] = ["S150", "Item 150", "2", "50"]                      # an unquoted decimal comma
    path = write_csv(workdir / "prices.csv", ["sku", "name", "price"], rows)

    manifest = _ingest(ingest, workdir, path, "")

    lines = read_diagnostics(manifest, workdir)
    assert [(d["row"], d["sku"], d["code"]) for d in lines] == [("151", "S150", "too_many_cells")]
    assert manifest["status"] == "partial" and manifest["rows"]["rejected"] == 1
    assert len(products(workdir, "p")) == 198 and "s150" not in products(workdir, "p")


def test_rows_keep_their_numbers_when_the_tolerant_reader_takes_over_late(workdir, ingest):
    """pyarrow reads the first blocks; a short row far down hands the rest to the tolerant
    reader, which must go on counting from the same row (quoted newlines included)."""
    rows = [[f"S{i}", f"Line one\nline two of {i}", "1.00", "x" * 80] for i in range(1, 60_000)]    # 6 MB
    rows.append(["LAST", "Last"])                                    # short: padded
    rows.append(["BAD", "Bad", "1", "x", "y"])                         # long: refused
    path = write_csv(workdir / "big.csv", ["sku", "name", "price", "note"], rows)
    assert path.stat().st_size > 1.5 * BLOCK_SIZE

    manifest = _ingest(ingest, workdir, path, "")

    assert [(d["row"], d["sku"]) for d in read_diagnostics(manifest, workdir)] == [("60002", "BAD")]
    stored = products(workdir, "p")
    assert stored["last"]["price_cents"] is None and stored["s59999"]["name"] == "Line one\nline two of 59999"


# -- where the header is -------------------------------------------------------------------------

def test_header_row_skips_a_price_lists_title_rows(workdir, ingest):
    path = workdir / "pricelist.csv"
    path.write_text("Price list, valid from 1 Dec 2026\nAcme Supplies Ltd;;\n\nsku;name;price\nA1;Bolt;0,10\nA2;Nut;0,05\n")

    manifest = _ingest(ingest, workdir, path, 'header_row = 4\ndecimal_separator = ","\ndelimiter = ";"\n')

    assert {k: v["price_cents"] for k, v in products(workdir, "p").items()} == {"a1": 10, "a2": 5}
    assert manifest["rows"]["read"] == 2


def test_header_row_in_an_xlsx_keeps_excel_row_numbers(workdir, ingest):
    import openpyxl
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Acme price list 2026"])
    sheet.append([])
    sheet.append(["Article", "Description", "Price"])
    sheet.append(["A1", "Bolt", 0.1])
    sheet.append([None, "Nut", 0.05])
    path = workdir / "prices.xlsx"
    book.save(path)

    manifest = _ingest(ingest, workdir, path, 'header_row = 3\nmax_reject_ratio = 0.5\n'
                                              'columns = { sku = "Article", name = "Description" }\n')

    assert products(workdir, "p")["a1"]["price_cents"] == 10
    assert [(d["row"], d["code"]) for d in read_diagnostics(manifest, workdir)] == [("5", "missing_value")]


# -- keys without SKU ----------------------------------------------------------------------------

def test_one_column_may_feed_both_sku_and_name(workdir, ingest):
    path = write_csv(workdir / "stock.csv", ["Product", "Qty"], [["Blue Mug", "4"], ["Red Mug", "0"]])

    _ingest(ingest, workdir, path, 'columns = { sku = "Product", name = "Product", stock = "Qty" }\n')

    stored = products(workdir, "p")
    assert {k: (v["sku"], v["name"], v["stock"]) for k, v in stored.items()} == {
        "blue mug": ("Blue Mug", "Blue Mug", 4), "red mug": ("Red Mug", "Red Mug", 0)}


# -- what a preset file says, a partner may say ----------------------------------------------------

def test_a_partner_list_rule_takes_the_first_of_prestashops_image_urls(workdir, ingest):
    header = ["Product ID", "Active (0/1)", "Name *", "Categories (x,y,z...)", "Price tax excluded",
              "Reference #", "Quantity", "Image URLs (x,y,z...)"]
    path = write_csv(workdir / "products_import.csv", header, [
        ["1", "1", "Hummingbird T-shirt", "Men,Clothes", "23.90", "demo_1", "300",
         "https://shop/img/1.jpg,https://shop/img/2.jpg"]], delimiter=";")
    body = ('columns = { sku = "Reference #", name = "Name *", price = "Price tax excluded", stock = "Quantity", '
            'active = "Active (0/1)", image_url = "Image URLs (x,y,z...)", category = "Categories (x,y,z...)" }\n'
            '[partners.lists]\nimage_url = ","\ncategory = ","\n')

    _ingest(ingest, workdir, path, body)

    tee = products(workdir, "p")["demo_1"]
    assert (tee["image_url"], tee["category"], tee["price_cents"], tee["active"]) == \
        ("https://shop/img/1.jpg", "Men", 2390, 1)


VENDURE_HEADER = ["name", "slug", "description", "assets", "facets", "optionGroups", "optionValues", "sku",
                  "price", "taxCategory", "stockOnHand", "variantAssets", "variantFacets"]


def test_a_partner_row_model_names_vendures_variants_from_their_first_row(workdir, ingest):
    """Vendure's import format writes a product's name, slug and description on its first row
    only; its other variants leave them empty."""
    path = write_csv(workdir / "vendure.csv", VENDURE_HEADER, [
        ["Laptop", "laptop", "Now equipped with seventh-generation Intel Core processors", "laptop.jpg",
         "category:electronics|brand:Apple", "screen size|RAM", "13 inch|8GB", "L2201308", "1299.00", "standard", "100", "", ""],
        ["", "", "", "", "", "", "15 inch|8GB", "L2201508", "1399.00", "standard", "100", "", ""],
        ["", "", "", "", "", "", "13 inch|16GB", "L2201316", "2199.00", "standard", "100", "", ""],
        ["Clacky Keyboard", "clacky-keyboard", "Clacks.", "keyboard.jpg", "category:electronics", "", "", "A4TKLA45535",
         "74.89", "standard", "100", "", ""],
    ])
    body = ('columns = { stock = "stockOnHand" }\n'
            '[partners.rows]\nmodel = "group"\ngroup = "slug"\ngroup_continues = true\n'
            'inherit = ["name", "description", "assets"]\nvariant = ["sku"]\n')

    manifest = _ingest(ingest, workdir, path, body)

    stored = products(workdir, "p")
    assert {k: v["name"] for k, v in stored.items()} == {
        "l2201308": "Laptop", "l2201508": "Laptop", "l2201316": "Laptop", "a4tkla45535": "Clacky Keyboard"}
    assert stored["l2201316"]["image_url"] is None and stored["l2201316"]["price_cents"] == 219900
    assert manifest["rows"]["rejected"] == 0


def test_a_partner_preset_file_is_read_relative_to_the_config(workdir, ingest):
    (workdir / "presets").mkdir()
    (workdir / "presets" / "acme.toml").write_text(
        'description = "Acme ERP export"\n[columns]\nsku = ["Art.-Nr."]\nname = ["Bezeichnung"]\nactive = ["Aktiv"]\n'
        '[values.active]\nja = "true"\nnein = "false"\n')
    path = write_csv(workdir / "artikel.csv", ["Art.-Nr.", "Bezeichnung", "Aktiv"], [["1", "Schraube", "ja"], ["2", "Mutter", "nein"]])

    _ingest(ingest, workdir, path, 'preset_file = "presets/acme.toml"\n[partners.values.active]\nNEIN = "false"\n')

    assert {k: v["active"] for k, v in products(workdir, "p").items()} == {"1": 1, "2": 0}


def test_a_partner_row_model_that_cannot_work_is_a_config_error(workdir, cli):
    config = _config(workdir, '[partners.rows]\nmodel = "tree"\n')

    result = cli("config", "check", "--config", config)

    assert result.code == 2
    assert "partners[0]: preset of partner p: rows.model must be one of" in result.err


def test_a_partner_word_meant_as_empty_empties_the_cell(workdir, ingest):
    """A supplier's "on request" in the price column: no price, not an invalid one."""
    path = write_csv(workdir / "prices.csv", ["Artikel", "Bezeichnung", "Preis"],
                     [["4111288", "Pumpe", "494"], ["2164591", "Pumpe XL", "auf Anfrage"]])

    manifest = _ingest(ingest, workdir, path, 'columns = { sku = "Artikel", name = "Bezeichnung", price = "Preis" }\n'
                                              '[partners.values.price]\n"Auf Anfrage" = ""\n')

    assert {k: v["price_cents"] for k, v in products(workdir, "p").items()} == {"4111288": 49400, "2164591": None}
    assert manifest["rows"]["rejected"] == 0


def test_a_utf16_json_document_is_read_by_its_byte_order_mark(workdir, ingest):
    """PowerShell's ``>`` writes UTF-16 LE with a BOM: a saved API page arrives that way."""
    page = {"products": [{"id": 1, "title": "Essence Mascara Lash Princess", "price": 9.99, "sku": "BEA-ESS-ESS-001"}],
            "total": 194, "skip": 0, "limit": 1}
    path = workdir / "products.json"
    path.write_bytes(json.dumps(page, indent=2).encode("utf-16"))          # BOM + UTF-16 LE

    _ingest(ingest, workdir, path, 'record_path = "products"\ncolumns = { name = "title" }\n')

    assert products(workdir, "p")["bea-ess-ess-001"]["price_cents"] == 999


def test_a_price_lists_section_and_total_rows_are_skipped_by_skip_when_empty(workdir, ingest):
    """A 1C stock report: group rows and the grand total carry a quantity but no price."""
    path = write_csv(workdir / "price.csv", ["Товар", "Количество", "Цена"], [
        ["Прайс", "134339", ""],
        ["АСЕР ФАСОВКА", "192", ""],
        ["Напиток Sprint 1,5л", "30", "280"],
        ["Напиток Дюшес 1,5л", "84", "280"],
    ], delimiter=";")
    body = ('currency = "RUB"\ncolumns = { sku = "Товар", name = "Товар", stock = "Количество", price = "Цена" }\n'
            '[partners.rows]\nmodel = "flat"\nskip_when_empty = ["Цена"]\n')

    manifest = _ingest(ingest, workdir, path, body)

    assert sorted(products(workdir, "p")) == ["напиток sprint 1,5л", "напиток дюшес 1,5л"]
    assert manifest["rows"]["skipped"] == 2 and manifest["rows"]["read"] == 2
