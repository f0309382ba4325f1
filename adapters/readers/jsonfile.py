"""JSON: NDJSON/JSON Lines through pyarrow's streaming JSON reader; JSON arrays through ijson.

pyarrow infers a type per field from the first block and stops when a later record changes it
(``"sku": 123`` then ``"sku": "A-1"``) — legal JSON that partners do send. When the Arrow reader
stops for any reason, the same file is continued from the next unread record by a tolerant
reader on Python's json module, which either copes (every value becomes text anyway) or names the
line that is really broken. JSON arrays have no Arrow reader; ijson (C backend) streams their
elements, so a huge array never sits in memory.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Iterator

import ijson
import pyarrow as pa
import pyarrow.json as pajson

from adapters.readers import (
    BLOCK_SIZE, PY_BATCH_ROWS, Block, ReadOptions, flatten_record, open_stream, records_to_batch, to_text,
)
from inbox_daemon.errors import UnreadableFile


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _loads(text: str | bytes):
    return json.loads(text, parse_constant=_reject_constant)


def _first_byte(path: Path, *, compressed: bool) -> bytes:
    with open_stream(path, compressed=compressed, options=ReadOptions()) as stream:
        while chunk := stream.read(4096):
            stripped = chunk.lstrip(b" \t\r\n")
            if stripped.startswith(b"\xef\xbb\xbf"):
                stripped = stripped[3:].lstrip(b" \t\r\n")
            if stripped:
                return stripped[:1]
    return b""


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


MAX_DEPTH = 64   # deeper nesting is no catalog; ijson's prefixes would cost O(depth²) memory


def _check_array_document(path: Path, *, compressed: bool) -> None:
    """One syntax pass over the whole document before any element is used: a file that is not
    valid JSON (trailing garbage, truncation) or absurdly deep is rejected before anything is
    staged, and ``ijson.items`` never sees pathological nesting."""
    depth = 0
    with open_stream(path, compressed=compressed, options=ReadOptions()) as stream:
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
            items = ijson.items(stream, "item", use_float=True)
            while chunk := list(itertools.islice(items, PY_BATCH_ROWS)):
                records = []
                for offset, item in enumerate(chunk):
                    if not isinstance(item, dict):
                        raise UnreadableFile(reason="array element is not a JSON object", row=row + offset)
                    records.append(flatten_record(item))
                yield Block(records_to_batch(records), row)
                row += len(chunk)
    except (ijson.JSONError, UnicodeDecodeError, ValueError, EOFError, OSError) as exc:
        raise UnreadableFile(reason=f"invalid JSON: {str(exc).splitlines()[0]}", row=row) from exc


def read_ndjson(path: Path, *, name: str, compressed: bool, options: ReadOptions) -> Iterator[Block]:
    row = 1
    try:
        with open_stream(path, compressed=compressed, options=options) as stream:
            reader = pajson.open_json(
                stream,
                read_options=pajson.ReadOptions(block_size=BLOCK_SIZE),
                parse_options=pajson.ParseOptions(newlines_in_values=False, unexpected_field_behavior="infer"),
            )
            for batch in reader:
                yield Block(to_text(batch), row)
                row += batch.num_rows
        return
    except (pa.ArrowInvalid, OSError, EOFError) as exc:
        arrow_error = exc
    # The Arrow reader stopped at ``row``: continue from there, record by record.
    yield from _read_lines(path, compressed=compressed, options=options, skip=row - 1,
                           arrow_error=arrow_error)


def _read_lines(path: Path, *, compressed: bool, options: ReadOptions, skip: int,
                arrow_error: Exception) -> Iterator[Block]:
    row, records, first = 0, [], skip + 1
    with open_stream(path, compressed=compressed, options=options) as stream:
        for line_no, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            row += 1
            if row <= skip:
                continue
            try:
                obj = _loads(line)
            except (ValueError, UnicodeDecodeError) as exc:
                raise UnreadableFile(reason=f"invalid JSON on line {line_no}: {exc}", row=row) from arrow_error
            if not isinstance(obj, dict):
                raise UnreadableFile(reason=f"line {line_no} is not a JSON object", row=row)
            records.append(flatten_record(obj))
            if len(records) == PY_BATCH_ROWS:
                yield Block(records_to_batch(records), first)
                first, records = row + 1, []
    if records:
        yield Block(records_to_batch(records), first)
