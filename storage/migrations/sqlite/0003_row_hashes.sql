-- The hash of each product's merged columns (storage/changes.py): a re-sent snapshot stages only
-- the rows whose hash differs. NULL (rows written before this, or deactivated) never matches.
ALTER TABLE products ADD COLUMN row_hash INTEGER;

-- Bumped by every merge of a partner: a job that read the partner's hashes before its merge
-- knows whether they are still what the catalog holds.
CREATE TABLE catalog_versions (
    partner_id  TEXT PRIMARY KEY,
    version     INTEGER NOT NULL
);
