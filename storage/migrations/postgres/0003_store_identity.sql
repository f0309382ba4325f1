-- Who this catalog is: an id made once, when the catalog is created (or first migrated to this
-- version). A daemon reads it at start and checks it before every outcome it records: a schema
-- dropped and made again, or another database behind the same URL, stops the applying instead
-- of answering files into a catalog that is not the one they were checked against.
CREATE TABLE store_identity (id text PRIMARY KEY, created_at text NOT NULL);
INSERT INTO store_identity VALUES (md5(random()::text || clock_timestamp()::text), to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'));
