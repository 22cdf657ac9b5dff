//! `cf-worker`: the order pipeline on Cloudflare Workers, the first user of
//! the toolkit's Workers adapter (`shared-workers`).
//!
//! One Worker consumes two kinds of queue:
//!
//! - **order events** (the orders queue): each message's body is an order
//!   event, applied by the orders' apply rule with its idempotency marker,
//!   the order and its customers' totals in one D1 `batch` (one
//!   transaction);
//! - **R2 object-created notifications** (the ingest queue): the adapter's
//!   object ingest reads the object as a stream (NDJSON, CSV with a header,
//!   gzip) and commits its lines in chunks with the object's manifest (the
//!   checkpoint) in the same batch; what a chunk's order events do is the
//!   orders' ([`ledger`]).
//!
//! Parsing, validation, the apply rule and the contribution rule are the
//! `orders` crate's; keys, fingerprints, quarantine records, line formats,
//! manifests and which messages are acknowledged or retried are the core's,
//! through the adapter, which also gives the queue loop, retry delays, the
//! summary line and metrics. What is here is the orders' glue: how their
//! decisions become D1 statements ([`ledger`], platform-neutral and
//! unit-tested natively) and the queue handler that hands each queue to its
//! path (`src/worker.rs`, wasm32 only).
//!
//! Concurrency: D1 runs a batch as one transaction, but reads and the batch
//! that follows are separate requests. Every write is therefore guarded by
//! what was read (`INSERT` of a row read as absent, `UPDATE ... WHERE
//! version = ?` of one read present, followed by the adapter's guard); a
//! guard that fails aborts the whole batch, and the invocation reads again
//! and decides again. Nothing is ever applied on a stale read.
#![deny(missing_docs)]

pub mod ledger;
#[cfg(target_arch = "wasm32")]
mod worker;
