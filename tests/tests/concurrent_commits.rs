//! `ExactlyOnce` committing a batch's transactions concurrently against
//! DynamoDB Local: effects on one item keep record order even when the
//! transaction carrying the first of them reaches DynamoDB late, and
//! transactions that share no item go on meanwhile.

use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_dynamodb::types::{AttributeValue, Put, Update};
use integration_tests::fault_proxy::{Fault, FaultProxy, Plan, Target};
use integration_tests::{Stack, state_item};
use shared::batch::Outcome;
use shared::exactly_once::{ExactlyOnce, UnitOfWork, Write};

/// Writes per unit: over half of a transaction's 100 actions, so each unit
/// is a transaction of its own.
const WRITES: usize = 60;

/// A unit appending `label` to the log of item `LOG`, plus filler puts.
fn unit(table: &str, label: &str) -> Result<UnitOfWork> {
    let append = Update::builder()
        .table_name(table)
        .key("pk", AttributeValue::S("TEST#LOG".into()))
        .key("sk", AttributeValue::S("LOG".into()))
        .update_expression("SET #log = list_append(if_not_exists(#log, :empty), :me)")
        .expression_attribute_names("#log", "log")
        .expression_attribute_values(":empty", AttributeValue::L(Vec::new()))
        .expression_attribute_values(":me", AttributeValue::L(vec![AttributeValue::S(label.into())]));
    let mut unit = UnitOfWork::new(format!("test#concurrent#{label}")).write(Write::update(append));
    unit = fillers(unit, table, label, WRITES - 1)?;
    Ok(unit)
}

/// A unit of puts only, on items of its own.
fn independent(table: &str, label: &str) -> Result<UnitOfWork> {
    fillers(UnitOfWork::new(format!("test#concurrent#{label}")), table, label, WRITES)
}

fn fillers(mut unit: UnitOfWork, table: &str, label: &str, n: usize) -> Result<UnitOfWork> {
    for k in 0..n {
        let put = Put::builder()
            .table_name(table)
            .item("pk", AttributeValue::S(format!("TEST#{label}#{k}")))
            .item("sk", AttributeValue::S("X".into()));
        unit = unit.write(Write::put(put, &["pk", "sk"]));
    }
    Ok(unit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transactions_keep_the_order_of_effects_on_one_item() -> Result<()> {
    let stack = Stack::start().await?;
    // The batch's first transaction (the first effect on LOG) reaches
    // DynamoDB 1.5 s late; the independent ones are sent beside it.
    let proxy = FaultProxy::start(
        &stack.dynamodb_endpoint,
        Target::DynamoDbOperation("TransactWriteItems"),
        Plan::Schedule(vec![(0, Fault::Late(Duration::from_millis(1500)))]),
    )
    .await?;
    let table = stack.spec.table("state")?.name.clone();
    let idempotency = stack.spec.table("idempotency")?.name.clone();
    let units = vec![
        unit(&table, "first")?,
        independent(&table, "b")?,
        independent(&table, "c")?,
        independent(&table, "d")?,
        unit(&table, "second")?,
        independent(&table, "e")?,
        unit(&table, "third")?,
    ];
    let committer = ExactlyOnce::new(stack.dynamodb_client_at(&proxy.endpoint()), idempotency).concurrency(4);
    let results = committer.commit(units, None).await;
    assert!(results.iter().all(|r| r == &Ok(Outcome::Applied)), "{results:?}");
    let stats = proxy.stats();
    assert_eq!(stats.late, 1, "the first transaction was held: {stats:?}");

    let log = state_item(&stack, "TEST#LOG", "LOG").await?.context("the log item")?;
    let labels: Vec<&str> = log["log"]
        .as_l()
        .map_err(|v| anyhow::anyhow!("log is not a list: {v:?}"))?
        .iter()
        .filter_map(|v| v.as_s().ok().map(String::as_str))
        .collect();
    assert_eq!(labels, ["first", "second", "third"], "effects on one item in record order");
    for label in ["b", "c", "d", "e"] {
        assert!(state_item(&stack, &format!("TEST#{label}#0"), "X").await?.is_some(), "{label} committed");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transaction_fails_the_later_ones_on_its_items_and_no_others() -> Result<()> {
    let stack = Stack::start().await?;
    let table = stack.spec.table("state")?.name.clone();
    let idempotency = stack.spec.table("idempotency")?.name.clone();
    // The first effect on LOG can never commit: its expression is invalid.
    let broken = Update::builder()
        .table_name(&table)
        .key("pk", AttributeValue::S("TEST#LOG".into()))
        .key("sk", AttributeValue::S("LOG".into()))
        .update_expression("SET = nonsense");
    let first =
        fillers(UnitOfWork::new("test#concurrent#first").write(Write::update(broken)), &table, "first", WRITES - 1)?;
    let units = vec![first, independent(&table, "b")?, unit(&table, "second")?, independent(&table, "c")?];
    let committer = ExactlyOnce::new(stack.dynamodb.clone(), idempotency).concurrency(4);
    let results = committer.commit(units, None).await;
    assert!(matches!(&results[0], Err(shared::engine::CommitError::Permanent(_))), "{results:?}");
    assert_eq!(results[1], Ok(Outcome::Applied));
    assert!(
        matches!(&results[2], Err(shared::engine::CommitError::Transient(m)) if m.contains("earlier transaction")),
        "{results:?}"
    );
    assert_eq!(results[3], Ok(Outcome::Applied));
    assert!(state_item(&stack, "TEST#LOG", "LOG").await?.is_none(), "nothing applied on LOG");
    Ok(())
}
