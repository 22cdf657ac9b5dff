//! Handler tests over the fixture events, with the in-memory store.

use orders::config::Config;
use orders::order::OrderStatus;
use orders::state::memory::MemoryStore;
use serde_json::{Value, json};
use shared::batch::Summary;
use sqs_consumer::handle;

fn config() -> Config {
    Config::from_lookup(|name| match name {
        "STATE_TABLE" => Some("state".into()),
        "IDEMPOTENCY_TABLE" => Some("idempotency".into()),
        _ => None,
    })
    .unwrap()
}

fn fixture(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

#[tokio::test]
async fn standard_batch_applies_new_events_and_counts_stale_and_duplicate() {
    let store = MemoryStore::new();
    let (response, summary) =
        handle(&store, &config(), &fixture(include_str!("../../../events/sqs-standard.json"))).await.unwrap();
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    assert_eq!(summary, Summary { applied: 2, stale: 1, duplicate: 1, ..Summary::default() });
    let orders = store.orders();
    assert_eq!(orders["o-6001"].last_event_id, "e-6001-1");
    assert_eq!(orders["o-6001"].amount.to_string(), "30", "amounts are stored normalised");
    assert_eq!(orders["o-6002"].status, OrderStatus::Paid);
    assert_eq!(orders["o-6002"].amount.to_string(), "8.5");
}

#[tokio::test]
async fn redelivered_batch_changes_nothing() {
    let store = MemoryStore::new();
    let event = fixture(include_str!("../../../events/sqs-standard.json"));
    handle(&store, &config(), &event).await.unwrap();
    let before = store.orders();
    let (response, summary) = handle(&store, &config(), &event).await.unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(summary.applied, 0);
    assert_eq!(summary.duplicate + summary.stale, 4);
    assert_eq!(store.orders(), before);
}

#[tokio::test]
async fn fifo_batch_ends_with_the_latest_event_of_each_order() {
    let store = MemoryStore::new();
    let (response, summary) =
        handle(&store, &config(), &fixture(include_str!("../../../events/sqs-fifo.json"))).await.unwrap();
    assert!(response.batch_item_failures.is_empty());
    // Two events per order in one batch: the later one is written, the earlier is superseded (stale).
    assert_eq!(summary, Summary { applied: 2, stale: 2, ..Summary::default() });
    let orders = store.orders();
    assert_eq!(orders["o-7001"].status, OrderStatus::Shipped);
    assert_eq!(orders["o-7002"].status, OrderStatus::Cancelled);
}

#[tokio::test]
async fn poison_messages_are_quarantined_with_reasons_and_acknowledged() {
    let store = MemoryStore::new();
    let (response, summary) =
        handle(&store, &config(), &fixture(include_str!("../../../events/sqs-poison.json"))).await.unwrap();
    assert!(response.batch_item_failures.is_empty(), "poison is acknowledged, not retried");
    assert_eq!(summary, Summary { applied: 2, quarantined: 3, ..Summary::default() });
    let mut reasons: Vec<(String, String)> = store.quarantined().into_iter().map(|q| (q.record_id, q.reason)).collect();
    reasons.sort();
    assert_eq!(reasons.len(), 3);
    assert_eq!(reasons[0].0, "9d4a7e21-0001-4b8c-bd3e-000000000002");
    assert!(reasons[0].1.starts_with("malformed JSON"), "{reasons:?}");
    assert_eq!(reasons[1].1, "amount: must have at most 2 decimal places, got 5.123");
    assert_eq!(reasons[2].1, "status: must be PLACED, PAID, SHIPPED or CANCELLED, got \"REFUNDED\"");
    assert!(store.quarantined().iter().all(|q| q.source == "sqs/stream-processor-orders"));
    assert_eq!(store.orders().len(), 2);
}

#[tokio::test]
async fn event_without_records_fails_the_invocation_with_a_clear_message() {
    let store = MemoryStore::new();
    let err = handle(&store, &config(), &serde_json::json!({"hello": "world"})).await.unwrap_err();
    assert_eq!(err.to_string(), "event: missing field `Records`");
}

#[tokio::test]
async fn record_without_message_id_or_body_is_quarantined_not_fatal() {
    let store = MemoryStore::new();
    let event = serde_json::json!({"Records": [
        {"messageId": "m1", "eventSource": "aws:sqs"},
        {"body": "{}", "eventSource": "aws:sqs"}
    ]});
    let (response, summary) = handle(&store, &config(), &event).await.unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(summary.quarantined, 2);
    let reasons: Vec<String> = store.quarantined().into_iter().map(|q| q.reason).collect();
    assert!(reasons.iter().any(|r| r.contains("`body`")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("`messageId`")), "{reasons:?}");
}

#[test]
fn fixtures_round_trip_through_aws_lambda_events() {
    use aws_lambda_events::event::sqs::SqsEvent;
    for text in [
        include_str!("../../../events/sqs-standard.json"),
        include_str!("../../../events/sqs-fifo.json"),
        include_str!("../../../events/sqs-poison.json"),
    ] {
        let parsed: SqsEvent = serde_json::from_str(text).unwrap();
        let reparsed: SqsEvent = serde_json::from_str(&serde_json::to_string(&parsed).unwrap()).unwrap();
        assert_eq!(parsed, reparsed);
    }
}

#[tokio::test]
async fn reused_event_id_with_a_different_payload_is_quarantined_not_applied() {
    let store = MemoryStore::new();
    let event = fixture(include_str!("../../../events/sqs-standard.json"));
    handle(&store, &config(), &event).await.unwrap();
    let mut changed = event.clone();
    let body = changed["Records"][0]["body"].as_str().unwrap().replace("30.00", "31.00");
    changed["Records"][0]["body"] = Value::from(body);
    changed["Records"][0]["messageId"] = Value::from("resent-1");
    let (response, summary) =
        handle(&store, &config(), &json!({"Records": [changed["Records"][0].clone()]})).await.unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(summary, Summary { quarantined: 1, ..Summary::default() });
    let q = store.quarantined();
    assert_eq!(
        q[0].reason,
        "idempotency key orders#sqs-body#/eventId=e-6001-1 was already used with a different payload"
    );
    assert_eq!(store.orders()["o-6001"].amount.to_string(), "30");
}

#[tokio::test]
async fn mixed_batch_of_every_kind_of_bad_input_applies_the_valid_and_quarantines_the_rest_with_reasons() {
    let store = MemoryStore::new();
    let valid = |i: u32| {
        json!({"eventId": format!("e-{i}"), "orderId": format!("o-{i}"), "customerId": "c-1", "status": "PLACED",
               "amount": "1.00", "currency": "USD", "occurredAt": "2026-11-28T10:00:00Z"})
        .to_string()
    };
    let with = |field: &str, value: Value| {
        let mut v: Value = serde_json::from_str(&valid(99)).unwrap();
        v[field] = value;
        v.to_string()
    };
    let bodies: Vec<(String, Option<&str>)> = vec![
        (valid(1), None),
        ("{\"eventId\": ".into(), Some("malformed JSON")),
        (with("amount", json!([1])), Some("amount: must be a decimal string or a JSON number, got an array")),
        (with("orderId", json!(7)), Some("orderId: must be a string, got a number")),
        (
            {
                let mut v: Value = serde_json::from_str(&valid(98)).unwrap();
                v.as_object_mut().unwrap().remove("customerId");
                v.to_string()
            },
            Some("customerId: missing"),
        ),
        (with("eventId", json!("x".repeat(5000))), Some("eventId: must be at most 128 characters, got 5000")),
        ("[\"not\", \"an\", \"object\"]".into(), Some("malformed JSON: expected a JSON object")),
        ("\u{0}\u{1}binary".into(), Some("malformed JSON")),
        (valid(2), None),
    ];
    let records: Vec<Value> = bodies
        .iter()
        .enumerate()
        .map(|(i, (body, _))| {
            json!({"messageId": format!("m-{i}"), "body": body, "eventSource": "aws:sqs",
                   "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q", "attributes": {}})
        })
        .collect();
    let (response, summary) = handle(&store, &config(), &json!({ "Records": records })).await.unwrap();
    assert!(response.batch_item_failures.is_empty(), "nothing transient happened: {response:?}");
    assert_eq!(summary, Summary { applied: 2, quarantined: 7, ..Summary::default() });
    let quarantined: std::collections::HashMap<String, String> =
        store.quarantined().into_iter().map(|q| (q.record_id, q.reason)).collect();
    for (i, (_, expected)) in bodies.iter().enumerate() {
        let id = format!("m-{i}");
        match expected {
            None => assert!(!quarantined.contains_key(&id)),
            Some(reason) => assert!(quarantined[&id].starts_with(reason), "{id}: {} !~ {reason}", quarantined[&id]),
        }
    }
    assert!(store.quarantined().iter().all(|q| q.raw.len() <= shared::quarantine::MAX_QUARANTINED_RAW_BYTES));
}

/// The in-memory store, except that writing to quarantine fails as a
/// throttled DynamoDB call would (after the SDK's retries).
struct QuarantineThrottled(MemoryStore);

impl orders::state::StateStore for QuarantineThrottled {
    async fn apply_orders(
        &self,
        events: &[orders::order::OrderEvent],
        markers: Option<&[orders::state::Marker]>,
        manifest: Option<&shared::manifest::ManifestFn<'_>>,
    ) -> Result<Vec<orders::state::Outcome>, shared::dynamo::StoreError> {
        self.0.apply_orders(events, markers, manifest).await
    }

    async fn apply_deltas(
        &self,
        records: &[orders::state::DeltaRecord],
    ) -> (Vec<orders::state::Outcome>, Option<orders::state::DeltaError>) {
        self.0.apply_deltas(records).await
    }

    async fn get_manifest(
        &self,
        bucket: &str,
        key: &str,
        revision: &str,
    ) -> Result<Option<shared::manifest::Manifest>, shared::dynamo::StoreError> {
        self.0.get_manifest(bucket, key, revision).await
    }
}

impl shared::quarantine::QuarantineStore for QuarantineThrottled {
    async fn write_quarantine(&self, _: &[shared::quarantine::Quarantined]) -> Result<(), shared::dynamo::StoreError> {
        Err(shared::dynamo::StoreError::Dynamo {
            operation: "BatchWriteItem",
            table: "state".into(),
            message: "ProvisionedThroughputExceededException".into(),
            class: shared::error::ErrorClass::Transient,
        })
    }
}

fn fifo_record(id: &str, group: &str, body: &str) -> Value {
    json!({
        "messageId": id, "receiptHandle": format!("rh-{id}"), "body": body,
        "attributes": {"MessageGroupId": group, "ApproximateReceiveCount": "1"},
        "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:orders.fifo",
    })
}

fn paid(event_id: &str, order_id: &str, hour: u32) -> String {
    json!({"eventId": event_id, "orderId": order_id, "customerId": "c-fifo", "status": "PAID",
        "amount": "1.00", "currency": "EUR", "occurredAt": format!("2026-11-07T{hour:02}:00:00Z")})
    .to_string()
}

#[tokio::test]
async fn fifo_messages_after_a_failed_one_in_their_group_are_reported_unprocessed_other_groups_applied() {
    let store = QuarantineThrottled(MemoryStore::new());
    let event = json!({"Records": [
        fifo_record("a1", "A", &paid("e-a1", "o-a", 10)),
        fifo_record("b1", "B", &paid("e-b1", "o-b", 10)),
        fifo_record("a-poison", "A", "{not json"),
        fifo_record("a2", "A", &paid("e-a2", "o-a", 11)),
        fifo_record("b2", "B", &paid("e-b2", "o-b", 11)),
    ]});
    let (response, summary) = handle(&store, &config(), &event).await.unwrap();
    let failed: Vec<&str> = response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
    // The poison message could not be quarantined: it and the later message
    // of its group are retried; a1 (before it) and group B take effect.
    assert_eq!(failed, ["a-poison", "a2"]);
    assert_eq!(summary.failed, 2);
    let orders = store.0.orders();
    assert_eq!(orders["o-a"].last_event_id, "e-a1", "a2 must not take effect before the poison message is dealt with");
    assert_eq!(orders["o-b"].last_event_id, "e-b2");
}

/// A producer's resend of the same event, with other formatting, another
/// field order, an ignored field and the amount as a JSON number, is a
/// duplicate: the fingerprint is the validated event's, not its bytes'.
/// Changing a field that matters under the same eventId is still a reused key.
#[tokio::test]
async fn a_resend_that_differs_only_in_formatting_is_a_duplicate_not_a_reused_key() {
    let store = MemoryStore::new();
    let event = fixture(include_str!("../../../events/sqs-standard.json"));
    handle(&store, &config(), &event).await.unwrap();
    let original: Value = serde_json::from_str(event["Records"][0]["body"].as_str().unwrap()).unwrap();
    let mut reformatted = serde_json::Map::new();
    for key in ["occurredAt", "currency", "amount", "status", "customerId", "orderId", "eventId"] {
        reformatted.insert(key.into(), original[key].clone());
    }
    reformatted.insert("amount".into(), json!(30.0));
    reformatted.insert("resentBy".into(), json!("producer-retry"));
    let mut resent = event["Records"][0].clone();
    resent["body"] = Value::from(serde_json::to_string_pretty(&Value::Object(reformatted.clone())).unwrap());
    resent["messageId"] = Value::from("resent-formatting");
    let (response, summary) = handle(&store, &config(), &json!({"Records": [resent.clone()]})).await.unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(summary, Summary { duplicate: 1, ..Summary::default() });
    assert!(store.quarantined().is_empty(), "{:?}", store.quarantined());

    reformatted.insert("amount".into(), json!("30.01"));
    resent["body"] = Value::from(Value::Object(reformatted).to_string());
    resent["messageId"] = Value::from("resent-changed");
    let (_, summary) = handle(&store, &config(), &json!({"Records": [resent]})).await.unwrap();
    assert_eq!(summary, Summary { quarantined: 1, ..Summary::default() });
    assert!(store.quarantined()[0].reason.contains("already used with a different payload"));
}
