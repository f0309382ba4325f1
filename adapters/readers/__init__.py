"""Format readers: a spooled file in, a stream of all-text Arrow ``RecordBatch``es out.

One module per format; ``FORMATS`` maps a format name to its reader and is the only place a
format is chosen. Every reader yields ``Block``s whose columns are strings (nested objects
flattened to ``parent.child`` names), so mapping and validation see one shape whatever the file
was. Readers stream: memory stays flat whatever the file size.

This package is the registry: what the readers share is in ``base``, each format in a module
of its own, and the names the rest of the code uses are re-exported here.

Failures of the underlying parsers (pyarrow, ijson, lxml, codecs) are mapped by the readers, at the
boundary, to ``UnreadableFile`` with the row the reader had reached.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from pathlib import Path

from adapters.readers.base import BLOCK_SIZE, Block, ReadOptions, ends_with_line_break
from config.errors import LimitExceeded, UnknownFormat

# what the rest of the code imports from the package; BLOCK_SIZE, Block, ReadOptions and
# ends_with_line_break live in base
__all__ = ["BLOCK_SIZE", "FORMATS", "Block", "ReadOptions", "detect_format", "ends_with_line_break", "read_blocks",
           "reader"]

# format -> (module, reader function). A reader's module is imported when a file of its format
# is first read: lxml, ijson and pyarrow.parquet are ~40 ms of start-up that a command reading a
# CSV file does not need.
FORMATS: dict[str, tuple[str, str]] = {
    "csv": ("csvfile", "read_csv"),
    "tsv": ("csvfile", "read_tsv"),
    "json": ("jsonfile", "read_json"),
    "ndjson": ("jsonfile", "read_ndjson"),
    "parquet": ("parquetfile", "read_parquet"),
    "xlsx": ("xlsxfile", "read_xlsx"),
    "xml": ("xmlfile", "read_xml"),
}


def reader(fmt: str) -> Callable[..., Iterator[Block]]:
    """The reader of format ``fmt`` (a key of ``FORMATS``)."""
    module, function = FORMATS[fmt]
    return getattr(importlib.import_module(f"adapters.readers.{module}"), function)


_COMPRESSED = (".gz", ".gzip")
DEFAULT_OPTIONS = ReadOptions()
_BY_EXTENSION = {
    ".csv": "csv", ".txt": "csv", ".tsv": "tsv", ".tab": "tsv",
    ".json": "json", ".ndjson": "ndjson", ".jsonl": "ndjson",
    ".parquet": "parquet", ".pq": "parquet", ".xlsx": "xlsx", ".xml": "xml",
}


def split_name(name: str) -> tuple[str, bool]:
    """``"feed.csv.gz"`` -> (``".csv"``, compressed=True)."""
    suffixes = [s.lower() for s in Path(name).suffixes]
    compressed = bool(suffixes) and suffixes[-1] in _COMPRESSED
    if compressed:
        suffixes = suffixes[:-1]
    return (suffixes[-1] if suffixes else ""), compressed


def detect_format(name: str) -> str:
    ext, _ = split_name(name)
    try:
        return _BY_EXTENSION[ext]
    except KeyError:
        raise UnknownFormat(name=name, known=sorted(FORMATS)) from None


def read_blocks(path: Path, *, name: str, fmt: str | None = None,
                options: ReadOptions = DEFAULT_OPTIONS) -> Iterator[Block]:
    """Stream ``path`` (spooled copy of ``name``) as text blocks in format ``fmt`` or the guessed one."""
    fmt = fmt or detect_format(name)
    if fmt not in FORMATS:
        raise UnknownFormat(name=name, known=sorted(FORMATS))
    _, compressed = split_name(name)
    max_columns = options.limits.max_columns
    for block in reader(fmt)(path, name=name, compressed=compressed, options=options):
        if block.batch.num_columns > max_columns:
            raise LimitExceeded(limit="max_columns", row=block.first_row,
                                reason=f"{block.batch.num_columns} columns, more than {max_columns}")
        yield block
