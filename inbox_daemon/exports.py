"""Change sets and catalogs written out for people and for other systems: CSV, Parquet, NDJSON.

A change set is written long: one line per product and column changed (``sku, change, column,
before, after``), so the same table reads in a spreadsheet, a dataframe or ``grep``. A catalog
export is the products as the store holds them, batch by batch: memory stays flat however many
there are.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from typing import BinaryIO, Literal

import pyarrow as pa
import pyarrow.csv as pacsv

from inbox_daemon.results import spreadsheet_safe

OutputFormat = Literal["csv", "parquet", "ndjson"]
CHANGE_SCHEMA = pa.schema([("sku", pa.string()), ("change", pa.string()), ("column", pa.string()),
                           ("before", pa.string()), ("after", pa.string())])
_CHUNK = 10_000


def changes_name(job_id: str) -> str:
    return f"{job_id}.changes.csv"


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def change_tables(records: Iterable[dict]) -> Iterator[pa.Table]:
    """``HistoryReads.job_changes`` records as long tables, ``_CHUNK`` products at a time."""
    it = iter(records)
    while chunk := list(itertools.islice(it, _CHUNK)):
        columns: dict[str, list] = {name: [] for name in CHANGE_SCHEMA.names}
        for record in chunk:
            before, after = record["before"], record["after"]
            for column in dict.fromkeys([*before, *after]):
                columns["sku"].append(record["sku"])
                columns["change"].append(record["change"])
                columns["column"].append(column)
                columns["before"].append(_text(before.get(column)))
                columns["after"].append(_text(after.get(column)))
        yield pa.table(columns, schema=CHANGE_SCHEMA)


def write_changes(records: Iterable[dict], out: BinaryIO, fmt: OutputFormat) -> int:
    """A change set to ``out``; returns the lines written. CSV cells a spreadsheet would run
    as a formula are quoted (``spreadsheet_safe``): the values are a partner's."""
    if fmt == "ndjson":
        count = 0
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
            count += 1
        return count
    tables = (_safe(t) if fmt == "csv" else t for t in change_tables(records))
    return _write_batches((b for t in tables for b in t.to_batches()), CHANGE_SCHEMA, out, fmt)


def _safe(table: pa.Table) -> pa.Table:
    for name in ("sku", "before", "after"):
        table = table.set_column(table.schema.get_field_index(name), name,
                                 spreadsheet_safe(table.column(name).combine_chunks()))
    return table


def write_catalog(batches: Iterable[pa.RecordBatch], schema: pa.Schema, out: BinaryIO, fmt: OutputFormat) -> int:
    """Products to ``out`` as they come; returns how many."""
    if fmt == "ndjson":
        count = 0
        for batch in batches:
            count += batch.num_rows
            out.write(b"".join(json.dumps(row, ensure_ascii=False).encode() + b"\n" for row in batch.to_pylist()))
        return count
    return _write_batches(batches, schema, out, fmt)


def _write_batches(batches: Iterable[pa.RecordBatch], schema: pa.Schema, out: BinaryIO, fmt: OutputFormat) -> int:
    count = 0
    sink = pa.PythonFile(out, mode="w")
    if fmt == "parquet":
        import pyarrow.parquet as pq  # ~12 ms of every command's start-up otherwise
        writer: pq.ParquetWriter | pacsv.CSVWriter = pq.ParquetWriter(sink, schema)
    else:
        writer = pacsv.CSVWriter(sink, schema)
    try:
        for batch in batches:
            writer.write_batch(batch)
            count += batch.num_rows
    finally:
        writer.close()
    return count
