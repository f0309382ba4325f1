"""The format readers on real files: ``read_blocks`` turns a file into all-text Arrow blocks
numbered with the partner's row numbers (CSV header is row 1, so data starts at 2; JSON,
NDJSON and Parquet records start at 1), and every parser failure becomes ``UnreadableFile``."""

from __future__ import annotations

import gzip
import io
import json
import random
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from adapters.readers import BLOCK_SIZE, Block, ReadOptions, detect_format, read_blocks
from config.errors import UnknownFormat, UnreadableFile
from tests.conftest import REPO, write_csv

HEADER = ["sku", "name", "price"]
RECORDS = [
    {"sku": "00123", "name": "Café crème", "price": "9.99"},
    {"sku": "B-2", "name": "Hat, red", "price": None},
    {"sku": "C-3", "name": "Sock", "price": "2.50"},
]


# -- helpers -----------------------------------------------------------------------------------

def read(path: Path, *, name: str | None = None, **kwargs) -> list[Block]:
    return list(read_blocks(path, name=name or path.name, **kwargs))


def records(blocks: list[Block]) -> list[dict]:
    return [r for b in blocks for r in b.batch.to_pylist()]


def column(blocks: list[Block], name: str) -> list:
    return [v for b in blocks for v in b.batch.column(name).to_pylist()]


def assert_all_text(blocks: list[Block]) -> None:
    for block in blocks:
        for field in block.batch.schema:
            assert pa.types.is_string(field.type), f"column {field.name!r} is {field.type}, not string"


def assert_contiguous(blocks: list[Block], first_row: int) -> None:
    """Each block starts where the previous one ended, the first at ``first_row``."""
    expected = first_row
    for block in blocks:
        assert block.first_row == expected
        expected += block.batch.num_rows


def ndjson(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def parquet_bytes(table: pa.Table, **kwargs) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kwargs)
    return buf.getvalue()


def encode(fmt: str) -> bytes:
    """``RECORDS`` in ``fmt``, as a partner would send them (null price = empty CSV cell)."""
    if fmt in ("csv", "tsv"):
        delimiter = "," if fmt == "csv" else "\t"
        lines = [delimiter.join(HEADER)]
        for r in RECORDS:
            cells = ["" if r[h] is None else r[h] for h in HEADER]
            lines.append(delimiter.join(f'"{c}"' if delimiter in c else c for c in cells))
        return ("\n".join(lines) + "\n").encode()
    if fmt == "json":
        return json.dumps(RECORDS, ensure_ascii=False).encode()
    if fmt == "ndjson":
        return ndjson(RECORDS).encode()
    if fmt == "parquet":
        return parquet_bytes(pa.Table.from_pylist(RECORDS))
    raise AssertionError(fmt)


# Subprocess reader for inputs that may crash the interpreter: a segfault must fail one test,
# not end the whole run.
_CHILD_READER = """
import sys
from pathlib import Path
from adapters.readers import read_blocks
from config.errors import UnreadableFile
path = Path(sys.argv[1])
try:
    rows = sum(b.batch.num_rows for b in read_blocks(path, name=path.name))
except UnreadableFile as exc:
    print("UnreadableFile:", exc.reason[:200])
else:
    print("rows:", rows)
"""


def read_in_child(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _CHILD_READER, str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


# -- every format, plain and gzipped ---------------------------------------------------------

FORMAT_CASES = [
    # (file name, what is written into it, partner row number of the first record)
    ("feed.csv", "csv", 2),
    ("feed.tsv", "tsv", 2),
    ("feed.json", "json", 1),
    ("feed.ndjson", "ndjson", 1),
    ("feed.jsonl", "ndjson", 1),
    ("feed.json", "ndjson", 1),          # a .json that is really NDJSON: sniffed from the first byte
    ("feed.parquet", "parquet", 1),
]


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("name, content, first_row", FORMAT_CASES,
                         ids=[f"{n}-holding-{c}" for n, c, _ in FORMAT_CASES])
def test_every_format_yields_exact_text_records_numbered_from_the_partners_first_row(
        tmp_path, name, content, first_row, compressed):
    data = encode(content)
    if compressed:
        name, data = name + ".gz", gzip.compress(data)
    path = tmp_path / name
    path.write_bytes(data)

    blocks = read(path)

    assert [b.first_row for b in blocks] == [first_row]
    assert blocks[0].batch.schema.names == HEADER
    assert records(blocks) == RECORDS
    assert_all_text(blocks)


def test_typed_parquet_columns_come_out_as_text(tmp_path):
    table = pa.table({
        "sku": pa.array(["00123", "B-2"]),
        "stock": pa.array([3, None], pa.int64()),
        "price": pa.array([9.5, 2.25], pa.float64()),
        "active": pa.array([True, False]),
        "color": pa.array(["blue", "blue"]).dictionary_encode(),
    })
    path = tmp_path / "feed.parquet"
    path.write_bytes(parquet_bytes(table))

    blocks = read(path)

    assert_all_text(blocks)
    assert records(blocks) == [
        {"sku": "00123", "stock": "3", "price": "9.5", "active": "true", "color": "blue"},
        {"sku": "B-2", "stock": None, "price": "2.25", "active": "false", "color": "blue"},
    ]


def test_parquet_with_several_row_groups_numbers_blocks_contiguously(tmp_path):
    n = 150_000
    table = pa.table({"sku": [f"S{i}" for i in range(n)]})
    path = tmp_path / "feed.parquet"
    path.write_bytes(parquet_bytes(table, row_group_size=40_000))

    blocks = read(path)

    assert len(blocks) > 1
    assert_contiguous(blocks, first_row=1)
    assert sum(b.batch.num_rows for b in blocks) == n
    # row number r holds S{r-1}: the numbering matches the content, block by block
    assert all(b.batch.column("sku")[0].as_py() == f"S{b.first_row - 1}" for b in blocks)


def test_format_argument_overrides_the_extension(tmp_path):
    path = tmp_path / "export.dat"
    path.write_bytes(encode("csv"))

    assert records(read(path, fmt="csv")) == RECORDS


# -- format detection ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, fmt", [
    ("feed.csv", "csv"), ("feed.csv.gz", "csv"), ("FEED.CSV.GZ", "csv"), ("feed.txt", "csv"),
    ("feed.tsv", "tsv"), ("feed.tsv.gz", "tsv"), ("feed.tab", "tsv"),
    ("feed.json", "json"), ("feed.json.gz", "json"), ("feed.json.gzip", "json"),
    ("feed.ndjson", "ndjson"), ("feed.ndjson.gz", "ndjson"), ("feed.jsonl.gz", "ndjson"),
    ("feed.parquet", "parquet"), ("feed.parquet.gz", "parquet"), ("feed.pq", "parquet"),
    ("catalog.2024-01-31.csv", "csv"),
])
def test_detect_format_uses_the_extension_under_an_optional_gzip_suffix(name, fmt):
    assert detect_format(name) == fmt


@pytest.mark.parametrize("name", ["feed.yaml", "feed", "feed.gz", "feed.csv.bz2", "feed.tar.gz", "feed.xls"])
def test_unknown_extension_is_an_unknown_format(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(encode("csv"))

    with pytest.raises(UnknownFormat):
        detect_format(name)
    with pytest.raises(UnknownFormat):
        read(path)


def test_unknown_format_argument_is_an_unknown_format(tmp_path):
    path = tmp_path / "feed.csv"
    path.write_bytes(encode("csv"))

    with pytest.raises(UnknownFormat):
        read(path, fmt="yaml")


# -- CSV ---------------------------------------------------------------------------------------

def test_utf8_bom_is_stripped_from_the_first_column_name(tmp_path):
    path = tmp_path / "feed.csv"
    path.write_bytes(b"\xef\xbb\xbf" + encode("csv"))

    blocks = read(path)

    assert blocks[0].batch.schema.names == HEADER
    assert records(blocks) == RECORDS


def test_semicolon_delimiter_is_sniffed_from_the_header(tmp_path):
    # European export: decimal commas must stay inside their cell
    path = write_csv(tmp_path / "feed.csv", ["sku", "name", "price"],
                     [["A-1", "Shirt", "9,99"], ["B-2", "Hat", "5,00"]], delimiter=";")

    assert records(read(path)) == [{"sku": "A-1", "name": "Shirt", "price": "9,99"},
                                   {"sku": "B-2", "name": "Hat", "price": "5,00"}]


def test_pipe_delimiter_is_sniffed_from_the_header(tmp_path):
    path = write_csv(tmp_path / "feed.csv", ["sku", "name", "note"],
                     [["A-1", "Shirt", "red, blue"]], delimiter="|")

    assert records(read(path)) == [{"sku": "A-1", "name": "Shirt", "note": "red, blue"}]


def test_delimiter_option_overrides_sniffing(tmp_path):
    # the header has more commas than semicolons, yet the partner says ';'
    path = tmp_path / "feed.csv"
    path.write_text("sku;name, long;price, net\nA-1;Shirt;9\n")

    blocks = read(path, options=ReadOptions(delimiter=";"))

    assert records(blocks) == [{"sku": "A-1", "name, long": "Shirt", "price, net": "9"}]


def test_cp1252_file_read_with_cp1252_encoding_gives_the_right_characters(tmp_path):
    path = write_csv(tmp_path / "feed.csv", ["sku", "name", "price"],
                     [["A-1", "Café", "5 €"], ["B-2", "naïve – “quoted”", "10 €"]],
                     encoding="cp1252")
    assert "€".encode("cp1252") in path.read_bytes()       # really not UTF-8 on disk

    blocks = read(path, options=ReadOptions(encoding="cp1252"))

    assert records(blocks) == [{"sku": "A-1", "name": "Café", "price": "5 €"},
                               {"sku": "B-2", "name": "naïve – “quoted”", "price": "10 €"}]


def test_latin1_header_and_values_decode_with_latin1_encoding(tmp_path):
    path = write_csv(tmp_path / "feed.csv", ["sku", "désignation"], [["A-1", "Große Größe"]],
                     encoding="latin-1")

    assert records(read(path, options=ReadOptions(encoding="latin-1"))) == [
        {"sku": "A-1", "désignation": "Große Größe"}]


def test_number_like_values_are_kept_exactly_as_written(tmp_path):
    # no type inference: leading zeros, exponents and trailing zeros are part of the value
    values = ["00123", "1e5", "0.10", "+49", "true", "2024-01-01", "4006381333931"]
    path = write_csv(tmp_path / "feed.csv", ["v"], [[v] for v in values])

    blocks = read(path)

    assert column(blocks, "v") == values
    assert_all_text(blocks)


def test_quoted_fields_keep_delimiters_quotes_and_embedded_newlines(tmp_path):
    path = tmp_path / "feed.csv"
    path.write_text('sku,description\n'
                    'A-1,"Soft, warm\nand ""cosy"""\n'
                    'B-2,"line one\r\nline two"\n'
                    'C-3,plain\n', newline="")

    assert records(read(path)) == [
        {"sku": "A-1", "description": 'Soft, warm\nand "cosy"'},
        {"sku": "B-2", "description": "line one\r\nline two"},
        {"sku": "C-3", "description": "plain"},
    ]


def test_empty_cells_are_null_but_null_like_words_stay_text(tmp_path):
    path = tmp_path / "feed.csv"
    path.write_text('a,b,c\n1,,3\n"",x,\nNULL,NA,N/A\n')

    assert records(read(path)) == [
        {"a": "1", "b": None, "c": "3"},
        {"a": None, "b": "x", "c": None},
        {"a": "NULL", "b": "NA", "c": "N/A"},
    ]


def test_blank_lines_and_all_empty_rows_are_dropped_and_later_rows_keep_their_numbers(tmp_path):
    path = tmp_path / "feed.csv"
    path.write_text("sku,name\nA,x\n\n,\nB,y\n")
    [block] = read(path)
    assert block.batch.column("sku").to_pylist() == ["A", "B"]
    assert block.row_numbers().to_pylist() == [2, 5]


BIG_CSV_ROWS = 300_000


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory) -> Path:
    """300,000 rows spanning several parser blocks; row r (partner numbering) has sku r-2."""
    path = tmp_path_factory.mktemp("big") / "feed.csv"
    body = "".join(f"{i:08d},product number {i:06d},{i % 1000}.99\n" for i in range(BIG_CSV_ROWS))
    path.write_text("sku,name,price\n" + body)
    assert path.stat().st_size > 2 * BLOCK_SIZE, "the file must span several blocks to test streaming"
    return path


def test_large_csv_streams_as_several_contiguous_blocks_covering_every_row(big_csv):
    blocks = read(big_csv)

    assert len(blocks) >= 3
    assert_contiguous(blocks, first_row=2)
    assert sum(b.batch.num_rows for b in blocks) == BIG_CSV_ROWS
    for block in blocks:       # the row number really is the row's position in the file
        assert block.batch.column("sku")[0].as_py() == f"{block.first_row - 2:08d}"
    assert blocks[-1].batch.to_pylist()[-1] == {
        "sku": f"{BIG_CSV_ROWS - 1:08d}", "name": f"product number {BIG_CSV_ROWS - 1:06d}",
        "price": f"{(BIG_CSV_ROWS - 1) % 1000}.99"}


def test_progress_callback_receives_increasing_byte_counts_ending_at_the_file_size(big_csv):
    seen: list[int] = []

    read(big_csv, options=ReadOptions(progress=seen.append))

    assert len(set(seen)) >= 3                     # reported while reading, not only at the end
    assert seen == sorted(seen)
    assert seen[-1] == big_csv.stat().st_size


def _straddling_csv(path: Path, tail: bytes = b"") -> bytes:
    """A UTF-8 CSV of more than one read of ``BLOCK_SIZE`` bytes whose 4-byte character (🧦)
    is cut by the first read's end, with quoted newlines, blank lines and a BOM; ``tail`` ends it."""
    head = "\ufeffsku,name,description\n".encode()
    rows = [f'S-{i},"Sock {i}, 🧦","line one\nline two {i}"\n'.encode() for i in range(200_000)]
    rows[7] = rows[8] = b"\n"
    data = head + b"".join(rows)
    sock = "🧦".encode()
    at = data.index(sock, BLOCK_SIZE - 40)
    pad = BLOCK_SIZE - 2 - at                      # the 4 bytes start 2 bytes before the read's end
    data = data[:at] + b"x" * pad + data[at:] + tail
    assert data[BLOCK_SIZE - 2:BLOCK_SIZE + 2] == sock
    path.write_bytes(data)
    return data


def test_a_clean_utf8_csv_is_read_natively_to_the_same_rows_as_through_the_checked_stream(tmp_path,
                                                                                           monkeypatch):
    from adapters.readers import csvfile

    plain = tmp_path / "feed.csv"
    data = _straddling_csv(plain)
    (tmp_path / "feed.csv.gz").write_bytes(gzip.compress(data, compresslevel=1))
    checked = read(tmp_path / "feed.csv.gz")              # a gzip always takes the checked stream

    def through_the_stream(*_):
        raise AssertionError("a clean file went through the checked stream")
    monkeypatch.setattr(csvfile._LineGuard, "readinto", through_the_stream)
    native = read(plain)                                  # read as it is, never through the guard

    assert records(native) == records(checked) and len(records(native)) == 199_998
    assert [r for b in native for r in b.row_numbers().to_pylist()] == \
        [r for b in checked for r in b.row_numbers().to_pylist()]
    assert native[0].batch.schema.names == ["sku", "name", "description"]
    assert "🧦" in column(native, "name")[0] and not any(b.bad_cells for b in native)


@pytest.mark.parametrize("tail, clean", [
    (b"", True),
    (b"S-x,\x00,\n", False),                             # a NUL: its cell is reported, not read as text
    (b"S-x,caf\xe9,\n", False),                           # Latin-1, not UTF-8
    (b"S-x,\xf0\x9f\xa7", False),                           # a character cut short by the file's end
], ids=["clean", "nul", "latin-1", "cut-character"])
def test_only_a_file_of_whole_utf8_characters_without_nul_counts_as_clean_text(tmp_path, tail, clean):
    from adapters.readers.csvfile import _clean_text

    path = tmp_path / "feed.csv"
    _straddling_csv(path, tail)

    assert _clean_text(path, BLOCK_SIZE) is clean
    if not clean:                                         # the checked stream names the cell
        assert any(b.bad_cells for b in read(path))


def test_invalid_utf8_bytes_mark_their_own_cell_and_the_rest_reads(tmp_path):
    path = tmp_path / "feed.csv"
    path.write_bytes(b"sku,name\nA-1,Caf\xe9\nB-2,Tea\n")     # latin-1 \xe9 in a file read as UTF-8

    [block] = read(path)

    assert block.batch.column("name").to_pylist() == ["Caf\ufffd", "Tea"]
    [(column, mask)] = block.bad_cells
    assert column == "name" and mask.to_pylist() == [True, False]


def test_invalid_utf8_in_the_header_is_unreadable(tmp_path):
    path = tmp_path / "feed.csv"
    path.write_bytes(b"sku,d\xe9signation\nA-1,x\n")

    with pytest.raises(UnreadableFile):
        read(path)


def test_bytes_undefined_in_the_given_encoding_mark_their_cell(tmp_path):
    path = tmp_path / "feed.csv"
    path.write_bytes(b"sku,name\nA-1,\x81\nB-2,Caf\xe9\n")         # 0x81 has no character in cp1252

    [block] = read(path, options=ReadOptions(encoding="cp1252"))

    assert block.batch.column("name").to_pylist() == ["\ufffd", "Café"]
    assert [(c, m.to_pylist()) for c, m in block.bad_cells] == [("name", [True, False])]
    assert block.encoding == "cp1252"


@pytest.mark.parametrize("name", ["feed.csv", "feed.tsv"])
def test_a_short_row_is_padded_and_a_long_one_refused_on_its_own_line(tmp_path, name):
    delimiter = "\t" if name.endswith(".tsv") else ","
    path = tmp_path / name
    lines = [["a", "b", "c"], ["1", "2", "3"], ["4", "5"], ["6", "7", "8", "9"], ["10", "11", "12", ""]]
    path.write_text("".join(delimiter.join(cells) + "\n" for cells in lines))

    blocks = read(path)

    assert records(blocks) == [{"a": "1", "b": "2", "c": "3"}, {"a": "4", "b": "5", "c": None},
                               {"a": "6", "b": "7", "c": "8"}, {"a": "10", "b": "11", "c": "12"}]
    assert [n for b in blocks for n in b.row_numbers().to_pylist()] == [2, 3, 4, 5]
    refused = [(code, n) for b in blocks for code, mask in b.refused_rows
               for n, hit in zip(b.row_numbers().to_pylist(), mask.to_pylist()) if hit]
    assert refused == [("too_many_cells", 4)]      # an empty cell after the last column is no cell


@pytest.mark.parametrize("terminated", [True, False])
def test_a_short_last_row_with_no_line_break_after_it_is_refused_as_cut_short(tmp_path, terminated):
    """An upload cut off mid-row leaves its last row short and unterminated: padded, it would
    land with its missing cells empty and its last cell cut (stock 3 for 32). A short last row
    the file ends with a line break after is a ragged row like any other."""
    path = tmp_path / "feed.csv"
    path.write_text("sku,name,price,stock\nA-1,Anvil,9.99,12\nA-2,Rope" + ("\n" if terminated else ""))

    blocks = read(path)

    refused = [(code, n) for b in blocks for code, mask in b.refused_rows
               for n, hit in zip(b.row_numbers().to_pylist(), mask.to_pylist()) if hit]
    assert refused == ([] if terminated else [("cut_short", 3)])
    assert records(blocks)[-1] == {"sku": "A-2", "name": "Rope", "price": None, "stock": None}


@pytest.mark.parametrize("name", ["feed.csv", "feed.tsv", "feed.json", "feed.parquet"])
def test_empty_file_is_unreadable(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")

    with pytest.raises(UnreadableFile):
        read(path)


@pytest.mark.parametrize("name", ["feed.json", "feed.ndjson", "feed.parquet"])
def test_random_binary_garbage_is_unreadable(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(random.Random(1).randbytes(64 * 1024))

    with pytest.raises(UnreadableFile):
        read(path)


@pytest.mark.parametrize("name", ["feed.csv", "feed.tsv"])
def test_random_binary_garbage_after_a_header_is_refused_row_by_row(tmp_path, name):
    """Text formats judge rows one by one: random bytes after a valid header are rows whose
    cells do not decode or that have more cells than the header; each is marked as such."""
    path = tmp_path / name
    path.write_bytes(b"sku,name\n" + random.Random(1).randbytes(64 * 1024))

    blocks = read(path)

    rows = sum(b.batch.num_rows for b in blocks)
    marked = pa.array(np.zeros(0, dtype=bool))
    for b in blocks:
        mask = pa.array(np.zeros(b.batch.num_rows, dtype=bool))
        for _, m in (*b.bad_cells, *b.refused_rows):
            mask = pc.or_(mask, m)
        marked = pa.concat_arrays([marked, mask])
    assert rows > 100 and pc.sum(marked).as_py() > rows * 0.9


# -- gzip that is not, or not all, there ---------------------------------------------------



def _gzip_case(fmt, damage):
    return pytest.param(fmt, damage, id=f"{fmt}-{damage}")


@pytest.mark.parametrize("fmt, damage", [
    _gzip_case("csv", "not-gzip"),
    _gzip_case("csv", "truncated"),
    _gzip_case("tsv", "not-gzip"),
    _gzip_case("tsv", "truncated"),
    _gzip_case("json", "not-gzip"),
    _gzip_case("json", "truncated"),
    _gzip_case("ndjson", "not-gzip"),
    _gzip_case("ndjson", "truncated"),
    _gzip_case("parquet", "not-gzip"),
    _gzip_case("parquet", "truncated"),
])
def test_broken_gzip_is_unreadable(tmp_path, fmt, damage):
    data = encode(fmt)
    packed = gzip.compress(data)
    # an interrupted upload: the end of the stream, with its length and checksum, is missing
    path = tmp_path / f"feed.{fmt}.gz"
    path.write_bytes(data if damage == "not-gzip" else packed[: len(packed) // 2])

    with pytest.raises(UnreadableFile):
        read(path)


# -- NDJSON ------------------------------------------------------------------------------------

def test_ndjson_type_change_after_the_first_block_is_read_completely_in_order(tmp_path):
    # Lines long enough that Arrow's first block ends well before the switch at record 30,001;
    # the tolerant reader must then continue exactly where Arrow stopped.
    n = 30_000
    pad = "x" * (int(1.5 * BLOCK_SIZE) // n)
    rows = ([{"sku": i, "name": pad, "stock": i % 7} for i in range(1, n + 1)]
            + [{"sku": "A-1", "name": "switch", "stock": 1}]
            + [{"sku": i, "name": "after", "stock": 2} for i in range(n + 2, n + 11)])
    path = tmp_path / "feed.ndjson"
    path.write_text(ndjson(rows))

    blocks = read(path)

    assert len(blocks) >= 2 and blocks[0].batch.num_rows < n, "the switch must come after the first block"
    assert_contiguous(blocks, first_row=1)
    assert_all_text(blocks)
    skus = column(blocks, "sku")
    assert len(skus) == n + 10
    assert skus == [str(i) for i in range(1, n + 1)] + ["A-1"] + [str(i) for i in range(n + 2, n + 11)]
    around = records(blocks)[n - 1:n + 2]
    assert around == [{"sku": str(n), "name": pad, "stock": str(n % 7)},
                      {"sku": "A-1", "name": "switch", "stock": "1"},
                      {"sku": str(n + 2), "name": "after", "stock": "2"}]
    # the block that straddles Arrow's stop starts with the record right after Arrow's last one
    first_fallback = blocks[1]
    assert first_fallback.batch.column("sku")[0].as_py() == str(first_fallback.first_row)


def test_ndjson_type_change_inside_the_first_block_is_read_completely(tmp_path):
    path = tmp_path / "feed.ndjson"
    path.write_text(ndjson([{"sku": 1}, {"sku": 2}, {"sku": "A-3"}, {"sku": 4.5}]))

    blocks = read(path)

    assert_contiguous(blocks, first_row=1)
    assert column(blocks, "sku") == ["1", "2", "A-3", "4.5"]


def test_blank_lines_in_ndjson_are_skipped_without_shifting_row_numbers(tmp_path):
    path = tmp_path / "feed.ndjson"
    path.write_text('{"sku": "A-1"}\n\n   \n{"sku": "B-2"}\r\n{"sku": "C-3"}')

    blocks = read(path)

    assert [b.first_row for b in blocks] == [1]
    assert column(blocks, "sku") == ["A-1", "B-2", "C-3"]


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
def test_nested_objects_flatten_to_dotted_column_names(tmp_path, fmt):
    rows = [{"sku": "A-1", "dims": {"w": 10, "unit": {"code": "cm"}}},
            {"sku": "B-2", "dims": {"w": 7, "unit": {"code": "in"}}}]
    path = tmp_path / f"feed.{fmt}"
    path.write_text(json.dumps(rows) if fmt == "json" else ndjson(rows))

    blocks = read(path)

    assert blocks[0].batch.schema.names == ["sku", "dims.w", "dims.unit.code"]
    assert records(blocks) == [{"sku": "A-1", "dims.w": "10", "dims.unit.code": "cm"},
                               {"sku": "B-2", "dims.w": "7", "dims.unit.code": "in"}]
    assert_all_text(blocks)


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
def test_lists_become_json_text(tmp_path, fmt):
    rows = [{"sku": "A-1", "tags": ["red", "Größe L"], "sizes": [38, 40]},
            {"sku": "B-2", "tags": [], "sizes": None}]
    path = tmp_path / f"feed.{fmt}"
    path.write_text(json.dumps(rows) if fmt == "json" else ndjson(rows))

    got = records(read(path))

    assert [json.loads(r["tags"]) for r in got] == [["red", "Größe L"], []]
    assert got[0]["tags"] == '["red", "Größe L"]'         # readable text, not \\u escapes
    assert [r["sizes"] for r in got] == ["[38, 40]", None]


def test_invalid_ndjson_line_is_unreadable_and_names_the_line(tmp_path):
    path = tmp_path / "feed.ndjson"
    path.write_text('{"sku": "A-1"}\n{"sku": "B-2"}\n\n{"sku": oops}\n{"sku": "E-5"}\n')

    with pytest.raises(UnreadableFile, match=r"\bline 4\b") as caught:
        read(path)
    assert caught.value.row == 3            # the third record, on the fourth line


def test_invalid_ndjson_line_after_the_first_block_names_its_own_line(tmp_path):
    n = 30_000
    pad = "x" * (int(1.5 * BLOCK_SIZE) // n)
    lines = [json.dumps({"sku": f"S{i}", "name": pad}) for i in range(1, n + 1)]
    lines[n - 100] = '{"sku": "broken", "name": }'           # line 29,901
    path = tmp_path / "feed.ndjson"
    path.write_text("\n".join(lines) + "\n")

    with pytest.raises(UnreadableFile, match=r"\bline 29901\b"):
        read(path)


def test_ndjson_line_that_is_not_an_object_is_unreadable(tmp_path):
    path = tmp_path / "feed.ndjson"
    path.write_text('{"sku": "A-1"}\n["B-2"]\n')

    with pytest.raises(UnreadableFile, match="line 2"):
        read(path)


def test_json_with_a_scalar_at_the_top_is_unreadable(tmp_path):
    path = tmp_path / "feed.json"
    path.write_text('"just a string"')

    with pytest.raises(UnreadableFile):
        read(path)


# -- JSON array --------------------------------------------------------------------------------

def test_json_array_streams_in_blocks_numbered_from_one(tmp_path):
    n = 45_000                   # more than one Python batch
    path = tmp_path / "feed.json"
    path.write_text(json.dumps([{"sku": f"S{i}"} for i in range(1, n + 1)]))

    blocks = read(path)

    assert len(blocks) > 1
    assert_contiguous(blocks, first_row=1)
    assert column(blocks, "sku") == [f"S{i}" for i in range(1, n + 1)]


def test_json_array_element_that_is_not_an_object_is_unreadable_at_its_row(tmp_path):
    path = tmp_path / "feed.json"
    path.write_text('[{"sku": "A-1"}, "B-2", {"sku": "C-3"}]')

    with pytest.raises(UnreadableFile, match="not a JSON object") as caught:
        read(path)
    assert caught.value.row == 2


@pytest.mark.parametrize("tail", [" x", "[]", ' {"sku": "B-2"}', ","])
def test_trailing_garbage_after_the_json_array_is_unreadable(tmp_path, tail):
    path = tmp_path / "feed.json"
    path.write_text('[{"sku": "A-1"}]' + tail)

    with pytest.raises(UnreadableFile):
        read(path)


@pytest.mark.parametrize("text", ['[{"sku": "A-1"}', '[{"sku": "A-1"},', '[{"sku": "A-'])
def test_truncated_json_array_is_unreadable(tmp_path, text):
    path = tmp_path / "feed.json"
    path.write_text(text)

    with pytest.raises(UnreadableFile):
        read(path)


def test_deeply_nested_json_array_is_unreadable_quickly_and_in_little_memory(tmp_path):
    path = tmp_path / "feed.json"
    path.write_text("[" * 100_000)

    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(UnreadableFile, match="nested"):
            read(path)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert elapsed < 2.0
    assert peak < 32 * 1024 * 1024


# -- Parquet -------------------------------------------------------------------------------------

@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99])
def test_truncated_parquet_is_unreadable(tmp_path, keep):
    data = parquet_bytes(pa.table({"sku": [f"S{i}" for i in range(5000)]}))
    path = tmp_path / "feed.parquet"
    path.write_bytes(data[: int(len(data) * keep)])

    with pytest.raises(UnreadableFile, match="Parquet"):
        read(path)


def test_parquet_with_a_corrupted_footer_is_unreadable(tmp_path):
    data = bytearray(parquet_bytes(pa.table({"sku": [f"S{i}" for i in range(5000)]})))
    footer_len = int.from_bytes(data[-8:-4], "little")
    start = len(data) - 8 - footer_len
    data[start:start + footer_len] = random.Random(3).randbytes(footer_len)
    path = tmp_path / "feed.parquet"
    path.write_bytes(bytes(data))

    with pytest.raises(UnreadableFile):
        read(path)


def test_parquet_binary_column_that_is_not_utf8_is_unreadable(tmp_path):
    path = tmp_path / "feed.parquet"
    path.write_bytes(parquet_bytes(pa.table({"sku": pa.array([b"\xff\xfe"], pa.binary())})))

    with pytest.raises(UnreadableFile, match="binary"):
        read(path)


# -- defects found while writing these tests ---------------------------------------------------------



@pytest.mark.parametrize("route", [
    "json-array",
    "ndjson-tolerant-reader",
    "ndjson-arrow-reader",
])
def test_date_like_strings_are_kept_exactly_as_written(tmp_path, route):
    rows = [{"sku": "A-1", "available": "2024-01-01", "updated": "2024-01-02T10:00:00+02:00"}]
    if route == "json-array":
        path = tmp_path / "feed.json"
        path.write_text(json.dumps(rows))
    else:
        if route == "ndjson-tolerant-reader":
            # a number then a string in "sku" stops Arrow at once: every record goes the tolerant way
            rows = [{"sku": 1, "available": "2023-12-31", "updated": "2023-12-31T00:00:00Z"}] + rows
        path = tmp_path / "feed.ndjson"
        path.write_text(ndjson(rows))

    got = records(read(path))[-1]

    assert got == {"sku": "A-1", "available": "2024-01-01", "updated": "2024-01-02T10:00:00+02:00"}




@pytest.mark.parametrize("route", [
    "ndjson-tolerant-reader",
    "ndjson-arrow-reader",
    "json-array",
])
def test_nan_is_not_accepted_as_a_json_value(tmp_path, route):
    if route == "json-array":
        path = tmp_path / "feed.json"
        path.write_text('[{"sku": "A-1", "price": NaN}]')
    else:
        first = '{"sku": 1}\n' if route == "ndjson-tolerant-reader" else '{"sku": "0"}\n'
        path = tmp_path / "feed.ndjson"
        path.write_text(first + '{"sku": "A-1", "price": NaN}\n')

    with pytest.raises(UnreadableFile):
        read(path)




@pytest.mark.parametrize("name, body", [
    pytest.param("feed.json", '[{"sku": "A-1"}]', id="json-array"),
    pytest.param("feed.ndjson", '{"sku": "A-1"}\n', id="ndjson"),
    pytest.param("feed.csv", "sku\nA-1\n", id="csv"),
])
def test_utf8_bom_at_the_start_is_accepted_by_every_text_format(tmp_path, name, body):
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())

    assert records(read(path)) == [{"sku": "A-1"}]




@pytest.mark.parametrize("name, body", [
    pytest.param("feed.json", '[{"sku": "A-1", "name": "bad \\ud800 escape"}]', id="json-array"),
    pytest.param("feed.ndjson", '{"sku": "A-1", "name": "bad \\ud800 escape"}\n', id="ndjson"),
])
def test_lone_surrogate_escape_reads_or_is_unreadable_never_another_error(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(body)

    try:
        got = records(read(path))
    except UnreadableFile:
        return
    assert got[0]["sku"] == "A-1"
    got[0]["name"].encode("utf-8")          # whatever was read is valid text




@pytest.mark.parametrize("layout", ["two-objects-on-one-line", "cr-line-endings"])
def test_ndjson_fallback_resumes_at_the_right_record_whatever_the_line_layout(tmp_path, layout):
    n = 30_000
    pad = "x" * (int(1.5 * BLOCK_SIZE) // n)
    lines = [json.dumps({"sku": f"S{i}", "name": pad, "n": i}) for i in range(1, n + 1)]
    lines.append(json.dumps({"sku": "A-1", "name": "switch", "n": "one"}))   # stops Arrow in a later block
    expected = [f"S{i}" for i in range(1, n + 1)] + ["A-1"]
    if layout == "two-objects-on-one-line":
        lines[0] += " " + json.dumps({"sku": "S0", "name": pad, "n": 0})
        expected.insert(1, "S0")
    text = ("\r" if layout == "cr-line-endings" else "\n").join(lines) + "\n"
    path = tmp_path / "feed.ndjson"
    path.write_text(text, newline="")

    try:
        skus = column(read(path), "sku")
    except UnreadableFile:
        return                      # refusing such a file is acceptable; losing records is not
    assert skus == expected




@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_deeply_nested_ndjson_is_unreadable_not_a_crash(tmp_path, depth):
    path = tmp_path / "feed.ndjson"
    path.write_text('{"sku": "A-1", "x": ' + "[" * depth + "]" * depth + "}\n")

    result = read_in_child(path)

    assert result.returncode == 0, f"reader died with {result.returncode}: {result.stderr[-300:]}"
    assert result.stdout.startswith("UnreadableFile:")


def test_ingesting_a_csv_file_loads_no_reader_of_another_format(tmp_path):
    """Readers are imported by the format of the file read: lxml, ijson and pyarrow.parquet are
    ~40 ms of start-up that every `inbox-daemon ingest` of a CSV file would pay otherwise."""
    feed = tmp_path / "feed.csv"
    write_csv(feed, ["sku", "name", "price"], [["A-1", "Chair", "9.99"]])
    script = ("import sys\nfrom inbox_daemon.cli import main\n"
              "try:\n    main(['ingest', '--partner', 'default', sys.argv[1]])\nexcept SystemExit as e:\n"
              "    assert not e.code, e.code\n"
              "loaded = [m for m in ('lxml', 'ijson', 'pyarrow.parquet', 'adapters.readers.xmlfile',"
              " 'adapters.readers.jsonfile', 'adapters.readers.xlsxfile') if m in sys.modules]\n"
              "print('csv read' if 'adapters.readers.csvfile' in sys.modules else 'csv not read', loaded)")
    out = subprocess.run([sys.executable, "-c", script, str(feed)], cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout
    assert out.splitlines()[-1] == "csv read []"
