"""``inbox-daemon ingest`` into PostgreSQL against the floor: the least any correct import pays.

The floor is a hand-written script, run as its own process like the daemon: pyarrow streaming
CSV read, the same normalisation the catalog needs (trim, case-folded key, price to cents, the
unmapped columns as attributes JSON), ``COPY`` into a temporary staging table, and one
set-based ``INSERT … SELECT DISTINCT ON (sku_key) … ON CONFLICT DO UPDATE`` into the daemon's
``products`` table, column for column, in one transaction, with the server's default settings. The daemon does that and more (sha256 while spooling,
every validation, diagnostics, manifest, audit, the ledger). Both run on the same generated file
(``bench/ingest_500k.py``'s generator) into a fresh schema each; median of ``--runs``.

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
from ingest_500k import generate  # noqa: E402

FLOOR = r'''
import io, sys
import psycopg, pyarrow as pa, pyarrow.compute as pc, pyarrow.csv as pacsv
url, path = sys.argv[1], sys.argv[2]
# the daemon's products table, column for column
conn = psycopg.connect(url)
conn.execute("CREATE TABLE IF NOT EXISTS products (partner_id text NOT NULL, sku text NOT NULL,"
             " sku_key text NOT NULL, name text NOT NULL, description text, price_cents bigint, currency text,"
             " stock bigint, active boolean NOT NULL DEFAULT true, brand text, category text, gtin text, url text,"
             " image_url text, attributes text, updated_at text NOT NULL, source_job_id text NOT NULL,"
             " PRIMARY KEY (partner_id, sku_key))")
conn.execute("CREATE TEMP TABLE stage (row bigint, sku text, sku_key text, name text, description text,"
             " price_cents bigint, currency text, stock bigint, active boolean, brand text, category text,"
             " gtin text, url text, image_url text, attributes text) ON COMMIT DROP")
reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 22),
                        parse_options=pacsv.ParseOptions(newlines_in_values=True),
                        convert_options=pacsv.ConvertOptions(strings_can_be_null=True, column_types={
                            c: pa.string() for c in ("sku", "name", "description", "price", "currency", "stock",
                                                     "brand", "category", "gtin", "url", "color", "material",
                                                     "weight_g")}))
row, options = 2, pacsv.WriteOptions(include_header=False, quoting_style="needed")
with conn.cursor() as cur:
    for b in reader:
        n = b.num_rows
        sku = pc.utf8_trim_whitespace(b.column("sku"))
        # unmapped columns as the attributes JSON (the generated values need no escaping)
        attributes = pc.binary_join_element_wise('{"color":"', b.column("color"), '","material":"',
                                                 b.column("material"), '","weight_g":"', b.column("weight_g"),
                                                 '"}', "")
        out = pa.record_batch([
            pa.array(range(row, row + n), pa.int64()), sku, pc.utf8_lower(sku), b.column("name"),
            b.column("description"),
            pc.cast(pc.round(pc.multiply(pc.cast(b.column("price"), pa.float64()), 100)), pa.int64()),
            b.column("currency"), pc.cast(b.column("stock"), pa.int64()), pa.repeat(pa.scalar(True), n),
            b.column("brand"), b.column("category"), b.column("gtin"), b.column("url"), pa.nulls(n, pa.string()),
            attributes], names=["row", "sku", "sku_key", "name", "description", "price_cents", "currency", "stock",
                                "active", "brand", "category", "gtin", "url", "image_url", "attributes"])
        buf = io.BytesIO()
        pacsv.write_csv(out, buf, write_options=options)
        with cur.copy("COPY stage FROM STDIN WITH (FORMAT csv)") as copy:
            copy.write(buf.getbuffer())
        row += n
    keep = ("sku, name, description, price_cents, currency, stock, active, brand, category, gtin, url,"
            " image_url, attributes")
    cur.execute(f"INSERT INTO products (partner_id, sku_key, {keep}, updated_at, source_job_id)"
                f" SELECT 'default', sku_key, {keep}, '2026-01-01T00:00:00.000Z', 'floor' FROM"
                f" (SELECT DISTINCT ON (sku_key) * FROM stage ORDER BY sku_key, row DESC) l"
                " ON CONFLICT (partner_id, sku_key) DO UPDATE SET "
                + ", ".join(f"{c} = excluded.{c}" for c in keep.split(", ")))
conn.commit()
'''


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
            figures["floor"].append(_timed([sys.executable, "-c", FLOOR, url, str(feed)], root))
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
