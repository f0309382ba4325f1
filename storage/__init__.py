"""Catalog stores: the ledger of jobs and the products they change. ``open_store`` picks one."""

from __future__ import annotations

from storage.base import CatalogStore, Claim, Job, MergeCounts, Outcome, Source


def open_store(url: str) -> CatalogStore:
    """``sqlite:///relative/path`` or ``sqlite:////absolute/path`` → a ``SqliteStore``."""
    if url.startswith("sqlite:///"):
        from storage.sqlite import SqliteStore
        return SqliteStore(url[len("sqlite:///"):])
    from config import ConfigError
    raise ConfigError([f"store.url: {url.split('://')[0]}:// stores are not available in this version; "
                       "use sqlite:///path"])


__all__ = ["CatalogStore", "Claim", "Job", "MergeCounts", "Outcome", "Source", "open_store"]
