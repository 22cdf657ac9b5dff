//! The benchmark suite of issue 9 (and the benchmark parts of issues 4 and 6).
//! The `bench` binary runs it; see the crate's README for the methodology.

pub mod coldstart;
pub mod data;
pub mod emulator;
pub mod ingest;
pub mod inproc;
pub mod null_dynamo;
pub mod report;
pub mod rss;
pub mod runtime_api;
pub mod suite;
