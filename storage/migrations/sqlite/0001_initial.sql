-- The catalog (products) and the ledger (jobs, job_attempts).
CREATE TABLE products (
    partner_id    TEXT NOT NULL,
    sku           TEXT NOT NULL,
    sku_key       TEXT NOT NULL,            -- case-folded sku: uniqueness is (partner_id, sku_key)
    name          TEXT NOT NULL,
    description   TEXT,
    price_cents   INTEGER,
    currency      TEXT,
    stock         INTEGER,
    active        INTEGER NOT NULL DEFAULT 1,
    brand         TEXT,
    category      TEXT,
    gtin          TEXT,
    url           TEXT,
    image_url     TEXT,
    attributes    TEXT,                     -- JSON object of the partner's unmapped columns
    updated_at    TEXT NOT NULL,
    source_job_id TEXT NOT NULL
);
CREATE UNIQUE INDEX products_key ON products (partner_id, sku_key);

CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    partner_id   TEXT NOT NULL,
    inbox        TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    source_uri   TEXT NOT NULL,
    source_name  TEXT NOT NULL,
    size         INTEGER NOT NULL,
    source_version TEXT,                    -- mtime or ETag of the file this content came from
    format       TEXT,
    mode         TEXT NOT NULL,
    status       TEXT NOT NULL,             -- queued running succeeded partial rejected failed quarantined duplicate
    attempt      INTEGER NOT NULL DEFAULT 0,
    duplicate_of TEXT REFERENCES jobs (id),
    spool_path   TEXT,
    error        TEXT,
    result       TEXT,                      -- the result manifest, committed with the outcome
    created_at   TEXT NOT NULL,
    started_at   TEXT,
    finished_at  TEXT,
    lease_until  TEXT,
    reported_at  TEXT
);
-- one job per content per partner; duplicates are their own rows pointing at the original
CREATE UNIQUE INDEX jobs_content ON jobs (partner_id, sha256) WHERE duplicate_of IS NULL;
CREATE INDEX jobs_status ON jobs (status, partner_id);
CREATE INDEX jobs_created ON jobs (created_at);
CREATE INDEX jobs_source ON jobs (inbox, source_uri, source_version);

CREATE TABLE job_attempts (
    job_id      TEXT NOT NULL REFERENCES jobs (id),
    attempt     INTEGER NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    status      TEXT,
    error       TEXT,
    PRIMARY KEY (job_id, attempt)
);
