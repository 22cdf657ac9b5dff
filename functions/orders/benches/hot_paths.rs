//! Criterion micro-benchmarks of the hot pure functions: event parsing, key
//! derivation, order validation and the apply rule. `cargo bench -p orders`.
//!
//! Inputs are the fixture events of `events/`, so the shapes are the real ones.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use orders::order::{ApplyOutcome, apply, parse_order_event};
use serde_json::Value;
use serde_json::value::RawValue;
use shared::event::{s3, sqs, stream};
use shared::idempotency::{IdempotencyKey, KeySource};

fn records(text: &str) -> Vec<Value> {
    let event: Value = serde_json::from_str(text).expect("fixture is JSON");
    event["Records"].as_array().expect("fixture has Records").clone()
}

fn event_parsing(c: &mut Criterion) {
    let sqs_record = records(include_str!("../../../events/sqs-standard.json")).remove(0);
    let stream_record = records(include_str!("../../../events/stream-orders.json")).remove(1);
    let notification = records(include_str!("../../../events/s3-via-sqs.json")).remove(0);
    let notification_body = notification["body"].as_str().expect("body").to_owned();

    let mut group = c.benchmark_group("event");
    group.throughput(Throughput::Elements(1));
    // The functions' path: each record parsed from its JSON text (RawBatch).
    let raw = |record: &Value| RawValue::from_string(record.to_string()).expect("a record is JSON");
    let (sqs_raw, stream_raw) = (raw(&sqs_record), raw(&stream_record));
    group.bench_function("sqs::Message::parse_raw", |b| b.iter(|| sqs::Message::parse_raw(black_box(&sqs_raw))));
    group.bench_function("stream::Record::parse_raw", |b| b.iter(|| stream::Record::parse_raw(black_box(&stream_raw))));
    group.bench_function("sqs::Message::parse", |b| b.iter(|| sqs::Message::parse(black_box(&sqs_record))));
    group.bench_function("stream::Record::parse", |b| b.iter(|| stream::Record::parse(black_box(&stream_record))));
    group.bench_function("s3::from_sqs_body", |b| b.iter(|| s3::from_sqs_body(black_box(&notification_body))));
    group.finish();
}

fn key_derivation(c: &mut Criterion) {
    let message = sqs::Message::parse(&records(include_str!("../../../events/sqs-standard.json"))[0]).expect("parses");
    let record =
        stream::Record::parse(&records(include_str!("../../../events/stream-orders.json"))[1]).expect("parses");
    let keys = IdempotencyKey::new("orders");
    let by_body = KeySource::BodyPointer("/eventId".into());

    let mut group = c.benchmark_group("idempotency key");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sqs messageId", |b| {
        b.iter(|| keys.sqs(black_box(&KeySource::MessageId), black_box(&message)))
    });
    group.bench_function("sqs body /eventId", |b| b.iter(|| keys.sqs(black_box(&by_body), black_box(&message))));
    group.bench_function("stream eventID", |b| b.iter(|| keys.stream(black_box(&record))));
    group.finish();
}

fn order_validation(c: &mut Criterion) {
    let valid = r#"{"eventId":"e-6001-1","orderId":"o-6001","customerId":"c-alice","status":"PLACED","amount":"30.00","currency":"USD","occurredAt":"2026-11-06T09:00:00Z"}"#;
    let invalid = r#"{"eventId":"e-6001-1","orderId":"o-6001","customerId":"c-alice","status":"PLACED","amount":"30.001","currency":"USD","occurredAt":"2026-11-06T09:00:00Z"}"#;

    let mut group = c.benchmark_group("order");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_order_event valid", |b| b.iter(|| parse_order_event(black_box(valid))));
    group.bench_function("parse_order_event invalid amount", |b| b.iter(|| parse_order_event(black_box(invalid))));

    let placed = parse_order_event(valid).expect("valid");
    let later = parse_order_event(
        &valid.replace("PLACED", "PAID").replace("09:00:00Z", "09:05:00Z").replace("e-6001-1", "e-6001-2"),
    )
    .expect("valid");
    let ApplyOutcome::Applied(stored) = apply(None, &placed) else { panic!("a new order applies") };
    group.bench_function("apply new order", |b| b.iter(|| apply(black_box(None), black_box(&placed))));
    group.bench_function("apply newer event", |b| b.iter(|| apply(black_box(Some(&stored)), black_box(&later))));
    group.bench_function("apply duplicate", |b| b.iter(|| apply(black_box(Some(&stored)), black_box(&placed))));
    group.finish();
}

criterion_group!(benches, event_parsing, key_derivation, order_validation);
criterion_main!(benches);
