-- The markers of the toolkit's Workers adapter: the reason of a remembered
-- rejection (`UnitOfWork::remember_rejection`), so this database's
-- idempotency table is the one every consumer on the adapter writes.
ALTER TABLE idempotency ADD COLUMN rejection TEXT;

-- The adapter's guard (`SELECT json_extract('{}', ?) WHERE changes() = 0`)
-- names the write that failed it, and needs no table: write_guard is gone.
DROP TABLE write_guard;
