-- The catalog remembers (storage/history.py). Every merge is one version of its partner's catalog
-- (catalog_versions.version, bumped by each); a job records the version it committed as.
-- products.version: the version that last changed the product (catalog export --since reads
-- it, so export cursors never depend on pruned history); created_version: the one that inserted
-- it (0: before change sets were kept). changes: what each version updated or deactivated, the
-- changed columns' values before and after, as JSON; an insert is its product's created_version.
ALTER TABLE products ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE products ADD COLUMN created_version INTEGER NOT NULL DEFAULT 0;
CREATE INDEX products_created ON products (partner_id, created_version);
ALTER TABLE jobs ADD COLUMN catalog_version INTEGER;
ALTER TABLE jobs ADD COLUMN reverts TEXT REFERENCES jobs (id);
ALTER TABLE jobs ADD COLUMN approved_by TEXT;
CREATE INDEX jobs_catalog_version ON jobs (partner_id, catalog_version);
ALTER TABLE catalog_versions ADD COLUMN pruned_through INTEGER NOT NULL DEFAULT 0;
CREATE TABLE changes (
    partner_id TEXT NOT NULL,
    version    INTEGER NOT NULL,
    sku_key    TEXT NOT NULL,
    kind       TEXT NOT NULL,               -- updated | deactivated | reactivated
    before     TEXT NOT NULL,               -- JSON object: the columns it changed, as they were
    after      TEXT NOT NULL                -- JSON object: the same columns, as it left them
);
CREATE INDEX changes_version ON changes (partner_id, version);
CREATE INDEX changes_sku ON changes (partner_id, sku_key, version);
