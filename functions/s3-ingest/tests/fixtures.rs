//! Handler tests over the fixture events and sample data, with in-memory
//! stores: every S3 notification shape, every format, rejected lines, resume.

use orders::config::Config;
use orders::state::memory::MemoryStore;
use s3_ingest::{Deadline, Handoff, handle};
use serde_json::{Value, json};
use shared::batch::Summary;
use shared::manifest::{Checkpoint, Counts, ObjectStatus};
use shared::object::MemorySource;

const BUCKET: &str = "stream-processor-uploads";

fn config() -> Config {
    Config::from_lookup(|name| match name {
        "STATE_TABLE" => Some("state".into()),
        "IDEMPOTENCY_TABLE" => Some("idempotency".into()),
        _ => None,
    })
    .unwrap()
}

/// The sample data files, under the keys the local stack uploads them to.
fn sources() -> MemorySource {
    let mut source = MemorySource::new();
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../../events/data");
    for entry in std::fs::read_dir(data).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        source.insert(BUCKET, &format!("incoming/{name}"), std::fs::read(&path).unwrap());
    }
    source
}

fn fixture(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

async fn run(event: &Value) -> (MemoryStore, Value, Summary) {
    run_with(event).await.0
}

async fn run_with(event: &Value) -> ((MemoryStore, Value, Summary), MemorySource) {
    let store = MemoryStore::new();
    let source = sources();
    let (response, summary, _) =
        handle(&store, &source, &Handoff::Retry, &config(), event, &Deadline::None).await.unwrap();
    ((store, response, summary), source)
}

#[tokio::test]
async fn direct_s3_event_ingests_ndjson_and_rejects_bad_lines() {
    let ((store, response, summary), source) = run_with(&fixture(include_str!("../../../events/s3-direct.json"))).await;
    let written = source.written();
    assert_eq!(written.len(), 1, "one rejects report");
    let (bucket, key, body) = &written[0];
    assert_eq!(bucket, BUCKET);
    assert!(key.starts_with("rejected/incoming/orders.ndjson.") && key.ends_with(".lines-4-7.ndjson"), "{key}");
    let report: Vec<Value> =
        std::str::from_utf8(body).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(report.len(), 2);
    assert_eq!(report[0]["line"], 4);
    assert_eq!(report[0]["raw"], "{\"eventId\": \"e-bad-json\", \"orderId\": ");
    assert_eq!(report[1]["reason"], "currency: must be an ISO 4217 code (3 upper-case letters), got \"usd\"");
    assert_eq!(response["objects"][0]["result"], "COMPLETED");
    assert_eq!(summary, Summary { applied: 3, stale: 2, quarantined: 2, ..Summary::default() });
    let manifest = &store.manifests()[0];
    assert_eq!(manifest.key, "incoming/orders.ndjson");
    assert_eq!(manifest.status, ObjectStatus::Completed);
    assert_eq!(manifest.counts, Counts { lines: 7, accepted: 3, rejected: 2, stale: 2, duplicates: 0 });
    let size =
        std::fs::metadata(concat!(env!("CARGO_MANIFEST_DIR"), "/../../events/data/orders.ndjson")).unwrap().len();
    assert_eq!(manifest.checkpoint, Checkpoint { line: 7, byte: size });
    let mut rejected: Vec<(String, String)> =
        store.quarantined().into_iter().map(|q| (q.record_id, q.reason)).collect();
    rejected.sort();
    assert_eq!(rejected[0].0, "line-4");
    assert!(rejected[0].1.starts_with("malformed JSON"), "{rejected:?}");
    assert_eq!(
        rejected[1],
        ("line-7".into(), "currency: must be an ISO 4217 code (3 upper-case letters), got \"usd\"".into())
    );
    let orders = store.orders();
    assert_eq!(orders.keys().collect::<Vec<_>>(), ["o-1001", "o-1002", "o-1003"]);
    assert_eq!(orders["o-1001"].last_event_id, "e-1001-2");
}

#[tokio::test]
async fn key_with_spaces_and_plus_signs_is_decoded() {
    let (store, _, summary) = run(&fixture(include_str!("../../../events/s3-key-with-spaces-and-plus.json"))).await;
    assert_eq!(summary.applied, 2);
    assert_eq!(store.manifests()[0].key, "incoming/daily orders+extra.ndjson");
}

#[tokio::test]
async fn s3_notification_via_sqs_ingests_csv_and_acknowledges_the_test_event() {
    let (store, response, summary) = run(&fixture(include_str!("../../../events/s3-via-sqs.json"))).await;
    assert_eq!(response, json!({"batchItemFailures": []}));
    assert_eq!(summary, Summary { applied: 2, stale: 1, quarantined: 2, ignored: 1, ..Summary::default() });
    let m = &store.manifests()[0];
    assert_eq!(m.counts, Counts { lines: 5, accepted: 2, rejected: 2, stale: 1, duplicates: 0 });
    let reasons: Vec<String> = store.quarantined().into_iter().map(|q| q.reason).collect();
    assert!(reasons.contains(&"amount: must be a decimal number, got \"1,5\"".to_owned()), "{reasons:?}");
    assert!(
        reasons.contains(
            &"occurredAt: must be an RFC 3339 timestamp in the years 0000-9999 UTC, got \"not-a-time\"".to_owned()
        ),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn sns_wrapped_notification_ingests_gzip_ndjson() {
    let (store, _, summary) = run(&fixture(include_str!("../../../events/s3-via-sns-sqs.json"))).await;
    assert_eq!(summary, Summary { applied: 2, stale: 1, quarantined: 1, ..Summary::default() });
    assert_eq!(store.orders()["o-3001"].last_event_id, "e-3001-1", "the older event did not move the order back");
    assert_eq!(store.quarantined()[0].reason, "eventId: missing");
}

#[tokio::test]
async fn eventbridge_notification_ingests_gzip_csv() {
    let (store, _, summary) = run(&fixture(include_str!("../../../events/s3-eventbridge-via-sqs.json"))).await;
    assert_eq!(summary, Summary { applied: 2, quarantined: 1, ..Summary::default() });
    assert_eq!(store.quarantined()[0].reason, "amount: must be >= 0, got -2.00");
    assert_eq!(store.manifests()[0].key, "incoming/orders.csv.gz");
}

#[tokio::test]
async fn re_notified_completed_object_is_skipped() {
    let event = fixture(include_str!("../../../events/s3-direct.json"));
    let store = MemoryStore::new();
    let source = sources();
    handle(&store, &source, &Handoff::Retry, &config(), &event, &Deadline::None).await.unwrap();
    let orders = store.orders();
    let (response, summary, _) =
        handle(&store, &source, &Handoff::Retry, &config(), &event, &Deadline::None).await.unwrap();
    assert_eq!(response["objects"][0]["result"], "SKIPPED");
    assert_eq!(summary, Summary { duplicate: 1, ..Summary::default() });
    assert_eq!(store.orders(), orders);
}

#[tokio::test]
async fn empty_object_completes_with_zero_counts() {
    let store = MemoryStore::new();
    let mut source = MemorySource::new();
    source.insert(BUCKET, "incoming/empty.ndjson", Vec::new());
    let event = json!({"Records": [{"eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": BUCKET}, "object": {"key": "incoming/empty.ndjson", "eTag": "d41d8cd9"}}}]});
    let (response, _, _) = handle(&store, &source, &Handoff::Retry, &config(), &event, &Deadline::None).await.unwrap();
    assert_eq!(response["objects"][0]["result"], "COMPLETED");
    assert_eq!(store.manifests()[0].counts, Counts::default());
}

#[tokio::test]
async fn unsupported_format_is_quarantined_not_retried() {
    let store = MemoryStore::new();
    let mut source = MemorySource::new();
    source.insert(BUCKET, "incoming/picture.png", vec![0x89, b'P', b'N', b'G']);
    let event = json!({"Records": [{"eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": BUCKET}, "object": {"key": "incoming/picture.png", "eTag": "abc"}}}]});
    let (response, _, _) = handle(&store, &source, &Handoff::Retry, &config(), &event, &Deadline::None).await.unwrap();
    assert_eq!(response["objects"][0]["result"], "REJECTED");
    assert!(store.quarantined()[0].reason.starts_with("unsupported object format"));
    assert_eq!(store.manifests()[0].status, ObjectStatus::Failed);
}

fn big_object(lines: usize) -> Vec<u8> {
    let mut body = String::new();
    for i in 0..lines {
        if i % 37 == 5 {
            body.push_str("{not json\n");
            continue;
        }
        body.push_str(
            &json!({"eventId": format!("e-{i}"), "orderId": format!("o-{}", i % 150), "customerId": format!("c-{}", i % 7),
                "status": "PLACED", "amount": format!("{}.25", i), "currency": "USD",
                "occurredAt": format!("2026-11-28T10:{:02}:{:02}Z", (i / 60) % 60, i % 60)})
            .to_string(),
        );
        body.push('\n');
    }
    body.into_bytes()
}

async fn interrupted_then_resumed(key: &str, body: Vec<u8>) {
    let mut source = MemorySource::new();
    source.insert(BUCKET, key, body);
    let event = json!({"Records": [{"eventSource": "aws:sqs", "messageId": "m-1", "body": json!({"Records": [{"eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": BUCKET}, "object": {"key": key, "eTag": "e1"}}}]}).to_string()}]});

    let clean = MemoryStore::new();
    handle(&clean, &source, &Handoff::Retry, &config(), &event, &Deadline::None).await.unwrap();

    let interrupted = MemoryStore::new();
    let mut invocations = 0;
    loop {
        invocations += 1;
        assert!(invocations < 50, "no progress");
        // Two deadline checks per invocation: the message, then one chunk.
        let (response, _, _) =
            handle(&interrupted, &source, &Handoff::Retry, &config(), &event, &Deadline::after_chunks(2))
                .await
                .unwrap();
        if response["batchItemFailures"].as_array().unwrap().is_empty() {
            break;
        }
        assert_eq!(
            response["batchItemFailures"][0]["itemIdentifier"], "m-1",
            "unfinished object hands its message back"
        );
    }
    assert!(invocations >= 3, "the object took several invocations ({invocations})");
    assert_eq!(interrupted.orders(), clean.orders());
    assert_eq!(interrupted.quarantined(), clean.quarantined());
    let (a, b) = (&interrupted.manifests()[0], &clean.manifests()[0]);
    assert_eq!((a.status, a.counts, a.checkpoint), (b.status, b.counts, b.checkpoint));
    assert_eq!(a.counts.lines, a.counts.accepted + a.counts.rejected + a.counts.stale + a.counts.duplicates);
}

#[tokio::test]
async fn interrupted_ndjson_resumes_with_ranged_reads_to_the_clean_result() {
    interrupted_then_resumed("incoming/big.ndjson", big_object(400)).await;
}

#[tokio::test]
async fn interrupted_gzip_resumes_by_skipping_done_lines_to_the_clean_result() {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&big_object(400)).unwrap();
    interrupted_then_resumed("incoming/big.ndjson.gz", gz.finish().unwrap()).await;
}

#[tokio::test]
async fn unfinished_object_is_handed_on_to_the_queue_and_its_message_acknowledged() {
    let mut source = MemorySource::new();
    source.insert(BUCKET, "incoming/big.ndjson", big_object(300));
    let body = json!({"Records": [{"eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": BUCKET}, "object": {"key": "incoming/big.ndjson", "eTag": "e1"}}}]})
    .to_string();
    let event = json!({"Records": [{"eventSource": "aws:sqs", "messageId": "m-1", "body": body.clone()}]});
    let store = MemoryStore::new();
    let handoff = Handoff::Memory(Default::default());
    let (response, _, reports) =
        handle(&store, &source, &handoff, &config(), &event, &Deadline::after_chunks(2)).await.unwrap();
    assert_eq!(response, json!({"batchItemFailures": []}), "acknowledged: the queue has its continuation");
    assert_eq!(reports[0].result, "UNFINISHED");
    let Handoff::Memory(bodies) = handoff else { unreachable!() };
    assert_eq!(bodies.into_inner().unwrap(), vec![body]);
    assert_eq!(store.manifests()[0].status, ObjectStatus::InProgress);
}

#[test]
fn fixtures_round_trip_through_aws_lambda_events() {
    use aws_lambda_events::event::s3::S3Event;
    use aws_lambda_events::event::sqs::SqsEvent;
    for text in [
        include_str!("../../../events/s3-direct.json"),
        include_str!("../../../events/s3-key-with-spaces-and-plus.json"),
    ] {
        let parsed: S3Event = serde_json::from_str(text).unwrap();
        let reparsed: S3Event = serde_json::from_str(&serde_json::to_string(&parsed).unwrap()).unwrap();
        assert_eq!(parsed, reparsed);
    }
    for text in [
        include_str!("../../../events/s3-via-sqs.json"),
        include_str!("../../../events/s3-via-sns-sqs.json"),
        include_str!("../../../events/s3-eventbridge-via-sqs.json"),
    ] {
        let parsed: SqsEvent = serde_json::from_str(text).unwrap();
        let reparsed: SqsEvent = serde_json::from_str(&serde_json::to_string(&parsed).unwrap()).unwrap();
        assert_eq!(parsed, reparsed);
    }
}

#[tokio::test]
async fn invalid_utf8_over_long_and_malformed_lines_are_rejected_and_the_object_completes() {
    let store = MemoryStore::new();
    let mut source = MemorySource::new();
    let good = |i: u32| {
        json!({"eventId": format!("e-{i}"), "orderId": format!("o-{i}"), "customerId": "c-1", "status": "PAID",
               "amount": 2, "currency": "EUR", "occurredAt": "2026-11-28T10:00:00Z"})
        .to_string()
    };
    let mut body = Vec::new();
    body.extend_from_slice(good(1).as_bytes());
    body.extend_from_slice(b"\n\xff\xfe{\"eventId\": \"bad utf8\"}\n");
    body.extend_from_slice(format!("{{\"eventId\": \"{}\"}}\n", "y".repeat(3000)).as_bytes());
    body.extend_from_slice(b"not json at all\r\n");
    body.extend_from_slice(good(2).as_bytes());
    source.insert(BUCKET, "incoming/mixed.ndjson", body);
    let config = Config::from_lookup(|name| match name {
        "STATE_TABLE" => Some("state".into()),
        "IDEMPOTENCY_TABLE" => Some("idempotency".into()),
        "MAX_LINE_BYTES" => Some("1024".into()),
        _ => None,
    })
    .unwrap();
    let event = json!({"Records": [{"eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": BUCKET}, "object": {"key": "incoming/mixed.ndjson", "eTag": "m"}}}]});
    let (response, summary, _) =
        handle(&store, &source, &Handoff::Retry, &config, &event, &Deadline::None).await.unwrap();
    assert_eq!(response["objects"][0]["result"], "COMPLETED");
    assert_eq!(summary, Summary { applied: 2, quarantined: 3, ..Summary::default() });
    let mut reasons: Vec<(String, String)> = store.quarantined().into_iter().map(|q| (q.record_id, q.reason)).collect();
    reasons.sort();
    assert_eq!(reasons[0], ("line-2".into(), "line is not valid UTF-8".into()));
    assert_eq!(reasons[1], ("line-3".into(), "line is 3015 bytes, over the limit of 1024".into()));
    assert_eq!(reasons[2].0, "line-4");
    assert!(reasons[2].1.starts_with("malformed JSON"), "{reasons:?}");
}

/// A quarantine item names the queue its message came from, read from the
/// record itself (`sqs/<queue>`), whatever the queue is called.
#[tokio::test]
async fn unusable_notifications_are_quarantined_under_their_own_queue() {
    let arn = "arn:aws:sqs:eu-west-1:123456789012:team-b-uploads";
    let event = json!({"Records": [
        {"messageId": "m-bad-body", "receiptHandle": "rh-1", "body": "{not json", "attributes": {},
         "eventSource": "aws:sqs", "eventSourceARN": arn},
        {"messageId": "m-no-body", "receiptHandle": "rh-2", "attributes": {},
         "eventSource": "aws:sqs", "eventSourceARN": arn},
    ]});
    let (store, response, summary) = run(&event).await;
    assert_eq!(response["batchItemFailures"], json!([]));
    assert_eq!(summary.quarantined, 2);
    let mut sources: Vec<(String, String)> = store.quarantined().into_iter().map(|q| (q.source, q.record_id)).collect();
    sources.sort();
    assert_eq!(
        sources,
        [
            ("sqs/team-b-uploads".to_owned(), "m-bad-body".to_owned()),
            ("sqs/team-b-uploads".to_owned(), "m-no-body".to_owned())
        ]
    );
}

/// A notification for an object that is gone (deleted before it was read) is
/// permanent: a FAILED manifest and a quarantine item with the reason, and
/// the message acknowledged, not retried until the dead-letter queue. The
/// same for a direct S3 invocation (not retried either).
#[tokio::test]
async fn an_object_that_is_gone_ends_failed_with_its_reason_and_is_not_retried() {
    let notification = json!({"Records": [{"eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": BUCKET}, "object": {"key": "incoming/deleted.ndjson", "eTag": "gone"}}}]});
    let via_queue = json!({"Records": [{"messageId": "m-gone", "receiptHandle": "rh", "body": notification.to_string(),
        "attributes": {}, "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:ingest"}]});
    for event in [&notification, &via_queue] {
        let (store, response, summary) = run(event).await;
        assert_eq!(response.get("batchItemFailures").cloned().unwrap_or(json!([])), json!([]), "{response}");
        assert_eq!(summary.failed, 0, "{summary:?}");
        let quarantined = store.quarantined();
        assert_eq!(quarantined.len(), 1, "{quarantined:?}");
        assert_eq!(quarantined[0].source, format!("s3/{BUCKET}"));
        assert_eq!(quarantined[0].record_id, "incoming/deleted.ndjson@gone");
        assert!(quarantined[0].reason.contains("NoSuchKey"), "{}", quarantined[0].reason);
        assert_eq!(store.manifests()[0].status, ObjectStatus::Failed);
    }
}

/// A CSV as a spreadsheet exports it: a UTF-8 byte-order mark before the
/// header row, every name and field quoted, CRLF line ends. Every row is an
/// order (before, the mark glued to the first name made every row miss
/// `eventId`, and each was rejected).
#[tokio::test]
async fn a_spreadsheet_csv_with_a_byte_order_mark_and_quoted_names_is_read_row_by_row() {
    let store = MemoryStore::new();
    let mut source = MemorySource::new();
    let body = "\u{feff}\"eventId\",\"orderId\",\"customerId\",\"status\",\"amount\",\"currency\",\"occurredAt\"\r\n\
                \"e-s1\",\"o-s1\",\"c-sheet\",\"PLACED\",\"12.50\",\"EUR\",\"2026-11-03T10:00:00Z\"\r\n\
                \"e-s2\",\"o-s2\",\"c-sheet\",\"PAID\",\"7\",\"EUR\",\"2026-11-03T11:00:00Z\"\r\n";
    source.insert(BUCKET, "incoming/export.csv", body);
    let event = json!({"Records": [{"eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": BUCKET}, "object": {"key": "incoming/export.csv", "eTag": "x"}}}]});
    let (response, summary, _) =
        handle(&store, &source, &Handoff::Retry, &config(), &event, &Deadline::None).await.unwrap();
    assert_eq!(response["objects"][0]["result"], "COMPLETED", "{response}");
    assert_eq!(summary, Summary { applied: 2, ..Summary::default() });
    assert_eq!(store.orders().keys().collect::<Vec<_>>(), ["o-s1", "o-s2"]);
    assert!(store.quarantined().is_empty(), "{:?}", store.quarantined());
}
