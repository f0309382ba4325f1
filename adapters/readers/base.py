"""What every format reader shares: the ``Block`` it yields, the ``ReadOptions`` it is given,
the decompressed byte stream of a spooled file (with the gzip-bomb limits), the normalisation
of whatever a parser produced to all-text columns, and a seekable copy for formats that need one.

The format modules import from here, never from the ``adapters.readers`` package: the package
is the registry that imports them, and a format module importing it back would be a cycle.

I/O that the caller must control is passed in, not imported: ``ReadOptions.make_temp`` creates
the temporary copies, so the daemon can make them with the locks that tell crash debris from
live files (``inbox_daemon.tempfiles``) without ``adapters`` importing ``inbox_daemon``.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from config.errors import LimitExceeded, UnreadableFile
from config.model import Limits

BLOCK_SIZE = 1 << 22          # bytes pyarrow reads and parses at a time
TOO_MANY_CELLS = "too_many_cells"   # ``Block.refused_rows``: a row with more cells than the header
CUT_SHORT = "cut_short"             # ``Block.refused_rows``: a short last row, no line break after it
PY_BATCH_ROWS = 20_000        # rows per batch for the readers that go through Python objects


@dataclass(frozen=True)
class Block:
    """One batch of a file: all-text columns; ``first_row`` is the partner's number of its first
    row. ``rows``, when set, numbers each row explicitly (rows were dropped from the batch, e.g.
    blank lines, and the ones after them keep the numbers the partner sees).

    The masks in ``bad_cells``, ``typed_cells`` and ``refused_rows`` are row-aligned with ``batch``: whatever
    drops or reorders rows drops them from the masks too (``filter``), and a block rebuilt with
    other columns keeps them (``dataclasses.replace(block, batch=...)``)."""
    batch: pa.RecordBatch
    first_row: int
    rows: pa.Array | None = None
    # (column, mask) of cells that were not valid text in ``encoding``; shown with U+FFFD
    bad_cells: tuple[tuple[str, pa.Array], ...] = ()
    encoding: str = "utf-8"
    # (column, mask) of cells that were numbers in the file, not text (.xlsx): their text has a
    # "." decimal point, no grouping and no exponent, whatever the partner's locale. Only the
    # columns that hold such a cell are listed.
    typed_cells: tuple[tuple[str, pa.Array], ...] = ()
    # (code, mask) of rows the reader refuses on their own (``TOO_MANY_CELLS``): they are
    # rejected with a diagnostics line, the rest of the file is judged
    refused_rows: tuple[tuple[str, pa.Array], ...] = ()

    def row_numbers(self) -> pa.Array:
        if self.rows is not None:
            return self.rows
        import numpy as np
        return pa.array(np.arange(self.first_row, self.first_row + self.batch.num_rows, dtype=np.int64))

    def typed(self, column: str) -> pa.Array | None:
        """The mask of ``column``'s cells that were numbers in the file; None when none was."""
        return next((mask for name, mask in self.typed_cells if name == column), None)

    def filter(self, keep: pa.Array) -> Block:
        """The rows where ``keep`` is true, with their partner row numbers and cell masks."""
        return replace(
            self, batch=self.batch.filter(keep), rows=self.row_numbers().filter(keep),
            bad_cells=tuple((c, m.filter(keep)) for c, m in self.bad_cells),
            typed_cells=tuple((c, m.filter(keep)) for c, m in self.typed_cells),
            refused_rows=tuple((c, m.filter(keep)) for c, m in self.refused_rows))


def ends_with_line_break(fd: int, size: int) -> bool:
    """Does the open file of ``size`` bytes end with a line break (``\\n``; ``\\r`` of lone-CR
    lines), or is it empty? Whether a writer stopped between two lines, or in one."""
    return size == 0 or os.pread(fd, 1, size - 1) in (b"\n", b"\r")


def plain_temp(folder: Path, prefix: str) -> tuple[int, str]:
    """``ReadOptions.make_temp`` unless the caller passes its own: a plain ``mkstemp``. Nothing
    marks a copy left by a crash as debris; the daemon and ``ingest`` pass locked ones instead."""
    return tempfile.mkstemp(prefix=prefix, dir=folder)


@dataclass(frozen=True)
class ReadOptions:
    encoding: str = "utf-8"           # CSV/TSV only, when no BOM says otherwise; JSON and Parquet are UTF-8
    delimiter: str | None = None      # CSV only; None: by extension, else sniffed from the header
    progress: Callable[[int], None] | None = None   # called with bytes of the file consumed
    paths: tuple[str, ...] = ()       # nested values to extract as columns: "brands[0]", "images[0].uri"
    sheet: str | None = None          # .xlsx: None = the first sheet
    # JSON and XML: where the records are when the document wraps them ("products",
    # "rss/channel/item"): alternatives, the first one the document has is used
    record_path: tuple[str, ...] = ()
    # tried when ``record_path`` is not set (``preset = "auto"``: every preset's); a document that
    # has none of them is read as if nothing were set
    guess_paths: tuple[str, ...] = ()
    # a nested list whose elements become rows of their own ("variants"), each with the
    # record's other fields (see ``expand_record``)
    expand: str | None = None
    header_row: int | None = None     # CSV and .xlsx: the header's line (1-based); None: the first non-blank
    limits: Limits = Limits()
    # creates a temporary file in a folder, with a name prefix: (open descriptor, path)
    make_temp: Callable[[Path, str], tuple[int, str]] = plain_temp


class _Counting(io.RawIOBase):
    """A read-only file that reports how many bytes were consumed (for the progress bar)."""

    def __init__(self, raw, progress: Callable[[int], None]):
        self._raw, self._progress, self._n = raw, progress, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = self._raw.readinto(buf)
        self._n += n or 0
        self._progress(self._n)
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


class _BoundedInflate(io.RawIOBase):
    """A gzip stream that stops a decompression bomb while it inflates: more than
    ``max_uncompressed_bytes`` out, or past the first MiB more than ``max_compression_ratio``
    times the compressed bytes read so far, is ``LimitExceeded`` — never inflated to the end."""

    def __init__(self, compressed, raw_file, limits: Limits):
        self._compressed = compressed
        self._gzip = gzip.GzipFile(fileobj=compressed, mode="rb")
        self._raw_file, self._limits, self._out = raw_file, limits, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = self._gzip.readinto(buf)
        self._out += n
        limits = self._limits
        if self._out > limits.max_uncompressed_bytes:
            raise LimitExceeded(limit="max_uncompressed_bytes",
                                reason=f"the file inflates to more than {limits.max_uncompressed_bytes} bytes")
        consumed = max(self._raw_file.tell(), 1)
        if self._out > (1 << 20) and self._out > limits.max_compression_ratio * consumed:
            raise LimitExceeded(limit="max_compression_ratio",
                                reason=f"the file inflates more than {limits.max_compression_ratio:g} times "
                                       "its compressed size (a decompression bomb?)")
        return n

    def close(self) -> None:
        self._gzip.close()
        self._compressed.close()         # GzipFile leaves a file object it was given open
        super().close()


class ToUtf8(io.RawIOBase):
    """Transcodes a byte stream in any encoding to UTF-8, incrementally. Undecodable bytes are
    carried through unchanged (``surrogateescape``): they arrive as invalid UTF-8 in their cell."""

    def __init__(self, raw, encoding: str):
        self._raw = raw
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="surrogateescape")
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while not self._pending:
            chunk = self._raw.read(BLOCK_SIZE)
            text = self._decoder.decode(chunk, final=not chunk)
            self._pending = text.encode("utf-8", errors="surrogateescape")
            if not chunk:
                break
        n = min(len(buf), len(self._pending))
        buf[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


# byte-order marks of the encodings a UTF-8 parser cannot read, longest first (UTF-32 LE's
# starts with UTF-16 LE's); their codecs consume the mark
_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
              (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


@contextlib.contextmanager
def open_stream(path: Path, *, compressed: bool, options: ReadOptions,
                utf8: bool = False) -> Iterator[io.BufferedIOBase]:
    """The decompressed byte stream of a spooled file; with ``utf8``, a UTF-16 or UTF-32 file
    (told by its byte-order mark: what Windows tools write, PowerShell's ``>`` among them) as
    UTF-8, for parsers that read nothing else (JSON's)."""
    file = open(path, "rb", buffering=0)
    raw = _Counting(file, options.progress) if options.progress else file
    # gzip reads the file itself, unbuffered, so the bomb check compares against the bytes it
    # really consumed, not a read-ahead buffer's
    stream = io.BufferedReader(_BoundedInflate(raw, file, options.limits) if compressed else raw,
                               buffer_size=BLOCK_SIZE)
    shown: io.BufferedIOBase = stream
    if utf8:
        head = stream.peek(4)[:4]
        wide = next((encoding for bom, encoding in _WIDE_BOMS if head.startswith(bom)), None)
        if wide is not None:
            shown = io.BufferedReader(ToUtf8(stream, wide), buffer_size=BLOCK_SIZE)
    try:
        yield shown
    finally:
        shown.close()
        stream.close()


# -- normalisation: whatever types a reader produced, mapping sees text ----------------------

def _json_text(array: pa.Array) -> pa.Array:
    """Nested values (lists, maps) kept as JSON text. Rare in catalog feeds, so done in Python."""
    return pa.array([None if v is None else json.dumps(v, ensure_ascii=False, default=str)
                     for v in array.to_pylist()], pa.string())


_PATH_STEP = re.compile(r"\[(\d+)\]|\.?([^.\[\]]+)")


def parse_path(path: str) -> list[str | int]:
    """``"images[0].uri"`` -> ``["images", 0, "uri"]``."""
    return [int(i) if i else name for i, name in _PATH_STEP.findall(path)]


def _at_path(array: pa.Array, steps: list[str | int]) -> pa.Array | None:
    """The value at ``steps`` inside nested Arrow values, null where a row has none."""
    for step in steps:
        t = array.type
        if isinstance(step, int):
            if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
                return None
            long_enough = pc.fill_null(pc.greater(pc.list_value_length(array), step), False)
            # list_element refuses short lists: those rows get a list of nulls long enough first
            padded = pc.if_else(long_enough, array, pa.scalar([None] * (step + 1), t))
            array = pc.list_element(padded, step)
        else:
            if not pa.types.is_struct(t) or t.get_field_index(step) < 0:
                return None
            array = pc.struct_field(array, [t.get_field_index(step)])
    return array


def to_text(batch: pa.RecordBatch, paths: tuple[str, ...] = ()) -> pa.RecordBatch:
    """Flatten structs to ``a.b`` names and turn every column into strings; ``paths`` that go
    through lists (``brands[0]``) become columns of their own."""
    names: list[str] = []
    arrays: list[pa.Array] = []
    for path in paths:
        steps = parse_path(path)
        if steps and isinstance(steps[0], str) and steps[0] in batch.schema.names:
            found = _at_path(batch.column(steps[0]), steps[1:])
            if found is not None and not (pa.types.is_struct(found.type) or pa.types.is_list(found.type)):
                batch = batch.append_column(path, found)

    for name, column in zip(batch.schema.names, batch.columns):
        _add_text(names, arrays, name, column)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _add_text(names: list[str], arrays: list[pa.Array], name: str, array: pa.Array) -> None:
    """``array`` as text column(s) into ``names`` and ``arrays``: a struct as one column per
    field. A function of the module, not a closure: a closure that calls itself is a reference
    cycle, and would keep every block's columns alive until the garbage collector ran."""
    t = array.type
    if pa.types.is_struct(t):
        for i in range(t.num_fields):
            _add_text(names, arrays, f"{name}.{t.field(i).name}",
                      array.field(i) if array.null_count == 0 else pc.struct_field(array, [i]))
        return
    if pa.types.is_string(t):
        pass
    elif pa.types.is_large_string(t) or pa.types.is_string_view(t):
        array = array.cast(pa.string())
    elif pa.types.is_null(t):
        array = pa.nulls(len(array), pa.string())
    elif pa.types.is_dictionary(t):
        array = array.cast(t.value_type)
        return _add_text(names, arrays, name, array)
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
        try:
            array = array.cast(pa.string())
        except pa.ArrowInvalid:
            raise UnreadableFile(reason=f"column {name!r} is binary, not UTF-8 text") from None
    elif (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_map(t)
          or pa.types.is_fixed_size_list(t)):
        array = _json_text(array)
    else:
        try:
            array = array.cast(pa.string())
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            array = _json_text(array)
    names.append(name.strip().lstrip("\ufeff"))
    arrays.append(array)


def _record_at(obj, steps: list[str | int]):
    for step in steps:
        if isinstance(step, int):
            if not isinstance(obj, list) or len(obj) <= step:
                return None
        elif not isinstance(obj, dict) or step not in obj:
            return None
        obj = obj[step]
    return obj


def flatten_record(obj: dict, prefix: str = "", out: dict | None = None, paths: tuple[str, ...] = ()) -> dict:
    """A parsed JSON object as ``{dotted.name: text}``, the shape ``to_text`` gives Arrow batches."""
    if out is None and not prefix and not paths:
        for value in obj.values():
            if value is not None and type(value) is not str:
                break
        else:
            return obj            # already flat text (most XML records, many JSON ones): as it is
    out = {} if out is None else out
    for path in paths:
        value = _record_at(obj, parse_path(path))
        if value is not None and not isinstance(value, (dict, list)):
            flatten_record({path: value}, "", out)
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flatten_record(value, name + ".", out)
        elif value is None or isinstance(value, str):
            out[name] = value
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value, ensure_ascii=False)
        else:
            out[name] = str(value)
    return out


def _without(obj: dict, steps: list[str]) -> dict:
    """A copy of ``obj`` without the value at ``steps`` (copies along the path only)."""
    out = dict(obj)
    if len(steps) == 1:
        out.pop(steps[0], None)
    elif isinstance(out.get(steps[0]), dict):
        out[steps[0]] = _without(out[steps[0]], steps[1:])
    return out


def expand_record(obj: dict, expand: str | None) -> list[dict]:
    """The rows one record gives: itself, or with ``expand`` naming a nested list
    (``variants``, ``variants.variant``), one row per element: the element's fields under the
    list's name (``variants.sku``) beside every other field of the record, which each row
    inherits. A single object where a list was expected (XML: one ``<variant>``) is a list of
    one; an empty or absent list leaves the record as one row without it."""
    if not expand:
        return [obj]
    steps = expand.split(".")
    items = _record_at(obj, list(steps))
    if items is None:
        return [obj]
    parent = _without(obj, steps)
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list) or not items:
        return [parent]
    return [{**parent, expand: item} for item in items]


def explode(batch: pa.RecordBatch, column: str) -> pa.RecordBatch:
    """``expand_record`` for an Arrow batch: one row per element of the list ``column``, the
    other columns repeated (``take`` by parent index); a row whose list is empty or null stays
    one row, without a value there. A struct (one object) is already one row."""
    if column not in batch.schema.names:
        return batch
    values = batch.column(column)
    t = values.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        return batch
    empty = pc.fill_null(pc.equal(pc.list_value_length(values), 0), True)
    if pc.any(empty).as_py():
        values = pc.if_else(empty, pa.scalar([None], t), values)
    parents = pc.list_parent_indices(values)
    others = batch.drop_columns([column]).take(parents)
    return others.append_column(column, pc.list_flatten(values))


def record_blocks(records: Iterable[dict], options: ReadOptions, first_row: int = 1) -> Iterator[Block]:
    """Parsed records (JSON objects, XML elements as dicts) as text blocks of about
    ``PY_BATCH_ROWS`` rows: each record expanded (``options.expand``), then flattened. Rows are
    numbered as they are made: a record, or an element of its expanded list, is a row."""
    rows: list[dict] = []
    row = first_row
    for record in records:
        for expanded in expand_record(record, options.expand):
            rows.append(flatten_record(expanded, paths=options.paths))
        if len(rows) >= PY_BATCH_ROWS:
            yield Block(records_to_batch(rows), row)
            row += len(rows)
            rows = []
    if rows:
        yield Block(records_to_batch(rows), row)


def records_to_batch(records: list[dict]) -> pa.RecordBatch:
    names: dict[str, None] = {}
    for r in records:
        names.update(dict.fromkeys(r))
    try:
        return pa.RecordBatch.from_pylist(records, schema=pa.schema([(n, pa.string()) for n in names]))
    except UnicodeEncodeError as exc:
        # "\ud800": legal JSON escape syntax, but not a character; text must be valid Unicode
        raise UnreadableFile(reason=f"a value is not valid Unicode (lone surrogate escape): {exc.reason}") from exc


@contextlib.contextmanager
def seekable_copy(path: Path, *, compressed: bool, options: ReadOptions) -> Iterator[Path]:
    """Formats that need random access (Parquet) get a decompressed temporary copy when gzipped."""
    if not compressed:
        if options.progress:
            options.progress(os.path.getsize(path))
        yield path
        return
    fd, tmp = options.make_temp(path.parent, ".unpacked-")
    # the descriptor (and the lock ``make_temp`` may hold on it) stays open until the reader is
    # done with the copy: a start-up beside this process must not take it for a crash's debris
    try:
        with os.fdopen(fd, "wb") as out:
            with open_stream(path, compressed=True, options=options) as src:
                shutil.copyfileobj(src, out, BLOCK_SIZE)
            out.flush()
            yield Path(tmp)
    finally:
        os.unlink(tmp)
