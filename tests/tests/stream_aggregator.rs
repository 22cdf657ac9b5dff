//! stream-aggregator through the real path: order items written to the state
//! table, the emulator's own DynamoDB stream records, the driver's stream
//! mapping (filter, checkpoints), the function under `cargo lambda watch`,
//! customer totals read back.

use aws_sdk_dynamodb::types::AttributeValue;
use integration_tests::{dec, depth, drain, n, s, stack_with_functions, state_item, state_items_with_prefix, totals};
use xtask::Stack;

fn order_item(order_id: &str, status: &str, amount: &str, currency: &str) -> integration_tests::Item {
    let s = |v: &str| AttributeValue::S(v.to_owned());
    [
        ("pk", s(&format!("ORDER#{order_id}"))),
        ("sk", s("ORDER")),
        ("entity", s("order")),
        ("orderId", s(order_id)),
        ("customerId", s("c-stream")),
        ("status", s(status)),
        ("amount", AttributeValue::N(amount.to_owned())),
        ("currency", s(currency)),
        ("occurredAt", s("2026-11-01T10:00:00Z")),
        ("lastEventId", s(&format!("e-{order_id}"))),
        ("version", AttributeValue::N("1".into())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

async fn put(stack: &Stack, item: integration_tests::Item) -> anyhow::Result<()> {
    stack.dynamodb.put_item().table_name(&stack.spec.table("state")?.name).set_item(Some(item)).send().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_records_of_orders_become_customer_totals() -> anyhow::Result<()> {
    let stack = stack_with_functions().await?;
    let table = stack.spec.table("state")?.name.clone();
    put(&stack, order_item("o-s1", "PAID", "10.00", "USD")).await?;
    put(&stack, order_item("o-s2", "PLACED", "5", "EUR")).await?;
    put(&stack, order_item("o-s3", "CANCELLED", "7.00", "USD")).await?;
    // Created by UpdateItem, as the functions write orders: moto emits an extra
    // key-only INSERT for it, which the driver must not pass on as an order.
    stack
        .dynamodb
        .update_item()
        .table_name(&table)
        .key("pk", AttributeValue::S("ORDER#o-s4".into()))
        .key("sk", AttributeValue::S("ORDER".into()))
        .update_expression(
            "SET entity = :e, orderId = :o, customerId = :c, #s = :s, amount = :a, currency = :cur, occurredAt = :t, lastEventId = :l, version = :v",
        )
        .expression_attribute_names("#s", "status")
        .expression_attribute_values(":e", AttributeValue::S("order".into()))
        .expression_attribute_values(":o", AttributeValue::S("o-s4".into()))
        .expression_attribute_values(":c", AttributeValue::S("c-stream".into()))
        .expression_attribute_values(":s", AttributeValue::S("SHIPPED".into()))
        .expression_attribute_values(":a", AttributeValue::N("0.25".into()))
        .expression_attribute_values(":cur", AttributeValue::S("EUR".into()))
        .expression_attribute_values(":t", AttributeValue::S("2026-11-01T10:00:00Z".into()))
        .expression_attribute_values(":l", AttributeValue::S("e-o-s4".into()))
        .expression_attribute_values(":v", AttributeValue::N("1".into()))
        .send()
        .await?;
    // Not an order (sk != ORDER): the mapping's filter drops it.
    let mut other = order_item("x", "PAID", "1000", "USD");
    other.insert("pk".into(), AttributeValue::S("OBJECT#bucket/key".into()));
    other.insert("sk".into(), AttributeValue::S("etag".into()));
    put(&stack, other).await?;
    drain(&stack).await?;

    let t = state_item(&stack, "CUSTOMER#c-stream", "TOTALS").await?.expect("customer totals written");
    assert_eq!(s(&t, "entity")?, "customer_totals");
    assert_eq!(n(&t, "orderCount")?, dec("3"), "CANCELLED does not count");
    let sums = totals(&t)?;
    assert_eq!(sums.get("USD"), Some(&dec("10")));
    assert_eq!(sums.get("EUR"), Some(&dec("5.25")));

    // A MODIFY: o-s2 is cancelled, its contribution leaves the totals.
    put(&stack, order_item("o-s2", "CANCELLED", "5", "EUR")).await?;
    drain(&stack).await?;
    let t = state_item(&stack, "CUSTOMER#c-stream", "TOTALS").await?.expect("customer totals kept");
    assert_eq!(n(&t, "orderCount")?, dec("2"));
    let sums = totals(&t)?;
    assert_eq!(sums.get("USD"), Some(&dec("10")));
    assert_eq!(sums.get("EUR"), Some(&dec("0.25")));

    let quarantined = state_items_with_prefix(&stack, "QUARANTINE#").await?;
    assert!(quarantined.is_empty(), "no stream record is bad: {quarantined:?}");
    assert_eq!(depth(&stack, "streamFailures").await?, 0);
    Ok(())
}
