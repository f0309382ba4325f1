"""Encodings, dialects, Excel and the limits, through ``inbox-daemon ingest`` as a partner's file
would go: what lands in the catalog, and what the diagnostics say when something cannot."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import os

import pytest

from tests.conftest import products, read_diagnostics

ROWS = [("A-1", "Café crème", "9.99", "3"), ("B-2", "Größe „M“", "12.50", "0")]


def _csv_text(rows=ROWS, delimiter=",", newline="\n") -> str:
    lines = [delimiter.join(("sku", "name", "price", "stock"))]
    lines += [delimiter.join(r) for r in rows]
    return newline.join(lines) + newline


def _config(workdir, **partner) -> str:
    body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in partner.items())
    (workdir / "p.toml").write_text(f'[[partners]]\nid = "p"\n{body}\n')
    return str(workdir / "p.toml")


def _landed(workdir, partner="default"):
    return {r["sku"]: (r["name"], r["price_cents"], r["stock"]) for r in products(workdir, partner).values()}


EXPECTED = {"A-1": ("Café crème", 999, 3), "B-2": ("Größe „M“", 1250, 0)}


@pytest.mark.parametrize("encoding, bom", [
    ("utf-8", b""), ("utf-8", b"\xef\xbb\xbf"), ("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff"),
    ("utf-32-le", b"\xff\xfe\x00\x00"),
], ids=["utf8", "utf8-bom", "utf16le-bom", "utf16be-bom", "utf32le-bom"])
def test_unicode_files_are_read_by_their_byte_order_mark(workdir, ingest, encoding, bom):
    path = workdir / "feed.csv"
    path.write_bytes(bom + _csv_text().encode(encoding))

    code, manifest = ingest(path)

    assert code == 0 and manifest["status"] == "succeeded", manifest
    assert _landed(workdir) == EXPECTED


def test_legacy_code_page_is_read_with_the_partners_encoding(workdir, ingest):
    path = workdir / "feed.csv"
    rows = [("A-1", "Café crème", "9.99", "3"), ("B-2", "Œuvre – “quoted”", "12.50", "0")]
    path.write_bytes(_csv_text(rows).encode("cp1252"))

    code, manifest = ingest(path, "--partner", "p", "--config", _config(workdir, encoding="cp1252"))

    assert code == 0
    assert _landed(workdir, "p") == {"A-1": ("Café crème", 999, 3), "B-2": ("Œuvre – “quoted”", 1250, 0)}


def test_an_undecodable_byte_rejects_its_row_and_names_it(workdir, ingest):
    rows = [(f"S-{i}", f"Item {i}", "1.00", "1") for i in range(40)]
    data = _csv_text(rows).encode("utf-8").replace(b"Item 17", b"Item \xff17")
    (workdir / "feed.csv").write_bytes(data)

    code, manifest = ingest(workdir / "feed.csv")

    assert code == 0 and manifest["status"] == "partial"
    assert (manifest["rows"]["rejected"], manifest["errors"]) == (1, {"invalid_encoding": 1})
    [line] = read_diagnostics(manifest, workdir)
    assert (line["row"], line["sku"], line["column"], line["code"]) == ("19", "S-17", "name", "invalid_encoding")
    assert "\ufffd" in line["value"]
    assert "s-17" not in products(workdir) and len(products(workdir)) == 39


def test_a_byte_the_code_page_lacks_is_named_with_that_encoding(workdir, ingest):
    data = _csv_text([(f"S-{i}", f"Item {i}", "1.00", "1") for i in range(30)]).encode("cp1252")
    (workdir / "feed.csv").write_bytes(data.replace(b"Item 3,", b"Item \x81,"))   # 0x81: no character

    code, manifest = ingest(workdir / "feed.csv", "--partner", "p", "--config", _config(workdir, encoding="cp1252"))

    [line] = read_diagnostics(manifest, workdir)
    assert (line["row"], line["column"], line["code"]) == ("5", "name", "invalid_encoding")
    assert "cp1252" in line["message"]


@pytest.mark.parametrize("newline", ["\r", "\r\n", "\n"], ids=["cr", "crlf", "lf"])
def test_line_endings_of_every_kind(workdir, ingest, newline):
    (workdir / "feed.csv").write_bytes(_csv_text(newline=newline).encode())
    code, manifest = ingest(workdir / "feed.csv")
    assert code == 0 and _landed(workdir) == EXPECTED


@pytest.mark.parametrize("before", [b"\n", b"\r\n  \r\n", b"\n\t\xef\xbb\xbf", b"\xef\xbb\xbf\n\n"],
                         ids=["blank-line", "whitespace-lines", "a-BOM-after-a-blank-line", "BOM-then-blank-lines"])
def test_blank_lines_before_the_header_are_skipped_and_rows_keep_their_numbers(workdir, ingest, before):
    """A plugin printing whitespace ahead of an export (a real WooCommerce file starts with
    0a 09 ef bb bf) no longer makes a blank line the header."""
    lines = before.count(b"\n")
    path = workdir / "feed.csv"
    path.write_bytes(before + b"sku,name,price\nA-1,Pen,1.50\nB-2,Pad,x\n" + b"".join(
        f"C-{i},Clip,1.00\n".encode() for i in range(30)))
    code, manifest = ingest(path)
    assert manifest["rows"]["inserted"] == 31
    assert products(workdir)["a-1"]["price_cents"] == 150
    [line] = read_diagnostics(manifest, workdir)
    assert (line["row"], line["sku"], line["code"]) == (str(lines + 3), "B-2", "invalid_price")


def test_a_numeric_first_column_after_a_bom_behind_blank_lines_stays_text(workdir, ingest):
    """The real export this shape comes from starts 0a 09 ef bb bf, then "ID,...": the first
    column's name as pyarrow reads it holds the BOM, and its cells must still be read as text."""
    path = workdir / "feed.csv"
    path.write_bytes(b"\n\t\xef\xbb\xbfID,sku,name\n0017,A-1,Pen\n18,B-2,Pad\n")
    code, manifest = ingest(path)
    assert code == 0 and manifest["rows"]["inserted"] == 2
    assert json.loads(products(workdir)["a-1"]["attributes"]) == {"ID": "0017"}


def test_mixed_line_endings_and_quoted_newlines(workdir, ingest):
    data = 'sku,name,description\r\nA-1,Shirt,"two\nlines"\nB-2,Hat,"cr\r\nlf"\rC-3,Cap,plain\n'
    (workdir / "feed.csv").write_bytes(data.encode())

    code, manifest = ingest(workdir / "feed.csv")

    assert code == 0 and manifest["rows"]["read"] == 3
    catalog = products(workdir)
    assert catalog["a-1"]["description"] == "two\nlines" and catalog["b-2"]["description"] == "cr\r\nlf"
    assert catalog["c-3"]["name"] == "Cap"


@pytest.mark.parametrize("delimiter", [";", "|", "\t"], ids=["semicolon", "pipe", "tab"])
def test_delimiters_are_sniffed_from_the_header(workdir, ingest, delimiter):
    (workdir / "feed.csv").write_text(_csv_text(delimiter=delimiter))
    code, manifest = ingest(workdir / "feed.csv")
    assert code == 0 and _landed(workdir) == EXPECTED


def test_decimal_comma_partner_with_semicolons(workdir, ingest):
    (workdir / "feed.csv").write_text('sku;name;price\nA-1;Tisch;"1.299,50"\nB-2;Stuhl;9,99\nC-3;Lampe;9.99\n')

    code, manifest = ingest(workdir / "feed.csv", "--partner", "p",
                            "--config", _config(workdir, decimal_separator=",", currency="EUR", max_reject_ratio=0.5))

    catalog = products(workdir, "p")
    assert (catalog["a-1"]["price_cents"], catalog["b-2"]["price_cents"]) == (129950, 999)
    assert catalog["a-1"]["currency"] == "EUR"
    # "9.99" from a decimal-comma partner is ambiguous: rejected, never 999.00
    assert [d["sku"] for d in read_diagnostics(manifest, workdir)] == ["C-3"]


def test_configured_delimiter_wins_over_the_sniffer(workdir, ingest):
    # the header has more commas than semicolons, but the partner says ";"
    (workdir / "feed.csv").write_text('sku;name;note\nA-1;Shirt;a,b,c,d\n')
    code, manifest = ingest(workdir / "feed.csv", "--partner", "p", "--config", _config(workdir, delimiter=";"))
    assert code == 0 and json.loads(products(workdir, "p")["a-1"]["attributes"]) == {"note": "a,b,c,d"}


# -- Excel -------------------------------------------------------------------------------------

def _workbook(path, sheets: dict[str, list[list]]):
    import openpyxl
    wb = openpyxl.Workbook(write_only=True)
    for title, rows in sheets.items():
        ws = wb.create_sheet(title)
        for row in rows:
            ws.append(row)
    wb.save(path)
    return path


def test_xlsx_first_sheet_lands_with_cells_as_a_person_reads_them(workdir, ingest):
    _workbook(workdir / "feed.xlsx", {"Products": [
        ["sku", "name", "price", "stock", "active", "released"],
        ["A-1", "Shirt", 9.99, 3, True, dt.date(2026, 3, 1)],
        [None, None, None, None, None, None],                      # an empty row, as Excel shows it
        ["00123", "Hat", 5, 0, False, None],
    ], "Other": [["sku", "name"], ["X", "not this sheet"]]})

    code, manifest = ingest(workdir / "feed.xlsx")

    assert code == 0 and manifest["format"] == "xlsx" and manifest["rows"]["read"] == 2
    catalog = products(workdir)
    assert set(catalog) == {"a-1", "00123"}
    assert (catalog["a-1"]["price_cents"], catalog["a-1"]["stock"], catalog["a-1"]["active"]) == (999, 3, 1)
    assert json.loads(catalog["a-1"]["attributes"]) == {"released": "2026-03-01"}
    assert (catalog["00123"]["price_cents"], catalog["00123"]["active"]) == (500, 0)


def test_xlsx_named_sheet_and_row_numbers_in_diagnostics(workdir, ingest):
    _workbook(workdir / "feed.xlsx", {"Intro": [["read me"]], "Catalog": [
        ["sku", "name", "price"], ["A-1", "Shirt", "9.99"], [None, None, None], ["B-2", None, "1"],
    ] + [[f"S-{i}", f"Item {i}", i] for i in range(30)]})

    code, manifest = ingest(workdir / "feed.xlsx", "--partner", "p", "--config", _config(workdir, sheet="Catalog"))

    [line] = read_diagnostics(manifest, workdir)
    assert (line["row"], line["sku"], line["column"], line["code"]) == ("4", "B-2", "name", "name_required")
    assert len(products(workdir, "p")) == 31


def test_xlsx_missing_sheet_is_a_clear_rejection(workdir, ingest):
    _workbook(workdir / "feed.xlsx", {"Products": [["sku", "name"], ["A", "a"]]})
    code, manifest = ingest(workdir / "feed.xlsx", "--partner", "p", "--config", _config(workdir, sheet="Nope"))
    assert code == 4 and "no sheet named 'Nope'" in manifest["message"] and "Products" in manifest["message"]


def test_a_file_named_xlsx_that_is_no_workbook_is_rejected(workdir, ingest):
    (workdir / "feed.xlsx").write_text("sku,name\nA,a\n")
    code, manifest = ingest(workdir / "feed.xlsx")
    assert code == 4 and manifest["errors"] == {"unreadable": 1}


# -- limits --------------------------------------------------------------------------------------

def _limits(workdir, **limits) -> str:
    body = "\n".join(f"{k} = {v}" for k, v in limits.items())
    (workdir / "l.toml").write_text(f"[limits]\n{body}\n")
    return str(workdir / "l.toml")


def test_too_many_columns_is_rejected_before_reading_rows(workdir, ingest):
    header = ",".join(["sku", "name"] + [f"c{i}" for i in range(100)])
    (workdir / "wide.csv").write_text(header + "\n" + ",".join(["A", "a"] + ["x"] * 100) + "\n")

    code, manifest = ingest(workdir / "wide.csv", "--config", _limits(workdir, max_columns=50))

    assert code == 4 and manifest["errors"] == {"limit_exceeded": 1}
    assert "max_columns" in manifest["message"]
    assert products(workdir) == {}


def test_a_line_longer_than_the_limit_is_rejected(workdir, ingest):
    (workdir / "long.csv").write_text("sku,name\nA,a\nB," + "x" * 5000 + "\nC,c\n")

    code, manifest = ingest(workdir / "long.csv", "--config", _limits(workdir, max_line_bytes=1000))

    assert code == 4 and manifest["errors"] == {"limit_exceeded": 1}
    assert "longer than 1000 bytes" in manifest["message"] and products(workdir) == {}


def test_a_gzip_bomb_is_refused_without_inflating_it(workdir, ingest):
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as gz:
        gz.write(b"sku,name\n")
        chunk = b"A," + b"a" * (1 << 20) + b"\n"         # compresses about 1000:1
        for _ in range(64):
            gz.write(chunk)
    (workdir / "bomb.csv.gz").write_bytes(buf.getvalue())

    code, manifest = ingest(workdir / "bomb.csv.gz")

    assert code == 4 and manifest["status"] == "rejected" and manifest["errors"]["limit_exceeded"] == 1
    assert "max_compression_ratio" in manifest["message"]
    assert products(workdir) == {}


def test_uncompressed_size_limit_applies_to_gzip(workdir, ingest):
    rows = "".join(f"S-{i},{os.urandom(8).hex()}\n" for i in range(20_000))
    (workdir / "big.csv.gz").write_bytes(gzip.compress(("sku,name\n" + rows).encode()))

    code, manifest = ingest(workdir / "big.csv.gz", "--config", _limits(workdir, max_uncompressed_bytes=100_000))

    assert code == 4 and "max_uncompressed_bytes" in manifest["message"]


def test_an_ordinary_gzip_file_is_within_the_limits(workdir, ingest):
    rows = "".join(f"S-{i},Item {i},{i}.99\n" for i in range(50_000))
    (workdir / "ok.csv.gz").write_bytes(gzip.compress(("sku,name,price\n" + rows).encode()))
    code, manifest = ingest(workdir / "ok.csv.gz")
    assert code == 0 and manifest["rows"]["inserted"] == 50_000


def test_an_xlsx_zip_bomb_is_refused_unopened(workdir, ingest):
    import zipfile
    path = workdir / "bomb.xlsx"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("xl/worksheets/sheet1.xml", b"<" + b" " * (64 << 20) + b">")

    code, manifest = ingest(path)

    assert code == 4 and "max_compression_ratio" in manifest["message"]


def test_a_nul_character_rejects_its_row_and_is_named(workdir, ingest):
    rows = [(f"S-{i}", f"Item {i}", "1.00", "1") for i in range(30)]
    data = _csv_text(rows).encode().replace(b"Item 7,", b"It\x00em 7,")
    (workdir / "feed.csv").write_bytes(data)

    code, manifest = ingest(workdir / "feed.csv")

    [line] = read_diagnostics(manifest, workdir)
    assert (line["row"], line["sku"], line["column"], line["code"]) == ("9", "S-7", "name", "invalid_encoding")
    assert "s-7" not in products(workdir) and len(products(workdir)) == 29


def test_a_line_longer_than_the_default_limit_is_refused_as_a_limit(workdir, ingest):
    (workdir / "huge.csv").write_text("sku,name\nA,a\nB," + "x" * (12 << 20) + "\n")
    code, manifest = ingest(workdir / "huge.csv")
    assert code == 4 and manifest["errors"] == {"limit_exceeded": 1} and products(workdir) == {}
    assert "max_line_bytes" in manifest["message"]


def test_lines_far_longer_than_usual_but_within_the_limit_are_read_whole(workdir, ingest):
    # lines of 300 KB to 3 MB: a read's first and last line break lie beyond the ends of the
    # read that are searched first, and a 3 MB line runs across reads. The values are longer
    # than a description may be: each row is read whole and judged (too_long), none is cut
    rows = [("S-1", "x" * 300_000), ("S-2", "short"), ("S-3", "y" * 3_000_000), ("S-4", "z" * 700_000)]
    (workdir / "long.csv").write_text("sku,description,name\n" + "".join(f"{s},{d},n\n" for s, d in rows))
    config = _limits(workdir, max_line_bytes=3_100_000)
    code, manifest = ingest(workdir / "long.csv", "--config", config)
    assert manifest["rows"]["read"] == 4 and manifest["errors"]["too_long"] == 3
    assert [(d["row"], d["sku"], d["column"]) for d in read_diagnostics(manifest, workdir)
            if d["code"] == "too_long"] == [("2", "S-1", "description"), ("4", "S-3", "description"),
                                             ("5", "S-4", "description")]
    (workdir / "long2.csv").write_text((workdir / "long.csv").read_text() + "S-5,five,n\n")
    code, manifest = ingest(workdir / "long2.csv", "--config", _limits(workdir, max_line_bytes=2_900_000))
    assert code == 4 and manifest["errors"] == {"limit_exceeded": 1}
    assert "longer than 2900000 bytes" in manifest["message"]


def test_a_huge_cell_of_short_lines_is_judged_like_any_value(workdir, ingest):
    cell = "\n".join(["y" * 1000] * 6000)                  # 6 MB in one quoted cell, 1 KB lines
    rows = "".join(f"S-{i},Item {i}\n" for i in range(40))
    (workdir / "huge.csv").write_text(f'sku,name\n{rows}B,"{cell}"\n')
    code, manifest = ingest(workdir / "huge.csv")
    assert code == 0 and manifest["errors"] == {"too_long": 1}
    [line] = read_diagnostics(manifest, workdir)
    assert (line["row"], line["sku"], line["column"]) == ("42", "B", "name")
    assert len(products(workdir)) == 40
