//! The examples of other domains, through their real binaries under
//! `cargo lambda watch`, against the emulator: what a team writing its own
//! function on the toolkit gets.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use integration_tests::{Item, n, s, state_items_with_prefix};
use serde_json::Value;
use xtask::{Invocation, Lambda, Stack};

/// Creates a table keyed `key` (S) in the stack's emulator.
async fn create_table(stack: &Stack, name: &str, key: &str) -> anyhow::Result<()> {
    stack
        .dynamodb
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder().attribute_name(key).attribute_type(ScalarAttributeType::S).build()?,
        )
        .key_schema(KeySchemaElement::builder().attribute_name(key).key_type(KeyType::Hash).build()?)
        .send()
        .await?;
    Ok(())
}

async fn inventory(stack: &Stack, table: &str, sku: &str) -> anyhow::Result<Item> {
    let out = stack
        .dynamodb
        .get_item()
        .table_name(table)
        .key("sku", AttributeValue::S(sku.into()))
        .consistent_read(true)
        .send()
        .await?;
    out.item().cloned().ok_or_else(|| anyhow::anyhow!("no inventory item {sku}"))
}

fn failures(invocation: &Invocation) -> Vec<String> {
    match invocation {
        Invocation::Ok(response) => response["batchItemFailures"]
            .as_array()
            .map(|a| a.iter().filter_map(|f| f["itemIdentifier"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default(),
        Invocation::FunctionError { error_type, message } => panic!("invocation failed: {error_type}: {message}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_reservations_apply_once_and_quarantine_what_cannot_be_reserved() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let table = "example-inventory";
    create_table(&stack, table, "sku").await?;
    for (sku, available) in [("A-1", "10"), ("B-2", "1")] {
        stack
            .dynamodb
            .put_item()
            .table_name(table)
            .item("sku", AttributeValue::S(sku.into()))
            .item("available", AttributeValue::N(available.into()))
            .send()
            .await?;
    }
    let state_table = stack.spec.table("state")?.name.clone();
    let env = [("INVENTORY_TABLE".to_owned(), table.to_owned()), ("QUARANTINE_TABLE".to_owned(), state_table)];
    let lambda = Lambda::start_for(&stack, &["inventory-reservations".to_owned()], "examples", &env).await?;
    let event: Value =
        serde_json::from_str(include_str!("../../examples/inventory-reservations/events/sqs-reservations.json"))?;

    let first = lambda.invoke("inventory-reservations", &event).await?;
    assert_eq!(failures(&first), Vec::<String>::new(), "{first:?}");
    // r-1 (3) and r-3 (2) of A-1 reserved; the resend of r-1 is a duplicate.
    let a1 = inventory(&stack, table, "A-1").await?;
    assert_eq!((n(&a1, "available")?, n(&a1, "reserved")?), (5.into(), 5.into()), "{a1:?}");
    let b2 = inventory(&stack, table, "B-2").await?;
    assert_eq!(n(&b2, "available")?, 1.into(), "r-2 wants 5 of B-2 and must change nothing: {b2:?}");
    assert!(!b2.contains_key("reserved"), "{b2:?}");

    let quarantined = state_items_with_prefix(&stack, "QUARANTINE#sqs/reservations").await?;
    let reason_of = |message: &str| -> String {
        quarantined
            .iter()
            .find(|q| s(q, "sk").ok() == Some(message))
            .and_then(|q| s(q, "reason").ok())
            .unwrap_or_else(|| panic!("{message} quarantined: {quarantined:?}"))
            .to_owned()
    };
    assert_eq!(quarantined.len(), 5, "{quarantined:?}");
    assert_eq!(reason_of("res-msg-2"), "sku B-2: 5 requested, 1 available");
    assert!(reason_of("res-msg-4").starts_with("malformed JSON in SQS message body"), "{}", reason_of("res-msg-4"));
    assert!(reason_of("res-msg-6").contains("was already used with a different payload"), "{}", reason_of("res-msg-6"));
    assert_eq!(reason_of("res-msg-7"), "sku Z-9: no such item");
    assert_eq!(reason_of("res-msg-8"), "quantity: must be at least 1");

    // The whole batch delivered again: every reservation is a duplicate and
    // nothing moves.
    let again = lambda.invoke("inventory-reservations", &event).await?;
    assert_eq!(failures(&again), Vec::<String>::new(), "{again:?}");
    assert_eq!(inventory(&stack, table, "A-1").await?, a1);
    assert_eq!(inventory(&stack, table, "B-2").await?, b2);
    assert_eq!(state_items_with_prefix(&stack, "QUARANTINE#sqs/reservations").await?.len(), 5);
    let markers = stack.scan("idempotency").await?;
    assert_eq!(markers.len(), 2, "one marker per reservation applied (r-1, r-3): {markers:?}");
    Ok(())
}
