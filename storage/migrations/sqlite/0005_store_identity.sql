-- Who this catalog is: an id made once, when the catalog is created (or first migrated to this
-- version). A daemon reads it at start and checks it before every outcome it records: a catalog
-- deleted, replaced or emptied under a running daemon stops the applying instead of answering
-- files into a catalog nobody will read again.
CREATE TABLE store_identity (id TEXT PRIMARY KEY, created_at TEXT NOT NULL);
INSERT INTO store_identity VALUES (lower(hex(randomblob(16))), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
