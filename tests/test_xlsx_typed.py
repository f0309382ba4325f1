"""Excel cells that hold numbers stay numbers: the reader writes them with a "." and says which
cells they were, so a decimal-comma partner's 14.9 is 14.90, not refused, and 1.849 is not 1849."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from adapters.prices import parse_price
from adapters.readers import Block, read_blocks
from adapters.readers.xlsxfile import _number_text


def _sheet(path, rows: list[list], formats: dict[str, str] | None = None):
    """A real workbook written by openpyxl; ``formats`` sets a cell's number format ("C2": "...")."""
    import openpyxl
    wb = openpyxl.Workbook()
    ws = wb.active
    for row in rows:
        ws.append(row)
    for cell, number_format in (formats or {}).items():
        ws[cell].number_format = number_format
    wb.save(path)
    return path


def _block(path) -> Block:
    [block] = list(read_blocks(path, name=path.name))
    return block


def _typed(block: Block, column: str) -> list[bool]:
    mask = block.typed(column)
    assert mask is not None, f"no typed cells in {column!r}"
    return mask.to_pylist()


@pytest.fixture
def mixed(tmp_path) -> Block:
    """One price column: numbers (one shown as "1.234.567,50 €" by a German Excel) and text."""
    path = _sheet(tmp_path / "prices.xlsx", [
        ["sku", "price"],
        ["A", 14.9], ["B", 1.849], ["C", 12.0], ["D", 1234567.5], ["E", 7],
        ["F", "1.849"], ["G", "14,90"], ["H", "1 299,50 €"], ["I", None],
    ], formats={"B5": "#,##0.00 €", "B3": '#,##0.00 "€"'})
    return _block(path)


def test_numeric_cells_are_plain_dot_decimals_and_text_cells_as_typed(mixed):
    assert mixed.batch.column("price").to_pylist() == [
        "14.9", "1.849", "12", "1234567.5", "7", "1.849", "14,90", "1 299,50 €", None]


def test_the_block_marks_which_cells_were_numbers(mixed):
    assert _typed(mixed, "price") == [True] * 5 + [False] * 4
    assert mixed.typed("sku") is None                 # a column without numbers is not listed


def test_typed_cells_parse_with_a_dot_for_a_decimal_comma_partner(mixed):
    cents, bad, code = parse_price(mixed.batch.column("price"), ",", "EUR", typed=mixed.typed("price"))
    assert cents.to_pylist() == [1490, 185, 1200, 123456750, 700, 184900, 1490, 129950, None]
    assert not any(bad.to_pylist())
    assert code.to_pylist() == [None] * 7 + ["EUR", None]


def test_without_the_mask_numbers_are_misread_as_the_partner_text(mixed):
    """The bug the mask fixes: 14.9 refused, 1.849 taken for 1849.00."""
    cents, bad, _ = parse_price(mixed.batch.column("price"), ",", "EUR")
    assert (cents[0].as_py(), bad[0].as_py()) == (None, True)
    assert cents[1].as_py() == 184900


def test_masks_stay_aligned_with_rows_after_an_empty_row(tmp_path):
    path = _sheet(tmp_path / "gaps.xlsx", [
        ["sku", "price", "note"], ["A", "9,99", 1], [None, None, None], ["B", 2.5, "x"], ["C", "3", 4.25],
    ])
    block = _block(path)
    assert block.row_numbers().to_pylist() == [2, 4, 5]
    assert _typed(block, "price") == [False, True, False]
    assert _typed(block, "note") == [True, False, True]
    assert [c for c, _ in block.typed_cells] == ["price", "note"]


def test_booleans_dates_and_text_digits_are_not_numbers(tmp_path):
    path = _sheet(tmp_path / "kinds.xlsx", [
        ["sku", "value"], ["A", True], ["B", dt.date(2026, 3, 1)], ["C", "12.5"], ["D", 12.5],
    ])
    block = _block(path)
    assert block.batch.column("value").to_pylist() == ["true", "2026-03-01", "12.5", "12.5"]
    assert _typed(block, "value") == [False, False, False, True]


@pytest.mark.parametrize("value, text", [
    (1.849, "1.849"), (14.9, "14.9"), (12.0, "12"), (-0.5, "-0.5"), (1e-7, "0.0000001"),
    (1.5e-10, "0.00000000015"), (0.1 + 0.2, "0.30000000000000004"), (2.0**53, "9007199254740992"),
    (1e20, "100000000000000000000"), (1e23, "100000000000000000000000"), (1.2345e17, "123450000000000000"),
    (-0.0, "0"), (-1e-7, "-0.0000001"),
])
def test_numbers_are_written_without_grouping_or_exponent(value, text):
    assert _number_text(value) == text
    assert float(text) == value


def test_a_tiny_number_read_from_a_workbook_has_no_exponent(tmp_path):
    block = _block(_sheet(tmp_path / "tiny.xlsx", [["sku", "price"], ["A", 1e-7], ["B", 3e21]]))
    assert block.batch.column("price").to_pylist() == ["0.0000001", "3000000000000000000000"]


def test_filter_keeps_the_masks_with_their_rows(mixed):
    kept = mixed.filter(pa.array([False, True, False, False, False, True, True, False, False]))
    assert kept.batch.column("price").to_pylist() == ["1.849", "1.849", "14,90"]
    assert _typed(kept, "price") == [True, False, False]
    assert kept.row_numbers().to_pylist() == [3, 7, 8]


def test_a_block_built_as_before_has_no_typed_cells():
    batch = pa.RecordBatch.from_arrays([pa.array(["9,99"])], names=["price"])
    block = Block(batch, 2, None, (), "utf-8")
    assert block.typed_cells == () and block.typed("price") is None


def test_a_second_batch_has_masks_of_its_own(tmp_path):
    from adapters.readers.base import PY_BATCH_ROWS
    rows = [["sku", "price"]] + [[f"S{i}", "1,5" if i % 2 else 1.5] for i in range(PY_BATCH_ROWS + 3)]
    blocks = list(read_blocks(_sheet(tmp_path / "long.xlsx", rows), name="long.xlsx"))
    assert [b.batch.num_rows for b in blocks] == [PY_BATCH_ROWS, 3]
    last = blocks[1]
    assert _typed(last, "price") == [True, False, True]        # S20000 is even: a number
    cents, bad, _ = parse_price(last.batch.column("price"), ",", "EUR", typed=last.typed("price"))
    assert cents.to_pylist() == [150, 150, 150] and not any(bad.to_pylist())
