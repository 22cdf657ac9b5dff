//! The toolkit every function of the stream processor uses: typed event
//! parsing, the order domain, DynamoDB state with exactly-once effects,
//! partial batch responses, streaming object reads, configuration and
//! telemetry.

pub mod batch;
pub mod config;
pub mod error;
pub mod event;
pub mod idempotency;
pub mod object;
pub mod order;
pub mod runtime;
pub mod state;
pub mod telemetry;
