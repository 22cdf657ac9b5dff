//! Order of effects in spite of failures mid-batch, through the real
//! binaries: the fault proxy makes the functions' DynamoDB writes fail (every
//! attempt of the SDK's retry policy, so the function sees the failure), and
//! the test reads the order in which writes reached the state table from the
//! table's own DynamoDB stream.

use anyhow::{Context, Result};
use integration_tests::fault_proxy::{Fault, FaultProxy, Plan, Target};
use integration_tests::{DRAIN_TIMEOUT, dec, n, order_item, put_state_item, state_item, totals};
use serde_json::Value;
use xtask::driver::InvocationReport;
use xtask::dynamodb_local::Engine;
use xtask::{Driver, Stack};

/// Attempts the SDK's standard retry policy makes at one request: throttling
/// this many in a row makes the call fail. (If the SDK ever retried more,
/// the failure would not happen and the tests say so.)
const SDK_ATTEMPTS: u64 = 3;

/// A stack whose functions' calls of `operation` fail at the scheduled
/// (0-based) calls.
async fn stack_failing(operation: &'static str, calls: impl IntoIterator<Item = u64>) -> Result<(Stack, FaultProxy)> {
    let mut stack = Stack::start().await?;
    let schedule = calls.into_iter().map(|i| (i, Fault::Throttle)).collect();
    let proxy =
        FaultProxy::start(&stack.dynamodb_endpoint, Target::DynamoDbOperation(operation), Plan::Schedule(schedule))
            .await?;
    stack.function_dynamodb_endpoint = Some(proxy.endpoint());
    stack.start_lambda().await?;
    Ok((stack, proxy))
}

async fn drain(stack: &Stack) -> Result<Vec<InvocationReport>> {
    let lambda = stack.lambda().context("functions started")?;
    let mut reports = Vec::new();
    Driver::new(stack, lambda)?
        .drain(DRAIN_TIMEOUT, &mut |r| {
            println!("invoked {r:?}");
            reports.push(r.clone());
        })
        .await?;
    Ok(reports)
}

/// The writes to the state table in the order they happened: `(pk, new
/// image)`. moto's key-only phantom INSERTs are left out (with
/// `LOCAL_STACK_DYNAMODB=moto`; DynamoDB Local writes none, checked here).
async fn writes(stack: &Stack) -> Result<Vec<(String, Value)>> {
    let records = stack.stream_records("state").await?;
    if stack.engine == Engine::Local {
        let without_entity: Vec<&Value> = records
            .iter()
            .filter(|r| r.pointer("/dynamodb/NewImage").is_some_and(|i| i.get("entity").is_none()))
            .collect();
        assert!(without_entity.is_empty(), "every record DynamoDB Local writes is a whole item: {without_entity:#?}");
    }
    Ok(records
        .into_iter()
        .filter_map(|r| {
            let image = r.pointer("/dynamodb/NewImage")?.clone();
            image.get("entity")?;
            let pk = image.pointer("/pk/S")?.as_str()?.to_owned();
            Some((pk, image))
        })
        .collect())
}

fn attr<'a>(image: &'a Value, name: &str) -> &'a str {
    image.pointer(&format!("/{name}/S")).and_then(Value::as_str).unwrap_or_default()
}

fn order_event(event_id: &str, order_id: &str, status: &str, hour: u32) -> String {
    serde_json::json!({
        "eventId": event_id, "orderId": order_id, "customerId": "c-order", "status": status,
        "amount": "5.00", "currency": "EUR", "occurredAt": format!("2026-11-29T{hour:02}:00:00Z"),
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_groups_take_effect_in_group_order_when_a_message_fails_mid_batch() -> Result<()> {
    // The first quarantine write (BatchWriteItem) fails: the poison message
    // in group A cannot be acknowledged on the first delivery.
    let (stack, proxy) = stack_failing("BatchWriteItem", 0..SDK_ATTEMPTS).await?;
    let group_a = [
        ("a1", order_event("a1", "o-a", "PLACED", 10)),
        ("a2", order_event("a2", "o-a", "PAID", 11)),
        ("poison", r#"{"eventId": "a-poison", "orderId": "o-a", "amount": [1]}"#.to_owned()),
        ("a3", order_event("a3", "o-a", "SHIPPED", 12)),
        ("a4", order_event("a4", "o-a", "CANCELLED", 13)),
    ];
    let group_b = [
        ("b1", order_event("b1", "o-b", "PLACED", 10)),
        ("b2", order_event("b2", "o-b", "PAID", 11)),
        ("b3", order_event("b3", "o-b", "SHIPPED", 12)),
    ];
    let mut poison_message_id = String::new();
    for (name, body) in &group_a {
        let id = stack.send("ordersFifo", body, Some("A")).await?;
        if *name == "poison" {
            poison_message_id = id;
        }
    }
    for (_, body) in &group_b {
        stack.send("ordersFifo", body, Some("B")).await?;
    }
    let reports = drain(&stack).await?;
    assert_eq!(proxy.stats().throttled, SDK_ATTEMPTS, "the first quarantine write failed: {reports:#?}");
    assert!(
        reports.iter().any(|r| r.mapping.starts_with("sqs-consumer") && r.item_failures >= 2),
        "the poison message and the later messages of its group were reported failed: {reports:#?}"
    );

    // Each write mapped to the position, in its group, of the last message
    // it reflects: an order write by its lastEventId, the quarantine item by
    // its message id.
    let position = |group: &[(&str, String)], name: &str| group.iter().position(|(n, _)| *n == name);
    let mut effects_a = Vec::new();
    let mut effects_b = Vec::new();
    for (i, (pk, image)) in writes(&stack).await?.iter().enumerate() {
        match pk.as_str() {
            "ORDER#o-a" => {
                effects_a.push((i, position(&group_a, attr(image, "lastEventId")).context("an event of A")?))
            }
            "ORDER#o-b" => {
                effects_b.push((i, position(&group_b, attr(image, "lastEventId")).context("an event of B")?))
            }
            _ if attr(image, "entity") == "quarantine" => {
                assert_eq!(attr(image, "recordId"), poison_message_id, "only the poison message is quarantined");
                effects_a.push((i, position(&group_a, "poison").expect("listed")));
            }
            _ => {}
        }
    }
    println!("group A effects (write index, message position): {effects_a:?}\ngroup B: {effects_b:?}");
    for (name, effects, last) in [("A", &effects_a, group_a.len() - 1), ("B", &effects_b, group_b.len() - 1)] {
        let positions: Vec<usize> = effects.iter().map(|(_, p)| *p).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "group {name} took effect out of order: {positions:?}");
        assert_eq!(positions.last(), Some(&last), "group {name} ends with its last message");
    }
    // Group B did not wait for group A's retry.
    let quarantined_at = effects_a.iter().find(|(_, p)| *p == 2).map(|(i, _)| *i).context("poison quarantined")?;
    let b_done_at = effects_b.last().map(|(i, _)| *i).context("B applied")?;
    assert!(b_done_at < quarantined_at, "group B finished before group A's failed message was retried");
    let a = state_item(&stack, "ORDER#o-a", "ORDER").await?.context("o-a")?;
    assert_eq!(integration_tests::s(&a, "status")?, "CANCELLED");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_records_take_effect_in_shard_order_when_a_chunk_fails() -> Result<()> {
    // 150 records, one customer each: a batch of 100 commits in two chunks of
    // 50 (marker + customer per record). The first chunk fails on the first
    // delivery (so the second must not commit before it), the second chunk
    // fails on the next (a failure in the middle of a batch).
    let failing = (0..SDK_ATTEMPTS).chain(SDK_ATTEMPTS + 1..2 * SDK_ATTEMPTS + 1);
    let (stack, proxy) = stack_failing("TransactWriteItems", failing).await?;
    let records = 150;
    for i in 0..records {
        put_state_item(
            &stack,
            order_item(&format!("o-{i:03}"), &format!("c-{i:03}"), "PAID", &(i + 1).to_string(), "EUR"),
        )
        .await?;
    }
    let reports = drain(&stack).await?;
    // The customers' totals writes, in the order they reached the table.
    let effects: Vec<usize> =
        writes(&stack).await?.iter().filter_map(|(pk, _)| pk.strip_prefix("CUSTOMER#c-")?.parse().ok()).collect();
    let expected: Vec<usize> = (0..records).collect();
    assert_eq!(effects, expected, "each record took effect once, in shard order");
    assert_eq!(proxy.stats().throttled, 2 * SDK_ATTEMPTS, "both scheduled failures happened: {reports:#?}");
    let stream_reports: Vec<&InvocationReport> =
        reports.iter().filter(|r| r.mapping.starts_with("stream-aggregator")).collect();
    assert!(
        // The driver counts a stream's failed record and those after it.
        stream_reports.iter().any(|r| r.item_failures > 0 && r.item_failures < r.records),
        "a batch failed in its middle and reported where: {stream_reports:#?}"
    );
    assert!(stream_reports.iter().all(|r| !r.sent_to_on_failure), "{stream_reports:#?}");

    for i in [0, 49, 50, 99, 149] {
        let t = state_item(&stack, &format!("CUSTOMER#c-{i:03}"), "TOTALS").await?.context("totals")?;
        assert_eq!(n(&t, "orderCount")?, dec("1"));
        assert_eq!(totals(&t)?.get("EUR"), Some(&dec(&(i + 1).to_string())));
    }
    Ok(())
}
