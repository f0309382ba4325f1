"""Excel ``.xlsx`` through openpyxl's read-only mode, which streams a sheet's XML row by row.

openpyxl has no Arrow path, so rows go through Python objects in batches of ``PY_BATCH_ROWS``
(as ijson's JSON arrays do); memory stays flat whatever the sheet's size. The header is row
``header_row`` when the partner says so (a price list's title rows above it), else the first
row that is not empty; empty rows are dropped and later rows keep the numbers Excel shows. Cells become the
text a person sees: whole numbers without ``.0``, dates in ISO 8601, booleans as true/false.
Numbers are written with a "." decimal point, without grouping or exponent, whatever the
locale of the person who typed them (the cell holds a number, not its display), and the
``Block`` says which cells they were (``typed_cells``): a partner's decimal comma is a
convention of the cells that hold text.

An .xlsx is a zip archive: the declared sizes of its members are checked against
``[limits]`` before anything is inflated, so a zip bomb is refused unopened.
"""

from __future__ import annotations

import datetime as dt
import itertools
import zipfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa

from adapters.readers.base import PY_BATCH_ROWS, Block, ReadOptions, seekable_copy
from config.errors import LimitExceeded, UnreadableFile


def _number_text(value: float) -> str:
    """1.849 -> "1.849", 12.0 -> "12", 1e-07 -> "0.0000001": the shortest text that reads back
    as the same float (what Excel shows, at most 17 digits), in plain decimal notation."""
    if value == 0:
        return "0"                                                   # and not "-0"
    text = repr(value)                                               # "inf" and "nan" stay as they are
    if "e" in text:
        text = format(Decimal(text), "f")
    return text.removesuffix(".0")


def _cell_text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _number_text(value)
    if isinstance(value, dt.datetime) and value.time() == dt.time(0):
        return value.date().isoformat()       # Excel has no date type: a date is midnight
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    text = str(value)
    return text if text.strip() else None


_NUMBERS = (int, float)      # what openpyxl gives for a numeric cell (bool is a type of its own)


def _typed_cells(names: list[str], typed: dict[int, list[int]], n: int) -> tuple[tuple[str, pa.Array], ...]:
    masks = []
    for column, at in sorted(typed.items()):
        mask = np.zeros(n, dtype=bool)
        mask[at] = True
        masks.append((names[column], pa.array(mask)))
    return tuple(masks)


def _check_archive(path: Path, options: ReadOptions) -> None:
    limits = options.limits
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UnreadableFile(reason=f"not a readable .xlsx file: {exc}") from exc
    total = sum(m.file_size for m in members)
    packed = max(sum(m.compress_size for m in members), 1)
    if total > limits.max_uncompressed_bytes:
        raise LimitExceeded(limit="max_uncompressed_bytes",
                            reason=f"the workbook inflates to {total} bytes, more than {limits.max_uncompressed_bytes}")
    if total > (1 << 20) and total > limits.max_compression_ratio * packed:
        raise LimitExceeded(limit="max_compression_ratio",
                            reason=f"the workbook inflates {total / packed:.0f} times its size (a zip bomb?)")


def read_xlsx(path: Path, *, name: str, compressed: bool, options: ReadOptions) -> Iterator[Block]:
    import openpyxl

    next_row = 1
    with seekable_copy(path, compressed=compressed, options=options) as local:
        _check_archive(local, options)
        handle = open(local, "rb")       # a file object: openpyxl judges a path by its extension
        try:
            workbook = openpyxl.load_workbook(handle, read_only=True, data_only=True)
        except Exception as exc:  # openpyxl raises whatever its XML/zip layers raise
            handle.close()
            raise UnreadableFile(reason=f"not a readable .xlsx file: {type(exc).__name__}: {exc}") from exc
        try:
            if options.sheet is not None and options.sheet not in workbook.sheetnames:
                raise UnreadableFile(reason=f"no sheet named {options.sheet!r}; the workbook has: "
                                            f"{', '.join(workbook.sheetnames)}")
            sheet = workbook[options.sheet] if options.sheet else workbook.worksheets[0]
            header_at = options.header_row or 1
            rows = sheet.iter_rows(min_row=header_at, values_only=True)
            header = next(rows, None)
            if options.header_row is None:
                while header is not None and not any(_cell_text(v) for v in header):
                    header, header_at = next(rows, None), header_at + 1     # empty rows above the header
            if header is None or not any(_cell_text(v) for v in header):
                where = f"row {header_at} (header_row)" if options.header_row else "the sheet"
                raise UnreadableFile(reason=f"{where} is empty: a header row is required", row=header_at)
            names = [(_cell_text(v) or f"column_{i + 1}").strip() for i, v in enumerate(header)]
            if len(names) > options.limits.max_columns:
                raise LimitExceeded(limit="max_columns", row=1,
                                    reason=f"the header has {len(names)} columns, more than {options.limits.max_columns}")
            width = len(names)
            schema = pa.schema([(n, pa.string()) for n in names]) if len(set(names)) == width else None
            next_row = header_at + 1
            yielded = False
            while chunk := list(itertools.islice(rows, PY_BATCH_ROWS)):
                numbers: list[int] = []
                columns: list[list[str | None]] = [[] for _ in range(width)]
                typed: dict[int, list[int]] = {}       # column -> rows of the block that hold a number
                for offset, row in enumerate(chunk):
                    values = row[:width]
                    cells = [_cell_text(v) for v in values]
                    if not any(c is not None for c in cells):
                        continue                              # an empty row, as Excel shows it
                    for i, v in enumerate(values):
                        if type(v) in _NUMBERS:
                            typed.setdefault(i, []).append(len(numbers))
                    numbers.append(next_row + offset)
                    cells += [None] * (width - len(cells))
                    for column, cell in zip(columns, cells):
                        column.append(cell)
                arrays = [pa.array(c, pa.string()) for c in columns]
                batch = (pa.RecordBatch.from_arrays(arrays, schema=schema) if schema is not None
                         else pa.RecordBatch.from_arrays(arrays, names=names))
                yield Block(batch, next_row, pa.array(numbers, pa.int64()),
                            typed_cells=_typed_cells(names, typed, len(numbers)))
                yielded = True
                next_row += len(chunk)
            if not yielded:
                yield Block(pa.RecordBatch.from_arrays([pa.array([], pa.string())] * width, names=names), next_row)
        except (UnreadableFile, LimitExceeded):
            raise
        except Exception as exc:
            raise UnreadableFile(reason=f"cannot read the sheet: {type(exc).__name__}: {exc}", row=next_row) from exc
        finally:
            workbook.close()
            handle.close()
