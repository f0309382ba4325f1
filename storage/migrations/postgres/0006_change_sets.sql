-- The catalog remembers (storage/history.py). Every merge is one version of its partner's catalog
-- (catalog_versions.version, bumped first thing in each merge: the row lock also puts one
-- partner's merges in order across daemons, so its versions are commit order); a job records
-- the version it committed as. products.version: the version that last changed the product
-- (catalog export --since reads it); created_version: the one that inserted it (0: before change
-- sets were kept). changes: what each version updated or deactivated, the changed columns'
-- values before and after; an insert is its product's created_version.
CREATE TABLE catalog_versions (
    partner_id     text PRIMARY KEY,
    version        bigint NOT NULL,
    pruned_through bigint NOT NULL DEFAULT 0
);
ALTER TABLE products ADD COLUMN version bigint NOT NULL DEFAULT 0;
ALTER TABLE products ADD COLUMN created_version bigint NOT NULL DEFAULT 0;
CREATE INDEX products_created ON products (partner_id, created_version);
ALTER TABLE jobs ADD COLUMN catalog_version bigint;
ALTER TABLE jobs ADD COLUMN reverts text REFERENCES jobs (id);
ALTER TABLE jobs ADD COLUMN approved_by text;
CREATE INDEX jobs_catalog_version ON jobs (partner_id, catalog_version);
CREATE TABLE changes (
    partner_id text NOT NULL,
    version    bigint NOT NULL,
    sku_key    text NOT NULL,
    kind       text NOT NULL,
    before     jsonb NOT NULL,
    after      jsonb NOT NULL
);
CREATE INDEX changes_version ON changes (partner_id, version);
CREATE INDEX changes_sku ON changes (partner_id, sku_key, version);
