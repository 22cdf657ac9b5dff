//! Dev tooling for the stream processor: the local AWS stack (moto server for
//! S3 and SQS, DynamoDB Local for DynamoDB, and [`Lambda`], which serves the
//! declared functions' binaries), the event source mapping driver, the
//! infrastructure generated from the stack declaration ([`sam`]), and the
//! commands behind `cargo xtask` ([`cli`]), and the Cloudflare side
//! ([`cloudflare`]: the Worker's tools, build, and workerd runs).
//!
//! The library is what the integration tests use: [`stack::Stack`] starts an
//! isolated stack on free ports, [`driver::Driver`] plays the event source
//! mappings, [`report`] reads the pipeline's results back through the AWS API.

pub mod cli;
pub mod cloudflare;
pub mod commands;
pub mod driver;
pub mod dynamodb_local;
pub mod fault_proxy;
pub mod filter;
pub mod infra;
pub mod json;
pub mod kinesis;
pub mod lambda;
pub mod portable;
pub mod process;
pub mod report;
pub mod sam;
pub mod scaffold;
pub mod scenario;
pub mod spec;
pub mod stack;
pub mod venv;
pub mod workspace;

pub use driver::Driver;
pub use lambda::{Invocation, Lambda};
pub use stack::Stack;
