//! Helpers for the integration and end-to-end tests. Every test starts its own
//! local stack ([`xtask::Stack`]: moto for S3 and SQS, DynamoDB Local for
//! DynamoDB, and the functions served as Lambda serves them, on free ports), so tests run in
//! parallel without sharing state, and reads its results back through the
//! AWS API from the emulators: a test cannot pass without them.
//! `LOCAL_STACK_DYNAMODB=moto` runs them with moto's DynamoDB instead (no
//! Java needed; see the README for what that mode cannot show).

pub use xtask::fault_proxy;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use aws_sdk_dynamodb::types::AttributeValue;
pub use xtask::{Driver, Stack};

/// Bound on one drain: a few invocations, or `maxReceiveCount` visibility
/// timeouts for a message that keeps failing, with room for a slow machine.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);

/// A DynamoDB item as the SDK returns it.
pub type Item = HashMap<String, AttributeValue>;

/// A stack with every resource and every declared function served.
pub async fn stack_with_functions() -> Result<Stack> {
    let mut stack = Stack::start().await?;
    stack.start_lambda().await?;
    Ok(stack)
}

/// Runs the event source mappings until the pipeline is drained; prints each
/// invocation (shown for failing tests).
pub async fn drain(stack: &Stack) -> Result<()> {
    let lambda = stack.lambda().context("start the functions first")?;
    let mut driver = Driver::new(stack, lambda)?;
    driver.drain(DRAIN_TIMEOUT, &mut |r| println!("invoked {r:?}")).await?;
    Ok(())
}

/// Reads one item of the state table (strongly consistent).
pub async fn state_item(stack: &Stack, pk: &str, sk: &str) -> Result<Option<Item>> {
    let table = &stack.spec.table("state")?.name;
    let out = stack
        .dynamodb
        .get_item()
        .table_name(table)
        .key("pk", AttributeValue::S(pk.to_owned()))
        .key("sk", AttributeValue::S(sk.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .with_context(|| format!("GetItem pk={pk} sk={sk}"))?;
    Ok(out.item().cloned())
}

/// Writes an item to the state table (as a function would: its stream
/// carries the change).
pub async fn put_state_item(stack: &Stack, item: Item) -> Result<()> {
    let table = &stack.spec.table("state")?.name;
    stack.dynamodb.put_item().table_name(table).set_item(Some(item)).send().await.context("PutItem")?;
    Ok(())
}

/// Items of the state table whose `pk` starts with `prefix`.
pub async fn state_items_with_prefix(stack: &Stack, prefix: &str) -> Result<Vec<Item>> {
    Ok(stack
        .scan("state")
        .await?
        .into_iter()
        .filter(|i| matches!(i.get("pk"), Some(AttributeValue::S(pk)) if pk.starts_with(prefix)))
        .collect())
}

/// A string attribute.
pub fn s<'a>(item: &'a Item, name: &str) -> Result<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v),
        other => bail!("attribute {name} is not a string (S): {other:?}"),
    }
}

/// A number attribute, normalised (`25.50` and `25.5` compare equal).
pub fn n(item: &Item, name: &str) -> Result<rust_decimal::Decimal> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => {
            Ok(v.parse::<rust_decimal::Decimal>().with_context(|| format!("attribute {name}: {v}"))?.normalize())
        }
        other => bail!("attribute {name} is not a number (N): {other:?}"),
    }
}

/// A decimal literal, normalised.
pub fn dec(text: &str) -> rust_decimal::Decimal {
    text.parse::<rust_decimal::Decimal>().expect("a decimal literal").normalize()
}

/// The `totals` map of a customer totals item, normalised.
pub fn totals(item: &Item) -> Result<std::collections::BTreeMap<String, rust_decimal::Decimal>> {
    match item.get("totals") {
        Some(AttributeValue::M(m)) => m
            .iter()
            .map(|(currency, v)| match v {
                AttributeValue::N(n) => Ok((currency.clone(), n.parse::<rust_decimal::Decimal>()?.normalize())),
                other => bail!("totals.{currency} is not a number: {other:?}"),
            })
            .collect(),
        other => bail!("attribute totals is not a map (M): {other:?}"),
    }
}

/// An order item of the state table as the functions write it (one applied
/// event: `lastEventId` `e-<order id>`, version 1, occurred 2026-11-01 10:00).
pub fn order_item(order_id: &str, customer_id: &str, status: &str, amount: &str, currency: &str) -> Item {
    let s = |v: &str| AttributeValue::S(v.to_owned());
    [
        ("pk", s(&format!("ORDER#{order_id}"))),
        ("sk", s("ORDER")),
        ("entity", s("order")),
        ("orderId", s(order_id)),
        ("customerId", s(customer_id)),
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

/// Messages in a queue (visible, in flight or delayed).
pub async fn depth(stack: &Stack, queue_key: &str) -> Result<u64> {
    stack.queue_depth(queue_key).await
}

/// The README's Rust blocks that are not copies of a file, compiled and run
/// as doctests (`tests/tests/docs.rs` checks the copies).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
