//! In-process figures with in-memory stores: the first invocation of a fresh
//! process, and per-core throughput of the sqs-consumer and stream-aggregator
//! handlers next to plain `serde_json` of the same events (the limit), with
//! logging off and on.
//!
//! Both sides start from the event's bytes, as the runtime hands them over:
//! the handler side parses them into a `serde_json::Value` (what
//! `lambda_runtime` does) and runs the handler on a fresh store; the limit
//! side deserialises the same bytes into plain structs (for SQS, the envelope
//! and then every body), with no validation and no state.

use std::time::{Duration, Instant};

use serde_json::Value;
use shared::config::Config;
use shared::state::memory::MemoryStore;

/// Which handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    SqsConsumer,
    StreamAggregator,
}

impl Function {
    pub fn name(self) -> &'static str {
        match self {
            Self::SqsConsumer => "sqs-consumer",
            Self::StreamAggregator => "stream-aggregator",
        }
    }

    /// An event of `n` records for this function, as bytes.
    pub fn event(self, run: &str, n: u64) -> Vec<u8> {
        match self {
            Self::SqsConsumer => crate::data::sqs_event(run, n),
            Self::StreamAggregator => crate::data::stream_event(run, n),
        }
    }
}

pub fn config() -> Config {
    crate::ingest::config("state", "idempotency")
}

/// Parses `bytes` and runs the handler once on a fresh in-memory store;
/// returns the records it accounted for (applied, duplicates, ...).
pub fn invoke(runtime: &tokio::runtime::Runtime, function: Function, config: &Config, bytes: &[u8]) -> u64 {
    let store = MemoryStore::new();
    let Ok(payload) = serde_json::from_slice::<Value>(bytes) else {
        return 0;
    };
    let result = match function {
        Function::SqsConsumer => runtime.block_on(sqs_consumer::handle(&store, config, &payload)).map(|(_, s)| s),
        Function::StreamAggregator => {
            runtime.block_on(stream_aggregator::handle(&store, config, &payload)).map(|(_, s)| s)
        }
    };
    result.map_or(0, |s| s.total())
}

/// The plain `serde_json` limit over the same bytes; returns the records parsed.
pub fn plain(function: Function, bytes: &[u8]) -> u64 {
    match function {
        Function::SqsConsumer => crate::data::plain_sqs(bytes) as u64,
        Function::StreamAggregator => crate::data::plain_stream(bytes) as u64,
    }
}

/// A current-thread runtime: figures are per core.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("runtime: {e}"))
}

/// Duration of the first handler call of the process (parse + handle, a
/// fresh store), in milliseconds. Call before anything else has run the handler.
pub fn first_invocation_ms(function: Function, bytes: &[u8]) -> f64 {
    let runtime = runtime();
    let config = config();
    let started = Instant::now();
    let n = invoke(&runtime, function, &config, bytes);
    let ms = started.elapsed().as_secs_f64() * 1e3;
    assert!(n > 0, "{} accounted for no records", function.name());
    ms
}

/// Records per second of `work` (which returns the records it did), over
/// rounds of at least `round` each; the median round.
fn rate(rounds: usize, round: Duration, mut work: impl FnMut() -> u64) -> f64 {
    let mut rates = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        let mut records = 0;
        while started.elapsed() < round || records == 0 {
            records += work();
        }
        rates.push(records as f64 / started.elapsed().as_secs_f64());
    }
    crate::report::median(&rates)
}

/// Handler and limit throughput for one batch size, measured interleaved.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    pub handler: f64,
    pub plain: f64,
}

/// Measures handler and plain throughput (records/s on one core) on batches
/// of `n` records, in `rounds` alternating rounds of `round` each.
pub fn throughput(function: Function, n: u64, rounds: usize, round: Duration) -> Throughput {
    let bytes = function.event("t", n);
    let runtime = runtime();
    let config = config();
    let expected = invoke(&runtime, function, &config, &bytes);
    assert_eq!(expected, n, "{}: the handler accounted for {expected} of {n} records", function.name());
    assert_eq!(plain(function, &bytes), n);
    let mut handler = Vec::new();
    let mut limit = Vec::new();
    for _ in 0..rounds {
        handler.push(rate(1, round, || invoke(&runtime, function, &config, &bytes)));
        limit.push(rate(1, round, || plain(function, &bytes)));
    }
    Throughput { handler: crate::report::median(&handler), plain: crate::report::median(&limit) }
}

/// Handler throughput only (for the logging-on pass).
pub fn handler_rate(function: Function, n: u64, rounds: usize, round: Duration) -> f64 {
    let bytes = function.event("t", n);
    let runtime = runtime();
    let config = config();
    rate(rounds, round, || invoke(&runtime, function, &config, &bytes))
}

/// Turns the functions' JSON logs on (INFO, as deployed), written to a sink.
/// Global and once per process: run every logging-off figure first.
pub fn enable_json_logs() -> Result<(), String> {
    shared::telemetry::init_with(true, tracing::level_filters::LevelFilter::INFO, || Box::new(std::io::sink()))
}
