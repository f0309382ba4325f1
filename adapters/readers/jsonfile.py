"""JSON: NDJSON/JSON Lines through pyarrow's streaming JSON reader; JSON arrays through ijson.

pyarrow infers a type per field from the first block and stops when a later record changes it
(``"sku": 123`` then ``"sku": "A-1"``) — legal JSON that partners do send. When the Arrow reader
stops for any reason, the same file is continued from the next unread record by a tolerant
reader on Python's json module, which either copes (every value becomes text anyway) or names the
line that is really broken. JSON arrays have no Arrow reader; ijson (C backend) streams their
elements, so a huge array never sits in memory.

A file that starts with ``{`` may also be one object that holds the records (an API's
``{"products": [...]}``); one syntax pass tells the shapes apart and finds the lists of objects
inside it. ``record_path`` (the partner's or its preset's) says which one holds the records; a
document without one is refused with the key to set. ``expand`` makes each element of a
record's nested list (Shopify's ``variants``) a row of its own: in Arrow (``explode``) for JSON
Lines, per record for the others (``record_blocks``).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import ijson
import numpy as np
import pyarrow as pa
import pyarrow.json as pajson

from adapters.readers.base import (
    BLOCK_SIZE,
    Block,
    ReadOptions,
    explode,
    open_stream,
    record_blocks,
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
        with open_stream(path, compressed=compressed, options=ReadOptions(), utf8=True) as stream:
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
    """A ``.json`` file is one array of objects, one object per line, or one object that holds
    the records (``{"products": [...]}``: ``record_path`` says where)."""
    first = _first_byte(path, compressed=compressed)
    if first == b"[":
        return _read_items(path, "item", compressed=compressed, options=options)
    if first == b"{":
        return _read_object_file(path, name=name, compressed=compressed, options=options)
    if not first:
        raise UnreadableFile(reason="the file is empty", row=None)
    raise UnreadableFile(reason="expected a JSON array of objects or one JSON object per line", row=1)


@dataclass
class _Document:
    """What a syntax pass learnt of a file that starts with ``{``: whether it holds more than one
    top-level value (JSON Lines), and where inside its first value objects are, as ijson
    prefixes (``products``, ``data.items``): lists of objects, with their counts, and objects."""
    more_values: bool = False
    lists: dict[str, int] = field(default_factory=dict)
    objects: set[str] = field(default_factory=set)


_SHOWN_DEPTH = 4        # how deep record containers are looked for (``data.catalog.products``)


def _survey(path: Path, *, compressed: bool) -> _Document:
    """One syntax pass over the first top-level value (the whole document, unless it is JSON
    Lines) before any record is used: a file that is not valid JSON (trailing garbage,
    truncation) or absurdly deep is rejected before anything is staged, ``ijson.items`` never
    sees pathological nesting, and the containers of records are found. ``basic_parse``, not
    ``parse``: ijson's prefixes would cost O(depth²) on a hostile file; the few levels that
    matter keep theirs here (``steps``: per open container, its key or ``item``)."""
    doc, depth = _Document(), 0
    steps: list[str] = []
    with open_stream(path, compressed=compressed, options=ReadOptions(), utf8=True) as stream:
        _skip_bom(stream)
        events = ijson.basic_parse(stream, multiple_values=True, use_float=True)
        for event, value in events:
            if event == "map_key":
                if depth <= _SHOWN_DEPTH + 1:
                    steps[-1] = value
            elif event in ("start_map", "start_array"):
                depth += 1
                if depth > MAX_DEPTH:
                    raise UnreadableFile(reason=f"JSON nested deeper than {MAX_DEPTH} levels")
                if depth <= _SHOWN_DEPTH + 1:
                    if event == "start_map":
                        if steps and steps[-1] == "item":
                            owner = ".".join(steps[:-1])
                            doc.lists[owner] = doc.lists.get(owner, 0) + 1
                        else:
                            doc.objects.add(".".join(steps))
                    steps.append("item" if event == "start_array" else "")
            elif event in ("end_map", "end_array"):
                if depth <= _SHOWN_DEPTH + 1:
                    steps.pop()
                depth -= 1
                if depth == 0:
                    doc.more_values = next(events, None) is not None
                    return doc
    return doc


def _prefix(record_path: str) -> str:
    """``"data/products"`` (how a partner writes it) -> ``"data.products"`` (ijson's prefix)."""
    return ".".join(step for step in record_path.split("/") if step)


def _read_object_file(path: Path, *, name: str, compressed: bool, options: ReadOptions) -> Iterator[Block]:
    """A file that starts with ``{``: JSON Lines (several top-level objects) are read as such;
    one object is either the records' wrapper, read at ``record_path``, or a single record."""
    try:
        doc = _survey(path, compressed=compressed)
    except UnreadableFile:
        raise
    except (ijson.JSONError, UnicodeDecodeError, ValueError, EOFError, OSError):
        # JSON Lines the Python parser refuses at once: the line-by-line reader names the line
        return read_ndjson(path, name=name, compressed=compressed, options=options)
    if doc.more_values:
        return read_ndjson(path, name=name, compressed=compressed, options=options)
    for wanted in options.record_path or options.guess_paths:
        prefix = _prefix(wanted)
        if prefix in doc.lists:
            return _read_items(path, f"{prefix}.item" if prefix else "item", compressed=compressed,
                               options=options, checked=True)
        if prefix in doc.objects:
            return _read_items(path, prefix, compressed=compressed, options=options, checked=True)
    # lists inside records (a product's variants) are no place for records: not suggested
    holders = sorted(((k, n) for k, n in doc.lists.items() if "item" not in k.split(".")), key=lambda kv: -kv[1])
    shown = "; ".join(f'"{k.replace(".", "/")}" holds {n} object{"s" if n != 1 else ""}'
                      for k, n in holders[:3] if k)
    if options.record_path:
        wanted = ", ".join(f'"{p}"' for p in options.record_path)
        raise UnreadableFile(reason=f"record_path {wanted} is not in this JSON document"
                                    + (f"; in it, {shown}" if shown else ": it holds no list of objects"), row=None)
    if holders and holders[0][0]:
        best = holders[0][0].replace(".", "/")
        raise UnreadableFile(
            reason=f"the file is one JSON object that holds the records, not a list of them: {shown}. "
                   f"Set record_path = \"{best}\" for this partner", row=None)
    # one object and no list of objects in it: a file of one record
    return _read_items(path, "", compressed=compressed, options=options, checked=True)


def _read_items(path: Path, prefix: str, *, compressed: bool, options: ReadOptions,
                checked: bool = False) -> Iterator[Block]:
    """The objects at ijson ``prefix`` (``item``: the elements of a top-level array) as rows."""
    row = 1

    def records() -> Iterator[dict]:
        nonlocal row
        with open_stream(path, compressed=compressed, options=options, utf8=True) as stream:
            _skip_bom(stream)
            for item in ijson.items(stream, prefix, use_float=True):
                if not isinstance(item, dict):
                    raise UnreadableFile(reason="array element is not a JSON object", row=row)
                yield item
                row += 1

    try:
        if not checked:
            _survey(path, compressed=compressed)
        yield from record_blocks(records(), options)
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
    row = done = 1          # the next row's number, and the next record's (``expand`` makes several rows of one)
    expand = options.expand
    try:
        if expand and "." in expand:
            raise _Switch()                 # a list inside a nested object: expanded in Python
        # the reader is closed on the way out, whatever stops it: one left to the exception that
        # stopped it lived on with its threads until the interpreter ended, and now and then
        # (1 run in 40) ended the process with std::terminate
        with open_stream(path, compressed=compressed, options=options, utf8=True) as stream, pajson.open_json(
                io.BufferedReader(_NestingGuard(stream), buffer_size=BLOCK_SIZE),
                read_options=pajson.ReadOptions(block_size=BLOCK_SIZE),
                parse_options=pajson.ParseOptions(newlines_in_values=False, unexpected_field_behavior="infer"),
        ) as reader:
            for batch in reader:
                if _arrow_would_rewrite(batch.schema):
                    raise _Switch()
                _reject_non_finite(batch, done)
                records = batch.num_rows
                if expand:
                    batch = explode(batch, expand)
                yield Block(to_text(batch, options.paths), row)
                row += batch.num_rows
                done += records
        return
    except (pa.ArrowInvalid, OSError, EOFError, _Switch) as exc:
        arrow_stop = exc
    # The Arrow reader stopped before record ``done``: continue from there, record by record.
    yield from _read_values(path, compressed=compressed, options=options, skip=done - 1, first_row=row,
                            cause=arrow_stop)


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


def _read_values(path: Path, *, compressed: bool, options: ReadOptions, skip: int, first_row: int,
                 cause: Exception) -> Iterator[Block]:
    row, line_no = 0, 0

    def records() -> Iterator[dict]:
        nonlocal row, line_no
        with open_stream(path, compressed=compressed, options=options, utf8=True) as raw:
            _skip_bom(raw)
            stream = io.BufferedReader(_NestingGuard(raw), buffer_size=BLOCK_SIZE)
            for line_no, value in _values(stream):
                row += 1
                if row <= skip:
                    continue
                if not isinstance(value, dict):
                    raise UnreadableFile(reason=f"line {line_no} is not a JSON object", row=row)
                yield value

    try:
        yield from record_blocks(records(), options, first_row)
    except _BadLine as bad:
        raise UnreadableFile(reason=f"invalid JSON on line {bad.line_no}: {bad.error}", row=row + 1) from cause
    except (OSError, EOFError) as exc:
        raise UnreadableFile(reason=f"cannot read the file: {exc}", row=row + 1) from exc
