"""CSV and TSV through pyarrow's streaming CSV reader.

Every column is read as text: inference per block would turn ``00123`` into 123 and fail on a
later block whose values no longer fit the first block's type. The header is read once to learn
the column names, then the file is streamed with those names typed as bytes and checked as
UTF-8 a column at a time, so a cell that is not valid text rejects its own row (with a
diagnostics line) instead of the whole file. Most files are clean UTF-8 throughout: one pass
over the bytes says so (``_clean_text``, which also measures the lines), and then pyarrow reads
the file itself, as text, with nothing to check per cell.

Encodings: a UTF-8, UTF-16 or UTF-32 byte-order mark decides; otherwise the partner's
``encoding``. Anything but UTF-8 is transcoded to UTF-8 on the way in; bytes the encoding cannot
decode travel through as invalid UTF-8 (``surrogateescape``) and are caught by the same check.
Line endings may be ``\\n``, ``\\r\\n`` or a lone ``\\r``, mixed; quoted cells may hold newlines.

Blanks before an opening quote (``"sku", "product_online"``, as Magento's own sample imports are
written) are not part of the value, as for PHP's ``fgetcsv`` and Python's ``skipinitialspace``;
pyarrow would keep the quotes as text. When the file's first 64 KiB show that layout, the byte
stream loses those blanks on its way to pyarrow (``_SpaceBeforeQuote``); other files are untouched.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from adapters.readers.base import (
    BLOCK_SIZE,
    CUT_SHORT,
    PY_BATCH_ROWS,
    TOO_MANY_CELLS,
    Block,
    ReadOptions,
    ToUtf8,
    ends_with_line_break,
    open_stream,
    to_text,
)
from config.errors import LimitExceeded, UnreadableFile
from config.model import Limits

CANDIDATE_DELIMITERS = (",", ";", "\t", "|")
HEADER_ROWS = 1
SPACED_QUOTES_SAMPLE = 1 << 16    # characters of the file's start that tell the blanks-before-quotes layout
_BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)


def detect_encoding(head: bytes, default: str) -> str:
    """The encoding a byte-order mark names, else the partner's."""
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name
    return default


def _is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")


class _LineLengths:
    """Refuses a physical line longer than ``limit`` as the file's bytes go past, chunk after
    chunk, so a file that is one endless line is rejected before a parser tries to hold it. Per
    chunk, not per line: the first and last break (memchr), or with numpy the distances between
    all breaks of a chunk longer than the limit."""

    def __init__(self, limit: int):
        self._limit, self._run = limit, 0

    def see(self, chunk: memoryview) -> None:
        n = len(chunk)
        if not n:
            return
        if n <= self._limit:
            # a chunk no longer than the limit holds no long line between two of its breaks:
            # only the line running in and the one running out can be too long (memchr, not numpy)
            first, last = _edge_breaks(chunk)
            inner = 0
        else:
            data = np.frombuffer(chunk, dtype=np.uint8)
            breaks = np.flatnonzero((data == 10) | (data == 13))
            first, last = (int(breaks[0]), int(breaks[-1])) if len(breaks) else (-1, -1)
            inner = int(np.diff(breaks).max()) if len(breaks) > 1 else 0
        longest = max(self._run + (first if first >= 0 else n), inner)
        self._run = self._run + n if last < 0 else n - 1 - last
        if longest > self._limit:
            raise LimitExceeded(limit="max_line_bytes", reason=f"a line is longer than {self._limit} bytes")


class _LineGuard(io.RawIOBase):
    """A byte stream whose lines ``_LineLengths`` checks as they stream past."""

    def __init__(self, raw, limit: int):
        self._raw, self._lines = raw, _LineLengths(limit)

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = self._raw.readinto(buf)
        if n:
            self._lines.see(memoryview(buf)[:n])
        return n


_BREAK = re.compile(rb"[\r\n]")
_TAIL = 1 << 16        # bytes at a chunk's end searched first for its last break (doubled till found)


def _edge_breaks(chunk: memoryview) -> tuple[int, int]:
    """(first, last) position of a line break in ``chunk``, -1 if it has none, without copying
    the chunk (4 MiB of fresh memory per read): the first found in place, the last in a copy of
    the chunk's end that doubles until it holds a break."""
    found = _BREAK.search(chunk)
    if found is None:
        return -1, -1
    width = _TAIL
    while True:
        start = max(len(chunk) - width, 0)
        tail = bytes(chunk[start:])
        last = max(tail.rfind(b"\n"), tail.rfind(b"\r"))
        if last >= 0:
            return found.start(), start + last
        width *= 2


def _utf8_whole(chunk: memoryview) -> int:
    """How much of ``chunk`` is whole UTF-8 characters: a character its end cuts in two waits
    for the next chunk."""
    n = len(chunk)
    for back in range(1, min(4, n) + 1):
        lead = chunk[n - back]
        if lead & 0xC0 != 0x80:                  # not a continuation byte: where a character starts
            width = 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
            return n - back if back < width else n
    return n


def _valid_utf8(chunk: memoryview) -> bool:
    """Arrow's UTF-8 validation of ``chunk`` as one value, in place."""
    offsets = pa.py_buffer(np.array([0, len(chunk)], dtype=np.int64))
    try:
        pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, pa.py_buffer(chunk)]).cast(pa.large_string())
    except pa.ArrowInvalid:
        return False
    return True


def _clean_text(path: Path, limit: int) -> bool:
    """Is the (uncompressed) file valid UTF-8 with no NUL anywhere? One pass through a reused
    buffer (a few hundredths of a second per 100 MB), which also refuses a line longer than
    ``limit`` (``_LineLengths``; the guard does it for the files that answer no). A clean file
    goes to pyarrow as it is: read natively, with no Python between the parser and the file,
    its cells typed as text at once, with no check per cell (``_as_text``)."""
    with open(path, "rb", buffering=0) as file:
        # no larger than the file (+4: a read that ends it): a burst's small files each zeroed
        # 4 MiB for nothing
        buf = bytearray(min(BLOCK_SIZE, os.fstat(file.fileno()).st_size + 4))
        view, lines, held = memoryview(buf), _LineLengths(limit), 0
        while n := file.readinto(view[held:]):
            lines.see(view[held:held + n])
            if buf.find(b"\0", held, held + n) >= 0:
                return False
            n += held
            whole = _utf8_whole(view[:n])
            if not _valid_utf8(view[:whole]):
                return False
            held = n - whole
            view[:held] = view[whole:n]
    return not held                # a character cut short by the file's end


_QUOTE, _SPACE, _TAB, _LF, _CR = 0x22, 0x20, 0x09, 0x0A, 0x0D


def _blanks_before_quotes(data: np.ndarray, *, delimiter: int, quoted: bool) -> tuple[np.ndarray, bool]:
    """Positions in ``data`` of the blanks (spaces, tabs unless tab delimits) between the start of
    a field (after the delimiter or a line break) and its opening quote, and whether ``data``
    ends inside a quoted value. ``data[0]`` is context, the byte before, already passed on and
    never a blank; ``quoted`` says whether it left a quoted value open.

    Inside or outside a quoted value is told by the parity of the quotes before a byte (``""``
    inside one counts twice), so every other quote opens one: vectorized over the quotes, not the
    bytes. A quote in the middle of an unquoted cell (``5" tall``) would upset the count, which
    is why only files that show the layout get here."""
    quotes = np.flatnonzero(data == _QUOTE)
    if quotes.size and quotes[0] == 0:
        quotes = quotes[1:]                       # the context's quote was counted with its chunk
    still_quoted = bool((len(quotes) + quoted) % 2)
    blank = data == _SPACE
    if delimiter != _TAB:
        blank |= data == _TAB
    opening = quotes[int(quoted)::2]
    opening = opening[blank[opening - 1]]
    if not opening.size:
        return opening, still_quoted
    # where the blanks before each opening quote start (data[0] is never blank): a step back at
    # a time for the usual one or two, then from the starts of all runs for longer ones
    start = opening - 1
    for _ in range(4):
        more = blank[start - 1]
        if not more.any():
            break
        start[more] -= 1
    else:
        run_starts = np.flatnonzero(blank[1:] & ~blank[:-1]) + 1
        start = run_starts[np.searchsorted(run_starts, start, side="right") - 1]
    at_field_start = np.isin(data[start - 1], (delimiter, _LF, _CR))
    start, end = start[at_field_start], opening[at_field_start]
    lengths = end - start
    first = np.cumsum(lengths) - lengths              # where each run's positions begin in the result
    return np.repeat(start - first, lengths) + np.arange(lengths.sum()), still_quoted


def _spaced_quotes(sample: str, delimiter: str) -> bool:
    """Does the start of the file have blanks before opening quotes (``"a", "b"``)?"""
    sample = sample[:SPACED_QUOTES_SAMPLE]
    if len(delimiter) != 1 or ord(delimiter) > 0x7F or (' "' not in sample and '\t"' not in sample):
        return False                     # two substring searches: a plain file's whole cost
    data = np.frombuffer(b"\n" + sample.encode("utf-8", errors="surrogateescape"), dtype=np.uint8)
    return bool(_blanks_before_quotes(data, delimiter=ord(delimiter), quoted=False)[0].size)


class _SpaceBeforeQuote(io.RawIOBase):
    """Drops the blanks between a field's start and its opening quote from a UTF-8 byte stream,
    a chunk at a time with numpy (see ``_blanks_before_quotes``), so pyarrow reads ``, "x, y"``
    as the quoted value ``x, y``. Blanks that end a chunk wait for the next byte."""

    def __init__(self, raw, delimiter: str):
        self._raw, self._delimiter = raw, ord(delimiter)
        self._context = b"\n"          # the byte before what is held: a file starts a line
        self._held = b""                # trailing blanks of the last chunk, not decided yet
        self._quoted = False
        self._pending = memoryview(b"")
        self._strip = b" " if self._delimiter == _TAB else b" \t"

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while not self._pending:
            chunk = self._raw.read(BLOCK_SIZE)
            if not chunk:
                self._pending, self._held = memoryview(self._held), b""
                break
            data = self._context + self._held + chunk
            end = len(data.rstrip(self._strip))          # >= 1: the context is never a blank
            body = np.frombuffer(data, dtype=np.uint8, count=end)
            drop, self._quoted = _blanks_before_quotes(body, delimiter=self._delimiter, quoted=self._quoted)
            keep = np.ones(end, dtype=bool)
            keep[0] = False                              # the context, passed on before
            keep[drop] = False
            self._pending = memoryview(body[keep].data)
            self._context, self._held = data[end - 1:end], data[end:]
        n = min(len(buf), len(self._pending))
        buf[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _line_limit(options: ReadOptions) -> int:
    # pyarrow holds a row within one read block: longer lines can never be read anyway
    return min(options.limits.max_line_bytes, BLOCK_SIZE)


def _text_stream(path: Path, *, compressed: bool, options: ReadOptions, encoding: str, progress: bool,
                 spaced_delimiter: str | None = None, native: bool = False):
    """The file as a guarded UTF-8 byte stream (a context manager); with ``spaced_delimiter``,
    without the blanks before opening quotes. ``native``: the file is clean UTF-8 text
    (``_clean_text``), given to pyarrow as an Arrow file: the caller tells the progress
    from its position."""
    import contextlib

    @contextlib.contextmanager
    def opened():
        if native:
            with pa.OSFile(str(path)) as file:
                yield file
            return
        with open_stream(path, compressed=compressed, options=options if progress else
                         ReadOptions(limits=options.limits)) as stream:
            raw = stream if _is_utf8(encoding) else ToUtf8(stream, encoding)
            guarded: io.RawIOBase = _LineGuard(raw, _line_limit(options))
            if spaced_delimiter is not None:
                guarded = _SpaceBeforeQuote(guarded, spaced_delimiter)
            yield io.BufferedReader(guarded, buffer_size=BLOCK_SIZE)
    return opened()


_LINE_BREAK = re.compile(r"\r\n|\n|\r")     # the line breaks pyarrow splits rows at


def _header(path: Path, *, compressed: bool, options: ReadOptions) -> tuple[str, str, str, int]:
    """(encoding, header line, the first MiB as text, lines before the header) from the first
    bytes of the file, checked against the limits. The header is on line ``header_row`` when
    the partner says so (title rows above it); else lines of nothing but whitespace before it
    (what a plugin prints ahead of an export) are not the header: they are skipped. Either way,
    the rows keep the numbers a spreadsheet shows."""
    limits: Limits = options.limits
    with open_stream(path, compressed=compressed, options=ReadOptions(limits=limits)) as stream:
        head = stream.read(min(limits.max_line_bytes, 1 << 20) + 4)
    encoding = detect_encoding(head, options.encoding)
    text = codecs.decode(head, encoding, errors="replace") if head else ""
    text = text.lstrip("\ufeff")
    lines = _LINE_BREAK.split(text)
    if options.header_row is not None:
        leading = options.header_row - 1
        if leading >= len(lines) - 1 and not (leading == len(lines) - 1 and lines[-1]):
            raise UnreadableFile(reason=f"header_row is {options.header_row}, but the file's first MiB has "
                                        f"{len(lines) - 1} lines", row=None)
    else:
        leading = next((i for i, line in enumerate(lines) if line.strip().lstrip("\ufeff")), 0)
    first_line = lines[leading].lstrip("\ufeff") if text.strip() else ""
    if len(first_line.encode("utf-8", errors="replace")) > min(limits.max_line_bytes, 1 << 20):
        raise LimitExceeded(limit="max_line_bytes", row=1,
                            reason=f"the header line is longer than {min(limits.max_line_bytes, 1 << 20)} bytes")
    return encoding, first_line, text, leading


def sniff_delimiter(header: str) -> str:
    """The candidate that appears most often in the header line (ties: comma)."""
    counts = {d: header.count(d) for d in CANDIDATE_DELIMITERS}
    best = max(CANDIDATE_DELIMITERS, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","


def _csv_reader(stream, *, delimiter: str, column_types=None, skip_rows: int = 0, check_utf8: bool = True):
    read = pacsv.ReadOptions(block_size=BLOCK_SIZE, encoding="utf8", skip_rows=skip_rows)
    # blank lines are kept as rows, so later rows keep the numbers a spreadsheet shows
    parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True, ignore_empty_lines=False)
    convert = pacsv.ConvertOptions(
        column_types=column_types or {}, strings_can_be_null=True, quoted_strings_can_be_null=True,
        null_values=[""], check_utf8=check_utf8,
    )
    return pacsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert)


def _bad_rows(values: pa.Array) -> np.ndarray:
    """Positions of the cells of a binary column that are not valid UTF-8: bisection with
    Arrow's own validation, so a clean half is cleared in one vectorized check."""
    bad: list[int] = []

    def search(lo: int, hi: int) -> None:
        try:
            values.slice(lo, hi - lo).cast(pa.string())
            return
        except pa.ArrowInvalid:
            if hi - lo == 1:
                bad.append(lo)
                return
        mid = (lo + hi) // 2
        search(lo, mid)
        search(mid, hi)
    search(0, len(values))
    return np.array(bad, dtype=np.int64)


def _has_nul(values: pa.Array) -> bool:
    """One pass over the column's value bytes: is there a NUL anywhere?"""
    data = values.buffers()[2]
    return data is not None and np.frombuffer(data, dtype=np.uint8).min(initial=1) == 0


def _as_text(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, tuple[tuple[str, pa.Array], ...]]:
    """Binary columns as strings. Cells that are not UTF-8, or that hold a NUL (which no text
    column downstream can store), are shown with U+FFFD and reported."""
    arrays, bad_cells = [], []
    for name, column in zip(batch.schema.names, batch.columns):
        mask = None
        try:
            text = column.cast(pa.string())
        except pa.ArrowInvalid:
            positions = _bad_rows(column)
            mask = np.zeros(len(column), dtype=bool)
            mask[positions] = True
            shown = [column[int(i)].as_py().decode("utf-8", errors="replace") for i in positions]
            text = pc.replace_with_mask(column, pa.array(mask), pa.array(shown, pa.binary())).cast(pa.string())
            mask = pa.array(mask)
        if _has_nul(column):
            nul = pc.fill_null(pc.match_substring(text, "\x00"), False)
            text = pc.replace_substring(text, "\x00", "\ufffd")
            mask = nul if mask is None else pc.or_(mask, nul)
        arrays.append(text)
        if mask is not None:
            bad_cells.append((name.strip().lstrip("\ufeff"), mask))
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names), tuple(bad_cells)


def _read(path: Path, *, name: str, compressed: bool, options: ReadOptions,
          delimiter: str | None) -> Iterator[Block]:
    next_row = HEADER_ROWS + 1
    try:
        encoding, header, sample, leading = _header(path, compressed=compressed, options=options)
        next_row += leading
        delimiter = delimiter or sniff_delimiter(header)
        spaced = delimiter if _spaced_quotes(sample, delimiter) else None
        if header.count(delimiter) + 1 > options.limits.max_columns:
            raise LimitExceeded(limit="max_columns", row=1,
                                reason=f"the header has more than {options.limits.max_columns} columns")
        shown_encoding = "UTF-8" if _is_utf8(encoding) else encoding
        native = (not compressed and spaced is None and _is_utf8(encoding)
                  and _clean_text(path, _line_limit(options)))
        try:
            with _text_stream(path, compressed=compressed, options=options, encoding=encoding,
                              progress=False, spaced_delimiter=spaced, native=native) as stream:
                names = _csv_reader(stream, delimiter=delimiter, skip_rows=leading).schema.names
            # by the names pyarrow reads: as bytes, each cell checked as text (``_as_text``),
            # unless the whole file is known to be clean text
            cell_types = {n: pa.string() if native else pa.binary() for n in names}
            if leading and names:       # a BOM or blanks after the skipped lines: not the name's
                names[0] = names[0].strip().lstrip("\ufeff").strip()
        except UnicodeDecodeError as exc:       # rows are checked per cell; names must decode
            raise UnreadableFile(reason=f"the header line is not valid {shown_encoding} text "
                                        "(is the partner's encoding set?)", row=1) from exc
        except pa.ArrowInvalid as exc:
            if _RAGGED.search(str(exc)):        # pyarrow parses a whole block to know the names
                names = next(csv.reader([header], delimiter=delimiter, skipinitialspace=spaced is not None))
                names = [n.strip().lstrip("\ufeff").strip() for n in names]
                yield from _read_ragged(path, compressed=compressed, options=options, encoding=encoding,
                                        spaced=spaced, delimiter=delimiter, names=names,
                                        skip=leading + 1, first_row=next_row, shown_encoding=shown_encoding)
                return
            if "Empty CSV file" not in str(exc) or not header.strip():
                raise
            # one header line and nothing after it, not even a line break: no rows to read
            names = next(csv.reader([header], delimiter=delimiter, skipinitialspace=spaced is not None))
            yield Block(to_text(pa.RecordBatch.from_pylist(
                [], schema=pa.schema([(n, pa.string()) for n in names]))), next_row)
            return
        if not any(n.strip().lstrip("\ufeff") for n in names):
            raise UnreadableFile(reason="the first line is blank: a header line is required", row=1)
        first_data_row = next_row
        try:
            with _text_stream(path, compressed=compressed, options=options, encoding=encoding,
                              progress=True, spaced_delimiter=spaced, native=native) as stream, \
                    _csv_reader(stream, delimiter=delimiter, column_types=cell_types, skip_rows=leading,
                                check_utf8=not native) as reader:
                # closed on the way out, whatever stops it (``jsonfile.read_ndjson`` says why)
                for n, batch in enumerate(reader, start=1):
                    if native and options.progress:
                        # pyarrow reads ahead of what it has parsed: a batch is a block's rows
                        options.progress(min(n * BLOCK_SIZE, stream.tell()))
                    yield _block(pa.RecordBatch.from_arrays(batch.columns, names=names), next_row, shown_encoding,
                                 clean=native)
                    next_row += batch.num_rows
                if native and options.progress:
                    options.progress(stream.tell())
        except pa.ArrowInvalid as exc:
            if not _RAGGED.search(str(exc)):
                raise
            # a row with fewer or more cells than the header: pyarrow stops at its block; the
            # rows from there on are read by the tolerant reader, which pads or refuses them
            yield from _read_ragged(path, compressed=compressed, options=options, encoding=encoding,
                                    spaced=spaced, delimiter=delimiter, names=names,
                                    skip=leading + 1 + next_row - first_data_row, first_row=next_row,
                                    shown_encoding=shown_encoding)
            return
        if next_row == HEADER_ROWS + 1 + leading:
            # a header without rows still names its columns: a missing required one must show
            empty = pa.RecordBatch.from_pylist([], schema=pa.schema([(n, pa.string()) for n in names]))
            yield Block(to_text(empty), next_row)
    except (pa.ArrowInvalid, UnicodeDecodeError, EOFError, OSError, csv.Error) as exc:
        reason = str(exc).splitlines()[0]
        if "Empty CSV file" in reason:
            reason = "the file is empty: a header line is required"
        elif "straddles two block boundaries" in reason:
            raise LimitExceeded(limit="max_line_bytes", row=next_row,
                                reason=f"a row is larger than {BLOCK_SIZE >> 20} MiB, the most one row may hold") from exc
        raise UnreadableFile(reason=reason, row=next_row) from exc


def _block(batch: pa.RecordBatch, first_row: int, encoding: str,
           refused_rows: tuple[tuple[str, pa.Array], ...] = (), *, clean: bool = False) -> Block:
    """A batch of binary columns (text ones, from a ``clean`` file) as a text block: cells
    checked as text (``_as_text``; a clean file's need not be), blank lines dropped with the
    rest keeping their numbers, the masks following the rows kept."""
    text, bad_cells = (batch, ()) if clean else _as_text(batch)
    block = _without_blank_lines(to_text(text), first_row)
    if bad_cells or refused_rows:
        kept = _kept(batch, first_row, block) if block.rows is not None else None
        bad_cells, refused_rows = (tuple((c, m.filter(kept) if kept is not None else m) for c, m in masks)
                                   for masks in (bad_cells, refused_rows))
        block = Block(block.batch, block.first_row, block.rows, bad_cells, encoding, refused_rows=refused_rows)
    return block


# pyarrow's words for a row whose cells are not as many as the header's columns
_RAGGED = re.compile(r"Expected \d+ columns, got \d+")


def _text_column(cells: tuple[str, ...]) -> pa.Array:
    """Cells from Python's csv module as an Arrow column; text that holds undecodable bytes
    (``surrogateescape``) goes as bytes, for ``_as_text`` to find and report."""
    try:
        return pa.array(cells, pa.string())
    except (UnicodeEncodeError, pa.ArrowInvalid):
        return pa.array([c.encode("utf-8", "surrogateescape") for c in cells], pa.binary())


def _read_ragged(path: Path, *, compressed: bool, options: ReadOptions, encoding: str, spaced: str | None,
                 delimiter: str, names: list[str], skip: int, first_row: int,
                 shown_encoding: str) -> Iterator[Block]:
    """The tolerant reader, for files whose rows do not all have the header's number of cells
    (WooCommerce's exporter writes in batches and adds columns as later batches find them):
    Python's csv module, from the ``skip``-th record on. A short row is padded with empty cells;
    a row with more non-empty cells than the header has columns is refused on its own line
    (``TOO_MANY_CELLS``), its first cells kept so that its diagnostics line shows its SKU.
    ``zip_longest`` transposes and pads a batch of rows at once; no loop per row in Python.
    The file's last row is not padded when the file ends without a line break: short, it is
    where an upload was cut off (``CUT_SHORT``), and its last cell may be cut too."""
    width = len(names)
    csv.field_size_limit(max(csv.field_size_limit(), options.limits.max_line_bytes))
    row = first_row
    if compressed:
        unterminated = False
    else:
        with open(path, "rb") as fh:
            unterminated = not ends_with_line_break(fh.fileno(), os.fstat(fh.fileno()).st_size)
    with _text_stream(path, compressed=compressed, options=options, encoding=encoding,
                      progress=True, spaced_delimiter=spaced) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline="")
        records = csv.reader(text, delimiter=delimiter, strict=False)
        for _ in itertools.islice(records, skip):
            pass
        chunk = list(itertools.islice(records, PY_BATCH_ROWS))
        while chunk:
            following = list(itertools.islice(records, PY_BATCH_ROWS))
            cut = unterminated and not following and 0 < len(chunk[-1]) < width
            columns = list(itertools.zip_longest(*chunk, fillvalue=""))
            columns += [("",) * len(chunk)] * (width - len(columns))
            arrays = [pc.if_else(pc.equal(a, ""), pa.scalar(None, a.type), a)
                      for a in map(_text_column, columns)]
            refused: tuple[tuple[str, pa.Array], ...] = ()
            if len(arrays) > width:
                over = pc.is_valid(arrays[width])
                for extra in arrays[width + 1:]:
                    over = pc.or_(over, pc.is_valid(extra))
                if pc.any(over).as_py():
                    refused = ((TOO_MANY_CELLS, over),)
            if cut:
                last = np.zeros(len(chunk), dtype=bool)
                last[-1] = True
                refused += ((CUT_SHORT, pa.array(last)),)
            batch = pa.RecordBatch.from_arrays(arrays[:width], names=names)
            yield _block(batch, row, shown_encoding, refused)
            row += len(chunk)
            chunk = following


def _kept(batch: pa.RecordBatch, first_row: int, block: Block) -> pa.Array:
    """Which rows of ``batch`` survived into ``block`` (blank lines dropped)."""
    numbers = pa.array(np.arange(first_row, first_row + batch.num_rows, dtype=np.int64))
    return pc.is_in(numbers, value_set=block.rows)


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
    return _read(path, name=name, compressed=compressed, options=options, delimiter=options.delimiter)


def read_tsv(path: Path, *, name: str, compressed: bool, options: ReadOptions) -> Iterator[Block]:
    return _read(path, name=name, compressed=compressed, options=options,
                 delimiter=options.delimiter or "\t")
