"""Judge a batch: parse every canonical column and check it, a whole column at a time.

``judge`` turns one text ``Block`` into the rows that may land (``CANONICAL_SCHEMA``) and the
problems found, as a table of diagnostics lines. Errors reject their row; warnings let the row
land without the bad value (a GTIN with a wrong check digit is dropped, the row is kept) or with
a corrected one (negative stock lands as 0). There is no Python loop over rows here: each check
is a ``pyarrow.compute`` mask.

A file sets only what it carries: ``carried_columns`` says which stored columns its header
feeds, and the merge writes those alone. A column the file does not have is NULL in the batch
(``active`` too: a new product is then active, an existing one keeps its state); an empty cell in
a column it has clears that value, except ``name``, which is never cleared: a row without a name
updates an existing product and is refused for a new one (by the merge, which knows which exist).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from adapters.mapping import ColumnMap, attributes_json, preset_of
from adapters.prices import parse_price
from adapters.readers import Block
from adapters.readers.base import CUT_SHORT, TOO_MANY_CELLS
from config.canonical import (
    AVAILABILITY,
    CANONICAL_SCHEMA,
    ISO_4217,
    MAX_LENGTH,
    MERGED_COLUMNS,
    REQUIRED_FIELDS,
    TEXT_FIELDS,
)
from config.model import PartnerConfig

ERROR, WARNING = "error", "warning"
DIAGNOSTICS_SCHEMA = pa.schema([
    ("row", pa.int64()), ("sku", pa.string()), ("severity", pa.string()), ("column", pa.string()),
    ("code", pa.string()), ("message", pa.string()), ("value", pa.string()),
])
MAX_VALUE_SHOWN = 200
_NULL_STR = pa.scalar(None, pa.string())
_NULL_INT = pa.scalar(None, pa.int64())
_ISO = pa.array(sorted(ISO_4217))
_TRUE = pa.array(["true", "1", "yes", "y", "t", "on"])
_FALSE = pa.array(["false", "0", "no", "n", "f", "off"])
_AVAILABILITY_WORDS = pa.array(list(AVAILABILITY), pa.string())
_AVAILABILITY_MEANS = pa.array(list(AVAILABILITY.values()), pa.string())
_INTEGER = r"^-?[0-9]{1,15}(?:\.0+)?$"


@dataclass
class Judged:
    """The outcome of judging one block."""
    valid: pa.RecordBatch                    # CANONICAL_SCHEMA, rows without errors
    rejected_keys: pa.Table                  # (sku_key, row) of rejected rows that have a sku
    diagnostics: pa.Table                    # DIAGNOSTICS_SCHEMA, sorted by row
    read: int
    rejected: int
    warned: int
    error_codes: dict[str, int] = field(default_factory=dict)


def diagnostics_lines(rows: pa.Array, skus: pa.Array, *, severity: str, column: str | None, code: str,
                      message: str | pa.Array, values: pa.Array | None = None) -> pa.Table:
    """Diagnostics lines (``DIAGNOSTICS_SCHEMA``) of ``rows``: one severity, column and code for
    all, a message for all or one each, and each row's value as written (shortened)."""
    n = len(rows)
    shown = (pc.utf8_slice_codeunits(values, 0, MAX_VALUE_SHOWN).cast(pa.string()) if values is not None
             else pa.nulls(n, pa.string()))
    return pa.table({
        "row": rows, "sku": skus, "severity": pa.repeat(severity, n), "column": pa.repeat(column, n),
        "code": pa.repeat(code, n), "message": pa.repeat(message, n) if isinstance(message, str) else message,
        "value": shown,
    }, schema=DIAGNOSTICS_SCHEMA)


class _Problems:
    """Collects (mask, column, code, message, values, severity) and builds the diagnostics."""

    def __init__(self, rows: pa.Array, sku: pa.Array, cmap: ColumnMap):
        self.rows, self.sku, self.cmap = rows, sku, cmap
        self.items: list[tuple[pa.Array, str, str, str, pa.Array, str]] = []

    def add(self, mask: pa.Array, canonical: str, code: str, message: str, values: pa.Array,
            severity: str = ERROR, *, column: str | None = None) -> None:
        """``column``: the partner's column when it is none of the canonical ones."""
        mask = pc.fill_null(mask, False)
        if pc.any(mask).as_py():
            self.items.append((mask, column or self.cmap.partner_column(canonical), code, message,
                               values, severity))

    def mask(self, severity: str) -> pa.Array:
        out = pa.array(np.zeros(len(self.rows), dtype=bool))
        for m, *_, sev in self.items:
            if sev == severity:
                out = pc.or_(out, m)
        return out

    def table(self) -> pa.Table:
        parts = []
        for mask, column, code, message, values, severity in self.items:
            parts.append(diagnostics_lines(self.rows.filter(mask), self.sku.filter(mask), severity=severity,
                                           column=column, code=code, message=message, values=values.filter(mask)))
        if not parts:
            return DIAGNOSTICS_SCHEMA.empty_table()
        table = pa.concat_tables(parts)
        return table.take(pc.sort_indices(table, sort_keys=[("row", "ascending")]))


def _text(batch: pa.RecordBatch, cmap: ColumnMap, canonical: str) -> pa.Array:
    """The trimmed text of a canonical column; empty cells and absent columns are null."""
    name = cmap.source.get(canonical)
    if name is None:
        return pa.nulls(batch.num_rows, pa.string())
    values = pc.utf8_trim_whitespace(batch.column(name))
    values = pc.if_else(pc.equal(values, ""), _NULL_STR, values)
    return cmap.apply_rules(canonical, values)


# a spreadsheet guard: an apostrophe before a number ('0123, '-1, '7350177880121) or before a
# formula's first character; "'90s Jacket" is no guard
_GUARDED = r"(?s)^'([-+]?[0-9][0-9.,]*|[=+\-@].*)$"


def apostrophe_guard(partner: PartnerConfig) -> bool:
    """Do this partner's files guard values with an apostrophe (its own switch, else its preset's)?"""
    if partner.apostrophe_guard is not None:
        return partner.apostrophe_guard
    preset = preset_of(partner)
    return bool(preset and preset.apostrophe_guard)


def _unguard(batch: pa.RecordBatch, cmap: ColumnMap) -> pa.RecordBatch:
    """The mapped columns without the platform's spreadsheet guard (its importer removes it too)."""
    mapped = set(cmap.source.values())
    arrays = []
    for name, values in zip(batch.schema.names, batch.columns):
        if name in mapped and pa.types.is_string(values.type) and pc.any(pc.starts_with(values, "'")).as_py():
            values = pc.replace_substring_regex(values, _GUARDED, r"\1")
        arrays.append(values)
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def _empty(values: pa.Array) -> bool:
    return values.null_count == len(values)


def _null_where(values: pa.Array, mask: pa.Array) -> pa.Array:
    return pc.if_else(pc.fill_null(mask, False), pa.scalar(None, values.type), values)


def _parse_integer(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(int64 values, mask of non-null values that are not integers)."""
    ok = pc.match_substring_regex(values, _INTEGER)
    bad = pc.and_(pc.is_valid(values), pc.invert(pc.fill_null(ok, False)))
    digits = _null_where(values, bad)
    if pc.any(pc.match_substring(digits, ".")).as_py():
        digits = pc.replace_substring_regex(digits, r"\.0+$", "")
    return pc.cast(digits, pa.int64()), bad


_GTIN_WEIGHTS = np.array([3, 1] * 6 + [3], dtype=np.int64)   # GS1, on the 14-digit form


def _gtin_valid(digits: pa.Array) -> pa.Array:
    """GS1 check digit for 8/12/13/14-digit codes. Left-padded to 14 digits, the codes are one
    fixed-width byte matrix: the check is a single matrix product, not a slice per position."""
    shaped = pc.fill_null(pc.match_substring_regex(digits, r"^(?:[0-9]{8}|[0-9]{12,14})$"), False)
    padded = pc.utf8_lpad(pc.if_else(shaped, digits, "0" * 14), 14, "0").cast(pa.binary(14))
    n = len(padded)
    matrix = (np.frombuffer(padded.buffers()[1], dtype=np.uint8, count=(padded.offset + n) * 14)
              [padded.offset * 14:].reshape(n, 14).astype(np.int64) - ord("0"))
    expected = (10 - (matrix[:, :13] @ _GTIN_WEIGHTS) % 10) % 10
    return pc.and_(shaped, pa.array(matrix[:, 13] == expected))


def carried_columns(cmap: ColumnMap) -> frozenset[str]:
    """The stored columns (``MERGED_COLUMNS``) a file with this header sets; the merge leaves
    the others as the catalog holds them. ``price_cents`` and ``currency`` come with a price
    (a price without a currency column is in the partner's currency), ``stock`` with a stock or
    an availability column, ``attributes`` with any column that lands there."""
    mapped = set(cmap.source)
    carried = {c for c in MERGED_COLUMNS if c in mapped}
    carried.add("sku")
    if mapped & {"price", "price_cents"}:
        carried |= {"price_cents", "currency"}
    if "availability" in mapped:
        carried.add("stock")
    if cmap.unmapped or cmap.key_value:
        carried.add("attributes")
    return frozenset(carried)


def judge(block: Block, cmap: ColumnMap, partner: PartnerConfig, *, decimal: str | None = None) -> Judged:
    """Map and validate one block; see the module docstring. ``decimal`` is the separator of
    text prices (the partner's, for CSV/TSV); numbers from JSON and Parquet always use "."."""
    batch = block.batch
    if apostrophe_guard(partner):
        batch = _unguard(batch, cmap)
    rows = block.row_numbers()
    texts = {f: _text(batch, cmap, f) for f in ("sku", "name", *TEXT_FIELDS)}
    sku = texts["sku"]
    # the stages add their problems in this order, which is the order of a row's diagnostics
    p = _Problems(rows, sku, cmap)
    _check_encoding(p, block)
    _check_required(p, texts)
    _check_lengths(p, texts)
    price_cents, price_code, raw_price = _price(p, block, batch, cmap, decimal or partner.decimal_separator,
                                                partner.currency)
    currency = _currency(p, batch, cmap, partner.currency, price_code, raw_price)
    stock = _availability(p, batch, cmap, _stock(p, batch, cmap))
    active = _active(p, batch, cmap)
    gtin = _gtin(p, batch, cmap)
    attributes = _attributes(p, batch, cmap, sku)
    sku_key = pc.utf8_lower(pc.utf8_normalize(sku, "NFC"))
    canonical = pa.RecordBatch.from_arrays([
        rows, sku, sku_key, texts["name"], texts["description"], price_cents, currency, stock, active,
        texts["brand"], texts["category"], gtin, texts["url"], texts["image_url"], attributes,
    ], schema=CANONICAL_SCHEMA)
    return _verdict(p, canonical)


# what a row the reader refused on its own is told (``Block.refused_rows``)
_REFUSED = {TOO_MANY_CELLS: "the row has more cells than the header has columns (a value with the "
                            "delimiter in it, not quoted?): the row is not read",
            CUT_SHORT: "the file ends in the middle of this row: fewer cells than the header has columns "
                       "and no line break after it (an upload cut off?): the row is not read"}


def _check_encoding(p: _Problems, block: Block) -> None:
    """Cells the reader could not decode, rows it could not split: the row is rejected, the
    rest of the file goes on."""
    for code, refused in block.refused_rows:
        p.add(refused, "", code, _REFUSED[code], pa.nulls(block.batch.num_rows, pa.string()))
    for column, bad in block.bad_cells:
        p.add(bad, "", "invalid_encoding", f"not valid {block.encoding} text (undecodable bytes or a NUL "
              "character); the value is shown with them replaced by U+FFFD", block.batch.column(column),
              column=column)


def _check_required(p: _Problems, texts: dict[str, pa.Array]) -> None:
    for canonical in REQUIRED_FIELDS:
        p.add(pc.is_null(texts[canonical]), canonical, "missing_value", f"{canonical} is required",
              texts[canonical])


def _check_lengths(p: _Problems, texts: dict[str, pa.Array]) -> None:
    for canonical, values in texts.items():
        if (pc.max(pc.binary_length(values)).as_py() or 0) <= MAX_LENGTH[canonical]:
            continue            # no value has more bytes than the limit has characters
        p.add(pc.greater(pc.utf8_length(values), MAX_LENGTH[canonical]), canonical, "too_long",
              f"{canonical} is longer than {MAX_LENGTH[canonical]} characters", values)


def _price(p: _Problems, block: Block, batch: pa.RecordBatch, cmap: ColumnMap, decimal: str,
           default_currency: str) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(cents, ISO code written inside the price or null, the text read): the partner's column
    is either exact cents or a text to parse."""
    if "price_cents" in cmap.source:
        canonical = "price_cents"
        raw = _text(batch, cmap, canonical)
        cents, bad = _parse_integer(raw)
        code = pa.nulls(batch.num_rows, pa.string())
        p.add(bad, canonical, "invalid_price", "price_cents is not a whole number of cents", raw)
    else:
        canonical = "price"
        raw = _text(batch, cmap, canonical)
        column = cmap.source.get(canonical)
        # cells that were numbers in the file (.xlsx) are written with a "."; text uses the partner's
        typed = block.typed(column) if column is not None else None
        currency = pc.utf8_upper(_text(batch, cmap, "currency"))      # picks among "$" currencies
        cents, bad, code = parse_price(raw, decimal, default_currency, typed=typed, currency=currency)
        example = "9,99" if decimal == "," else "9.99"
        p.add(bad, canonical, "invalid_price",
              f"price is not a number: expected e.g. {example}, \"{example} USD\" or \"${example}\"", raw)
    p.add(pc.less(cents, 0), canonical, "negative_price", "price must not be negative", raw)
    return cents, code, raw


def _currency(p: _Problems, batch: pa.RecordBatch, cmap: ColumnMap, default: str, price_code: pa.Array,
              raw_price: pa.Array) -> pa.Array:
    """The column, else a code written in the price, else the partner's default."""
    column = pc.utf8_upper(_text(batch, cmap, "currency"))
    currency = pc.coalesce(column, price_code, pa.scalar(default))
    p.add(pc.invert(pc.is_in(currency, value_set=_ISO)), "currency", "invalid_currency",
          "currency is not an ISO 4217 code", currency)
    p.add(pc.and_(pc.is_valid(column), pc.not_equal(column, price_code)), "price",
          "currency_mismatch", "the price names a different currency than the currency column", raw_price)
    return currency


def _stock(p: _Problems, batch: pa.RecordBatch, cmap: ColumnMap) -> pa.Array:
    """An integer >= 0. A column without values has nothing to check (here and in the stages
    after): a small file pays for the columns it has, not for every canonical one."""
    raw = _text(batch, cmap, "stock")
    if _empty(raw):
        return pa.nulls(batch.num_rows, pa.int64())
    stock, bad = _parse_integer(raw)
    p.add(bad, "stock", "invalid_stock", "stock is not a whole number", raw)
    negative = pc.less(stock, 0)
    p.add(negative, "stock", "negative_stock", "stock is negative (oversold); it lands as 0", raw, WARNING)
    return pc.if_else(pc.fill_null(negative, False), pa.scalar(0, pa.int64()), stock)


def _availability(p: _Problems, batch: pa.RecordBatch, cmap: ColumnMap, stock: pa.Array) -> pa.Array:
    """``stock`` with "out of stock" read as 0 where no quantity is given: availability is
    checked but not stored."""
    raw = _text(batch, cmap, "availability")
    if _empty(raw):
        return stock
    availability = pc.take(_AVAILABILITY_MEANS, pc.index_in(
        pc.replace_substring_regex(pc.utf8_lower(raw), r"[\s_-]+", " "), value_set=_AVAILABILITY_WORDS))
    p.add(pc.and_(pc.is_valid(raw), pc.is_null(availability)), "availability", "invalid_availability",
          "availability must be in stock, out of stock, preorder or backorder", raw)
    return pc.if_else(pc.and_(pc.is_null(stock), pc.fill_null(pc.equal(availability, "out of stock"), False)),
                      pa.scalar(0, pa.int64()), stock)


def _active(p: _Problems, batch: pa.RecordBatch, cmap: ColumnMap) -> pa.Array:
    """A boolean as 0/1; true where the cell is empty; NULL when the file has no such column
    (the merge then keeps an existing product's state and makes a new one active)."""
    if "active" not in cmap.source:
        return pa.nulls(batch.num_rows, pa.int64())
    raw = _text(batch, cmap, "active")
    if _empty(raw):
        return pa.array(np.ones(batch.num_rows, dtype=np.int64))
    lowered = pc.utf8_lower(raw)
    is_true, is_false = pc.is_in(lowered, value_set=_TRUE), pc.is_in(lowered, value_set=_FALSE)
    p.add(pc.and_(pc.is_valid(raw), pc.invert(pc.or_(is_true, is_false))), "active",
          "invalid_boolean", "active must be true/false, 1/0 or yes/no", raw)
    return pc.if_else(is_false, 0, 1).cast(pa.int64())


def _gtin(p: _Problems, batch: pa.RecordBatch, cmap: ColumnMap) -> pa.Array:
    """The GTIN without spaces or dashes; a wrong one is dropped with a warning, the row still lands."""
    raw = _text(batch, cmap, "gtin")
    if _empty(raw):
        return raw
    digits = raw
    if pc.any(pc.match_substring_regex(raw, r"[\s-]")).as_py():
        digits = pc.replace_substring_regex(raw, r"[\s-]", "")
    bad = pc.and_(pc.is_valid(raw), pc.invert(_gtin_valid(digits)))
    p.add(bad, "gtin", "invalid_gtin",
          "not a GTIN-8/12/13/14 with a correct check digit; the row lands without it", raw, WARNING)
    return _null_where(digits, bad)


def _attributes(p: _Problems, batch: pa.RecordBatch, cmap: ColumnMap, sku: pa.Array) -> pa.Array:
    """The unmapped columns as JSON text, bounded; a row over the bound is shown by its sku."""
    attributes = attributes_json(batch, cmap.unmapped, cmap.key_value)
    p.add(pc.greater(pc.utf8_length(attributes), MAX_LENGTH["attributes"]), "sku", "too_long",
          f"unmapped columns exceed {MAX_LENGTH['attributes']} characters of attributes", sku)
    return attributes


def _verdict(p: _Problems, canonical: pa.RecordBatch) -> Judged:
    """The rows without errors, the keys of those with errors, and the diagnostics of both."""
    errors = p.mask(ERROR)
    rejected = pa.table({"sku_key": canonical.column("sku_key").filter(errors),
                         "row": canonical.column("row").filter(errors)})
    error_codes: dict[str, int] = {}
    for mask, _, code, _, _, severity in p.items:
        if severity == ERROR:
            error_codes[code] = error_codes.get(code, 0) + pc.sum(mask).as_py()
    return Judged(
        valid=canonical.filter(pc.invert(errors)),
        rejected_keys=rejected.filter(pc.is_valid(rejected.column("sku_key"))),
        diagnostics=p.table(),
        read=canonical.num_rows,
        rejected=pc.sum(errors).as_py() or 0,
        warned=pc.sum(p.mask(WARNING)).as_py() or 0,
        error_codes=error_codes,
    )
