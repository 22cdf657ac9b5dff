//! `{{name}}` through its binary against the local stack, as
//! `infra/stack.json` declares it: the uploads bucket's notifications for
//! `{{name}}/` to its queue, the queue mapped to it, its table, its
//! environment. `cargo xtask test` runs this with every other test.

use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_dynamodb::types::AttributeValue;
use xtask::{Driver, Stack};

/// A drain: a few invocations, or a message's retries, on a slow machine.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_created_under_its_prefix_is_recorded_once() -> Result<()> {
    let mut stack = Stack::start().await?;
    // Only this function: its test builds only its binary.
    stack.start_lambda_for(&["{{name}}"]).await?;
    stack.put_object("{{name}}/first.json", br#"{"hello": "world"}"#.to_vec()).await?;
    // Outside its prefix: not its business.
    stack.put_object("elsewhere/second.json", b"{}".to_vec()).await?;
    let lambda = stack.lambda().context("started")?;
    Driver::new(&stack, lambda)?.drain(DRAIN_TIMEOUT, &mut |r| println!("invoked {r:?}")).await?;

    let out = stack.dynamodb.scan().table_name(&stack.spec.table("{{key}}")?.name).consistent_read(true).send().await?;
    let recorded: Vec<String> = out
        .items()
        .iter()
        .filter_map(|i| i.get("pk").and_then(|v| v.as_s().ok()).cloned())
        .filter(|pk| pk.starts_with("OBJECT#"))
        .collect();
    assert_eq!(recorded, [format!("OBJECT#{}/{{name}}/first.json", stack.spec.bucket.name)]);
    let record = out.items().iter().find(|i| i.contains_key("size")).context("no object record")?;
    assert_eq!(record.get("size"), Some(&AttributeValue::N("18".into())), "{record:?}");
    Ok(())
}
