"""A peer: pandas ``read_csv`` + ``to_sql`` + the floor's set-based upsert.

The import a data-minded user would otherwise write, measured next to the daemon: pandas reads
the whole file at once (every column as text), normalises it with vectorised column operations
the way the floor does (trimmed SKU, case-folded key, price to cents, stock as an integer, the
unmapped columns as attributes JSON, a ``row`` number so later rows of a key win), and
``DataFrame.to_sql`` writes it into a staging table. ``to_sql`` cannot make a TEMP table, so the
staging table is an ordinary one, dropped again in the same transaction as the upsert. The
upsert is the floor's one ``INSERT … SELECT … GROUP BY sku_key … ON CONFLICT DO UPDATE`` into the
daemon's own ``products`` table (created by the daemon's migrations, via the floor's
``daemon_schema``). The page cache and durability pragmas are the daemon's.

Compared with ``floor_sqlite.py`` it shows what the two usual conveniences cost: a whole-file
DataFrame instead of streamed Arrow batches, and ``to_sql``'s row-wise inserts into a durable
table instead of ADBC ingest into a TEMP one.

    python bench/peer_pandas.py DB CSV
"""

from __future__ import annotations

import sqlite3
import sys

import pandas as pd
from floor_sqlite import COLUMNS, daemon_schema

PRAGMAS = ("journal_mode=WAL", "synchronous=FULL", "cache_size=-65536")
UPDATED_AT = "2026-01-01T00:00:00.000Z"
JOB_ID = "peer-pandas"


def stage_frame(path: str) -> pd.DataFrame:
    """The whole CSV as the staging rows: ``row``, ``sku``, ``sku_key`` and ``COLUMNS[1:]``."""
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    sku = raw["sku"].str.strip()
    # the generated unmapped values need no JSON escaping
    attributes = ('{"color":"' + raw["color"] + '","material":"' + raw["material"]
                  + '","weight_g":"' + raw["weight_g"] + '"}')
    stage = pd.DataFrame({
        "row": pd.RangeIndex(2, 2 + len(raw)),
        "sku": sku,
        "sku_key": sku.str.lower(),
        "name": raw["name"],
        "description": raw["description"],
        "price_cents": (raw["price"].astype("float64") * 100).round().astype("int64"),
        "currency": raw["currency"],
        "stock": raw["stock"].astype("int64"),
        "active": 1,
        "brand": raw["brand"],
        "category": raw["category"],
        "gtin": raw["gtin"],
        "url": raw["url"],
        "image_url": None,
        "attributes": attributes,
    })
    return stage


def upsert_sql() -> str:
    """The floor's statement, reading the ordinary ``stage`` table instead of ``temp.stage``."""
    cols = ", ".join(COLUMNS)
    return (f"INSERT INTO products (partner_id, sku_key, {cols}, updated_at, source_job_id)"
            f" SELECT 'default', sku_key, {cols}, '{UPDATED_AT}', '{JOB_ID}' FROM"
            f" (SELECT sku_key, {cols}, max(row) FROM stage GROUP BY sku_key)"
            " WHERE true ON CONFLICT (partner_id, sku_key) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS)
            + ", updated_at = excluded.updated_at, source_job_id = excluded.source_job_id")


def run(db: str, path: str) -> int:
    conn = sqlite3.connect(db)
    try:
        cur = conn.cursor()
        for pragma in PRAGMAS:
            cur.execute(f"PRAGMA {pragma}")
        daemon_schema(cur)
        conn.commit()
        stage = stage_frame(path)
        stage.to_sql("stage", conn, if_exists="replace", index=False)
        cur.execute("BEGIN IMMEDIATE")
        cur.execute(upsert_sql())
        cur.execute("DROP TABLE stage")
        conn.commit()
        return len(stage)
    finally:
        conn.close()


def main(db: str, path: str) -> None:
    print(f"rows={run(db, path)}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
