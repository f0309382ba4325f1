"""The readers against third-party parser test suites in ../shared/corpus (see its SOURCES.md):
exact results where the suite publishes them, and otherwise the one promise every reader makes
about hostile input: it yields blocks or raises ``UnreadableFile``, never anything else.

File lists are taken when the module is collected so each corpus file is its own test id. When
the corpus is absent, each test gets one placeholder id and the ``corpus`` fixture skips it."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from adapters.readers import Block, ReadOptions, read_blocks
from config.errors import UnknownFormat, UnreadableFile
from tests.conftest import CORPUS, REPO

MISSING = "corpus-missing"


def corpus_files(folder: str, pattern: str, keep=lambda p: True) -> list[str]:
    base = CORPUS / folder
    names = sorted(p.name for p in base.glob(pattern) if p.is_file() and keep(p)) if base.is_dir() else []
    return names or [MISSING]


def read(path: Path, **kwargs) -> list[Block]:
    return list(read_blocks(path, name=path.name, **kwargs))


def rows_of(blocks: list[Block]) -> list[tuple]:
    """Rows as tuples in column order (to_pylist would merge duplicate column names)."""
    return [row for b in blocks for row in zip(*(c.to_pylist() for c in b.batch.columns))]


def assert_text_blocks(blocks: list[Block], first_row: int) -> None:
    """What "reads into blocks" promises: string columns, rows numbered without gaps."""
    expected = first_row
    for block in blocks:
        assert block.first_row == expected
        expected += block.batch.num_rows
        assert all(pa.types.is_string(f.type) for f in block.batch.schema), block.batch.schema


def read_or_unreadable(path: Path, first_row: int, **kwargs) -> None:
    """Blocks or UnreadableFile; any other exception propagates and fails the test."""
    try:
        blocks = read(path, **kwargs)
    except UnreadableFile:
        return
    assert_text_blocks(blocks, first_row)


# -- csv-spectrum: published expectations ------------------------------------------------------

SPECTRUM = "csv-spectrum"


def _has_expectation(csv_path: Path) -> bool:
    return (csv_path.parent.parent / "json" / f"{csv_path.stem}.json").exists()


@pytest.mark.parametrize("name", corpus_files(f"{SPECTRUM}/csvs", "*.csv", keep=_has_expectation))
def test_csv_spectrum_file_reads_as_its_published_records(corpus, name):
    # Every case matches, CRLF and UTF-8 included, so none is marked xfail.
    path = corpus / SPECTRUM / "csvs" / name
    expected = json.loads((corpus / SPECTRUM / "json" / f"{path.stem}.json").read_text(encoding="utf-8"))
    # the suite writes empty cells as "", our reader makes every empty cell null
    expected = [{k: (None if v == "" else v) for k, v in record.items()} for record in expected]

    blocks = read(path)

    assert [r for b in blocks for r in b.batch.to_pylist()] == expected
    assert_text_blocks(blocks, first_row=2)


# -- JSONTestSuite -------------------------------------------------------------------------------

JSON_SUITE = "json-test-suite/test_parsing"
_FORMFEED = "n_structure_whitespace_formfeed.json"


def _n_case(name: str):
    if name == _FORMFEED:
        return pytest.param(name, id=name, marks=pytest.mark.xfail(
            strict=True, raises=pytest.fail.Exception,
            reason="ijson's yajl C backend takes a form feed for whitespace, "
                   "so [\\f] reads as an empty array"))
    return pytest.param(name, id=name)


@pytest.mark.parametrize("name", [_n_case(n) for n in corpus_files(JSON_SUITE, "n_*.json")])
def test_json_the_suite_says_to_reject_is_unreadable(corpus, name):
    path = corpus / JSON_SUITE / name

    with pytest.raises((UnreadableFile, UnknownFormat)):
        read(path)


def _objects_at_top(path: Path) -> bool:
    """An object, or an array of objects: the shapes a JSON catalog can have."""
    try:
        doc = json.loads(path.read_bytes())
    except ValueError:
        return False
    return isinstance(doc, dict) or (isinstance(doc, list) and all(isinstance(x, dict) for x in doc))


@pytest.mark.parametrize("name", corpus_files(JSON_SUITE, "y_*.json", keep=_objects_at_top))
def test_valid_json_with_objects_at_the_top_reads_or_is_unreadable(corpus, name):
    read_or_unreadable(corpus / JSON_SUITE / name, first_row=1)


_SURROGATE_KEY = "i_object_key_lone_2nd_surrogate.json"


def _i_case(name: str):
    # _SURROGATE_KEY ({"\uDFAA":0}) goes the NDJSON way: a lone surrogate is not text, so unreadable
    return pytest.param(name, id=name)


@pytest.mark.parametrize("name", [_i_case(n) for n in corpus_files(JSON_SUITE, "i_*.json")])
def test_implementation_defined_json_reads_or_is_unreadable(corpus, name):
    read_or_unreadable(corpus / JSON_SUITE / name, first_row=1)


# -- parquet-testing ---------------------------------------------------------------------------------

PARQUET = "parquet-testing"
# A 4 KB file whose map column declares 2 GB uncompressed: read in this process it would take
# ~4 GB of memory, so it gets its own tests below, in a child process.
_BOMB = "large_string_map.brotli.parquet"


def _parquet_data(path: Path) -> bool:
    return path.name != _BOMB and not path.name.endswith(".json")


@pytest.mark.parametrize("name", corpus_files(f"{PARQUET}/data", "*.parquet*", keep=_parquet_data))
def test_parquet_testing_file_reads_or_is_unreadable(corpus, name):
    # unsupported codecs, encryption and odd schemas are all fine as UnreadableFile;
    # fmt is given because the encrypted files end in .parquet.encrypted
    read_or_unreadable(corpus / PARQUET / "data" / name, first_row=1, fmt="parquet")


@pytest.mark.parametrize("name", corpus_files(f"{PARQUET}/bad_data", "*.parquet"))
def test_parquet_testing_bad_data_reads_or_is_unreadable(corpus, name):
    read_or_unreadable(corpus / PARQUET / "bad_data" / name, first_row=1)


_MEASURED_READ = """
import json, resource, sys
from pathlib import Path
from adapters.readers import read_blocks
from config.errors import UnreadableFile
path = Path(sys.argv[1])
try:
    outcome = "%d rows" % sum(b.batch.num_rows for b in read_blocks(path, name=path.name))
except UnreadableFile:
    outcome = "unreadable"
print(json.dumps({"outcome": outcome, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


@pytest.fixture(scope="module")
def bomb_read() -> tuple[str, int]:
    """(outcome, peak RSS in KiB) of reading the decompression bomb in a child process."""
    path = CORPUS / PARQUET / "data" / _BOMB
    if not path.is_file():
        pytest.skip(f"{path} not found (set INBOX_DAEMON_CORPUS)")
    result = subprocess.run([sys.executable, "-c", _MEASURED_READ, str(path)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"reader died with {result.returncode}: {result.stderr[-300:]}"
    measured = json.loads(result.stdout)
    return measured["outcome"], measured["peak_kib"]


def test_parquet_decompression_bomb_is_unreadable(bomb_read):
    outcome, _ = bomb_read
    assert outcome == "unreadable"


def test_parquet_decompression_bomb_is_refused_without_decoding_it(bomb_read):
    _, peak_kib = bomb_read
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib // 1024} MiB"


# -- arrow-testing CSV -------------------------------------------------------------------------

ARROW_CSV = "arrow-testing/data/csv"


@pytest.mark.parametrize("name", corpus_files(f"{ARROW_CSV}/fuzzing", "clusterfuzz-*"))
def test_arrow_csv_fuzzing_reproducer_reads_or_is_unreadable(corpus, name):
    path = corpus / ARROW_CSV / "fuzzing" / name
    # whitespace-only lines before the header are skipped; the rows keep their line numbers
    lines = re.split(rb"\r\n|\n|\r", path.read_bytes())
    blank = next((i for i, line in enumerate(lines) if line.strip()), 0)
    read_or_unreadable(path, first_row=2 + blank, fmt="csv")


def test_arrow_aggregate_csv_reads_the_same_plain_and_gzipped(corpus):
    plain = read(corpus / ARROW_CSV / "aggregate_test_100.csv")
    packed = read(corpus / ARROW_CSV / "aggregate_test_100.csv.gz")

    assert len(rows_of(plain)) == 100
    assert rows_of(packed) == rows_of(plain)
    assert packed[0].batch.schema.names == plain[0].batch.schema.names


# -- messytables-horror and csvkit examples: real-world CSV checked against Python's csv ----------

# (path under the corpus, encoding); the delimiter follows the extension
READABLE_CSV = [
    ("messytables-horror/horror/simple.csv", "utf-8"),
    ("messytables-horror/horror/example.tsv", "utf-8"),
    ("messytables-horror/horror/long.csv", "utf-8"),
    ("messytables-horror/horror/mixedGLB.csv", "utf-8"),                # CR line endings, preamble
    ("messytables-horror/horror/begrotingsanalyse-2011.csv", "utf-8"),  # empty and repeated names
    ("messytables-horror/horror/spanish_chars.csv", "latin-1"),         # quoted multi-line values
    ("messytables-horror/horror/null.csv", "utf-8"),
    ("csvkit-examples/examples/iris.csv", "utf-8"),
    ("csvkit-examples/examples/dummy.tsv", "utf-8"),
    ("csvkit-examples/examples/dummy.csv.gz", "utf-8"),
    ("csvkit-examples/examples/mac_newlines.csv", "utf-8"),
    ("csvkit-examples/examples/test_utf8_bom.csv", "utf-8"),
    ("csvkit-examples/examples/test_latin1.csv", "latin-1"),
    ("csvkit-examples/examples/test_utf16_little.csv", "utf-16"),
    ("csvkit-examples/examples/blanks.csv", "utf-8"),
    ("csvkit-examples/examples/optional_quote_characters.csv", "utf-8"),
]


def _python_csv(path: Path, encoding: str) -> tuple[list[str], list[tuple]]:
    """Header and rows as Python's csv module reads them, empty cells as None; rows whose every
    cell is empty are no rows (the reader drops them, keeping the row numbers after them)."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8-sig" if encoding == "utf-8" else encoding)
    delimiter = "\t" if ".tsv" in path.suffixes else ","
    header, *body = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    return header, [tuple(v if v != "" else None for v in row) for row in body if any(v != "" for v in row)]


@pytest.mark.parametrize("rel, encoding", READABLE_CSV, ids=[Path(r).name for r, _ in READABLE_CSV])
def test_real_world_csv_reads_like_pythons_csv_module(corpus, rel, encoding):
    path = corpus / rel
    header, expected = _python_csv(path, encoding)

    blocks = read(path, options=ReadOptions(encoding=encoding))

    assert blocks[0].batch.schema.names == header
    assert rows_of(blocks) == expected
    assert_text_blocks(blocks, first_row=2)


def test_an_empty_real_world_csv_is_unreadable(corpus):
    with pytest.raises(UnreadableFile):
        read(corpus / "csvkit-examples" / "examples" / "empty.csv")


def test_real_world_ragged_csv_pads_short_rows_and_refuses_long_ones(corpus):
    """csvkit's own broken examples: a row shorter than the header is padded, one longer is
    marked refused (``too_many_cells``) with its first cells kept for its diagnostics line."""
    short = read(corpus / "csvkit-examples" / "examples" / "test_join_short_rows.csv")
    assert rows_of(short) == [("1", "cat", None), ("dog", "c", None), ("3", "b", "c")]

    bad = read(corpus / "csvkit-examples" / "examples" / "bad.csv")
    assert rows_of(bad) == [("1", "27", None), (None, "I'm too short!", None), ("0", "mixed types.... uh oh", "17")]
    assert [(code, mask.to_pylist()) for b in bad for code, mask in b.refused_rows] == \
        [("too_many_cells", [True, False, False])]
    assert_text_blocks(bad, first_row=2)


def test_a_banner_above_the_header_is_skipped_with_header_row(corpus):
    """messytables' horror file: eleven lines of title and notes above the header of years."""
    blocks = read(corpus / "messytables-horror" / "horror" / "weird_head_padding.csv",
                  options=ReadOptions(header_row=12))
    assert blocks[0].batch.schema.names[1:4] == ["1985", "1993", "2000"]
    assert blocks[0].first_row == 13
    rows = rows_of(blocks)
    assert rows[1][:4] == ("      Gefäßchirurgie", ".", "379", "575")


@pytest.mark.parametrize("name", ["simple.psv", "simple.ssv", "simple.unknown"])
def test_messytables_files_with_unknown_extensions_are_an_unknown_format(corpus, name):
    with pytest.raises(UnknownFormat):
        read(corpus / "messytables-horror" / "horror" / name)
