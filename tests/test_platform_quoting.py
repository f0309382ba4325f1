"""How platform exports quote, on small files written here in the platforms' documented forms.

Magento's sample import files put a space after each comma and before the opening quote
(``"sku", "product_online"``): the space is not part of the value, as for PHP's ``fgetcsv``.
Magento's "Fields Enclosure" export wraps ``additional_attributes`` values in double quotes
(``color="Black, Red",size="M=L"``, ``""`` for a quote, ``"|"`` between multiselect options):
the commas and ``=`` inside stay in the value."""

from __future__ import annotations

import csv
import io
import json
import random

import pyarrow as pa
import pytest

from adapters.mapping import attributes_json, resolve_columns
from adapters.readers import BLOCK_SIZE, ReadOptions, read_blocks
from adapters.readers.csvfile import _SpaceBeforeQuote
from config.model import PartnerConfig
from tests.conftest import products


def _read(path, **options) -> tuple[list[str], list[dict]]:
    blocks = list(read_blocks(path, name=path.name, options=ReadOptions(**options)))
    return blocks[0].batch.schema.names, [r for b in blocks for r in b.batch.to_pylist()]


def _write(path, text: str, encoding: str = "utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


# -- blanks before an opening quote -------------------------------------------------------------

def test_magento_sample_layout_reads_header_names_and_values_without_quotes(tmp_path):
    path = _write(tmp_path / "disable.csv", '"sku", "product_online"\n"MB-01", "0"\n')
    assert _read(path) == (["sku", "product_online"], [{"sku": "MB-01", "product_online": "0"}])


def test_quoted_values_keep_their_commas_spaces_and_quotes(tmp_path):
    path = _write(tmp_path / "p.csv", '"sku", "name"\n'
                                      '"A", "Bag, large"\n'
                                      '"B", "ends with comma space, "\n'
                                      '"C", "say ""hi"", ""ok"""\n'
                                      '"D", ", ""x"""\n')
    assert [r["name"] for r in _read(path)[1]] == ["Bag, large", "ends with comma space, ", 'say "hi", "ok"', ', "x"']


def test_multi_line_values_crlf_and_blanks_at_a_line_start(tmp_path):
    path = _write(tmp_path / "p.csv", '"sku",\t"description"\r\n'
                                      '"A", "line one,\n  "" quoted"" line two"\r\n'
                                      '  "B", "b"\r\n')
    assert _read(path)[1] == [{"sku": "A", "description": 'line one,\n  " quoted" line two'},
                              {"sku": "B", "description": "b"}]


def test_blanks_before_an_unquoted_value_stay_as_fgetcsv_keeps_them(tmp_path):
    path = _write(tmp_path / "p.csv", 'sku, "name", note\nA, "B, C",  plain\n')
    assert _read(path) == (["sku", "name", "note"], [{"sku": "A", "name": "B, C", "note": "  plain"}])


@pytest.mark.parametrize("delimiter, name", [(";", "p.csv"), ("\t", "p.tsv")])
def test_other_delimiters_drop_the_spaces_before_quotes_too(tmp_path, delimiter, name):
    text = f'"sku"{delimiter} "name"\n"A"{delimiter}  "x{delimiter} y"\n'
    assert _read(_write(tmp_path / name, text)) == (["sku", "name"], [{"sku": "A", "name": f"x{delimiter} y"}])


def test_a_utf16_file_in_the_layout_is_read_the_same(tmp_path):
    path = _write(tmp_path / "p.csv", '\ufeff"sku", "name"\r\n"Ä-1", "Tasse, groß"\r\n', "utf-16-le")
    assert _read(path) == (["sku", "name"], [{"sku": "Ä-1", "name": "Tasse, groß"}])


def test_the_layout_reads_like_skipinitialspace_across_read_blocks(tmp_path):
    rnd = random.Random(7)
    words = ["a", "b, c", 'd "e"', "f,\ng", "", " h ", "=i"]
    rows = [[f"S-{i}", rnd.choice(words) * rnd.randrange(1, 40), rnd.choice(words)] for i in range(150_000)]
    text = '"sku", "name", "note"\n' + "".join(
        ", ".join('"' + v.replace('"', '""') + '"' for v in row) + "\n" for row in rows)
    assert len(text) > 2 * BLOCK_SIZE
    expected = list(csv.reader(io.StringIO(text, newline=""), skipinitialspace=True))[1:]
    got = [[r["sku"], r["name"] or "", r["note"] or ""] for r in _read(_write(tmp_path / "big.csv", text))[1]]
    assert got == expected


class _Trickle(io.RawIOBase):
    """A stream that hands out a few bytes a read: every byte is a possible chunk boundary."""

    def __init__(self, data: bytes, step: int):
        self._data, self._step, self._at = data, step, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        piece = self._data[self._at:self._at + self._step]
        self._at += len(piece)
        return piece


def test_blanks_are_dropped_the_same_wherever_reads_split_the_stream():
    rnd = random.Random(11)
    for _ in range(500):
        rows = [["".join(rnd.choice('ab,"\n\t =é') for _ in range(rnd.randrange(6))) for _ in range(3)]
                for _ in range(rnd.randrange(1, 5))]
        text = "".join(",".join(rnd.choice(["", " ", "  ", "\t", " \t "]) + '"' + v.replace('"', '""') + '"'
                                for v in row) + rnd.choice(["\n", "\r\n"]) for row in rows)
        out = _SpaceBeforeQuote(_Trickle(text.encode(), rnd.randrange(1, 9)), ",").read()
        assert list(csv.reader(io.StringIO(out.decode(), newline=""))) == rows, text


def test_a_file_without_the_layout_reads_blanks_before_quotes_as_pyarrow_does(tmp_path):
    # quotes inside a value, after a comma and a space: nothing to drop, the file is standard CSV
    path = _write(tmp_path / "p.csv", 'sku,name\nA,"he said, ""hi"" and, "" ok"""\n')
    assert _read(path)[1] == [{"sku": "A", "name": 'he said, "hi" and, " ok"'}]


def test_a_header_cell_still_in_quotes_maps_to_its_canonical_column():
    cmap = resolve_columns([' "sku"', '"product_online"', '"additional_attributes" '],
                           PartnerConfig(id="p", preset="magento"), require=False)
    assert (cmap.partner_column("sku"), cmap.partner_column("active")) == (' "sku"', '"product_online"')
    assert cmap.key_value == ('"additional_attributes" ',) and cmap.unmapped == ()


# -- additional_attributes: k=v lists -------------------------------------------------------------

def _attributes(*cells: str | None) -> list[dict | None]:
    batch = pa.RecordBatch.from_arrays([pa.array(cells, pa.string())], names=["additional_attributes"])
    out = attributes_json(batch, (), ("additional_attributes",)).to_pylist()
    return [None if o is None else json.loads(o) for o in out]


def test_unquoted_pairs_read_as_before_with_continued_values():
    assert _attributes("size=XS,color=Black", "material=Wool,Cotton,fit=slim", "a=b=c", None, "") == [
        {"size": "XS", "color": "Black"}, {"material": "Wool,Cotton", "fit": "slim"}, {"a": "b=c"}, None, None]


def test_quoted_values_keep_commas_and_equals_signs():
    assert _attributes('color="Black, Red",size="M=L"') == [{"color": "Black, Red", "size": "M=L"}]


def test_doubled_quotes_inside_a_quoted_value_are_one_quote():
    assert _attributes('note="say ""hi"", ok",mark=""""') == [{"note": 'say "hi", ok', "mark": '"'}]


def test_multiselect_options_in_quotes_join_with_a_pipe_as_unquoted_ones_do():
    assert _attributes('colors="Red"|"Blue, dark",size=M', "colors=Red|Blue") == [
        {"colors": "Red|Blue, dark", "size": "M"}, {"colors": "Red|Blue"}]


def test_quoted_and_unquoted_pairs_mix_in_one_cell():
    assert _attributes('a=1,b="x,c=2",c=3, d = "4" ') == [{"a": "1", "b": "x,c=2", "c": "3", "d": "4"}]


def test_empty_values_are_kept_as_empty_text():
    assert _attributes('a=,b="",c=3') == [{"a": "", "b": "", "c": "3"}]


def test_a_repeated_key_keeps_its_last_value_and_appears_once():
    batch = pa.RecordBatch.from_arrays([pa.array(['color=Red,size=L,color="Blue, navy"'])], names=["aa"])
    text = attributes_json(batch, (), ("aa",))[0].as_py()
    assert text.count('"color"') == 1 and json.loads(text) == {"size": "L", "color": "Blue, navy"}


def test_a_quote_that_does_not_wrap_the_whole_value_is_text():
    assert _attributes('screen=15",fit="slim" cut,x="open') == [{"screen": '15"', "fit": '"slim" cut', "x": '"open'}]


def test_a_value_on_several_lines_is_kept():
    assert _attributes('care="hand wash,\ncold",a=line1\nline2') == [{"care": "hand wash,\ncold", "a": "line1\nline2"}]


# -- through ingest ------------------------------------------------------------------------------

def _config(workdir) -> str:
    (workdir / "m.toml").write_text('[[partners]]\nid = "m"\npreset = "magento"\n')
    return str(workdir / "m.toml")


def test_a_magento_disable_file_in_the_sample_layout_disables_the_product(workdir, ingest):
    _write(workdir / "catalog.csv", '"sku", "name", "price", "product_online", "additional_attributes"\n'
                                    '"MB-01", "Duffle Bag, large", "34", "1", '
                                    '"color=""Black, Red"",size=""M=L"",note=""a """"quote"""""""\n')
    code, _ = ingest(workdir / "catalog.csv", "--partner", "m", "--config", _config(workdir))
    assert code == 0 and products(workdir, "m")["mb-01"]["active"] == 1

    _write(workdir / "disable.csv", '"sku", "product_online"\n"MB-01", "0"\n')
    code, manifest = ingest(workdir / "disable.csv", "--partner", "m", "--config", _config(workdir))

    row = products(workdir, "m")["mb-01"]
    assert code == 0 and manifest["rows"]["updated"] == 1 and row["active"] == 0
    assert (row["name"], json.loads(row["attributes"])) == (
        "Duffle Bag, large", {"color": "Black, Red", "size": "M=L", "note": 'a "quote"'})
