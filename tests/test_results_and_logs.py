"""Diagnostics files (formula-safe cells, atomic writes), log redaction and the row contract."""

from __future__ import annotations

import csv
import io
import json
import re
import threading

import pyarrow as pa
import pytest
import structlog

from adapters.contract import contract
from adapters.validation import DIAGNOSTICS_SCHEMA
from config.model import PartnerConfig
from inbox_daemon import logs
from inbox_daemon.results import DiagnosticsWriter, spreadsheet_safe
from inbox_daemon.tempfiles import write_atomic

# -- spreadsheet_safe ----------------------------------------------------------------------------

@pytest.mark.parametrize("cell", ["=1+1", "+41 79 000", "-5", "@SUM(A1)", "\tx", "\rx",
                                  "=HYPERLINK(\"http://x\")", "=", "@"])
def test_cells_a_spreadsheet_would_evaluate_get_a_leading_apostrophe(cell):
    assert spreadsheet_safe(pa.array([cell])).to_pylist() == ["'" + cell]


@pytest.mark.parametrize("cell", ["plain", "a=b", "9.99", "x-1", " =1", "", "'=already", "ü=1"])
def test_other_cells_are_unchanged(cell):
    assert spreadsheet_safe(pa.array([cell])).to_pylist() == [cell]


def test_nulls_stay_null_among_other_cells():
    assert spreadsheet_safe(pa.array([None, "=x", None, "ok"], pa.string())).to_pylist() == [
        None, "'=x", None, "ok"]


# -- DiagnosticsWriter ---------------------------------------------------------------------------

def diagnostics(*lines: dict) -> pa.Table:
    base = {"row": 2, "sku": "A-1", "severity": "error", "column": "price", "code": "invalid_price",
            "message": "price is not a number", "value": "abc"}
    return pa.Table.from_pylist([{**base, **line} for line in lines], schema=DIAGNOSTICS_SCHEMA)


def test_writer_without_lines_leaves_no_file(tmp_path):
    folder = tmp_path / "results" / "acme"
    writer = DiagnosticsWriter(folder, "job1")
    writer.write(DIAGNOSTICS_SCHEMA.empty_table())
    assert writer.finish() is None
    assert writer.lines == 0
    assert not folder.exists() or list(folder.iterdir()) == []


def test_writer_file_appears_only_when_finished(tmp_path):
    folder = tmp_path / "acme"
    writer = DiagnosticsWriter(folder, "job1")
    writer.write(diagnostics({"row": 2}))
    writer.write(diagnostics({"row": 7, "sku": "B-2", "code": "negative_stock", "column": "stock",
                              "value": "-1"}))
    final = folder / "job1.diagnostics.csv"
    assert not final.exists()
    assert all(p.name.startswith(".") for p in folder.iterdir())     # only the hidden temp file

    assert writer.finish() == "job1.diagnostics.csv"

    assert [p.name for p in folder.iterdir()] == ["job1.diagnostics.csv"]
    with open(final, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["row", "sku", "severity", "column", "code", "message", "value"]
    assert [(r["row"], r["sku"], r["code"], r["value"]) for r in rows] == [
        ("2", "A-1", "invalid_price", "abc"), ("7", "B-2", "negative_stock", "'-1")]
    assert writer.lines == 2


def test_writer_neutralises_formula_cells_in_sku_column_and_value(tmp_path):
    writer = DiagnosticsWriter(tmp_path, "job1")
    writer.write(diagnostics({"sku": "=cmd|' /C calc'!A0", "column": "@col", "value": "+1+1",
                              "message": "ok"}))
    writer.finish()
    with open(tmp_path / "job1.diagnostics.csv", newline="", encoding="utf-8") as fh:
        (row,) = list(csv.DictReader(fh))
    assert (row["sku"], row["column"], row["value"]) == ("'=cmd|' /C calc'!A0", "'@col", "'+1+1")


def test_writer_keeps_values_with_commas_quotes_and_newlines_intact(tmp_path):
    value = 'a,b "quoted"\nsecond line'
    writer = DiagnosticsWriter(tmp_path, "job1")
    writer.write(diagnostics({"value": value, "sku": None}))
    writer.finish()
    with open(tmp_path / "job1.diagnostics.csv", newline="", encoding="utf-8") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["value"] == value and row["sku"] == ""


def test_discarded_writer_leaves_no_file(tmp_path):
    writer = DiagnosticsWriter(tmp_path, "job1")
    writer.write(diagnostics({}))
    writer.discard()
    assert list(tmp_path.iterdir()) == []


def test_write_atomic_replaces_the_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "p" / "job.result.json"
    write_atomic(path, b"old")
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in path.parent.iterdir()] == ["job.result.json"]


# -- logs ----------------------------------------------------------------------------------------

@pytest.fixture
def log_output():
    """Logs configured as the daemon configures them, into a buffer; restored afterwards."""
    buffer = io.StringIO()
    logs.configure(fmt="json", level="debug", stream=buffer)

    def lines() -> list[dict]:
        return [json.loads(line) for line in buffer.getvalue().splitlines()]
    lines.text = buffer.getvalue
    yield lines
    structlog.reset_defaults()
    threading.excepthook = threading.__excepthook__


def test_an_error_that_ends_a_librarys_thread_is_one_json_line_not_a_traceback(log_output, capsys):
    """paramiko's prefetch thread dies with EOFError when the server drops the connection: its
    traceback was printed between the JSON lines."""
    def prefetch():
        raise EOFError("Server connection dropped")
    thread = threading.Thread(target=prefetch, name="prefetch")
    thread.start()
    thread.join()

    (line,) = log_output()
    assert (line["event"], line["thread"], line["error_type"], line["error"]) == (
        "thread.ended_by_error", "prefetch", "EOFError", "Server connection dropped")
    assert "Traceback" in line["exception"] and capsys.readouterr().err == ""


def test_logs_are_one_json_object_per_line(log_output):
    logs.get_logger(job_id="j1", partner="acme").info("job.started", file="feed.csv")
    (line,) = log_output()
    assert (line["event"], line["job_id"], line["partner"], line["file"], line["level"]) == (
        "job.started", "j1", "acme", "feed.csv", "info")


@pytest.mark.parametrize("key", ["password", "db_password", "secret", "webhook_secret", "token",
                                 "access_token", "api_key", "apikey", "Authorization", "private_key",
                                 "PASSWORD", "credential"])
def test_values_of_secret_keys_are_redacted(log_output, key):
    logs.get_logger().info("connect", **{key: "hunter2-value"}, host="h")
    (line,) = log_output()
    assert line[key] == "***" and line["host"] == "h"
    assert "hunter2-value" not in log_output.text()


def test_secret_keys_are_redacted_inside_nested_values(log_output):
    logs.get_logger().info("config", inbox={"host": "h", "password": "pw-1234"},
                           hooks=[{"url": "https://x", "secret": "s-5678"}])
    (line,) = log_output()
    assert line["inbox"] == {"host": "h", "password": "***"}
    assert line["hooks"] == [{"url": "https://x", "secret": "***"}]


@pytest.mark.parametrize("key", ["passwd", "passphrase", "secret_key", "aws_secret_access_key",
                                 "X-Api-Key"])
def test_values_of_other_common_secret_keys_are_redacted(log_output, key):
    logs.get_logger().info("connect", **{key: "hunter2-value"})
    assert log_output()[0][key] == "***"


def test_key_naming_an_environment_variable_is_not_a_secret(log_output):
    logs.get_logger().info("webhook", secret_env="ACME_HOOK_SECRET")
    assert log_output()[0]["secret_env"] == "ACME_HOOK_SECRET"


def test_registered_secret_is_replaced_inside_other_strings(log_output):
    secret = "Zq8-registered-secret-value"
    logs.register_secret(secret)
    try:
        log = logs.get_logger(note=f"prefix {secret} suffix")
        log.info(f"sending with key {secret}", header=f"Bearer {secret}", items=[f"x{secret}y"])
        (line,) = log_output()
        assert line["event"] == "sending with key ***"
        assert line["header"] == "Bearer ***"
        assert line["note"] == "prefix *** suffix"
        assert line["items"] == ["x***y"]
        assert secret not in log_output.text()
    finally:
        logs._known_secrets.discard(secret)


def test_registered_secret_is_redacted_from_exception_text(log_output):
    secret = "Kx7-exception-secret"
    logs.register_secret(secret)
    try:
        try:
            raise RuntimeError(f"login failed with {secret}")
        except RuntimeError:
            logs.get_logger().exception("fetch.failed")
        (line,) = log_output()
        assert "login failed with ***" in line["exception"]
        assert secret not in log_output.text()
    finally:
        logs._known_secrets.discard(secret)


@pytest.mark.parametrize("url, masked", [
    ("postgresql://u:secret@h/db", "postgresql://u:***@h/db"),
    ("sftp://catalog:pa55word@sftp.example:22/out", "sftp://catalog:***@sftp.example:22/out"),
    ("https://user:tok@hooks.example/x?y=1", "https://user:***@hooks.example/x?y=1"),
])
def test_passwords_in_urls_are_masked(log_output, url, masked):
    logs.get_logger().info(f"opening {url}", store=url, urls=[url])
    (line,) = log_output()
    assert line["event"] == f"opening {masked}"
    assert line["store"] == masked and line["urls"] == [masked]
    assert logs.mask_url(url) == masked


@pytest.mark.parametrize("url, masked", [("postgresql://:secret@h/db", "postgresql://:***@h/db"),
                                         ("redis://:pw1234@h:6379/0", "redis://:***@h:6379/0")])
def test_password_in_a_url_without_a_user_name_is_masked(url, masked):
    assert logs.mask_url(url) == masked


@pytest.mark.parametrize("url", ["postgresql://u@h:5432/db", "sqlite:///var/catalog.db",
                                 "https://hooks.acme.example/catalog"])
def test_urls_without_a_password_are_unchanged(url):
    assert logs.mask_url(url) == url


# -- contract ------------------------------------------------------------------------------------

def test_shopify_contract_requires_its_sku_column_and_says_a_title_creates_a_product():
    schema = contract(PartnerConfig(id="p", preset="shopify"))
    assert schema["required"] == ["Variant SKU"]
    assert "create a product" in schema["properties"]["Title"]["description"]
    assert "sets only the columns it has" in schema["description"]
    assert {"Variant SKU", "Title", "Variant Price", "Variant Barcode"} <= set(schema["properties"])
    assert "sku" not in schema["properties"] and "name" not in schema["properties"]


def test_partner_columns_name_the_contract_properties():
    schema = contract(PartnerConfig(id="p", preset="shopify", columns={"sku": ("Item No",)}))
    assert schema["required"] == ["Item No"]
    assert "Item No" in schema["properties"]


@pytest.mark.parametrize("partner", [PartnerConfig(id="p"), PartnerConfig(id="p", preset="shopify"),
                                     PartnerConfig(id="p", preset="woocommerce")])
def test_contract_example_meets_its_own_schema(partner):
    schema = contract(partner)
    (example,) = schema["examples"]
    assert set(example) == set(schema["properties"])
    assert all(example.get(column) for column in schema["required"])
    patterned = 0
    for column, prop in schema["properties"].items():
        value = example[column]
        if "pattern" in prop:
            patterned += 1
            assert re.search(prop["pattern"], value), (column, prop["pattern"], value)
        assert len(value) >= prop.get("minLength", 0), column
        assert len(value) <= prop.get("maxLength", len(value)), column
    assert patterned >= 5          # price, currency, stock, active, gtin


def test_contract_patterns_refuse_what_validation_refuses():
    props = contract(PartnerConfig(id="p"))["properties"]
    assert not re.search(props["stock"]["pattern"], "1.5")
    assert re.search(props["stock"]["pattern"], "-1")          # accepted: stored as 0, with a warning
    assert not re.search(props["currency"]["pattern"], "EURO")
    assert not re.search(props["active"]["pattern"], "maybe")
    assert not re.search(props["price"]["pattern"], "abc")


# several processes on one stdout: the daemon and its worker processes share the file or pipe it
# was started with; with PYTHONUNBUFFERED (common in units and containers) every write is a syscall
_LOGGING_PROCESS = """
from inbox_daemon import logs
logs.configure(fmt="json")
log = logs.get_logger(component="test")
for n in range(2000):
    log.info("line", n=n, pad="x" * 60)
"""


def test_log_lines_of_several_processes_on_one_unbuffered_stdout_stay_whole(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path
    out = tmp_path / "shared.log"
    with open(out, "w") as shared:
        procs = [subprocess.Popen([sys.executable, "-c", _LOGGING_PROCESS], stdout=shared,
                                  cwd=Path(__file__).resolve().parents[1], env={**os.environ, "PYTHONUNBUFFERED": "1"})
                 for _ in range(4)]
        assert [p.wait(120) for p in procs] == [0, 0, 0, 0]
    lines = out.read_text().splitlines()
    torn = [line for line in lines if not (line.startswith("{") and line.endswith("}"))]
    assert not torn, f"{len(torn)} torn lines, e.g. {torn[:2]}"
    assert sorted(json.loads(line)["n"] for line in lines) == sorted(list(range(2000)) * 4)
