"""The floor: the least any correct import of the benchmark catalog into SQLite must pay.

A hand-written script, run as its own process like the daemon: pyarrow's streaming CSV reader,
the normalisation the catalog needs in Arrow compute (trimmed SKU, case-folded key, price to
cents, stock as an integer, the unmapped columns as attributes JSON), ADBC ingest into a TEMP
staging table, and ONE set-based ``INSERT … SELECT … GROUP BY sku_key … ON CONFLICT DO UPDATE``
into the daemon's own ``products`` table (created by the daemon's migrations), in one
transaction. ``GROUP BY`` feeds the upsert in key order and keeps the last row of each key,
the lever ``PERFORMANCE-NOTES.md`` found; the page cache and durability pragmas are the
daemon's. Nothing else: no sha256, no validation beyond the casts, no ledger, no results.

On an existing catalog it rewrites every row it reads (a full re-import), which is what a
set-based import without per-row change detection does.

    python bench/floor_sqlite.py DB CSV
"""

from __future__ import annotations

import sys
from importlib import resources

import adbc_driver_sqlite.dbapi as adbc_sqlite
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

COLUMNS = ("sku", "name", "description", "price_cents", "currency", "stock", "active", "brand",
           "category", "gtin", "url", "image_url", "attributes")


def daemon_schema(cur) -> None:
    """The daemon's schema, from its own migration scripts."""
    cur.execute("PRAGMA user_version")
    if cur.fetchone()[0]:
        return          # made already (a re-import)
    folder = resources.files("storage") / "migrations" / "sqlite"
    for script in sorted(p for p in folder.iterdir() if p.name.endswith(".sql")):
        text = "\n".join(line.split("--", 1)[0] for line in script.read_text().splitlines())
        for statement in filter(str.strip, text.split(";")):
            cur.execute(statement)
    cur.execute("PRAGMA user_version = 99")


def normalized_batches(path: str):
    """The file as canonical staging batches (``row`` first), streamed in 1 MB blocks."""
    text = {c: pa.string() for c in ("sku", "name", "description", "price", "currency", "stock", "brand",
                                     "category", "gtin", "url", "color", "material", "weight_g")}
    reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 20),
                            parse_options=pacsv.ParseOptions(newlines_in_values=True),
                            convert_options=pacsv.ConvertOptions(strings_can_be_null=True, column_types=text))
    row = 2
    for b in reader:
        n = b.num_rows
        sku = pc.utf8_trim_whitespace(b.column("sku"))
        # the generated unmapped values need no JSON escaping
        attributes = pc.binary_join_element_wise('{"color":"', b.column("color"), '","material":"',
                                                 b.column("material"), '","weight_g":"', b.column("weight_g"),
                                                 '"}', "")
        yield pa.record_batch([
            pa.array(range(row, row + n), pa.int64()), sku, pc.utf8_lower(sku), b.column("name"),
            b.column("description"),
            pc.cast(pc.round(pc.multiply(pc.cast(b.column("price"), pa.float64()), 100)), pa.int64()),
            b.column("currency"), pc.cast(b.column("stock"), pa.int64()), pa.repeat(pa.scalar(1), n),
            b.column("brand"), b.column("category"), b.column("gtin"), b.column("url"), pa.nulls(n, pa.string()),
            attributes], names=["row", "sku", "sku_key", *COLUMNS[1:]])
        row += n


def main(db: str, path: str) -> None:
    conn = adbc_sqlite.connect(db, autocommit=True)
    cur = conn.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "cache_size=-65536"):
        cur.execute(f"PRAGMA {pragma}")
        cur.fetchall()
    daemon_schema(cur)
    for i, out in enumerate(normalized_batches(path)):
        cur.adbc_ingest("stage", out, mode="append" if i else "create", temporary=True)
    cols = ", ".join(COLUMNS)
    cur.execute("BEGIN IMMEDIATE")
    cur.execute(f"INSERT INTO products (partner_id, sku_key, {cols}, updated_at, source_job_id)"
                f" SELECT 'default', sku_key, {cols}, '2026-01-01T00:00:00.000Z', 'floor' FROM"
                f" (SELECT sku_key, {cols}, max(row) FROM temp.stage GROUP BY sku_key)"
                " WHERE true ON CONFLICT (partner_id, sku_key) DO UPDATE SET "
                + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS)
                + ", updated_at = excluded.updated_at, source_job_id = excluded.source_job_id")
    cur.execute("COMMIT")
    cur.close()
    conn.close()


if __name__ == "__main__":
    main(*sys.argv[1:3])
