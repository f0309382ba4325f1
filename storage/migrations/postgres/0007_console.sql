-- The console's reads (storage/console.py). A job's rows read and rejected as columns of its
-- own (its outcome fills them in from the manifest), so activity and charts sum two integers
-- rather than parse every manifest; indexes for the jobs list filtered by partner, inbox or
-- status, paged by (created_at, id), for each inbox's last success, and for a job's revert.
ALTER TABLE jobs ADD COLUMN rows_read bigint;
ALTER TABLE jobs ADD COLUMN rows_rejected bigint;
UPDATE jobs SET rows_read = (result::jsonb -> 'rows' ->> 'read')::bigint,
                rows_rejected = (result::jsonb -> 'rows' ->> 'rejected')::bigint
 WHERE result IS NOT NULL;
DROP INDEX jobs_created;
CREATE INDEX jobs_created ON jobs (created_at, id);
CREATE INDEX jobs_partner_created ON jobs (partner_id, created_at, id);
CREATE INDEX jobs_inbox_created ON jobs (inbox, created_at, id);
CREATE INDEX jobs_status_created ON jobs (status, created_at, id);
CREATE INDEX jobs_inbox_finished ON jobs (inbox, status, finished_at);
CREATE INDEX jobs_reverts ON jobs (reverts) WHERE reverts IS NOT NULL;
