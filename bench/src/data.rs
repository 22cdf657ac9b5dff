//! Synthetic workloads: order events as SQS batches, DynamoDB stream batches
//! and NDJSON objects, and the plain structs that give the `serde_json` limit.

use std::io::Write;

use chrono::{DateTime, SecondsFormat};
use orders::state::item::order_to_item;
use orders::state::memory::OrderChange;
use serde::Deserialize;
use serde_json::{Value, json};

/// 2026-11-28T00:00:00Z: events of a workload are one second apart from here.
const BASE_EPOCH: i64 = 1_795_824_000;

const STATUSES: [&str; 4] = ["PLACED", "PAID", "SHIPPED", "CANCELLED"];
const CURRENCIES: [&str; 3] = ["USD", "EUR", "GBP"];

/// The order event number `i` of a workload, as JSON text (the input contract
/// of DESIGN.md). `orders` bounds the distinct order ids; `run` makes ids of
/// separate runs distinct.
pub fn order_event(run: &str, i: u64, orders: u64) -> String {
    let at = DateTime::from_timestamp(BASE_EPOCH + i as i64, 0).unwrap_or_default();
    format!(
        r#"{{"eventId":"e-{run}-{i}","orderId":"o-{run}-{}","customerId":"c-{}","status":"{}","amount":"{}.{:02}","currency":"{}","occurredAt":"{}"}}"#,
        i % orders,
        i % 97,
        STATUSES[(i % 4) as usize],
        (i * 7) % 1000,
        i % 100,
        CURRENCIES[(i % 3) as usize],
        at.to_rfc3339_opts(SecondsFormat::Secs, true)
    )
}

/// One SQS record as the event source mapping delivers it.
pub fn sqs_record(run: &str, i: u64, body: &str) -> Value {
    json!({
        "messageId": format!("m-{run}-{i:08}"),
        "receiptHandle": format!("rh-{run}-{i}"),
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": "1795867200000",
            "SenderId": "AIDAEXAMPLE",
            "ApproximateFirstReceiveTimestamp": "1795867200010"
        },
        "messageAttributes": {},
        "md5OfBody": "00000000000000000000000000000000",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:stream-processor-orders",
        "awsRegion": "us-east-1"
    })
}

/// An SQS event of `n` order events, each on its own order, as JSON bytes.
pub fn sqs_event(run: &str, n: u64) -> Vec<u8> {
    let records: Vec<Value> = (0..n).map(|i| sqs_record(run, i, &order_event(run, i, u64::MAX))).collect();
    serde_json::to_vec(&json!({ "Records": records })).unwrap_or_default()
}

/// A DynamoDB stream event of `n` order INSERT/MODIFY records, as the state
/// table's stream would deliver them after `n` order events were applied.
pub fn stream_event(run: &str, n: u64) -> Vec<u8> {
    let store = orders::state::memory::MemoryStore::new();
    let orders = n.div_ceil(2).max(1);
    let events: Vec<_> = (0..n)
        .map(|i| orders::order::parse_order_event(&order_event(run, i, orders)))
        .collect::<Result<_, _>>()
        .unwrap_or_default();
    // Two deliveries: the first INSERTs every order, the second MODIFYs half
    // of them (records with old images). The store is in memory: each future
    // completes on its first poll.
    if let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() {
        let half = (orders as usize).min(events.len());
        for part in [&events[..half], &events[half..]] {
            let _ = runtime.block_on(orders::state::StateStore::apply_orders(&store, part, None, None));
        }
    }
    let changes = store.take_changes();
    serde_json::to_vec(&stream_records(&changes)).unwrap_or_default()
}

/// Stream records (as DynamoDB writes them) for committed order changes.
pub fn stream_records(changes: &[OrderChange]) -> Value {
    let records: Vec<Value> = changes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let new = serde_json::to_value(order_to_item(&c.new)).unwrap_or_default();
            let mut dynamodb = json!({
                "ApproximateCreationDateTime": 1_795_867_200,
                "Keys": {"pk": new["pk"].clone(), "sk": new["sk"].clone()},
                "NewImage": new,
                "SequenceNumber": format!("{:021}", i + 1),
                "SizeBytes": 100,
                "StreamViewType": "NEW_AND_OLD_IMAGES",
            });
            if let Some(old) = &c.old {
                dynamodb["OldImage"] = serde_json::to_value(order_to_item(old)).unwrap_or_default();
            }
            json!({
                "eventID": format!("ev-{i}"),
                "eventName": if c.old.is_some() { "MODIFY" } else { "INSERT" },
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/state/stream/2026-11-28T00:00:00.000",
                "dynamodb": dynamodb,
            })
        })
        .collect();
    json!({ "Records": records })
}

/// Writes an NDJSON object of order events of at least `bytes` bytes; returns
/// the number of lines. Order ids repeat every `orders` events.
pub fn write_ndjson(out: &mut impl Write, bytes: u64, orders: u64) -> std::io::Result<u64> {
    let mut written = 0;
    let mut i = 0;
    while written < bytes {
        let mut line = order_event("f", i, orders);
        line.push('\n');
        out.write_all(line.as_bytes())?;
        written += line.len() as u64;
        i += 1;
    }
    Ok(i)
}

/// The limit's target: an order event deserialised into plain owned fields,
/// with no validation.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // Read by the deserialiser only: the fields are the work.
pub struct PlainOrder {
    pub event_id: String,
    pub order_id: String,
    pub customer_id: String,
    pub status: String,
    pub amount: Value,
    pub currency: String,
    pub occurred_at: String,
}

/// An SQS event, plainly.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
pub struct PlainSqsEvent {
    #[serde(rename = "Records")]
    pub records: Vec<PlainSqsRecord>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct PlainSqsRecord {
    pub message_id: String,
    pub body: String,
    #[serde(rename = "eventSourceARN")]
    pub event_source_arn: String,
}

/// A DynamoDB stream event, plainly: images as attribute name -> type -> text.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
pub struct PlainStreamEvent {
    #[serde(rename = "Records")]
    pub records: Vec<PlainStreamRecord>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
pub struct PlainStreamRecord {
    #[serde(rename = "eventID")]
    pub event_id: String,
    #[serde(rename = "eventName")]
    pub event_name: String,
    pub dynamodb: PlainChange,
}

type PlainImage = std::collections::HashMap<String, std::collections::HashMap<String, String>>;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(dead_code)]
pub struct PlainChange {
    pub sequence_number: String,
    pub new_image: Option<PlainImage>,
    pub old_image: Option<PlainImage>,
}

/// The plain limit of an SQS event: the envelope and every body.
pub fn plain_sqs(bytes: &[u8]) -> usize {
    let Ok(event) = serde_json::from_slice::<PlainSqsEvent>(bytes) else {
        return 0;
    };
    event.records.iter().filter(|r| serde_json::from_str::<PlainOrder>(&r.body).is_ok()).count()
}

/// The plain limit of a stream event.
pub fn plain_stream(bytes: &[u8]) -> usize {
    serde_json::from_slice::<PlainStreamEvent>(bytes).map_or(0, |e| e.records.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_events_are_valid_and_plain_parses_them() {
        let line = order_event("t", 5, 3);
        let event = orders::order::parse_order_event(&line).unwrap();
        assert_eq!(event.order_id, "o-t-2");
        assert_eq!(plain_sqs(&sqs_event("t", 4)), 4);
        assert_eq!(plain_stream(&stream_event("t", 6)), 6);
    }
}
