//! The platform-neutral core of the toolkit.
//!
//! Everything here is pure: it knows neither AWS nor Lambda nor an async
//! runtime, so the same rules serve every platform the toolkit runs on (AWS
//! Lambda through the `shared` crate's adapters, Cloudflare Workers) and
//! build for `wasm32-unknown-unknown`:
//!
//! - [`batch`]: partial batch responses, per-record outcomes and the one
//!   implementation of each delivery's failure semantics (SQS standard, SQS
//!   FIFO, streams), with the accounting that puts every record in exactly
//!   one counter.
//! - [`key`]: idempotency keys derived from event identity, and payload
//!   fingerprints.
//! - [`plan`]: the exactly-once plan: which records' writes may share one
//!   atomic commit (action limits, one action per item), in order, and how
//!   a cancelled commit's failed conditions decide each record.
//! - [`error`]: the one classification of failures into transient,
//!   permanent and fatal.
//! - [`kpl`] (feature `kpl`): Kinesis Producer Library aggregates split
//!   into their user records, digest checked.
//! - [`lines`]: line formats of ingested objects (NDJSON, CSV with a header).
//! - [`manifest`]: an ingested object's checkpoint and counters.
//! - [`quarantine`]: records that can never be processed, with their reason.
//! - [`telemetry`]: the summary line's counters and the EMF metrics
//!   document, in the one shape every platform logs.
#![deny(missing_docs)]

pub mod batch;
pub mod error;
pub mod key;
#[cfg(feature = "kpl")]
pub mod kpl;
pub mod lines;
pub mod manifest;
pub mod plan;
pub mod quarantine;
pub mod telemetry;
