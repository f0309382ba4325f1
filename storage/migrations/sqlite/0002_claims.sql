-- Who holds a running job (a daemon: host:pid), and claims on remote files before download.
ALTER TABLE jobs ADD COLUMN claimed_by TEXT;

CREATE TABLE drop_claims (
    inbox       TEXT NOT NULL,
    uri         TEXT NOT NULL,
    version     TEXT NOT NULL,
    holder      TEXT NOT NULL,
    until       TEXT NOT NULL,              -- ISO time: past it, another daemon may take the file
    PRIMARY KEY (inbox, uri, version)
);
CREATE INDEX drop_claims_holder ON drop_claims (holder);
CREATE INDEX jobs_claimed_by ON jobs (claimed_by) WHERE status = 'running';
