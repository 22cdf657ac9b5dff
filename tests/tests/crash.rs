//! A function process killed with SIGKILL in the middle of a batch, through
//! the real binaries: the fault proxy holds back the answer to the batch's
//! first `TransactWriteItems` (so the emulator has committed it and the
//! function has not heard), the test kills the process at that moment, the
//! invocation fails with `Runtime.ExitError` as it does on Lambda, the mapping
//! redelivers to a fresh process (see `xtask::lambda`), and the final state is
//! that of one clean pass: every effect exactly once.

use std::time::Duration;

use anyhow::{Context, Result};
use integration_tests::fault_proxy::{Fault, FaultProxy, Plan, Target};
use integration_tests::{
    DRAIN_TIMEOUT, dec, depth, n, order_item, put_state_item, s, state_item, state_items_with_prefix, totals,
};
use serde_json::Value;
use xtask::driver::InvocationReport;
use xtask::lambda::RUNTIME_EXIT_ERROR;
use xtask::stack::dlq_key;
use xtask::{Driver, Stack};

/// Longer than anything the test waits for: the held answer is never
/// delivered to the killed process.
const HOLD: Duration = Duration::from_secs(300);

/// A stack whose functions reach DynamoDB through a proxy that holds back
/// the answer to their first `TransactWriteItems`.
async fn stack_holding_the_first_commit() -> Result<(Stack, FaultProxy)> {
    stack_holding_the_first("TransactWriteItems").await
}

/// [`stack_holding_the_first_commit`] for a commit by `operation`
/// (sqs-consumer's guarded orders commit with `BatchExecuteStatement`).
async fn stack_holding_the_first(operation: &'static str) -> Result<(Stack, FaultProxy)> {
    let mut stack = Stack::start().await?;
    let proxy = FaultProxy::start(
        &stack.dynamodb_endpoint,
        Target::DynamoDbOperation(operation),
        Plan::Schedule(vec![(0, Fault::Slow(HOLD))]),
    )
    .await?;
    stack.function_dynamodb_endpoint = Some(proxy.endpoint());
    stack.start_lambda().await?;
    Ok((stack, proxy))
}

/// Drains the pipeline while killing `function` once its first commit is in
/// at the emulator and its answer held. Returns every invocation.
async fn drain_killing(stack: &Stack, proxy: &FaultProxy, function: &str) -> Result<Vec<InvocationReport>> {
    let lambda = stack.lambda().context("functions started")?;
    let mut driver = Driver::new(stack, lambda)?;
    let mut reports = Vec::new();
    let kill = async {
        tokio::time::timeout(DRAIN_TIMEOUT, proxy.wait_for(|s| s.slowed == 1))
            .await
            .context("the function's first commit never reached the emulator")?;
        stack.kill_function(function).await
    };
    let mut record = |r: &InvocationReport| {
        println!("invoked {r:?}");
        reports.push(r.clone());
    };
    let (drained, killed) = tokio::join!(driver.drain(DRAIN_TIMEOUT, &mut record), kill);
    killed?;
    drained?;
    let crashed: Vec<&InvocationReport> = reports
        .iter()
        .filter(|r| r.function_error.as_deref().is_some_and(|e| e.starts_with(RUNTIME_EXIT_ERROR)))
        .collect();
    assert_eq!(crashed.len(), 1, "exactly the killed invocation failed: {reports:#?}");
    assert!(crashed[0].mapping.starts_with(function), "{crashed:?}");
    Ok(reports)
}

/// The `invocation summary` lines `function` logged.
fn summaries(stack: &Stack, function: &str) -> Vec<Value> {
    let log = stack.lambda().map(|l| l.log_text()).unwrap_or_default();
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "invocation summary" && v["function_name"] == function)
        .collect()
}

fn order_event(i: usize) -> String {
    serde_json::json!({
        "eventId": format!("e-{i}"), "orderId": format!("o-{i}"), "customerId": "c-crash",
        "status": "PAID", "amount": format!("{i}.50"), "currency": "EUR", "occurredAt": "2026-11-29T10:00:00Z",
    })
    .to_string()
}

/// Every order `o-0..o-{count}` applied once: its own event, version 1.
async fn assert_orders_applied_once(stack: &Stack, count: usize) -> Result<()> {
    for i in 0..count {
        let order =
            state_item(stack, &format!("ORDER#o-{i}"), "ORDER").await?.with_context(|| format!("order o-{i}"))?;
        assert_eq!(s(&order, "lastEventId")?, format!("e-{i}"));
        assert_eq!(n(&order, "version")?, dec("1"), "o-{i} written once: {order:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_consumer_killed_after_its_commit_is_redelivered_to_the_same_state() -> Result<()> {
    let (stack, proxy) = stack_holding_the_first("BatchExecuteStatement").await?;
    for i in 0..10 {
        stack.send("orders", &order_event(i), None).await?;
    }
    drain_killing(&stack, &proxy, "sqs-consumer").await?;

    assert_orders_applied_once(&stack, 10).await?;
    // The fresh process found every event of the redelivered batch already
    // applied by the killed one's transaction.
    let after = summaries(&stack, "sqs-consumer");
    assert!(!after.is_empty(), "the restarted process logged its invocations");
    assert_eq!(after[0]["cold_start"], true, "a fresh execution environment: {after:?}");
    let sum = |field: &str| after.iter().map(|v| v[field].as_u64().unwrap_or(0)).sum::<u64>();
    assert_eq!((sum("applied"), sum("duplicate")), (0, 10), "{after:?}");
    // Customer totals count each order once.
    let t = state_item(&stack, "CUSTOMER#c-crash", "TOTALS").await?.context("totals")?;
    assert_eq!(n(&t, "orderCount")?, dec("10"));
    assert_eq!(totals(&t)?.get("EUR"), Some(&dec("50")), "0.50 + 1.50 + ... + 9.50");
    assert_eq!(depth(&stack, "orders").await?, 0);
    assert_eq!(depth(&stack, &dlq_key("orders")).await?, 0);
    assert!(state_items_with_prefix(&stack, "QUARANTINE#").await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_ingest_killed_after_its_first_chunk_resumes_from_the_checkpoint() -> Result<()> {
    let (stack, proxy) = stack_holding_the_first_commit().await?;
    // 200 lines: three chunks of up to 99 orders, one order per line.
    let body: String = (0..200).map(|i| format!("{}\n", order_event(i))).collect();
    let key = "incoming/crash.ndjson";
    stack.put_object(key, body.into_bytes()).await?;
    drain_killing(&stack, &proxy, "s3-ingest").await?;

    assert_orders_applied_once(&stack, 200).await?;
    let manifests = state_items_with_prefix(&stack, "OBJECT#").await?;
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    let m = &manifests[0];
    assert_eq!(s(m, "status")?, "COMPLETED");
    assert_eq!(n(m, "lines")?, dec("200"));
    assert_eq!(n(m, "accepted")?, dec("200"));
    // The fresh process resumed after the committed chunk instead of reading
    // it again: a restart from the top would count its lines as duplicates.
    assert_eq!(n(m, "duplicates")?, dec("0"), "{m:?}");
    assert_eq!(n(m, "rejected")?, dec("0"));
    let after = summaries(&stack, "s3-ingest");
    assert_eq!(after.first().map(|v| &v["cold_start"]), Some(&Value::Bool(true)), "{after:?}");
    assert_eq!(depth(&stack, "ingest").await?, 0);
    assert_eq!(depth(&stack, &dlq_key("ingest")).await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_aggregator_killed_after_its_first_chunk_is_retried_to_the_same_totals() -> Result<()> {
    let (stack, proxy) = stack_holding_the_first_commit().await?;
    // 150 stream records: a batch of 100 commits in chunks of 97 markers and
    // the 3 customers; the kill comes after the first chunk.
    for i in 0..150 {
        put_state_item(
            &stack,
            order_item(&format!("o-{i}"), &format!("c-{}", i % 3), "PAID", &format!("{i}.50"), "EUR"),
        )
        .await?;
    }
    let reports = drain_killing(&stack, &proxy, "stream-aggregator").await?;

    for c in 0..3 {
        let t = state_item(&stack, &format!("CUSTOMER#c-{c}"), "TOTALS").await?.context("totals")?;
        let mine: Vec<usize> = (0..150).filter(|i| i % 3 == c).collect();
        let expected: rust_decimal::Decimal = mine.iter().map(|i| dec(&format!("{i}.50"))).sum();
        assert_eq!(n(&t, "orderCount")?, dec(&mine.len().to_string()), "c-{c}");
        assert_eq!(totals(&t)?.get("EUR"), Some(&expected.normalize()), "c-{c}: each record counted once");
    }
    let after = summaries(&stack, "stream-aggregator");
    let sum = |field: &str| after.iter().map(|v| v[field].as_u64().unwrap_or(0)).sum::<u64>();
    // The killed batch's first chunk was committed: on the retry its records
    // are duplicates, the rest applied once.
    assert_eq!((sum("duplicate"), sum("applied")), (97, 150 - 97), "{after:?}");
    assert!(reports.iter().all(|r| !r.sent_to_on_failure), "{reports:?}");
    assert_eq!(depth(&stack, "streamFailures").await?, 0);
    Ok(())
}
