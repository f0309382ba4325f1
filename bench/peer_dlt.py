"""A peer: dlt, the library users most often pick to "load files into a database".

The import a user of dlt would write for the benchmark catalog. The file is read with pyarrow
and given the floor's normalisation (``floor_sqlite.normalized_batches``: trimmed SKU,
case-folded key, price in cents, stock as an integer, the unmapped columns as attributes JSON).
The Arrow batches go to dlt's ``sqlalchemy`` destination on an SQLite file, with
``write_disposition="merge"`` on the key (``delete-insert``). dlt deduplicates a load by primary
key, and ``dedup_sort`` on the row number keeps each key's last row, as the floor does.

It writes into dlt's own table (``catalog.products``, with the dataset as an attached SQLite
database), not the daemon's schema. ``--compare FLOOR_DB`` then counts the products whose
columns differ from the floor's catalog: 0 means both left the same catalog.

    python bench/peer_dlt.py DB CSV [--compare FLOOR_DB]
"""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

import dlt
import pyarrow as pa
from floor_sqlite import COLUMNS, normalized_batches

COMPARED = ("name", "description", "price_cents", "currency", "stock", "brand", "category", "gtin", "url",
            "attributes")


def load(db: Path, csv: str) -> None:
    pipeline = dlt.pipeline(pipeline_name="peer_dlt", pipelines_dir=str(db.parent / ".dlt"),
                            destination=dlt.destinations.sqlalchemy(credentials=f"sqlite:///{db}"),
                            dataset_name="catalog")

    @dlt.resource(name="products", primary_key="sku_key",
                  write_disposition={"disposition": "merge", "strategy": "delete-insert"},
                  columns={"row": {"dedup_sort": "desc"}})
    def products():
        for batch in normalized_batches(csv):
            yield pa.Table.from_batches([batch.drop_columns(["image_url"])])

    pipeline.run(products())


def differing(db: Path, floor_db: str) -> tuple[int, int]:
    """(products of the floor's catalog, those dlt left different or missing)."""
    con = sqlite3.connect(floor_db)
    try:
        floor = {r[0]: r[1:] for r in con.execute(
            f"SELECT sku_key, {', '.join(COMPARED)} FROM products WHERE partner_id = 'default'")}
    finally:
        con.close()
    attached = db.parent / f"{db.stem}__catalog{db.suffix}"
    con = sqlite3.connect(attached if attached.exists() else db)
    try:
        table = "products" if attached.exists() else "catalog.products"
        peer = {r[0]: r[1:] for r in con.execute(f"SELECT sku_key, {', '.join(COMPARED)} FROM {table}")}
    finally:
        con.close()
    return len(floor), sum(peer.get(key) != values for key, values in floor.items()) + len(peer.keys() - floor.keys())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("db", type=Path)
    ap.add_argument("csv")
    ap.add_argument("--compare", metavar="FLOOR_DB")
    args = ap.parse_args()
    assert set(COMPARED) <= set(COLUMNS)
    if args.compare:
        total, wrong = differing(args.db, args.compare)
        print(f"{wrong} of {total} products differ from the floor's catalog")
        raise SystemExit(1 if wrong else 0)
    load(args.db, args.csv)


if __name__ == "__main__":
    main()
