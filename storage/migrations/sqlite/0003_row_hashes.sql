-- The hash of each product's merged columns (storage/changes.py): a re-sent catalog stages only
-- the rows whose hash differs. NULL (rows written before this, or deactivated) never matches.
ALTER TABLE products ADD COLUMN row_hash INTEGER;

-- Per partner: bumped by every merge, so a job that read the partner's hashes before its merge
-- knows whether they are still what the catalog holds; and how many products it has, so a small
-- file into a large catalog does not read all of its hashes.
CREATE TABLE catalog_versions (
    partner_id  TEXT PRIMARY KEY,
    version     INTEGER NOT NULL,
    products    INTEGER NOT NULL
);
INSERT INTO catalog_versions (partner_id, version, products)
    SELECT partner_id, 0, count(*) FROM products GROUP BY partner_id;
