"""Shared fixtures: a fresh working directory per test, the CLI in-process and as a subprocess,
and the third-party corpus (skipped with a reason when it is not next to the repository)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("INBOX_DAEMON_CORPUS", REPO.parent / "shared" / "corpus"))
DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def fresh_logging():
    """A command run in-process configures the logs to write to the stream its test captured,
    at its level (``-v``: debug); the next test starts from structlog's defaults instead of
    writing to a stream that is closed by then."""
    yield
    import structlog
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Like watchdog's suite: a test that leaves a thread running is a failing test."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    assert not leaked, f"threads left running: {leaked}"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty directory as the current one, like a new user's: state goes to ./var."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INBOX_DAEMON_CONFIG", raising=False)
    return tmp_path


@pytest.fixture
def corpus():
    if not CORPUS.is_dir():
        pytest.skip(f"third-party corpus not found at {CORPUS} (set INBOX_DAEMON_CORPUS)")
    return CORPUS


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


@pytest.fixture
def cli(workdir, capsys):
    """Run ``inbox-daemon ARGS`` in-process; returns exit code and captured output."""
    from inbox_daemon.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)
    return run


@pytest.fixture
def ingest(cli):
    """``ingest PATH --json`` → (exit code, manifest)."""
    def run(path, *args: str):
        result = cli("ingest", path, "--json", *args)
        return result.code, (json.loads(result.out) if result.out.strip() else None)
    return run


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    exe = Path(sys.executable).with_name("inbox-daemon")
    return subprocess.run([str(exe), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def write_csv(path: Path, header: list[str], rows: list[list], *, delimiter: str = ",",
              encoding: str = "utf-8") -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes(buf.getvalue().encode(encoding))
    return path


def read_diagnostics(manifest: dict, root: Path) -> list[dict]:
    if not manifest["diagnostics"]:
        return []
    path = root / "var" / "results" / manifest["partner"] / manifest["diagnostics"]
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def ledger(root: Path, columns: str = "source_name, status, attempt") -> list[tuple]:
    """The jobs table as a user would query it: ``columns`` of every job, oldest first (plain sqlite3)."""
    import sqlite3
    con = sqlite3.connect(root / "var" / "catalog.db")
    try:
        return con.execute(f"SELECT {columns} FROM jobs ORDER BY created_at").fetchall()
    finally:
        con.close()


def products(root: Path, partner: str = "default") -> dict[str, dict]:
    """The catalog as a user would query it: sku_key → row (plain sqlite3, no project code)."""
    import sqlite3
    con = sqlite3.connect(root / "var" / "catalog.db")
    con.row_factory = sqlite3.Row
    try:
        rows = con.execute("SELECT * FROM products WHERE partner_id = ?", (partner,)).fetchall()
    finally:
        con.close()
    return {r["sku_key"]: dict(r) for r in rows}


@pytest.fixture
def daemons():
    """``daemons(root, cfg, **kw)`` starts a ``DaemonProcess``; each one started is closed (killed
    if still running) when the test ends, whatever it asserted."""
    from tests.daemon_harness import DaemonProcess
    started = []

    def start(root: Path, cfg: str, **kw) -> DaemonProcess:
        d = DaemonProcess(root, cfg, **kw)
        started.append(d)
        return d
    yield start
    for d in started:
        d.close()


# -- PostgreSQL: a real server, one fresh schema per test -------------------------------------------

PG_URL = os.environ.get("INBOX_DAEMON_TEST_PG", "postgresql://127.0.0.1:5432/test")


def _pg_reachable() -> str | None:
    try:
        import psycopg
        with psycopg.connect(PG_URL, connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001 — any failure to connect is the skip reason
        return f"PostgreSQL not reachable at {PG_URL} (set INBOX_DAEMON_TEST_PG): {str(exc).strip()[:200]}"


@pytest.fixture(scope="session")
def pg_server():
    reason = _pg_reachable()
    if reason and os.environ.get("INBOX_DAEMON_REQUIRE_PG"):
        pytest.fail(f"{reason}; INBOX_DAEMON_REQUIRE_PG is set, so this is a failure, not a skip")
    if reason:
        pytest.skip(reason)
    return PG_URL


@pytest.fixture
def pg_url(pg_server):
    """A store URL whose search_path is a schema of its own, dropped afterwards."""
    import secrets
    from urllib.parse import quote

    import psycopg
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in pg_server else "?"
    yield f"{pg_server}{sep}options={quote(f'-csearch_path={schema}')}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def pg_products(url: str, partner: str) -> dict[str, dict]:
    """The PostgreSQL catalog as a user would query it (plain psycopg, no project code)."""
    import psycopg
    from psycopg.rows import dict_row
    with psycopg.connect(url, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT * FROM products WHERE partner_id = %s", (partner,)).fetchall()
    return {r["sku_key"]: {**r, "active": int(r["active"])} for r in rows}
