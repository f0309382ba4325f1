-- The audit trail's head per audit folder: the last record a reported job was written as. The
-- trail must reach it: records cut off its end, or the folder deleted and begun again, no longer
-- verify (inbox_daemon/audit.py). Kept for the chain it was first written for, until an operator
-- acknowledges a new one (audit ack).
CREATE TABLE audit_heads (
    folder TEXT PRIMARY KEY,
    chain  TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    hash   TEXT NOT NULL,
    at     TEXT NOT NULL
);
