-- The catalog (products), the ledger (jobs, job_attempts) and claims on remote files.
CREATE TABLE products (
    partner_id    text NOT NULL,
    sku           text NOT NULL,
    sku_key       text NOT NULL,            -- case-folded sku: uniqueness is (partner_id, sku_key)
    name          text NOT NULL,
    description   text,
    price_cents   bigint,
    currency      text,
    stock         bigint,
    active        boolean NOT NULL DEFAULT true,
    brand         text,
    category      text,
    gtin          text,
    url           text,
    image_url     text,
    attributes    text,                     -- JSON object of the partner's unmapped columns
    updated_at    text NOT NULL,
    source_job_id text NOT NULL,
    PRIMARY KEY (partner_id, sku_key)
);

CREATE TABLE jobs (
    id             text PRIMARY KEY,
    partner_id     text NOT NULL,
    inbox          text NOT NULL,
    sha256         text NOT NULL,
    source_uri     text NOT NULL,
    source_name    text NOT NULL,
    size           bigint NOT NULL,
    source_version text,
    format         text,
    mode           text NOT NULL,
    status         text NOT NULL,
    attempt        integer NOT NULL DEFAULT 0,
    duplicate_of   text REFERENCES jobs (id),
    spool_path     text,
    error          text,
    result         text,
    created_at     text NOT NULL,
    started_at     text,
    finished_at    text,
    lease_until    timestamptz,             -- the database's clock: daemons on other hosts agree on it
    claimed_by     text,
    reported_at    text
);
CREATE UNIQUE INDEX jobs_content ON jobs (partner_id, sha256) WHERE duplicate_of IS NULL;
CREATE INDEX jobs_status ON jobs (status, partner_id);
CREATE INDEX jobs_created ON jobs (created_at);
CREATE INDEX jobs_source ON jobs (inbox, source_uri, source_version);
CREATE INDEX jobs_claimed_by ON jobs (claimed_by) WHERE status = 'running';

CREATE TABLE job_attempts (
    job_id      text NOT NULL REFERENCES jobs (id),
    attempt     integer NOT NULL,
    started_at  text NOT NULL,
    finished_at text,
    status      text,
    error       text,
    PRIMARY KEY (job_id, attempt)
);

CREATE TABLE drop_claims (
    inbox   text NOT NULL,
    uri     text NOT NULL,
    version text NOT NULL,
    holder  text NOT NULL,
    until   timestamptz NOT NULL,
    PRIMARY KEY (inbox, uri, version)
);
CREATE INDEX drop_claims_holder ON drop_claims (holder);
