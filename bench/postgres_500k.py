"""``inbox-daemon ingest`` into PostgreSQL against the floor: the least any correct import pays.

The floor is ``bench/floor_postgres.py``, run as its own process like the daemon: pyarrow
streaming read and normalisation, ``COPY`` into a temporary staging table, and one set-based
upsert into a table shaped like the daemon's ``products``. The daemon does that and more (sha256 while spooling,
every validation, diagnostics, manifest, audit, the ledger). Both run on the same generated file
(``bench/catalog.py``'s generator) into a fresh schema each; median of ``--runs``.

    python bench/postgres_500k.py [--rows 500000] [--runs 3] [--url postgresql://127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from catalog import generate  # noqa: E402

FLOOR = str(Path(__file__).resolve().parent / "floor_postgres.py")


def _schema_url(base: str) -> tuple[str, str]:
    schema = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in base else "?"
    return schema, f"{base}{sep}options={quote(f'-csearch_path={schema}')}"


def _drop(base: str, schema: str) -> None:
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _timed(args, cwd: Path) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{args[0]} failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--url", default=os.environ.get("INBOX_DAEMON_TEST_PG", "postgresql://127.0.0.1:5432/test"))
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    exe = str(Path(sys.executable).with_name("inbox-daemon"))
    root = Path(tempfile.mkdtemp(prefix="inbox-bench-pg-"))
    feed = root / "catalog.csv"
    generate(feed, args.rows)
    print(f"generated {args.rows:,} rows, {feed.stat().st_size / 1e6:.0f} MB")
    figures: dict[str, list[float]] = {"floor": [], "daemon": [], "daemon re-import": []}
    try:
        for i in range(args.runs):
            # interleaved, so drift in the machine's load hits both alike
            schema, url = _schema_url(args.url)
            figures["floor"].append(_timed([sys.executable, FLOOR, url, str(feed)], root))
            _drop(args.url, schema)
            schema, url = _schema_url(args.url)
            work = root / f"run{i}"
            work.mkdir()
            (work / "pg.toml").write_text(f'[store]\nurl = {json.dumps(url)}\n')
            figures["daemon"].append(_timed([exe, "ingest", str(feed), "--config", "pg.toml"], work))
            changed = work / "catalog-v2.csv"
            shutil.copyfile(feed, changed)
            with open(changed, "a", encoding="utf-8") as fh:
                fh.write("SKU-NEW-1,New product,,1.00,USD,1,Acme,Home,,,,,\n")
            figures["daemon re-import"].append(_timed([exe, "ingest", str(changed), "--config", "pg.toml"], work))
            _drop(args.url, schema)
            print(f"  run {i + 1}: floor {figures['floor'][-1]:.2f} s, daemon {figures['daemon'][-1]:.2f} s, "
                  f"re-import {figures['daemon re-import'][-1]:.2f} s")
    finally:
        shutil.rmtree(root)
    floor = statistics.median(figures["floor"])
    table = []
    print(f"\n| path | median s | rows/s | × floor |\n|---|---|---|---|")
    for name, values in figures.items():
        med = statistics.median(values)
        table.append({"path": name, "median_s": round(med, 3), "rows_per_s": round(args.rows / med),
                      "ratio_to_floor": round(med / floor, 2), "runs": values})
        print(f"| {name} | {med:.2f} | {args.rows / med:,.0f} | {med / floor:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": args.rows, "results": table}, indent=2))


if __name__ == "__main__":
    main()
