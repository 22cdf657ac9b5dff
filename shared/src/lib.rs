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
#[cfg(feature = "s3")]
pub mod ingest;
pub mod lambda;
pub mod manifest;
#[cfg(feature = "s3")]
pub mod object;
pub mod quarantine;
pub mod runtime;
pub mod telemetry;

/// The AWS SDK's DynamoDB crate, as the toolkit uses it: build your writes
/// with its types (`shared::dynamodb::types::Update`) without a version of
/// your own to keep in step.
pub use aws_sdk_dynamodb as dynamodb;
pub use engine::CommitError;
#[cfg(feature = "dynamodb-stream")]
pub use event::stream::Change;
pub use exactly_once::{UnitOfWork, Verdict, Write};
#[cfg(feature = "dynamodb-stream")]
pub use lambda::dynamodb_stream;
#[cfg(all(feature = "dynamodb-stream", feature = "lock"))]
pub use lambda::dynamodb_stream_with_lock;
#[cfg(feature = "kafka")]
pub use lambda::kafka;
#[cfg(feature = "kinesis")]
pub use lambda::kinesis;
#[cfg(feature = "sqs")]
pub use lambda::sqs;
#[cfg(all(feature = "sqs", feature = "lock"))]
pub use lambda::sqs_with_lock;
pub use lambda::{Aws, Call, Error, Function, Invalid};
#[cfg(any(feature = "kinesis", feature = "dynamodb-stream"))]
pub use lambda::{WindowClosed, WindowResponse};
