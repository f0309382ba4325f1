"""A peer: the per-row ORM importer of the kind partner-feed projects ship.

What a user would otherwise write (or install) to load a partner catalog into SQLite, measured
next to the daemon so its figures have a familiar yardstick. It is deliberately ordinary:
SQLAlchemy 2's ORM with a declarative class mapped onto the daemon's own ``products`` table
(created by the daemon's migrations, via the floor's ``daemon_schema``), ``csv.DictReader``
row by row, and for each row a case-insensitive lookup by the indexed ``sku_key`` followed by
an update of the found object or ``session.add`` of a new one. Autoflush is left on, as such
importers leave it, so every lookup first flushes the pending change of the row before; the
session commits every 10,000 rows and at the end.

The normalisation is the floor's (``floor_sqlite.py``), so both leave the same catalog: trimmed
SKU, case-folded key, price to cents, stock as an integer, the unmapped columns as attributes
JSON; later rows of a key win. The page cache and durability pragmas are the daemon's.

    python bench/peer_orm.py DB CSV [--limit N]
"""

from __future__ import annotations

import argparse
import csv
import json

from floor_sqlite import daemon_schema
from sqlalchemy import create_engine, event, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

PARTNER = "default"
UPDATED_AT = "2026-01-01T00:00:00.000Z"
JOB_ID = "peer-orm"
UNMAPPED = ("color", "material", "weight_g")
COMMIT_EVERY = 10_000
PRAGMAS = ("journal_mode=WAL", "synchronous=FULL", "cache_size=-65536")


class Base(DeclarativeBase):
    pass


class Product(Base):
    """The daemon's ``products`` table; (partner_id, sku_key), its unique key, is the identity."""

    __tablename__ = "products"

    partner_id: Mapped[str] = mapped_column(primary_key=True)
    sku_key: Mapped[str] = mapped_column(primary_key=True)
    sku: Mapped[str]
    name: Mapped[str]
    description: Mapped[str | None]
    price_cents: Mapped[int | None]
    currency: Mapped[str | None]
    stock: Mapped[int | None]
    active: Mapped[int]
    brand: Mapped[str | None]
    category: Mapped[str | None]
    gtin: Mapped[str | None]
    url: Mapped[str | None]
    image_url: Mapped[str | None]
    attributes: Mapped[str | None]
    updated_at: Mapped[str]
    source_job_id: Mapped[str]


def normalise(record: dict[str, str]) -> dict[str, object]:
    """One CSV record as the values of a ``Product``, the way the floor normalises it."""
    sku = record["sku"].strip()
    return {
        "sku": sku,
        "sku_key": sku.lower(),
        "name": record["name"],
        "description": record["description"],
        "price_cents": round(float(record["price"]) * 100),
        "currency": record["currency"],
        "stock": int(record["stock"]),
        "active": 1,
        "brand": record["brand"],
        "category": record["category"],
        "gtin": record["gtin"],
        "url": record["url"],
        "image_url": None,
        "attributes": json.dumps({c: record[c] for c in UNMAPPED}, separators=(",", ":")),
        "updated_at": UPDATED_AT,
        "source_job_id": JOB_ID,
    }


def connect(db: str):
    engine = create_engine(f"sqlite:///{db}")

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:
        cur = dbapi_conn.cursor()
        for pragma in PRAGMAS:
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    raw = engine.raw_connection()
    try:
        daemon_schema(raw.cursor())
        raw.commit()
    finally:
        raw.close()
    return engine


def run(db: str, path: str, limit: int | None) -> tuple[int, int, int]:
    engine = connect(db)
    rows = inserted = updated = 0
    with Session(engine) as session, open(path, newline="", encoding="utf-8") as fh:
        for record in csv.DictReader(fh):
            if limit is not None and rows >= limit:
                break
            values = normalise(record)
            found = session.scalars(
                select(Product).where(Product.partner_id == PARTNER,
                                      Product.sku_key == values["sku_key"])
            ).one_or_none()
            if found is None:
                session.add(Product(partner_id=PARTNER, **values))
                inserted += 1
            else:
                for column, value in values.items():
                    setattr(found, column, value)
                updated += 1
            rows += 1
            if rows % COMMIT_EVERY == 0:
                session.commit()
        session.commit()
    engine.dispose()
    return rows, inserted, updated


def main() -> None:
    parser = argparse.ArgumentParser(description="Per-row SQLAlchemy ORM import of a catalog CSV.")
    parser.add_argument("db")
    parser.add_argument("csv")
    parser.add_argument("--limit", type=int, default=None, help="stop after N rows")
    args = parser.parse_args()
    rows, inserted, updated = run(args.db, args.csv, args.limit)
    print(f"rows={rows} inserted={inserted} updated={updated}")


if __name__ == "__main__":
    main()
