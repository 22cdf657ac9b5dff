//! The toolkit every function of the stream processor uses: typed event
//! parsing, the order domain, DynamoDB state with exactly-once effects,
//! partial batch responses, streaming object reads, configuration and
//! telemetry.

pub mod error;
pub mod event;
pub mod order;
pub mod state;
pub mod config;
pub mod object;
pub mod telemetry;
pub mod batch;
