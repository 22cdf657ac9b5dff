-- The Worker's state in D1: what the Lambda version keeps in its DynamoDB
-- state table, one table per entity. Amounts are exact decimal TEXT (never
-- REAL); the Worker does the arithmetic with the core's checked decimals.
-- `version` columns guard every update: a write made on a stale read fails
-- its whole batch (see write_guard).

-- The current state of each order (the apply rule's stored side).
CREATE TABLE orders (
    order_id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    status TEXT NOT NULL,
    amount TEXT NOT NULL,
    currency TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    last_event_id TEXT NOT NULL,
    version INTEGER NOT NULL
);

-- Each customer's totals: the count of non-CANCELLED orders and their amounts
-- per currency (a JSON object of decimal strings), written in the same batch as
-- the order change that moves them.
CREATE TABLE customer_totals (
    customer_id TEXT PRIMARY KEY,
    order_count INTEGER NOT NULL,
    totals TEXT NOT NULL,
    version INTEGER NOT NULL
);

-- Idempotency markers of queue messages: key, fingerprint of the validated
-- event, and what it did.
CREATE TABLE idempotency (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    outcome TEXT NOT NULL,
    recorded_at TEXT NOT NULL
);

-- One row per object revision: the checkpoint and the counters.
CREATE TABLE manifests (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    revision TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    next_line INTEGER NOT NULL,
    next_byte INTEGER NOT NULL,
    lines INTEGER NOT NULL,
    accepted INTEGER NOT NULL,
    rejected INTEGER NOT NULL,
    stale INTEGER NOT NULL,
    duplicates INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (bucket, key, revision)
);

-- Records that can never be applied, with their reason.
CREATE TABLE quarantine (
    source TEXT NOT NULL,
    record_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    raw TEXT NOT NULL,
    quarantined_at TEXT NOT NULL,
    PRIMARY KEY (source, record_id)
);

-- Never holds a row: `INSERT INTO write_guard (ok) SELECT NULL WHERE changes() = 0`
-- after a guarded UPDATE fails the batch when that UPDATE matched nothing.
CREATE TABLE write_guard (
    ok INTEGER NOT NULL
);
