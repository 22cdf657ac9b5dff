//! The toolkit every function of the stream processor uses: typed event
//! parsing, partial batch responses, exactly-once effects on DynamoDB, the
//! Powertools-style idempotency lock, streaming object ingest,
//! configuration and telemetry, for AWS Lambda.
//!
//! The platform-neutral parts live in [`shared_core`] (re-exported here as
//! [`core`], and module by module under their own names): batch semantics,
//! keys and fingerprints, the exactly-once plan, line formats. This crate
//! adds the AWS adapters. It holds no domain: the orders pipeline is the
//! `orders` crate, built on this one like any user's domain.

#![deny(missing_docs)]

pub use shared_core as core;
pub use shared_core::{batch, lines, plan};

pub mod config;
pub mod dynamo;
pub mod engine;
pub mod error;
pub mod event;
pub mod exactly_once;
pub mod idempotency;
pub mod ingest;
pub mod manifest;
pub mod object;
pub mod quarantine;
pub mod runtime;
pub mod telemetry;
