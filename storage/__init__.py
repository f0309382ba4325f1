"""Catalog stores: the ledger of jobs and the products they change. ``open_store`` picks one."""

from __future__ import annotations

import os

from config.model import StoreConfig
from storage.base import CatalogStore, Claim, Job, MergeCounts, Outcome, Source


def open_store(config: StoreConfig, *, holder: str | None = None) -> CatalogStore:
    """``sqlite:///relative/path`` or ``sqlite:////absolute/path`` → a ``SqliteStore``;
    ``postgresql://…`` → a ``PostgresStore``. The one place a store kind is chosen."""
    url = config.url
    if url.startswith("sqlite:///"):
        from storage.sqlite import SqliteStore
        return SqliteStore(url[len("sqlite:///"):], lease=config.lease, holder=holder)
    if url.startswith(("postgresql://", "postgres://")):
        from storage.postgres import PostgresStore
        password = os.environ.get(config.password_env) if config.password_env else None
        return PostgresStore(url, password=password, lease=config.lease, holder=holder)
    from config import ConfigError
    raise ConfigError([f"store.url: {url.split('://')[0]}:// is not a known store; "
                       "use sqlite:///path or postgresql://…"])


__all__ = ["CatalogStore", "Claim", "Job", "MergeCounts", "Outcome", "Source", "open_store"]
