//! `{{name}}` through its binary against the local stack, as
//! `infra/stack.json` declares it: its table's stream mapped to it (with the
//! filter, bisection, retries and failure queue), its environment.
//! `cargo xtask test` runs this with every other test.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_dynamodb::types::AttributeValue;
use xtask::{Driver, Stack};

/// A drain: a few invocations, or a batch's retries, on a slow machine.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);

async fn put(stack: &Stack, item_id: &str, quantity: Option<u32>) -> Result<()> {
    let mut put = stack
        .dynamodb
        .put_item()
        .table_name(&stack.spec.table("{{key}}")?.name)
        .item("pk", AttributeValue::S(format!("ITEM#{item_id}")))
        .item("sk", AttributeValue::S("ITEM".into()));
    if let Some(q) = quantity {
        put = put.item("quantity", AttributeValue::N(q.to_string()));
    }
    put.send().await?;
    Ok(())
}

async fn items(stack: &Stack) -> Result<Vec<HashMap<String, AttributeValue>>> {
    let out = stack.dynamodb.scan().table_name(&stack.spec.table("{{key}}")?.name).consistent_read(true).send().await?;
    Ok(out.items().to_vec())
}

fn text<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> &'a str {
    item.get(name).and_then(|v| v.as_s().or_else(|_| v.as_n()).ok()).map_or("", String::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_items_count_once_into_the_summary_and_bad_ones_are_quarantined() -> Result<()> {
    let mut stack = Stack::start().await?;
    // Only this function: its test builds only its binary.
    stack.start_lambda_for(&["{{name}}"]).await?;
    put(&stack, "i-1", Some(3)).await?;
    // A change of an item counts nothing; an item without a quantity is
    // quarantined with the reason.
    put(&stack, "i-1", Some(5)).await?;
    put(&stack, "i-2", None).await?;
    let lambda = stack.lambda().context("started")?;
    Driver::new(&stack, lambda)?.drain(DRAIN_TIMEOUT, &mut |r| println!("invoked {r:?}")).await?;

    let items = items(&stack).await?;
    let (pk, sk) = {{crate}}::summary_key();
    let summary = items.iter().find(|i| text(i, "pk") == pk && text(i, "sk") == sk).context("no summary")?;
    assert_eq!((text(summary, "quantity"), text(summary, "items")), ("3", "1"), "{summary:?}");
    let quarantined: Vec<&str> =
        items.iter().filter(|i| text(i, "pk").starts_with("QUARANTINE#")).map(|i| text(i, "reason")).collect();
    assert_eq!(quarantined, ["invalid: new image: missing field `quantity`"]);
    Ok(())
}
