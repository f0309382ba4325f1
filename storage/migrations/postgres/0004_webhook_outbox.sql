-- Webhooks: a durable outbox. A job's answer that the partner is to be told of is written here in
-- the transaction that records it, so no answer is lost to a full queue, a restart or a crash;
-- every daemon on the store delivers what is due (a lease per delivery), one endpoint at a time.
-- The URL and secret are not stored: they are the partner's configuration's when it is sent.
CREATE TABLE webhook_outbox (
    id          bigserial PRIMARY KEY,
    job_id      text NOT NULL REFERENCES jobs (id),
    job_attempt integer NOT NULL,           -- the attempt whose answer this is (a requeue answers again)
    partner_id  text NOT NULL,
    body        text NOT NULL,              -- the result manifest, as recorded
    status      text NOT NULL,              -- pending | delivered | failed
    attempts    integer NOT NULL DEFAULT 0,
    next_at     text NOT NULL,
    holder      text,
    lease_until text,
    last_error  text,
    created_at  text NOT NULL,
    finished_at text,
    UNIQUE (job_id, job_attempt)
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (status, next_at);
CREATE TABLE webhook_attempts (
    outbox_id   bigint NOT NULL REFERENCES webhook_outbox (id),
    attempt     integer NOT NULL,
    at          text NOT NULL,
    http_status integer,
    error       text,
    PRIMARY KEY (outbox_id, attempt)
);
