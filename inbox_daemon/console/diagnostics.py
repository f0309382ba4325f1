"""A job's diagnostics file as the console shows it: the count per code, with a few example lines
each (as a merchant center shows feed issues), the count per column, and the lines matching a
code and a column, a page at a time.

The file is read with pyarrow's streaming CSV reader, a block at a time, and counted with Arrow's
group-by: memory stays the same whatever the file's size. A diagnostics file never changes once
written (a new attempt writes a new one), so its summary is kept, keyed by size and mtime.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from adapters.validation import DIAGNOSTICS_SCHEMA

EXAMPLES = 3              # example lines per code
BLOCK = 1 << 20           # bytes per block read


@dataclass(frozen=True)
class CodeCount:
    code: str
    severity: str
    count: int
    examples: tuple[dict, ...]


@dataclass(frozen=True)
class Summary:
    lines: int
    codes: tuple[CodeCount, ...]                # most frequent first
    columns: tuple[tuple[str, int], ...]        # (column, lines), most frequent first


@dataclass(frozen=True)
class Lines:
    rows: list[dict]
    more: bool                                  # lines match beyond this page


def summary(path: Path) -> Summary | None:
    """The file's counts and examples; None when there is no such file."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return _summary(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _summary(path: str, size: int, mtime_ns: int) -> Summary:
    counts: Counter[tuple[str, str]] = Counter()
    by_column: Counter[str] = Counter()
    examples: dict[str, list[dict]] = {}
    lines = 0
    for batch in _batches(Path(path)):
        table = pa.Table.from_batches([batch])
        lines += table.num_rows
        for row in table.group_by(["code", "severity"]).aggregate([([], "count_all")]).to_pylist():
            counts[(row["code"] or "", row["severity"] or "")] += row["count_all"]
        for row in table.group_by("column").aggregate([([], "count_all")]).to_pylist():
            by_column[row["column"] or ""] += row["count_all"]
        for code, _ in counts:
            have = examples.setdefault(code, [])
            if len(have) < EXAMPLES:
                have += table.filter(_equal(table.column("code"), code)).slice(0, EXAMPLES - len(have)).to_pylist()
    codes = tuple(CodeCount(code, severity, n, tuple(examples.get(code, ())))
                  for (code, severity), n in counts.most_common())
    return Summary(lines, codes, tuple(by_column.most_common()))


def matching(path: Path, *, code: str | None, column: str | None, offset: int, limit: int) -> Lines:
    """Lines with this code and column (None: any), from the ``offset``-th match on; the read
    stops once the page is full."""
    rows: list[dict] = []
    skip = offset
    try:
        for batch in _batches(path):
            table = pa.Table.from_batches([batch])
            mask = None
            for name, wanted in (("code", code), ("column", column)):
                if wanted is not None:
                    match = _equal(table.column(name), wanted)
                    mask = match if mask is None else pc.and_(mask, match)
            found = table.filter(mask) if mask is not None else table
            if skip >= found.num_rows:
                skip -= found.num_rows
                continue
            found = found.slice(skip)
            skip = 0
            rows += found.slice(0, limit + 1 - len(rows)).to_pylist()
            if len(rows) > limit:
                break
    except FileNotFoundError:
        pass
    return Lines(rows[:limit], len(rows) > limit)


def _equal(values: pa.ChunkedArray, wanted: str) -> pa.ChunkedArray:
    return pc.fill_null(pc.equal(values, pa.scalar(wanted, pa.string())), wanted == "")


def _batches(path: Path) -> Iterator[pa.RecordBatch]:
    with pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=BLOCK),
                        convert_options=pacsv.ConvertOptions(
                            column_types=DIAGNOSTICS_SCHEMA, strings_can_be_null=False,
                            quoted_strings_can_be_null=False)) as reader:
        yield from reader
