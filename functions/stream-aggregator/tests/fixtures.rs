//! Handler tests over the fixture events, and the whole pipeline in memory:
//! order events -> state store -> stream records -> customer totals.

use std::collections::BTreeMap;

use orders::config::Config;
use orders::order::{CustomerTotals, Order, OrderEvent, contribution, parse_order_event};
use orders::state::StateStore;
use orders::state::item::order_to_item;
use orders::state::memory::{MemoryStore, OrderChange};
use proptest::prelude::*;
use serde_json::{Value, json};
use shared::batch::Summary;
use stream_aggregator::handle;

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

fn totals(count: i64, amounts: &[(&str, &str)]) -> CustomerTotals {
    CustomerTotals {
        order_count: count,
        totals: amounts.iter().map(|(c, a)| (orders::order::Currency::parse(c).unwrap(), a.parse().unwrap())).collect(),
    }
}

#[tokio::test]
async fn insert_modify_remove_of_orders_maintain_totals() {
    let store = MemoryStore::new();
    let event = fixture(include_str!("../../../events/stream-orders.json"));
    let (response, summary) = handle(&store, &config(), &event).await.unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(summary, Summary { applied: 6, ..Summary::default() });
    let t = store.totals();
    assert_eq!(t["c-gina"], totals(1, &[("USD", "12.50")]));
    assert_eq!(t["c-hugo"], totals(0, &[]), "the removed order no longer counts");

    // The same batch again (a retried batch): every record is a duplicate.
    let (_, summary) = handle(&store, &config(), &event).await.unwrap();
    assert_eq!(summary, Summary { duplicate: 6, ..Summary::default() });
    assert_eq!(store.totals(), t);
}

#[tokio::test]
async fn records_of_other_entities_are_ignored() {
    let store = MemoryStore::new();
    let (response, summary) =
        handle(&store, &config(), &fixture(include_str!("../../../events/stream-non-order.json"))).await.unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(summary, Summary { ignored: 1, ..Summary::default() });
    assert!(store.totals().is_empty());
}

#[tokio::test]
async fn malformed_image_is_quarantined_and_the_rest_applied() {
    let store = MemoryStore::new();
    let mut event = fixture(include_str!("../../../events/stream-orders.json"));
    event["Records"][0]["dynamodb"]["NewImage"]["amount"] = json!({"S": "ten"});
    event["Records"][3]["eventName"] = json!("TRUNCATE");
    let (response, summary) = handle(&store, &config(), &event).await.unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(summary.quarantined, 2);
    assert_eq!(summary.applied, 4);
    let reasons: Vec<String> = store.quarantined().into_iter().map(|q| q.reason).collect();
    assert!(reasons.iter().any(|r| r.contains("`amount` is not a number")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("TRUNCATE")), "{reasons:?}");
}

#[test]
fn fixtures_round_trip_through_the_parser() {
    use shared::event::stream::Record;
    for text in
        [include_str!("../../../events/stream-orders.json"), include_str!("../../../events/stream-non-order.json")]
    {
        let event: Value = serde_json::from_str(text).unwrap();
        for record in event["Records"].as_array().unwrap() {
            let parsed = Record::parse(record).unwrap();
            let reparsed = Record::parse(&serde_json::to_value(&parsed.raw).unwrap()).unwrap();
            assert_eq!(parsed, reparsed);
        }
    }
}

/// Stream records (as DynamoDB would write them) for committed order changes.
fn stream_event(changes: &[OrderChange], first_seq: u64) -> Value {
    let records: Vec<Value> = changes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let new = serde_json::to_value(order_to_item(&c.new)).unwrap();
            let mut dynamodb = json!({
                "ApproximateCreationDateTime": 1_795_867_200,
                "Keys": {"pk": new["pk"].clone(), "sk": new["sk"].clone()},
                "NewImage": new,
                "SequenceNumber": format!("{:021}", first_seq + i as u64),
                "SizeBytes": 100,
                "StreamViewType": "NEW_AND_OLD_IMAGES",
            });
            if let Some(old) = &c.old {
                dynamodb["OldImage"] = serde_json::to_value(order_to_item(old)).unwrap();
            }
            json!({
                "eventID": format!("ev-{}", first_seq + i as u64),
                "eventName": if c.old.is_some() { "MODIFY" } else { "INSERT" },
                "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "dynamodb": dynamodb,
            })
        })
        .collect();
    json!({ "Records": records })
}

/// The invariant of DESIGN.md: each customer's totals equal the sum over
/// that customer's orders.
fn expected_totals(orders: &BTreeMap<String, Order>) -> BTreeMap<String, CustomerTotals> {
    let mut expected: BTreeMap<String, CustomerTotals> = BTreeMap::new();
    for order in orders.values() {
        let entry = expected.entry(order.customer_id.clone()).or_default();
        if let Some((_, c)) = contribution(order) {
            entry.checked_add(&c).expect("the test's totals fit");
        }
    }
    expected
}

fn event(i: usize, order: usize, customer: usize, status: &str, cents: u32, minute: u32) -> OrderEvent {
    parse_order_event(
        &json!({
            "eventId": format!("e-{i}"),
            "orderId": format!("o-{order}"),
            "customerId": format!("c-{customer}"),
            "status": status,
            "amount": format!("{}.{:02}", cents / 100, cents % 100),
            "currency": if order.is_multiple_of(2) { "USD" } else { "EUR" },
            "occurredAt": format!("2026-11-28T10:{:02}:00Z", minute % 60),
        })
        .to_string(),
    )
    .unwrap()
}

fn arb_events() -> impl Strategy<Value = Vec<OrderEvent>> {
    let status = prop_oneof![Just("PLACED"), Just("PAID"), Just("SHIPPED"), Just("CANCELLED")];
    prop::collection::vec((0usize..6, 0usize..3, status, 0u32..100_000, 0u32..60), 1..25).prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (order, customer, status, cents, minute))| event(i, order, customer, status, cents, minute))
            .collect()
    })
}

async fn run_pipeline(deliveries: Vec<Vec<OrderEvent>>) -> (BTreeMap<String, Order>, BTreeMap<String, CustomerTotals>) {
    let store = MemoryStore::new();
    let mut seq = 1;
    for batch in deliveries {
        store.apply_orders(&batch, None, None).await.unwrap();
        let changes = store.take_changes();
        let stream = stream_event(&changes, seq);
        seq += changes.len() as u64;
        // Deliver every stream batch twice: a retried batch must change nothing.
        handle(&store, &config(), &stream).await.unwrap();
        handle(&store, &config(), &stream).await.unwrap();
    }
    (store.orders(), store.totals())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any order of delivery, any duplication, any batching of the same events
    /// gives the same orders, and totals that satisfy the invariant.
    #[test]
    fn any_delivery_order_and_duplication_gives_the_same_state(
        events in arb_events(),
        shuffle_seed in any::<u64>(),
        batch_size in 1usize..7,
        duplicate_every in 1usize..4,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (reference_orders, reference_totals) = runtime.block_on(run_pipeline(vec![events.clone()]));
        let nonzero = |t: &BTreeMap<String, CustomerTotals>| -> BTreeMap<String, CustomerTotals> {
            t.iter().filter(|(_, v)| !v.is_zero()).map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        prop_assert_eq!(nonzero(&reference_totals), nonzero(&expected_totals(&reference_orders)));

        // Shuffle deterministically, duplicate some, and deliver in batches.
        let mut delivered = events.clone();
        for (i, e) in events.iter().enumerate() {
            if i % duplicate_every == 0 {
                delivered.push(e.clone());
            }
        }
        let mut state = shuffle_seed | 1;
        for i in (1..delivered.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            delivered.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let batches: Vec<Vec<OrderEvent>> = delivered.chunks(batch_size).map(<[OrderEvent]>::to_vec).collect();
        let (orders, totals) = runtime.block_on(run_pipeline(batches));
        // `version` counts the events applied, which depends on delivery order;
        // everything else must be identical.
        let unversioned = |o: &BTreeMap<String, Order>| -> BTreeMap<String, Order> {
            o.iter().map(|(k, v)| (k.clone(), Order { version: 0, ..v.clone() })).collect()
        };
        prop_assert_eq!(unversioned(&orders), unversioned(&reference_orders));
        prop_assert_eq!(nonzero(&totals), nonzero(&expected_totals(&orders)));
    }
}

/// Stored images are not validated input: two orders of one customer whose
/// amounts are each the largest exact decimal overflow the customer's totals.
/// That record alone is quarantined with the reason; the records next to it,
/// of that customer and of others, are applied; nothing panics and nothing is
/// retried.
#[tokio::test]
async fn a_delta_that_would_overflow_its_customers_totals_is_quarantined_alone() {
    let huge = rust_decimal::Decimal::MAX;
    let order = |id: &str, customer: &str, amount: rust_decimal::Decimal| Order {
        order_id: id.into(),
        customer_id: customer.into(),
        status: orders::order::OrderStatus::Placed,
        amount,
        currency: orders::order::Currency::parse("USD").unwrap(),
        occurred_at: "2026-11-01T10:00:00Z".parse().unwrap(),
        last_event_id: format!("e-{id}"),
        version: 1,
    };
    let changes = [
        OrderChange { old: None, new: order("big-1", "c-x", huge) },
        OrderChange { old: None, new: order("big-2", "c-x", huge) },
        OrderChange { old: None, new: order("ok-1", "c-y", "5".parse().unwrap()) },
        OrderChange { old: None, new: order("ok-2", "c-x", "0".parse().unwrap()) },
    ];
    let event = stream_event(&changes, 500);
    let store = MemoryStore::new();
    let (response, summary) = handle(&store, &config(), &event).await.unwrap();
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    assert_eq!(summary, Summary { applied: 3, quarantined: 1, ..Summary::default() });
    let quarantined = store.quarantined();
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert_eq!(quarantined[0].record_id, format!("{:021}", 501));
    assert_eq!(quarantined[0].reason, "customer c-x: totals.USD would overflow");
    let all = store.totals();
    assert_eq!(all["c-x"], totals(2, &[("USD", &huge.to_string())]));
    assert_eq!(all["c-y"], totals(1, &[("USD", "5")]));
}
