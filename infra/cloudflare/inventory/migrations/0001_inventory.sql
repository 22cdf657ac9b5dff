-- The inventory example's D1 database: its own table, and the two tables
-- every consumer on the toolkit's Workers adapter writes (their names are
-- the vars IDEMPOTENCY_TABLE and QUARANTINE_TABLE).

-- Stock per SKU: what is left, and what reservations took.
CREATE TABLE inventory (
    sku TEXT PRIMARY KEY,
    available INTEGER NOT NULL CHECK (available >= 0),
    reserved INTEGER NOT NULL DEFAULT 0
);

-- Idempotency markers: one per key, committed in the same D1 batch as the
-- effect; `rejection` holds the reason of a remembered rejection.
CREATE TABLE idempotency (key TEXT PRIMARY KEY, fingerprint TEXT, outcome TEXT NOT NULL, rejection TEXT, recorded_at TEXT NOT NULL);

-- Records that can never apply, once per source and record id, with why.
CREATE TABLE quarantine (source TEXT NOT NULL, record_id TEXT NOT NULL, reason TEXT NOT NULL, raw TEXT NOT NULL, quarantined_at TEXT NOT NULL, PRIMARY KEY (source, record_id));
