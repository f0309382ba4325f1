-- The console's reads (storage/console.py). A job's rows read and rejected as columns of its
-- own (its outcome fills them in from the manifest), so activity and charts sum two integers
-- rather than parse every manifest; indexes for the jobs list filtered by partner, inbox or
-- status, paged by (created_at, id), for each inbox's last success, and for a job's revert.
ALTER TABLE jobs ADD COLUMN rows_read bigint;
ALTER TABLE jobs ADD COLUMN rows_rejected bigint;
UPDATE jobs SET rows_read = (result::json -> 'rows' ->> 'read')::bigint,
                rows_rejected = (result::json -> 'rows' ->> 'rejected')::bigint
 WHERE result IS NOT NULL;
DROP INDEX jobs_created;
CREATE INDEX jobs_created ON jobs (created_at, id);
-- the partner's index also holds what its 30-day chart sums: read from the index alone
CREATE INDEX jobs_partner_created ON jobs (partner_id, created_at, id) INCLUDE (status, rows_read, rows_rejected);
CREATE INDEX jobs_inbox_created ON jobs (inbox, created_at, id);
CREATE INDEX jobs_status_created ON jobs (status, created_at, id);
CREATE INDEX jobs_inbox_finished ON jobs (inbox, status, finished_at);
CREATE INDEX jobs_reverts ON jobs (reverts) WHERE reverts IS NOT NULL;
-- a job's change set is read in SKU order, a page at a time (jobs diff, the job page): without
-- the key in these indexes every page sorts all of the job's rows again
DROP INDEX products_created;
CREATE INDEX products_created ON products (partner_id, created_version, sku_key);
DROP INDEX changes_version;
CREATE INDEX changes_version ON changes (partner_id, version, sku_key);
-- each partner's count of products, kept by every merge (as SQLite's catalog_versions.products):
-- a catalog's size without counting a million rows
ALTER TABLE catalog_versions ADD COLUMN products bigint NOT NULL DEFAULT 0;
INSERT INTO catalog_versions (partner_id, version, products)
    SELECT partner_id, 0, count(*) FROM products GROUP BY partner_id
    ON CONFLICT (partner_id) DO UPDATE SET products = excluded.products;
