-- Webhooks: a durable outbox. A job's answer that the partner is to be told of is written here in
-- the transaction that records it, so no answer is lost to a full queue, a restart or a crash;
-- every daemon on the store delivers what is due (a lease per delivery), one endpoint at a time.
-- The URL and secret are not stored: they are the partner's configuration's when it is sent.
CREATE TABLE webhook_outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      TEXT NOT NULL REFERENCES jobs (id),
    job_attempt INTEGER NOT NULL,           -- the attempt whose answer this is (a requeue answers again)
    partner_id  TEXT NOT NULL,
    body        TEXT NOT NULL,              -- the result manifest, as recorded
    status      TEXT NOT NULL,              -- pending | delivered | failed
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     TEXT NOT NULL,
    holder      TEXT,
    lease_until TEXT,
    last_error  TEXT,
    created_at  TEXT NOT NULL,
    finished_at TEXT,
    UNIQUE (job_id, job_attempt)
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (status, next_at);
CREATE TABLE webhook_attempts (
    outbox_id   INTEGER NOT NULL REFERENCES webhook_outbox (id),
    attempt     INTEGER NOT NULL,
    at          TEXT NOT NULL,
    http_status INTEGER,
    error       TEXT,
    PRIMARY KEY (outbox_id, attempt)
);
