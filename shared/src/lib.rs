//! The toolkit every function of the stream processor uses: typed event
//! parsing, the order domain, DynamoDB state with exactly-once effects,
//! partial batch responses, streaming object reads, configuration and
//! telemetry.
//!
//! The platform-neutral parts live in [`shared_core`] (re-exported here as
//! [`core`], and module by module under their old names): batch semantics,
//! keys and fingerprints, the exactly-once plan, line formats, the order
//! domain. This crate adds the AWS adapters.

#![deny(missing_docs)]

pub use shared_core as core;
pub use shared_core::{batch, lines, order, plan};

pub mod config;
pub mod engine;
pub mod error;
pub mod event;
pub mod exactly_once;
pub mod idempotency;
pub mod ingest;
pub mod object;
pub mod runtime;
pub mod state;
pub mod telemetry;
