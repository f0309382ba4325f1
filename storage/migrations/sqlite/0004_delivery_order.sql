-- The partner's delivery order (inbox_daemon/drop.py): when each job's file became ready in its
-- inbox. A product's order is that of the job that last changed it (source_job_id); a file
-- delivered earlier leaves it alone (rows.stale). catalog_versions.delivery is the newest one merged, so a
-- file newer than it (nearly always) needs no per-product check at all.
ALTER TABLE jobs ADD COLUMN delivered_at TEXT;
-- content applied before, sent again after other content: a job of its own, pointing at the
-- job it repeats; the unique index allows one such job per earlier one
ALTER TABLE jobs ADD COLUMN reapplies TEXT REFERENCES jobs (id);
DROP INDEX jobs_content;
CREATE UNIQUE INDEX jobs_content ON jobs (partner_id, sha256, coalesce(reapplies, '')) WHERE duplicate_of IS NULL;
CREATE INDEX jobs_delivered ON jobs (partner_id, delivered_at);
ALTER TABLE catalog_versions ADD COLUMN delivery TEXT;
