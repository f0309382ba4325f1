"""The PostgreSQL floor: the least any correct import of the benchmark catalog into PostgreSQL pays.

The SQLite floor's read and normalisation (``floor_sqlite.normalized_batches``), each batch
written as CSV by pyarrow into ``COPY … FROM STDIN`` of a temporary staging table, then ONE
set-based ``INSERT … SELECT DISTINCT ON (sku_key) … ON CONFLICT DO UPDATE`` into a table shaped
like the daemon's ``products``, in one transaction, with the server's default settings.

    python bench/floor_postgres.py URL CSV
"""

from __future__ import annotations

import io
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import psycopg
import pyarrow.csv as pacsv
from floor_sqlite import COLUMNS, normalized_batches


@contextmanager
def scratch_schema(base: str) -> Iterator[str]:
    """A URL whose ``search_path`` is a fresh schema, dropped afterwards: every run starts empty."""
    schema = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        sep = "&" if "?" in base else "?"
        yield f"{base}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def main(url: str, path: str) -> None:
    conn = psycopg.connect(url)
    conn.execute("CREATE TABLE IF NOT EXISTS products (partner_id text NOT NULL, sku text NOT NULL,"
                 " sku_key text NOT NULL, name text NOT NULL, description text, price_cents bigint, currency text,"
                 " stock bigint, active boolean NOT NULL DEFAULT true, brand text, category text, gtin text, url text,"
                 " image_url text, attributes text, updated_at text NOT NULL, source_job_id text NOT NULL,"
                 " PRIMARY KEY (partner_id, sku_key))")
    conn.execute("CREATE TEMP TABLE stage (row bigint, sku text, sku_key text, name text, description text,"
                 " price_cents bigint, currency text, stock bigint, active boolean, brand text, category text,"
                 " gtin text, url text, image_url text, attributes text) ON COMMIT DROP")
    options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
    keep = ", ".join(COLUMNS)
    with conn.cursor() as cur:
        for batch in normalized_batches(path):
            buf = io.BytesIO()
            pacsv.write_csv(batch, buf, write_options=options)
            with cur.copy("COPY stage FROM STDIN WITH (FORMAT csv)") as copy:
                copy.write(buf.getbuffer())
        cur.execute(f"INSERT INTO products (partner_id, sku_key, {keep}, updated_at, source_job_id)"
                    f" SELECT 'default', sku_key, {keep}, '2026-01-01T00:00:00.000Z', 'floor' FROM"
                    f" (SELECT DISTINCT ON (sku_key) * FROM stage ORDER BY sku_key, row DESC) l"
                    " ON CONFLICT (partner_id, sku_key) DO UPDATE SET "
                    + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS))
    conn.commit()
    conn.close()


if __name__ == "__main__":
    main(*sys.argv[1:3])
