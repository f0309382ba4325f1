"""Judging rows (``adapters.validation.judge``) and mapping partner columns (``adapters.mapping``).

Each test builds one all-text Arrow batch, as every reader yields, maps its header with
``resolve_columns`` and judges it. Rows are numbered as the partner counts them: ``first_row``
is 2 for a CSV file whose header is line 1.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from adapters.mapping import resolve_columns
from adapters.readers import Block
from adapters.validation import DIAGNOSTICS_SCHEMA, MAX_VALUE_SHOWN, Judged, carried_columns, judge
from config.canonical import CANONICAL_SCHEMA, MAX_LENGTH
from config.errors import MissingColumn
from config.model import PartnerConfig

PARTNER = PartnerConfig(id="p")                              # currency USD, decimal "."
COMMA = PartnerConfig(id="eu", currency="EUR", decimal_separator=",")
SHOPIFY = PartnerConfig(id="shop", preset="shopify")


def batch_of(columns: dict[str, list]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array(v, pa.string()) for v in columns.values()],
                                      names=list(columns))


def judged(columns: dict[str, list], partner: PartnerConfig = PARTNER, first_row: int = 2) -> Judged:
    batch = batch_of(columns)
    return judge(Block(batch, first_row), resolve_columns(list(columns), partner), partner)


def one(partner: PartnerConfig = PARTNER, **cells: str | None) -> Judged:
    """A single row with a sku and a name, plus ``cells``."""
    return judged({"sku": ["A-1"], "name": ["Shirt"], **{k: [v] for k, v in cells.items()}}, partner)


def landed(result: Judged) -> dict:
    rows = result.valid.to_pylist()
    assert len(rows) == 1, result.diagnostics.to_pylist()
    return rows[0]


def codes(result: Judged) -> list[tuple[str, str]]:
    return [(d["code"], d["severity"]) for d in result.diagnostics.to_pylist()]


# -- price ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, cents, currency", [
    ("9.99", 999, "USD"),
    ("9.99 USD", 999, "USD"),
    ("USD 9.99", 999, "USD"),
    ("$9.99", 999, "USD"),
    ("1,299.50", 129950, "USD"),
    ("0.1", 10, "USD"),
    ("19.999", 2000, "USD"),
    ("0", 0, "USD"),
    ("9.99 EUR", 999, "EUR"),
    ("9.99 eur", 999, "EUR"),
])
def test_price_text_is_parsed_to_cents_and_currency(text, cents, currency):
    row = landed(one(price=text))
    assert (row["price_cents"], row["currency"]) == (cents, currency)


@pytest.mark.parametrize("currency, price, expected", [
    ("CAD", "$9.99", "CAD"), ("GBP", "$9.99", "USD"), ("NOK", "9,99 kr", "NOK"), ("EUR", "9.99 kr", "EUR"),
])
def test_a_shared_symbol_is_the_partners_currency_when_it_can_mean_it(currency, price, expected):
    """"$" is the partner's dollar (CAD), else USD; "kr" the partner's krone, else the default."""
    partner = PartnerConfig(id="p", currency=currency, decimal_separator="," if "," in price else ".")
    row = landed(one(partner, price=price))
    assert (row["price_cents"], row["currency"]) == (999, expected)


def test_currency_written_in_the_price_beats_the_partner_default():
    row = landed(one(PartnerConfig(id="gb", currency="GBP"), price="9.99 USD"))
    assert (row["price_cents"], row["currency"]) == (999, "USD")


@pytest.mark.parametrize("text, cents", [
    ("9,99", 999), ("1.299,50", 129950), ("9,99 €", 999), ("€9,99", 999), ("12,5", 1250),
])
def test_decimal_comma_partner_reads_comma_as_the_decimal_point(text, cents):
    row = landed(one(COMMA, price=text))
    assert (row["price_cents"], row["currency"]) == (cents, "EUR")


def test_decimal_comma_partner_reads_dot_as_thousands_whatever_the_other_rows_hold():
    alone = judged({"sku": ["A"], "name": ["n"], "price": ["1.299"]}, COMMA)
    mixed = judged({"sku": ["A", "B"], "name": ["n", "n"], "price": ["1.299", "9,99"]}, COMMA)
    assert alone.valid.column("price_cents").to_pylist() == [129900]
    assert mixed.valid.column("price_cents").to_pylist() == [129900, 999]


@pytest.mark.parametrize("text", ["9,99", "12,5", "9,99 USD"])
def test_decimal_comma_from_a_dot_partner_is_an_invalid_price(text):
    result = one(price=text)
    assert result.valid.num_rows == 0
    assert codes(result) == [("invalid_price", "error")]
    assert result.diagnostics.column("value").to_pylist() == [text]


@pytest.mark.parametrize("partner, text", [(PARTNER, "12.345,67"), (COMMA, "1,299.50")])
def test_thousands_separator_after_the_decimal_separator_is_an_invalid_price(partner, text):
    result = one(partner, price=text)
    assert result.valid.num_rows == 0
    assert codes(result) == [("invalid_price", "error")]


@pytest.mark.parametrize("text", ["abc", "9.99 dollars", "1e5", ".99", "9.", "1,2,3"])
def test_unparseable_price_is_only_an_invalid_price(text):
    result = one(price=text)
    assert result.valid.num_rows == 0
    assert codes(result) == [("invalid_price", "error")]       # not also invalid_currency


@pytest.mark.parametrize("text", ["-1", "$-5", "-0.01 USD"])
def test_negative_price_is_rejected(text):
    result = one(price=text)
    assert result.valid.num_rows == 0
    assert codes(result) == [("negative_price", "error")]
    assert result.diagnostics.column("column").to_pylist() == ["price"]


def test_price_cents_column_is_taken_as_exact_cents():
    row = landed(one(price_cents="999"))
    assert (row["price_cents"], row["currency"]) == (999, "USD")


@pytest.mark.parametrize("text, code", [("9.5", "invalid_price"), ("abc", "invalid_price"),
                                        ("-5", "negative_price")])
def test_bad_price_cents_is_rejected_under_the_price_cents_column(text, code):
    result = one(price_cents=text)
    assert result.valid.num_rows == 0
    assert codes(result) == [(code, "error")]
    assert result.diagnostics.column("column").to_pylist() == ["price_cents"]


def test_price_cents_wins_over_price_and_price_is_kept_as_an_attribute():
    row = landed(one(price_cents="500", price="9.99"))
    assert row["price_cents"] == 500
    assert json.loads(row["attributes"]) == {"price": "9.99"}


def test_absent_price_column_leaves_a_null_price_on_a_valid_row():
    row = landed(one())
    assert row["price_cents"] is None and row["currency"] == "USD"


def test_empty_price_cell_leaves_a_null_price_on_a_valid_row():
    result = judged({"sku": ["A", "B"], "name": ["n", "n"], "price": ["", "  "]})
    assert result.rejected == 0
    assert result.valid.column("price_cents").to_pylist() == [None, None]


# -- currency ------------------------------------------------------------------------------------

def test_currency_column_is_upper_cased():
    assert landed(one(price="9.99", currency="eur"))["currency"] == "EUR"


def test_unknown_currency_code_is_invalid_currency():
    result = one(price="9.99", currency="XYZ")
    assert result.valid.num_rows == 0
    assert codes(result) == [("invalid_currency", "error")]
    assert result.diagnostics.column("column").to_pylist() == ["currency"]


def test_unknown_currency_written_in_the_price_is_invalid_currency():
    result = one(price="9.99 XYZ")
    assert codes(result) == [("invalid_currency", "error")]


def test_currency_column_disagreeing_with_the_price_is_a_mismatch():
    result = one(price="9.99 USD", currency="EUR")
    assert result.valid.num_rows == 0
    assert codes(result) == [("currency_mismatch", "error")]
    line = result.diagnostics.to_pylist()[0]
    assert (line["column"], line["value"]) == ("price", "9.99 USD")


def test_currency_column_agreeing_with_the_price_is_accepted():
    row = landed(one(price="9.99 eur", currency="EUR"))
    assert (row["price_cents"], row["currency"]) == (999, "EUR")


@pytest.mark.parametrize("cells", [{}, {"currency": ""}, {"currency": "  "}])
def test_partner_default_currency_is_used_when_none_is_given(cells):
    row = landed(one(PartnerConfig(id="ch", currency="CHF"), price="9.99", **cells))
    assert row["currency"] == "CHF"


# -- stock ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, stock", [("12", 12), ("12.0", 12), ("0", 0), (" 7 ", 7), ("", None)])
def test_stock_is_a_whole_number(text, stock):
    assert landed(one(stock=text))["stock"] == stock


@pytest.mark.parametrize("text, code", [("1.5", "invalid_stock"), ("abc", "invalid_stock"), ("1e3", "invalid_stock")])
def test_bad_stock_is_rejected(text, code):
    result = one(stock=text)
    assert result.valid.num_rows == 0
    assert codes(result) == [(code, "error")]


@pytest.mark.parametrize("text", ["-1", "-2", " -15 "])
def test_negative_stock_lands_as_zero_with_a_warning_keeping_what_was_sent(text):
    """An oversold variant (Shopify's "continue" policy, WooCommerce backorders) is out of stock,
    not a broken row."""
    result = one(stock=text)
    assert landed(result)["stock"] == 0
    [line] = result.diagnostics.to_pylist()
    assert (line["code"], line["severity"], line["value"]) == ("negative_stock", "warning", text.strip())


# -- active --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, active", [
    ("true", 1), ("TRUE", 1), ("True", 1), ("false", 0), ("FALSE", 0), ("1", 1), ("0", 0),
    ("yes", 1), ("YES", 1), ("no", 0), ("No", 0), ("Y", 1), ("y", 1), ("N", 0), ("n", 0),
])
def test_active_booleans_are_mapped_case_insensitively(text, active):
    assert landed(one(active=text))["active"] == active


def test_absent_active_column_is_left_to_the_merge():
    """No column: NULL in the batch and not among the columns the file sets (a new product is
    then active, an existing one keeps its state: see test_partial_files)."""
    result = one()
    assert landed(result)["active"] is None
    assert "active" not in carried_columns(resolve_columns(["sku", "name"], PARTNER))


def test_empty_active_cell_means_active():
    assert landed(one(active=""))["active"] == 1


def test_unrecognised_active_value_is_invalid_boolean():
    result = one(active="maybe")
    assert result.valid.num_rows == 0
    assert codes(result) == [("invalid_boolean", "error")]


# -- gtin ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, gtin", [
    ("4006381333931", "4006381333931"),        # GTIN-13
    ("12345670", "12345670"),                  # GTIN-8
    ("036000291452", "036000291452"),          # GTIN-12 (UPC-A)
    ("00012345600012", "00012345600012"),      # GTIN-14
    ("4006-3813 33931", "4006381333931"),
    ("0 36000 29145 2", "036000291452"),
    ("1234-5670", "12345670"),
])
def test_valid_gtin_is_kept_without_spaces_or_hyphens(text, gtin):
    result = one(gtin=text)
    assert landed(result)["gtin"] == gtin
    assert result.diagnostics.num_rows == 0 and result.warned == 0


@pytest.mark.parametrize("text", ["4006381333932", "12345678", "036000291453", "00012345600013",
                                  "123", "400638133393", "ABCDEFGHIJKLM"])
def test_bad_gtin_is_dropped_with_a_warning_and_the_row_lands(text):
    result = one(gtin=text)
    row = landed(result)
    assert row["gtin"] is None and row["sku"] == "A-1"
    assert codes(result) == [("invalid_gtin", "warning")]
    assert (result.warned, result.rejected) == (1, 0)
    assert result.error_codes == {}


def test_gtin_warnings_count_rows_in_warned_not_rejected():
    result = judged({"sku": ["A", "B", "C"], "name": ["n"] * 3,
                     "gtin": ["4006381333932", "4006381333931", "12345678"]})
    assert (result.read, result.valid.num_rows, result.rejected, result.warned) == (3, 3, 0, 2)
    assert result.valid.column("gtin").to_pylist() == [None, "4006381333931", None]
    assert result.rejected_keys.column("sku_key").to_pylist() == []


def test_gtin_check_holds_for_a_batch_sliced_out_of_a_larger_one():
    gtins = ["4006381333931", "4006381333932", "12345670", "036000291452", "12345678"]
    full = batch_of({"sku": list("ABCDE"), "name": ["n"] * 5, "gtin": gtins})
    for offset in range(1, 5):
        part = full.slice(offset)
        result = judge(Block(part, 2 + offset), resolve_columns(part.schema.names, PARTNER), PARTNER)
        expected = [g if g in ("4006381333931", "12345670", "036000291452") else None
                    for g in gtins[offset:]]
        assert result.valid.column("gtin").to_pylist() == expected, offset


# -- sku and name --------------------------------------------------------------------------------

@pytest.mark.parametrize("sku", [None, "", "   ", "\t"])
def test_missing_or_blank_sku_is_a_missing_value(sku):
    result = judged({"sku": ["OK", sku], "name": ["n", "n"]})
    assert result.valid.column("sku").to_pylist() == ["OK"]
    assert [(d["row"], d["column"], d["code"]) for d in result.diagnostics.to_pylist()] == [
        (3, "sku", "missing_value")]
    assert result.rejected_keys.column("sku_key").to_pylist() == []       # a rejected row without a sku has no key


@pytest.mark.parametrize("name", [None, "", "  "])
def test_missing_or_blank_name_is_left_to_the_merge(name):
    """A row without a name updates an existing product; the merge refuses it for a new one."""
    result = judged({"sku": ["OK", "NoName"], "name": ["n", name]})
    assert result.diagnostics.num_rows == 0
    assert result.valid.column("name").to_pylist() == ["n", None]


def test_sku_and_name_are_trimmed_and_sku_key_is_lower_cased():
    row = landed(judged({"sku": ["  AbC-1 \t"], "name": ["  Blue Shirt  "]}))
    assert (row["sku"], row["sku_key"], row["name"]) == ("AbC-1", "abc-1", "Blue Shirt")


def test_sku_key_is_lower_cased_beyond_ascii():
    assert landed(judged({"sku": ["ÄRMEL-X"], "name": ["n"]}))["sku_key"] == "ärmel-x"


# -- length limits -------------------------------------------------------------------------------

@pytest.mark.parametrize("column", ["sku", "name", "description", "brand", "category", "url",
                                    "image_url"])
def test_values_longer_than_the_limit_are_too_long(column):
    limit = MAX_LENGTH[column]
    cells = {"sku": ["at-limit", "over"], "name": ["n", "n"]}
    cells[column] = ["x" * limit, "y" * (limit + 1)]
    result = judged(cells)
    assert result.valid.num_rows == 1
    assert [(d["row"], d["column"], d["code"]) for d in result.diagnostics.to_pylist()] == [
        (3, column, "too_long")]
    assert len(result.diagnostics.column("value")[0].as_py()) == MAX_VALUE_SHOWN


def test_length_counts_characters_not_bytes():
    row = landed(judged({"sku": ["ü" * MAX_LENGTH["sku"]], "name": ["n"]}))
    assert len(row["sku"]) == MAX_LENGTH["sku"]


def test_attributes_longer_than_the_limit_reject_the_row():
    result = judged({"sku": ["A", "B"], "name": ["n", "n"],
                     "notes": ["short", "z" * (MAX_LENGTH["attributes"] + 1)]})
    assert result.valid.column("sku").to_pylist() == ["A"]
    assert result.error_codes == {"too_long": 1}
    assert result.rejected_keys.column("sku_key").to_pylist() == ["b"]


# -- the diagnostics table -----------------------------------------------------------------------

def _messy_shopify_file() -> Judged:
    return judged({
        "Variant SKU": ["OK-1", "NoName", "BadStock", "BadPrice", "Both", "Warn"],
        "Title": ["a", "", "c", "d", "e", "f"],
        "Variant Price": ["1.00", "2.00", "3.00", "abc", "-4", "5.00"],
        "Variant Inventory Qty": ["1", "1", "1.5", "1", "x", "1"],
        "Variant Barcode": ["", "", "", "", "", "4006381333932"],
    }, SHOPIFY, first_row=2)


def test_diagnostics_have_the_contract_columns():
    assert _messy_shopify_file().diagnostics.schema.names == [
        "row", "sku", "severity", "column", "code", "message", "value"]
    assert _messy_shopify_file().diagnostics.schema == DIAGNOSTICS_SCHEMA


def test_diagnostics_rows_are_numbered_from_first_row_and_sorted():
    lines = _messy_shopify_file().diagnostics.to_pylist()
    assert [line["row"] for line in lines] == sorted(line["row"] for line in lines)
    assert {(line["row"], line["sku"], line["code"]) for line in lines} == {
        (4, "BadStock", "invalid_stock"),
        (5, "BadPrice", "invalid_price"),
        (6, "Both", "negative_price"),
        (6, "Both", "invalid_stock"),
        (7, "Warn", "invalid_gtin"),
    }


def test_diagnostics_name_the_partners_own_column():
    by_code = {(d["sku"], d["code"]): d for d in _messy_shopify_file().diagnostics.to_pylist()}
    assert by_code[("BadPrice", "invalid_price")]["column"] == "Variant Price"
    assert by_code[("BadStock", "invalid_stock")]["column"] == "Variant Inventory Qty"
    assert by_code[("Warn", "invalid_gtin")]["column"] == "Variant Barcode"


def test_diagnostics_line_carries_severity_message_and_the_value_as_written():
    by_code = {(d["sku"], d["code"]): d for d in _messy_shopify_file().diagnostics.to_pylist()}
    price = by_code[("BadPrice", "invalid_price")]
    assert (price["severity"], price["value"]) == ("error", "abc")
    assert "price" in price["message"]
    gtin = by_code[("Warn", "invalid_gtin")]
    assert (gtin["severity"], gtin["value"]) == ("warning", "4006381333932")


def test_counts_add_up_and_error_codes_count_each_code():
    result = _messy_shopify_file()
    assert result.read == 6
    assert result.rejected == 3                   # BadStock, BadPrice, Both (NoName: the merge decides)
    assert result.read == result.valid.num_rows + result.rejected
    assert result.warned == 1
    assert result.error_codes == {"invalid_stock": 2, "invalid_price": 1, "negative_price": 1}
    assert sorted(result.rejected_keys.column("sku_key").to_pylist()) == ["badprice", "badstock", "both"]
    assert result.valid.column("sku").to_pylist() == ["OK-1", "NoName", "Warn"]


def test_valid_rows_have_the_canonical_schema_and_keep_their_row_numbers():
    result = _messy_shopify_file()
    assert result.valid.schema == CANONICAL_SCHEMA
    assert result.valid.column("row").to_pylist() == [2, 3, 7]


def test_row_numbers_follow_first_row_of_a_later_block():
    result = judged({"sku": ["A", "", "C"], "name": ["n", "n", "n"]}, first_row=1001)
    assert result.diagnostics.column("row").to_pylist() == [1002]
    assert result.valid.column("row").to_pylist() == [1001, 1003]


def test_clean_block_has_no_diagnostics():
    result = judged({"sku": ["A", "B"], "name": ["n", "m"], "price": ["1.00", "2 USD"]})
    assert result.diagnostics.num_rows == 0
    assert (result.read, result.rejected, result.warned, result.error_codes) == (2, 0, 0, {})


# -- mapping -------------------------------------------------------------------------------------

def test_partner_columns_override_wins_over_preset_and_canonical_names():
    partner = PartnerConfig(id="p", preset="shopify", columns={"sku": ("Item No",), "price": ("Preis",)})
    cmap = resolve_columns(["sku", "Variant SKU", "Item No", "Title", "Variant Price", "Preis"], partner)
    assert cmap.source["sku"] == "Item No"
    assert cmap.source["price"] == "Preis"
    assert cmap.source["name"] == "Title"
    assert set(cmap.unmapped) == {"sku", "Variant SKU", "Variant Price"}


def test_configured_column_that_is_absent_is_missing_even_if_a_canonical_name_is_present():
    partner = PartnerConfig(id="p", columns={"sku": ("Item No",)})
    with pytest.raises(MissingColumn) as info:
        resolve_columns(["sku", "name"], partner)
    assert (info.value.canonical, info.value.expected) == ("sku", "Item No")


def test_preset_columns_are_used():
    cmap = resolve_columns(["Variant SKU", "Title", "Variant Price", "Vendor", "Type", "Extra"], SHOPIFY)
    assert dict(cmap.source) == {"sku": "Variant SKU", "name": "Title", "price": "Variant Price",
                                 "brand": "Vendor", "category": "Type"}
    assert cmap.unmapped == ("Extra",)


def test_preset_column_wins_over_a_same_named_canonical_column():
    cmap = resolve_columns(["sku", "Variant SKU", "Title"], SHOPIFY)
    assert cmap.source["sku"] == "Variant SKU"
    assert cmap.unmapped == ("sku",)


def test_preset_file_is_judged_through_its_columns():
    row = landed(judged({"Variant SKU": ["S-1"], "Title": ["Tee"], "Variant Price": ["12.50"],
                         "Published": ["FALSE"]}, SHOPIFY))
    assert (row["sku"], row["name"], row["price_cents"], row["active"]) == ("S-1", "Tee", 1250, 0)


def test_canonical_names_match_case_insensitively():
    cmap = resolve_columns(["SKU", "Name", "PRICE"], PARTNER)
    assert dict(cmap.source) == {"sku": "SKU", "name": "Name", "price": "PRICE"}
    assert cmap.partner_column("price") == "PRICE"
    result = judged({"SKU": ["A"], "Name": ["n"], "PRICE": ["x"]})
    assert result.diagnostics.column("column").to_pylist() == ["PRICE"]


@pytest.mark.parametrize("partner, names, canonical, expected", [
    (PARTNER, ["name", "price"], "sku", "sku"),
    (SHOPIFY, ["Title", "Variant Price"], "sku", "Variant SKU"),
    (PartnerConfig(id="p", columns={"sku": ("Artikel",)}), ["sku", "name"], "sku", "Artikel"),
])
def test_missing_required_column_names_what_was_expected_and_found(partner, names, canonical, expected):
    """Only the sku column is required: a file sets the columns it has (see carried_columns)."""
    with pytest.raises(MissingColumn) as info:
        resolve_columns(names, partner)
    assert info.value.canonical == canonical
    assert info.value.expected == expected
    assert info.value.found == names
    assert expected in str(info.value)


# -- attributes ----------------------------------------------------------------------------------

TRICKY_VALUES = [
    'say "hi"',
    "back\\slash \\n not a newline",
    "line\nbreak",
    "carriage\r\nreturn",
    "tab\there",
    "ctrl\x01char",
    "nul\x00and\x1funit",
    "üñíçødé ✓ 😀",
    "\u2028line separator",
    "{\"looks\": [\"like\", \"json\"]}",
    "trailing backslash\\",
]


@pytest.mark.parametrize("value", TRICKY_VALUES)
def test_attribute_value_round_trips_through_json(value):
    row = landed(judged({"sku": ["A"], "name": ["n"], "note": [value]}))
    assert json.loads(row["attributes"]) == {"note": value}


@pytest.mark.parametrize("column", ['quo"te', "back\\slash", "new\nline", "tab\tcol", "ctl\x02",
                                    "ünï ✓", "parent.child"])
def test_attribute_column_names_are_escaped(column):
    row = landed(judged({"sku": ["A"], "name": ["n"], column: ["v"], "plain": ["w"]}))
    assert json.loads(row["attributes"]) == {column: "v", "plain": "w"}


def test_attribute_values_round_trip_when_rows_need_different_escapes():
    values = ['say "hi"', "back\\slash", "line\nbreak", "tab\there", "üñí", "plain"]
    result = judged({"sku": [f"s{i}" for i in range(len(values))], "name": ["n"] * len(values),
                     "note": values})
    assert [json.loads(a)["note"] for a in result.valid.column("attributes").to_pylist()] == values


def test_attribute_values_round_trip_when_one_row_has_a_control_character():
    values = ['say "hi"', "back\\slash", "line\nbreak", "ctrl\x01char", 'both "\x01"']
    result = judged({"sku": [f"s{i}" for i in range(len(values))], "name": ["n"] * len(values),
                     "note": values})
    assert [json.loads(a)["note"] for a in result.valid.column("attributes").to_pylist()] == values


def test_null_and_empty_attribute_values_are_omitted():
    result = judged({"sku": ["A", "B", "C"], "name": ["n"] * 3,
                     "color": ["red", "", None], "size": [None, "M", ""]})
    attrs = [json.loads(a) if a else None for a in result.valid.column("attributes").to_pylist()]
    assert attrs == [{"color": "red"}, {"size": "M"}, None]


def test_row_without_unmapped_values_has_null_attributes():
    assert landed(judged({"sku": ["A"], "name": ["n"], "price": ["1"]}))["attributes"] is None
    assert landed(judged({"sku": ["A"], "name": ["n"], "empty": [None]}))["attributes"] is None


def test_attributes_keep_column_order_and_every_unmapped_column():
    row = landed(judged({"sku": ["A"], "z_last": ["1"], "name": ["n"], "a_first": ["2"], "m": ["3"]}))
    assert list(json.loads(row["attributes"]).items()) == [("z_last", "1"), ("a_first", "2"), ("m", "3")]


def test_rejected_keys_are_the_lower_cased_skus_of_rejected_rows():
    result = judged({"sku": ["Good", "BAD-Stock", "Bad-Price", "", "Warn-Only"],
                     "name": ["n"] * 5,
                     "stock": ["1", "x", "1", "1", "1"],
                     "price": ["1", "1", "x", "1", "1"],
                     "gtin": ["", "", "", "", "123"]})
    assert sorted(result.rejected_keys.column("sku_key").to_pylist()) == ["bad-price", "bad-stock"]
    assert result.rejected == 3


def test_empty_block_judges_to_no_rows_and_no_diagnostics():
    result = judged({"sku": [], "name": [], "price": [], "gtin": [], "note": []})
    assert (result.read, result.rejected, result.warned, result.error_codes) == (0, 0, 0, {})
    assert result.valid.num_rows == 0 and result.valid.schema == CANONICAL_SCHEMA
    assert result.diagnostics.num_rows == 0


@pytest.mark.parametrize("names, carried", [
    (["sku", "stock"], {"sku", "stock"}),
    (["sku", "price"], {"sku", "price_cents", "currency"}),
    (["sku", "availability"], {"sku", "stock"}),
    (["sku", "product_online"], {"sku", "attributes"}),
    (["sku", "name", "price", "currency", "stock", "active", "description", "brand", "category", "gtin", "url",
      "image_url", "color"], set(CANONICAL_SCHEMA.names) - {"row", "sku_key"}),
])
def test_a_file_carries_the_stored_columns_its_header_feeds(names, carried):
    assert carried_columns(resolve_columns(names, PARTNER)) == carried


# -- spreadsheet guards --------------------------------------------------------------------------

GUARDED = PartnerConfig(id="g", apostrophe_guard=True)


def test_an_apostrophe_guard_is_removed_before_judging_when_the_partner_says_so():
    """Shopify exports barcodes as '7350177880121, WooCommerce writes '-1 and '-3: the apostrophe
    keeps a spreadsheet from turning the value into a number; the platform's importer drops it."""
    result = judged({"sku": ["'00123", "B"], "name": ["'90s Jacket", "=cmd"], "gtin": ["'7350177880121", ""],
                     "stock": ["'-3", "'12"], "price": ["'1,299.50", "'=1+1"]}, GUARDED)
    rows = result.valid.to_pylist()
    assert [(r["sku"], r["name"], r["gtin"], r["stock"]) for r in rows] == [
        ("00123", "'90s Jacket", "7350177880121", 0)]
    assert rows[0]["price_cents"] == 129950
    assert [(d["sku"], d["code"]) for d in result.diagnostics.to_pylist()] == [
        ("00123", "negative_stock"), ("B", "invalid_price")]       # '=1+1 is unguarded to =1+1: no price


def test_without_the_switch_an_apostrophe_is_part_of_the_value():
    result = judged({"sku": ["A"], "name": ["n"], "gtin": ["'7350177880121"]})
    assert landed(result)["gtin"] is None
    assert codes(result) == [("invalid_gtin", "warning")]


def test_shopify_and_woocommerce_presets_remove_their_guard():
    shop = judged({"Variant SKU": ["S-1"], "Title": ["Tee"], "Variant Barcode": ["'7350177880121"]}, SHOPIFY)
    assert landed(shop)["gtin"] == "7350177880121" and shop.diagnostics.num_rows == 0
    woo = judged({"SKU": ["W-1", "W-2"], "Name": ["Cap", "Hat"], "Published": ["'-1", "1"], "Stock": ["5", "'-3"]},
                 PartnerConfig(id="w", preset="woocommerce"))
    assert [(r["sku"], r["active"], r["stock"]) for r in woo.valid.to_pylist()] == [("W-1", 0, 5), ("W-2", 1, 0)]
    assert [(d["sku"], d["code"], d["severity"]) for d in woo.diagnostics.to_pylist()] == [
        ("W-2", "negative_stock", "warning")]
    off = judged({"Variant SKU": ["S-1"], "Title": ["Tee"], "Variant Barcode": ["'7350177880121"]},
                 PartnerConfig(id="s", preset="shopify", apostrophe_guard=False))
    assert landed(off)["gtin"] is None              # the partner turned it off: the guard stays, the GTIN is invalid
