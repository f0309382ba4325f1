"""JSON: NDJSON/JSON Lines through pyarrow's streaming JSON reader; JSON arrays through ijson.

pyarrow infers a type per field from the first block and stops when a later record changes it
(``"sku": 123`` then ``"sku": "A-1"``) — legal JSON that partners do send. When the Arrow reader
stops for any reason, the same file is continued from the next unread record by a tolerant
reader on Python's json module, which either copes (every value becomes text anyway) or names the
line that is really broken. JSON arrays have no Arrow reader; ijson (C backend) streams their
elements, so a huge array never sits in memory.
"""

from __future__ import annotations

import io
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path

import ijson
import numpy as np
import pyarrow as pa
import pyarrow.json as pajson

from adapters.readers.base import (
    BLOCK_SIZE,
    PY_BATCH_ROWS,
    Block,
    ReadOptions,
    flatten_record,
    open_stream,
    records_to_batch,
    to_text,
)
from config.errors import UnreadableFile

MAX_DEPTH = 64   # deeper nesting is no catalog; ijson's prefixes would cost O(depth²) memory
_BOM = b"\xef\xbb\xbf"


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _first_byte(path: Path, *, compressed: bool) -> bytes:
    """The first byte that is not whitespace or a BOM ("[", "{", …), or b"" for an empty file."""
    try:
        with open_stream(path, compressed=compressed, options=ReadOptions()) as stream:
            while chunk := stream.read(4096):
                stripped = chunk.lstrip(b" \t\r\n")
                if stripped.startswith(_BOM):
                    stripped = stripped[3:].lstrip(b" \t\r\n")
                if stripped:
                    return stripped[:1]
    except (OSError, EOFError) as exc:          # not gzip, truncated gzip, I/O
        raise UnreadableFile(reason=f"cannot read the file: {exc}") from exc
    return b""


def _skip_bom(stream) -> None:
    if stream.peek(3)[:3] == _BOM:
        stream.read(3)


class _NestingGuard(io.RawIOBase):
    """A read-through stream that refuses JSON nested deeper than ``MAX_DEPTH`` before a parser
    recurses into it (pyarrow's reader crashes the process at some 20,000 levels). A line
    cannot nest deeper than it has opening brackets, so each chunk is checked, vectorized, as
    it passes: the count of ``[``/``{`` per line (false alarms only for lines with more than
    ``MAX_DEPTH`` brackets inside strings, which no catalog row has)."""

    def __init__(self, raw):
        self._raw, self._carry = raw, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = self._raw.readinto(buf)
        if n:
            self._check(np.frombuffer(buf, dtype=np.uint8, count=n))
        return n

    def _check(self, data: np.ndarray) -> None:
        opens = np.cumsum((data == ord("[")) | (data == ord("{")), dtype=np.int64)
        ends = np.flatnonzero((data == ord("\n")) | (data == ord("\r")))
        at_ends = opens[ends]
        per_line = np.diff(at_ends, prepend=0)
        if len(per_line):
            per_line[0] += self._carry
            self._carry = int(opens[-1] - at_ends[-1])
        else:
            self._carry += int(opens[-1])
        if max(per_line.max(initial=0), self._carry) > MAX_DEPTH:
            raise UnreadableFile(reason=f"JSON nested deeper than {MAX_DEPTH} levels (or a line with "
                                        f"more than {MAX_DEPTH} brackets)")


def read_json(path: Path, *, name: str, compressed: bool, options: ReadOptions) -> Iterator[Block]:
    """A ``.json`` file is either one array of objects or one object per line."""
    first = _first_byte(path, compressed=compressed)
    if first == b"[":
        return _read_array(path, compressed=compressed, options=options)
    if first == b"{":
        return read_ndjson(path, name=name, compressed=compressed, options=options)
    if not first:
        raise UnreadableFile(reason="the file is empty", row=None)
    raise UnreadableFile(reason="expected a JSON array of objects or one JSON object per line", row=1)


def _check_array_document(path: Path, *, compressed: bool) -> None:
    """One syntax pass over the whole document before any element is used: a file that is not
    valid JSON (trailing garbage, truncation) or absurdly deep is rejected before anything is
    staged, and ``ijson.items`` never sees pathological nesting."""
    depth = 0
    with open_stream(path, compressed=compressed, options=ReadOptions()) as stream:
        _skip_bom(stream)
        for event, _ in ijson.basic_parse(stream, use_float=True):
            if event in ("start_map", "start_array"):
                depth += 1
                if depth > MAX_DEPTH:
                    raise UnreadableFile(reason=f"JSON nested deeper than {MAX_DEPTH} levels")
            elif event in ("end_map", "end_array"):
                depth -= 1


def _read_array(path: Path, *, compressed: bool, options: ReadOptions) -> Iterator[Block]:
    row = 1
    try:
        _check_array_document(path, compressed=compressed)
        with open_stream(path, compressed=compressed, options=options) as stream:
            _skip_bom(stream)
            items = ijson.items(stream, "item", use_float=True)
            while chunk := list(itertools.islice(items, PY_BATCH_ROWS)):
                records = []
                for offset, item in enumerate(chunk):
                    if not isinstance(item, dict):
                        raise UnreadableFile(reason="array element is not a JSON object", row=row + offset)
                    records.append(flatten_record(item, paths=options.paths))
                yield Block(records_to_batch(records), row)
                row += len(chunk)
    except UnreadableFile:
        raise
    except (ijson.JSONError, UnicodeDecodeError, ValueError, EOFError, OSError) as exc:
        raise UnreadableFile(reason=f"invalid JSON: {str(exc).splitlines()[0]}", row=row) from exc


class _BadLine(Exception):
    def __init__(self, line_no: int, error: Exception):
        self.line_no, self.error = line_no, error


class _Switch(Exception):
    """The Arrow reader met something it would change (inferred timestamps): continue in Python."""


def _arrow_would_rewrite(schema: pa.Schema) -> bool:
    """Timestamps and dates inferred from strings come back reformatted, offsets lost."""
    def bad(t: pa.DataType) -> bool:
        if pa.types.is_struct(t):
            return any(bad(t.field(i).type) for i in range(t.num_fields))
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return bad(t.value_type)
        return pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_time(t)
    return any(bad(f.type) for f in schema)


def _reject_non_finite(batch: pa.RecordBatch, first_row: int) -> None:
    """NaN and Infinity are not JSON; pyarrow's parser lets them through."""
    import pyarrow.compute as pc
    for column in batch.columns:
        if pa.types.is_floating(column.type):
            odd = pc.invert(pc.is_finite(column))
            if pc.any(pc.fill_null(odd, False)).as_py():
                raise UnreadableFile(reason="NaN or Infinity is not a valid JSON value",
                                     row=first_row + pc.index(odd, True).as_py())


def read_ndjson(path: Path, *, name: str, compressed: bool, options: ReadOptions) -> Iterator[Block]:
    first = _first_byte(path, compressed=compressed)
    if not first:
        raise UnreadableFile(reason="the file is empty", row=None)
    row = 1
    try:
        with open_stream(path, compressed=compressed, options=options) as stream:
            reader = pajson.open_json(
                io.BufferedReader(_NestingGuard(stream), buffer_size=BLOCK_SIZE),
                read_options=pajson.ReadOptions(block_size=BLOCK_SIZE),
                parse_options=pajson.ParseOptions(newlines_in_values=False, unexpected_field_behavior="infer"),
            )
            for batch in reader:
                if _arrow_would_rewrite(batch.schema):
                    raise _Switch()
                _reject_non_finite(batch, row)
                yield Block(to_text(batch, options.paths), row)
                row += batch.num_rows
        return
    except (pa.ArrowInvalid, OSError, EOFError, _Switch) as exc:
        arrow_stop = exc
    # The Arrow reader stopped before record ``row``: continue from there, record by record.
    yield from _read_values(path, compressed=compressed, options=options, skip=row - 1, cause=arrow_stop)


def _values(stream) -> Iterator[tuple[int, object]]:
    """(line number, value) for every JSON value, counted the way Arrow counts records: any number
    of values per line, lines ended by \\n, \\r or \\r\\n."""
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    line_no, pending = 0, b""
    while True:
        chunk = stream.read(BLOCK_SIZE)
        data = pending + chunk
        lines = re.split(rb"\r\n|\r|\n", data)
        pending = lines.pop() if chunk else b""
        for raw in lines + ([pending] if not chunk else []):
            line_no += 1
            try:
                text = raw.decode("utf-8")
                pos = 0
                while True:
                    while pos < len(text) and text[pos] in " \t":
                        pos += 1
                    if pos >= len(text):
                        break
                    value, pos = decoder.raw_decode(text, pos)
                    yield line_no, value
            except ValueError as exc:           # JSONDecodeError and UnicodeDecodeError
                raise _BadLine(line_no, exc) from exc
        if not chunk:
            return


def _read_values(path: Path, *, compressed: bool, options: ReadOptions, skip: int,
                 cause: Exception) -> Iterator[Block]:
    row, records, first, line_no = 0, [], skip + 1, 0
    try:
        with open_stream(path, compressed=compressed, options=options) as raw:
            _skip_bom(raw)
            stream = io.BufferedReader(_NestingGuard(raw), buffer_size=BLOCK_SIZE)
            for line_no, value in _values(stream):
                row += 1
                if row <= skip:
                    continue
                if not isinstance(value, dict):
                    raise UnreadableFile(reason=f"line {line_no} is not a JSON object", row=row)
                records.append(flatten_record(value, paths=options.paths))
                if len(records) == PY_BATCH_ROWS:
                    yield Block(records_to_batch(records), first)
                    first, records = row + 1, []
    except _BadLine as bad:
        raise UnreadableFile(reason=f"invalid JSON on line {bad.line_no}: {bad.error}", row=row + 1) from cause
    except (OSError, EOFError) as exc:
        raise UnreadableFile(reason=f"cannot read the file: {exc}", row=row + 1) from exc
    if records:
        yield Block(records_to_batch(records), first)
