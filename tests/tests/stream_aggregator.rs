//! stream-aggregator through the real path: order items written to the state
//! table, the emulator's own DynamoDB stream records, the driver's stream
//! mapping (filter, checkpoints), the function's binary served by the local stack,
//! customer totals read back.

use aws_sdk_dynamodb::types::AttributeValue;
use integration_tests::{
    dec, depth, drain, n, order_item, put_state_item, s, stack_with_functions, state_item, state_items_with_prefix,
    totals,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_records_of_orders_become_customer_totals() -> anyhow::Result<()> {
    let stack = stack_with_functions().await?;
    let table = stack.spec.table("state")?.name.clone();
    put_state_item(&stack, order_item("o-s1", "c-stream", "PAID", "10.00", "USD")).await?;
    put_state_item(&stack, order_item("o-s2", "c-stream", "PLACED", "5", "EUR")).await?;
    put_state_item(&stack, order_item("o-s3", "c-stream", "CANCELLED", "7.00", "USD")).await?;
    // Created by UpdateItem, as the functions write orders: moto (with
    // LOCAL_STACK_DYNAMODB=moto) emits an extra key-only INSERT for it, which
    // the driver must not pass on as an order; DynamoDB Local writes one.
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
    let mut other = order_item("x", "c-stream", "PAID", "1000", "USD");
    other.insert("pk".into(), AttributeValue::S("OBJECT#bucket/key".into()));
    other.insert("sk".into(), AttributeValue::S("etag".into()));
    put_state_item(&stack, other).await?;
    drain(&stack).await?;

    let t = state_item(&stack, "CUSTOMER#c-stream", "TOTALS").await?.expect("customer totals written");
    assert_eq!(s(&t, "entity")?, "customer_totals");
    assert_eq!(n(&t, "orderCount")?, dec("3"), "CANCELLED does not count");
    let sums = totals(&t)?;
    assert_eq!(sums.get("USD"), Some(&dec("10")));
    assert_eq!(sums.get("EUR"), Some(&dec("5.25")));

    // A MODIFY: o-s2 is cancelled, its contribution leaves the totals.
    put_state_item(&stack, order_item("o-s2", "c-stream", "CANCELLED", "5", "EUR")).await?;
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
