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

use orders::config::Config;
use orders::state::memory::MemoryStore;
use serde_json::Value;

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
    // As the binaries read events: records kept as JSON text (RawBatch).
    let Ok(payload) = serde_json::from_slice::<shared::event::RawBatch>(bytes) else {
        return 0;
    };
    let result = match function {
        Function::SqsConsumer => {
            runtime.block_on(sqs_consumer::handle_batch(&store, config, &payload, None)).map(|(_, s)| s)
        }
        Function::StreamAggregator => {
            runtime.block_on(stream_aggregator::handle_batch(&store, config, &payload, None)).map(|(_, s)| s)
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
pub fn enable_json_logs() -> Result<(), shared::telemetry::TryInitError> {
    shared::telemetry::init_with(true, tracing::level_filters::LevelFilter::INFO, || Box::new(std::io::sink()))
}

/// Microseconds per record of `work` over a batch of `n` records (median of
/// `rounds` rounds of at least `round`).
fn per_record_us(n: u64, rounds: usize, round: Duration, mut work: impl FnMut()) -> f64 {
    let per_s = rate(rounds, round, || {
        work();
        n
    });
    1e6 / per_s
}

/// Where a handler's time goes, stage by stage, on one batch of `n`
/// records: (stage, microseconds per record). Each stage is timed alone over
/// the batch, with the inputs the previous stages produced.
pub fn breakdown(function: Function, n: u64, rounds: usize, round: Duration) -> Vec<(&'static str, f64)> {
    use orders::state::StateStore;
    use shared::event::{sqs, stream};
    use shared::idempotency::{IdempotencyKey, KeySource, payload_hash};
    let bytes = function.event("b", n);
    let runtime = runtime();
    let config = config();
    let keys = IdempotencyKey::new(&config.idempotency_key_prefix);
    let batch: shared::event::RawBatch =
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("generated event does not parse: {e}"));
    let records = batch.records().unwrap_or_default();
    let t = |work: &mut dyn FnMut()| per_record_us(n, rounds, round, work);
    let mut out = vec![
        (
            "whole handler (bytes to response)",
            t(&mut || {
                invoke(&runtime, function, &config, &bytes);
            }),
        ),
        (
            "serde_json limit (bytes to plain structs)",
            t(&mut || {
                plain(function, &bytes);
            }),
        ),
        (
            "event bytes -> RawBatch (records as JSON text)",
            t(&mut || {
                std::hint::black_box(serde_json::from_slice::<shared::event::RawBatch>(&bytes).ok());
            }),
        ),
        (
            "event bytes -> serde_json::Value (for comparison)",
            t(&mut || {
                std::hint::black_box(serde_json::from_slice::<Value>(&bytes).ok());
            }),
        ),
    ];
    match function {
        Function::SqsConsumer => {
            let messages: Vec<sqs::Message> = records.iter().filter_map(|r| sqs::Message::parse_raw(r).ok()).collect();
            let events: Vec<_> =
                messages.iter().filter_map(|m| orders::order::parse_order_event(&m.body).ok()).collect();
            // The handler takes the /eventId key from the parsed event; this
            // stage is the general path (any pointer), for comparison.
            let source = KeySource::BodyPointer("/eventId".into());
            let markers: Vec<_> = messages
                .iter()
                .map(|m| orders::state::Marker {
                    key: keys.sqs(&source, m).ok().flatten().unwrap_or_default(),
                    validation: Some(payload_hash(m.body.as_bytes())),
                })
                .collect();
            out.push((
                "sqs::Message::parse_raw",
                t(&mut || {
                    records.iter().for_each(|r| drop(std::hint::black_box(sqs::Message::parse_raw(r))));
                }),
            ));
            out.push((
                "parse_order_event (parse + validate)",
                t(&mut || {
                    messages.iter().for_each(|m| drop(std::hint::black_box(orders::order::parse_order_event(&m.body))));
                }),
            ));
            out.push((
                "idempotency key from body /eventId, general path (the handler skips it)",
                t(&mut || {
                    messages.iter().for_each(|m| drop(std::hint::black_box(keys.sqs(&source, m))));
                }),
            ));
            out.push((
                "payload hash (SHA-256 of body)",
                t(&mut || {
                    messages.iter().for_each(|m| drop(std::hint::black_box(payload_hash(m.body.as_bytes()))));
                }),
            ));
            out.push((
                "MemoryStore::apply_orders with markers",
                t(&mut || {
                    let store = MemoryStore::new();
                    drop(std::hint::black_box(runtime.block_on(store.apply_orders(&events, Some(&markers), None))));
                }),
            ));
        }
        Function::StreamAggregator => {
            let parsed: Vec<stream::Record> =
                records.iter().filter_map(|r| stream::Record::parse_raw(r).ok()).collect();
            let read = |i: Option<&serde_dynamo::Item>| i.and_then(|i| orders::state::item::order_from_item(i).ok());
            let orders: Vec<_> = parsed.iter().map(|p| (read(p.old_image()), read(p.new_image()))).collect();
            let deltas: Vec<_> = parsed
                .iter()
                .zip(&orders)
                .map(|(p, (old, new))| orders::state::DeltaRecord {
                    idempotency_key: keys.stream(p).ok().flatten().unwrap_or_default(),
                    deltas: orders::order::totals_delta(old.as_ref(), new.as_ref()).unwrap_or_default(),
                })
                .collect();
            out.push((
                "stream::Record::parse_raw",
                t(&mut || {
                    records.iter().for_each(|r| drop(std::hint::black_box(stream::Record::parse_raw(r))));
                }),
            ));
            out.push((
                "order_from_item of the images",
                t(&mut || {
                    parsed.iter().for_each(|p| drop(std::hint::black_box((read(p.old_image()), read(p.new_image())))));
                }),
            ));
            out.push((
                "idempotency key + totals_delta",
                t(&mut || {
                    parsed.iter().zip(&orders).for_each(|(p, (old, new))| {
                        drop(std::hint::black_box((
                            keys.stream(p),
                            orders::order::totals_delta(old.as_ref(), new.as_ref()),
                        )))
                    });
                }),
            ));
            out.push((
                "MemoryStore::apply_deltas",
                t(&mut || {
                    let store = MemoryStore::new();
                    drop(std::hint::black_box(runtime.block_on(store.apply_deltas(&deltas))));
                }),
            ));
        }
    }
    out
}
