"""Row models on files written here in each platform's documented export format, through
``ingest``: Magento's store-view rows never replace the product's global row; WooCommerce
variations inherit from their parent wherever it is in the file (exports sorted newest first
list variations before it), an orphan is landed with a warning that says what it missed, and
where the blocks of a file end changes none of it."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from adapters.presets import PRESETS, ROW_MODELS, RowModel, _load
from adapters.readers import BLOCK_SIZE, Block, ReadOptions, read_blocks
from adapters.rows import SHAPERS, ParentShaper, Shaper, shaper_for
from tests.conftest import products, read_diagnostics, write_csv


def _partner(workdir, preset: str) -> str:
    (workdir / "p.toml").write_text(f'[[partners]]\nid = "p"\npreset = "{preset}"\nmax_reject_ratio = 1.0\n')
    return str(workdir / "p.toml")


def _ingest(ingest, workdir, path, preset: str):
    code, manifest = ingest(path, "--partner", "p", "--config", _partner(workdir, preset))
    assert code == 0, manifest
    return manifest


# -- Magento: store-view rows -----------------------------------------------------------------------

MAGENTO_HEADER = ["sku", "store_view_code", "attribute_set_code", "product_type", "categories",
                  "product_websites", "name", "description", "product_online", "price", "url_key",
                  "additional_attributes", "qty"]


def test_magento_store_view_rows_never_replace_the_global_product(workdir, ingest):
    path = write_csv(workdir / "catalog_product.csv", MAGENTO_HEADER, [
        ["MH01", "", "Top", "simple", "Default Category/Men/Hoodies", "base", "Chaz Hoodie", "Warm.", "1",
         "52.0000", "chaz-hoodie", "color=Black,size=XS", "100.0000"],
        ["MH01", "french", "Top", "simple", "", "", "Sweat Chaz", "Chaud.", "", "", "", "", ""],
        ["MH01", "german", "Top", "simple", "", "", "Chaz Kapuzenpulli", "", "", "", "", "", ""],
        ["MT02", "", "Top", "simple", "Default Category/Men/Tees", "base", "Tee", "", "1", "20", "tee", "", "5"],
    ])
    manifest = _ingest(ingest, workdir, path, "magento")

    hoodie = products(workdir, "p")["mh01"]
    assert (hoodie["name"], hoodie["description"], hoodie["price_cents"], hoodie["stock"]) == \
        ("Chaz Hoodie", "Warm.", 5200, 100)
    assert (hoodie["category"], hoodie["url"], hoodie["active"]) == ("Default Category/Men/Hoodies", "chaz-hoodie", 1)
    assert json.loads(hoodie["attributes"])["color"] == "Black"
    assert manifest["rows"]["skipped"] == 2 and manifest["rows"]["read"] == 2
    assert manifest["rows"]["superseded"] == 0 and not read_diagnostics(manifest, workdir)


def test_magento_store_view_row_before_the_global_row_is_skipped_too(workdir, ingest):
    path = write_csv(workdir / "catalog_product.csv", MAGENTO_HEADER, [
        ["MH01", "default", "Top", "simple", "", "", "Store Name", "", "", "", "", "", ""],
        ["MH01", " ", "Top", "simple", "Hoodies", "base", "Chaz Hoodie", "", "1", "52", "chaz", "", "7"],
    ])
    manifest = _ingest(ingest, workdir, path, "magento")

    hoodie = products(workdir, "p")["mh01"]
    assert (hoodie["name"], hoodie["price_cents"], hoodie["stock"]) == ("Chaz Hoodie", 5200, 7)
    assert manifest["rows"]["skipped"] == 1


# -- WooCommerce: parents anywhere in the file -------------------------------------------------------

WOO_HEADER = ["ID", "Type", "SKU", "Name", "Published", "Short description", "Description", "In stock?",
              "Stock", "Regular price", "Categories", "Tags", "Images", "Parent"]


def _woo(id_, type_, sku, name, *, price="", description="", categories="", images="", parent="", tags=""):
    return [id_, type_, sku, name, "1", "", description, "1", "", price, categories, tags, images, parent]


def _hoodie_newest_first() -> list[list[str]]:
    return [
        _woo("52", "variation", "hoodie-red", "Hoodie - Red", price="45", parent="woo-hoodie"),
        _woo("51", "variation, virtual", "hoodie-blue", "Hoodie - Blue", price="44", parent="id:50",
             images="https://i/blue.jpg"),
        _woo("50", "variable", "woo-hoodie", "Hoodie", description="Warm and soft.", categories="Clothing > Hoodies",
             images="https://i/hoodie.jpg, https://i/hoodie-2.jpg", tags="winter"),
        _woo("40", "simple", "woo-cap", "Cap", price="18", categories="Accessories"),
    ]


def test_variations_before_their_variable_parent_inherit_its_fields(workdir, ingest):
    path = write_csv(workdir / "wc-product-export.csv", WOO_HEADER, _hoodie_newest_first())
    manifest = _ingest(ingest, workdir, path, "woocommerce")

    catalog = products(workdir, "p")
    red, blue = catalog["hoodie-red"], catalog["hoodie-blue"]
    assert (red["category"], red["description"], red["image_url"], red["price_cents"]) == \
        ("Clothing > Hoodies", "Warm and soft.", "https://i/hoodie.jpg", 4500)
    assert (blue["category"], blue["description"], blue["image_url"]) == \
        ("Clothing > Hoodies", "Warm and soft.", "https://i/blue.jpg")        # its own image stays
    assert json.loads(red["attributes"])["Tags"] == "winter"
    assert manifest["rows"]["read"] == 4 and manifest["rows"]["warnings"] == 0
    assert not read_diagnostics(manifest, workdir)


def test_a_variation_whose_parent_is_absent_lands_with_a_warning_naming_what_it_missed(workdir, ingest):
    rows = _hoodie_newest_first()
    rows.insert(1, _woo("61", "variation", "scarf-red", "Scarf - Red", price="9", parent="woo-scarf",
                        images="https://i/scarf.jpg"))
    path = write_csv(workdir / "wc-product-export.csv", WOO_HEADER, rows)
    manifest = _ingest(ingest, workdir, path, "woocommerce")

    assert manifest["status"] == "succeeded" and manifest["rows"]["warnings"] == 1
    [line] = read_diagnostics(manifest, workdir)
    assert (line["row"], line["sku"], line["severity"], line["column"], line["code"], line["value"]) == \
        ("3", "scarf-red", "warning", "Parent", "parent_not_found", "woo-scarf")
    assert line["message"] == ('parent "woo-scarf" is not in the file; not inherited: '
                               "Description, Short description, Categories, Tags")
    scarf = products(workdir, "p")["scarf-red"]
    assert (scarf["name"], scarf["price_cents"], scarf["category"], scarf["image_url"]) == \
        ("Scarf - Red", 900, None, "https://i/scarf.jpg")
    assert products(workdir, "p")["hoodie-red"]["category"] == "Clothing > Hoodies"


def test_an_orphan_warned_for_another_reason_counts_once_among_rows_with_warnings(workdir, ingest):
    header = [*WOO_HEADER, "GTIN, UPC, EAN, or ISBN"]
    path = write_csv(workdir / "wc-product-export.csv", header, [
        [*_woo("61", "variation", "scarf-red", "Scarf - Red", price="9", parent="woo-scarf"), "12345678"],
    ])
    manifest = _ingest(ingest, workdir, path, "woocommerce")

    assert {line["code"] for line in read_diagnostics(manifest, workdir)} == {"invalid_gtin", "parent_not_found"}
    assert manifest["rows"]["warnings"] == 1


def _filler(n: int, first_id: int) -> list[list[str]]:
    """Simple products with long descriptions, more bytes than a block holds: what comes after
    them is read in another block."""
    text = "x" * (int(1.5 * BLOCK_SIZE) // n)
    return [_woo(str(first_id + i), "simple", f"filler-{i}", f"Filler {i}", price="1", description=text)
            for i in range(n)]


def test_a_parent_blocks_after_its_variations_is_inherited_and_the_later_row_of_a_sku_wins(workdir, ingest):
    rows = [
        _woo("90", "variation", "tee-red", "Tee - Red", price="20", parent="woo-tee"),
        _woo("89", "variation", "tee-blue", "Tee - Blue (old row)", price="21", parent="woo-tee"),
        _woo("88", "variation", "tee-gone", "Tee - Gone", price="22", parent="woo-lost"),
        # a later row of a held variation's SKU, before the parent comes: it must win
        _woo("87", "simple", "tee-blue", "Tee - Blue (new row)", price="25", categories="Sale"),
        *_filler(120, 1000),
        _woo("86", "variable", "woo-tee", "Tee", description="Cotton.", categories="Clothing > Tshirts",
             images="https://i/tee.jpg"),
    ]
    path = write_csv(workdir / "wc-product-export.csv", WOO_HEADER, rows)
    blocks = [b.row_numbers().to_pylist() for b in read_blocks(path, name=path.name, fmt="csv", options=ReadOptions())]
    assert len(blocks) > 1 and 2 in blocks[0] and len(rows) + 1 not in blocks[0], "the parent must come blocks later"
    manifest = _ingest(ingest, workdir, path, "woocommerce")

    catalog = products(workdir, "p")
    assert (catalog["tee-red"]["category"], catalog["tee-red"]["description"], catalog["tee-red"]["image_url"]) == \
        ("Clothing > Tshirts", "Cotton.", "https://i/tee.jpg")
    assert (catalog["tee-blue"]["name"], catalog["tee-blue"]["price_cents"], catalog["tee-blue"]["category"]) == \
        ("Tee - Blue (new row)", 2500, "Sale")
    assert catalog["tee-gone"]["category"] is None
    lines = {line["sku"]: line for line in read_diagnostics(manifest, workdir)}
    assert set(lines) == {"tee-blue", "tee-gone"}
    assert (lines["tee-gone"]["row"], lines["tee-gone"]["code"]) == ("4", "parent_not_found")
    assert (lines["tee-blue"]["row"], lines["tee-blue"]["code"]) == ("3", "parent_not_inherited")
    assert "a later row has the same SKU" in lines["tee-blue"]["message"]
    assert manifest["rows"]["read"] == len(rows) and manifest["rows"]["superseded"] == 1
    assert manifest["rows"]["inserted"] == len(rows) - 1


# -- the shapers alone: every block boundary gives the same rows -------------------------------------

NAMES = ["ID", "Type", "SKU", "Parent", "Categories"]


def _block(rows: list[list], first: int) -> Block:
    return Block(pa.RecordBatch.from_arrays([pa.array(c, pa.string()) for c in zip(*rows)], names=NAMES), first)


def _run(shaper: Shaper, parts: list[list[list]]) -> tuple[list[tuple], list[dict]]:
    """(row, SKU, Categories) of every row out, in the order they came; and every note."""
    def blocks():
        first = 2
        for part in parts:
            yield _block(part, first)
            first += len(part)
    out, notes = [], []
    for block in shaper.shaped(blocks()):
        out += zip(block.row_numbers().to_pylist(), block.batch.column("SKU").to_pylist(),
                   block.batch.column("Categories").to_pylist())
        notes += shaper.notes.to_pylist()
    return out, notes


ROWS = [
    ["9", "variation", "v-early", "p", None],          # parent below, in any block
    ["8", "variation", "v-id", "id:1", ""],            # by id
    ["7", "variation", "orphan", "nowhere", None],
    ["6", "variable", "p", None, "Old"],
    ["1", "variable", "p-by-id", None, "ById"],
    ["5", "variation", "v-late", "p", None],           # the closest definition above it: New
    ["4", "variable", "p", None, "New"],
    ["3", "variation", "v-after", "p", None],
    ["2", "simple", "s", None, "Own"],
]


def test_parent_shaper_gives_the_same_rows_whatever_the_block_boundaries():
    model = PRESETS["woocommerce"].rows
    whole, whole_notes = _run(ParentShaper(model), [ROWS])
    assert sorted(whole) == [(2, "v-early", "Old"), (3, "v-id", "ById"), (4, "orphan", None), (5, "p", "Old"),
                             (6, "p-by-id", "ById"), (7, "v-late", "Old"), (8, "p", "New"), (9, "v-after", "New"),
                             (10, "s", "Own")]
    assert [(n["row"], n["code"]) for n in whole_notes] == [(4, "parent_not_found")]
    for size in (1, 2, 3, 4):
        parts = [ROWS[i:i + size] for i in range(0, len(ROWS), size)]
        got, notes = _run(ParentShaper(model), parts)
        assert sorted(got) == sorted(whole) and notes == whole_notes, size


def test_rows_of_one_sku_come_out_in_file_order_even_when_one_was_held():
    # the store keeps a key's last row by staging order: a held row must not come after a later one
    rows = [["3", "variation", "V", "p", None], ["4", "simple", "v", None, "Later"], ["5", "variable", "p", None, "P"]]
    for size in (1, 2, 3):
        got, notes = _run(ParentShaper(PRESETS["woocommerce"].rows), [rows[i:i + size] for i in range(0, 3, size)])
        order = [row for row, sku, _ in got if sku.lower() == "v"]
        assert order == [2, 3], size


def test_held_rows_beyond_the_bound_go_uninherited_oldest_first_with_a_warning():
    model = RowModel(**{**PRESETS["woocommerce"].rows.__dict__, "max_held": 1})
    got, notes = _run(ParentShaper(model), [[["3", "variation", "a", "p", None]], [["4", "variation", "b", "p", None]],
                                            [["5", "variable", "p", None, "P"]]])
    assert got == [(2, "a", None), (3, "b", "P"), (4, "p", "P")]
    [note] = notes
    assert (note["row"], note["sku"], note["code"]) == (2, "a", "parent_not_inherited")
    assert note["message"] == ('released before its parent "p" came (more than 1 rows were waiting for their '
                               "parent); not inherited: Categories")


def test_flat_model_skips_rows_with_a_value_in_a_skip_when_set_column():
    shaper = shaper_for(PRESETS["magento"].rows)
    batch = pa.RecordBatch.from_arrays([pa.array(["A", "A", "A"]), pa.array([None, "fr", "  "]),
                                        pa.array(["Global", "Français", "Global 2"])],
                                       names=["sku", "store_view_code", "name"])
    out = shaper.shape(Block(batch, 2))
    assert out.batch.column("name").to_pylist() == ["Global", "Global 2"]
    assert out.row_numbers().to_pylist() == [2, 4] and shaper.skipped == 1


# -- the presets' [rows] ----------------------------------------------------------------------------

def test_every_row_model_a_preset_may_name_has_a_shaper():
    assert set(SHAPERS) == set(ROW_MODELS)
    assert {p.rows.model for p in PRESETS.values() if p.rows} <= set(ROW_MODELS)


@pytest.mark.parametrize("rows, error", [
    ('model = "nested"', "rows.model must be one of"),
    ('model = "flat"\nskip_if = ["store_view_code"]', "[rows] unknown keys ['skip_if']"),
    ('model = "parent"\nmax_held = -1', "rows.max_held must be a whole number"),
])
def test_a_bad_rows_section_names_the_preset_and_the_key(rows, error):
    with pytest.raises(ValueError, match="preset demo: ") as caught:
        _load("demo", f'[columns]\nsku = ["sku"]\n\n[rows]\n{rows}\n')
    assert error in str(caught.value)
