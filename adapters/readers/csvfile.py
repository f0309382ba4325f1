"""CSV and TSV through pyarrow's streaming CSV reader.

Every column is read as text: inference per block would turn ``00123`` into 123 and fail on a
later block whose values no longer fit the first block's type. The header is read once to learn
the column names, then the file is streamed with those names typed as strings.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from adapters.readers import BLOCK_SIZE, Block, ReadOptions, open_stream, to_text
from inbox_daemon.errors import UnreadableFile

CANDIDATE_DELIMITERS = (",", ";", "\t", "|")
HEADER_ROWS = 1


def sniff_delimiter(path: Path, *, compressed: bool, options: ReadOptions) -> str:
    """The candidate that appears most often in the header line (ties: comma)."""
    with open_stream(path, compressed=compressed, options=ReadOptions()) as stream:
        head = stream.read(64 * 1024)
    text = codecs.decode(head, options.encoding, errors="replace")
    header = text.lstrip("\ufeff").splitlines()[0] if text.strip() else ""
    counts = {d: header.count(d) for d in CANDIDATE_DELIMITERS}
    best = max(CANDIDATE_DELIMITERS, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","


def _csv_reader(stream, *, delimiter: str, encoding: str, column_types=None):
    read = pacsv.ReadOptions(block_size=BLOCK_SIZE, encoding=encoding)
    # blank lines are kept as rows, so later rows keep the numbers a spreadsheet shows
    parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True, ignore_empty_lines=False)
    convert = pacsv.ConvertOptions(
        column_types=column_types or {}, strings_can_be_null=True, quoted_strings_can_be_null=True,
        null_values=[""],
    )
    return pacsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert)


def _read(path: Path, *, name: str, compressed: bool, options: ReadOptions,
          delimiter: str) -> Iterator[Block]:
    encoding = options.encoding
    next_row = HEADER_ROWS + 1
    try:
        with open_stream(path, compressed=compressed, options=ReadOptions()) as stream:
            names = _csv_reader(stream, delimiter=delimiter, encoding=encoding).schema.names
        if not any(n.strip().lstrip("\ufeff") for n in names):
            raise UnreadableFile(reason="the first line is blank: a header line is required", row=1)
        text = {n: pa.string() for n in names}
        with open_stream(path, compressed=compressed, options=options) as stream:
            for batch in _csv_reader(stream, delimiter=delimiter, encoding=encoding, column_types=text):
                yield _without_blank_lines(to_text(batch), next_row)
                next_row += batch.num_rows
        if next_row == HEADER_ROWS + 1:
            # a header without rows still names its columns: a missing required one must show
            empty = pa.RecordBatch.from_pylist([], schema=pa.schema([(n, pa.string()) for n in names]))
            yield Block(to_text(empty), next_row)
    except (pa.ArrowInvalid, UnicodeDecodeError, EOFError, OSError) as exc:
        reason = str(exc).splitlines()[0]
        if "Empty CSV file" in reason:
            reason = "the file is empty: a header line is required"
        raise UnreadableFile(reason=reason, row=next_row) from exc


def _without_blank_lines(batch: pa.RecordBatch, first_row: int) -> Block:
    """Drop rows whose every cell is empty (blank lines, ",,,"), numbering the rest as they were."""
    if batch.num_rows == 0:
        return Block(batch, first_row)
    blank = pc.is_null(batch.column(0))
    for column in batch.columns[1:]:
        blank = pc.and_(blank, pc.is_null(column))
    if not pc.any(blank).as_py():
        return Block(batch, first_row)
    keep = pc.invert(blank)
    rows = pa.array(np.arange(first_row, first_row + batch.num_rows, dtype=np.int64)).filter(keep)
    return Block(batch.filter(keep), first_row, rows)


def read_csv(path: Path, *, name: str, compressed: bool, options: ReadOptions) -> Iterator[Block]:
    try:
        delimiter = options.delimiter or sniff_delimiter(path, compressed=compressed, options=options)
    except (OSError, EOFError) as exc:
        raise UnreadableFile(reason=f"cannot read the file: {exc}", row=None) from exc
    return _read(path, name=name, compressed=compressed, options=options, delimiter=delimiter)


def read_tsv(path: Path, *, name: str, compressed: bool, options: ReadOptions) -> Iterator[Block]:
    return _read(path, name=name, compressed=compressed, options=options,
                 delimiter=options.delimiter or "\t")
