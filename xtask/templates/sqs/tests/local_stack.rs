//! `{{name}}` through its binary against the local stack, as
//! `infra/stack.json` declares it: its queue mapped to it, its table, its
//! environment. `cargo xtask test` runs this with every other test.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::Value;
use xtask::{Driver, Invocation, Stack};

/// A drain: a few invocations, or a message's retries, on a slow machine.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);

/// The item `item_id` of the function's table, read consistently.
async fn item(stack: &Stack, item_id: &str) -> Result<HashMap<String, AttributeValue>> {
    let (pk, sk) = {{crate}}::item_key(item_id);
    let out = stack
        .dynamodb
        .get_item()
        .table_name(&stack.spec.table("{{key}}")?.name)
        .key("pk", AttributeValue::S(pk))
        .key("sk", AttributeValue::S(sk))
        .consistent_read(true)
        .send()
        .await?;
    out.item().cloned().with_context(|| format!("no item {item_id}"))
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> String {
    item.get(name).and_then(|v| v.as_n().ok()).cloned().unwrap_or_default()
}

/// The records quarantined in the function's table.
async fn quarantined(stack: &Stack) -> Result<usize> {
    let out = stack.dynamodb.scan().table_name(&stack.spec.table("{{key}}")?.name).send().await?;
    Ok(out.items().iter().filter(|i| i.get("pk").and_then(|v| v.as_s().ok()).is_some_and(|pk| pk.starts_with("QUARANTINE#"))).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_on_its_queue_apply_once_and_bad_ones_are_quarantined() -> Result<()> {
    let mut stack = Stack::start().await?;
    // Only this function: its test builds only its binary.
    stack.start_lambda_for(&["{{name}}"]).await?;
    let event = r#"{"eventId": "e-1", "itemId": "i-1", "quantity": 3}"#;
    // The event, a producer's resend of it, and one that is not JSON.
    for body in [event, event, "not json"] {
        stack.send("{{key}}", body, Some("item-i-1")).await?;
    }
    let lambda = stack.lambda().context("started")?;
    Driver::new(&stack, lambda)?.drain(DRAIN_TIMEOUT, &mut |r| println!("invoked {r:?}")).await?;

    let i1 = item(&stack, "i-1").await?;
    assert_eq!((number(&i1, "quantity"), number(&i1, "events")), ("3".into(), "1".into()), "{i1:?}");
    assert_eq!(quarantined(&stack).await?, 1);
    assert_eq!(stack.queue_depth("{{key}}").await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn its_fixture_event_applies_its_effect_through_the_invoke_api() -> Result<()> {
    let mut stack = Stack::start().await?;
    // Only this function: its test builds only its binary.
    stack.start_lambda_for(&["{{name}}"]).await?;
    let event: Value = serde_json::from_str(include_str!("../events/sqs.json"))?;
    let answer = stack.lambda().context("started")?.invoke("{{name}}", &event).await?;
    // e-1 applied; e-2 and the malformed message quarantined; the resend of
    // e-1 a duplicate: nothing for Lambda to retry.
    let Invocation::Ok(response) = answer else { panic!("the invocation failed: {answer:?}") };
    assert_eq!(response["batchItemFailures"], serde_json::json!([]), "{response}");
    let i1 = item(&stack, "i-1").await?;
    assert_eq!(number(&i1, "quantity"), "3", "{i1:?}");
    assert_eq!(quarantined(&stack).await?, 2);
    Ok(())
}
