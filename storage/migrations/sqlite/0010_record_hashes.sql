-- The hash of the record (the file's row as read, before mapping and validation) each product
-- was last taken from, under a fingerprint of everything else that decides what the record
-- becomes (storage/changes.py, record_hashes): a re-sent record is recognised and not judged
-- again. NULL (written before this, from a row with a diagnostics line, deactivated, reverted)
-- is never recognised.
ALTER TABLE products ADD COLUMN record_hash INTEGER;
