//! `cf-worker`: the order pipeline on Cloudflare Workers.
//!
//! One Worker consumes two kinds of queue:
//!
//! - **order events** (the orders queues): each message's body is an order
//!   event, applied by the core's apply rule with its idempotency marker, the
//!   order and its customers' totals in one D1 `batch` (one transaction);
//! - **R2 object-created notifications** (the ingest queue): the object is read
//!   as a stream (NDJSON, CSV with a header, gzip), its lines committed in
//!   chunks with the object's manifest (the checkpoint) in the same batch.
//!
//! Parsing, validation, the apply rule and the contribution rule are the
//! `orders` crate's; idempotency keys (under `IDEMPOTENCY_KEY_PREFIX`,
//! `orders` by default), the line rule, the record formats (CSV header,
//! byte-order mark), quarantine records, manifests' checkpoints and counters,
//! and which messages of a batch are acknowledged or retried (`settle`) are
//! `shared-core`'s: the same functions the Lambda functions call. What is
//! here is how those decisions become D1 statements ([`ledger`]) and how an
//! R2 object's stream is decompressed into the core's line splitter
//! ([`lines`]); both are platform-neutral and unit-tested natively. The
//! Workers glue (`worker` crate: Queues, D1, R2) builds for wasm32 only.
//!
//! Concurrency: D1 runs a batch as one transaction, but reads and the batch
//! that follows are separate requests. Every write is therefore guarded by
//! what was read (`INSERT` of a row read as absent, `UPDATE ... WHERE
//! version = ?` of one read present); a guard that fails aborts the whole
//! batch, and the invocation reads again and decides again. Nothing is ever
//! applied on a stale read.
#![deny(missing_docs)]

pub mod ledger;
pub mod lines;
#[cfg(target_arch = "wasm32")]
mod worker_glue;
