//! `cargo xtask demo`: the whole pipeline locally, start to finish.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{elapsed, header};
use crate::driver::{Driver, InvocationReport};
use crate::report::{money, table};
use crate::scenario::{self, FIFO_QUEUE, STANDARD_QUEUE};
use crate::stack::Stack;

/// Bound on each drain: the demo's inputs settle in a few seconds; a retried
/// message needs `maxReceiveCount` visibility timeouts at worst.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs the demo on the given DynamoDB engine; fails when the invariant
/// does not hold.
pub async fn run(engine: crate::dynamodb_local::Engine) -> Result<()> {
    let start = Instant::now();
    header("building the functions");
    super::build_stack_functions().await?;
    header(&format!(
        "starting the local stack (moto; DynamoDB on {}) and creating the resources of infra/stack.json",
        engine.name()
    ));
    let mut stack = Stack::start_with(engine).await?;
    println!("  moto (S3, SQS) on {}", stack.endpoint);
    println!("  {} (DynamoDB, DynamoDB Streams) on {} ({})", engine.name(), stack.dynamodb_endpoint, elapsed(start));
    header("starting `cargo lambda watch`");
    let lambda_port = stack.start_lambda().await?.port();
    println!("  functions on http://127.0.0.1:{lambda_port} ({})", elapsed(start));
    let result = scenario_run(&stack, start).await;
    if result.is_err() {
        // The run directory reports its path when it is dropped.
        stack.keep_logs();
    }
    result
}

async fn scenario_run(stack: &Stack, start: Instant) -> Result<()> {
    let lambda = stack.lambda().context("lambda just started")?;

    header("uploading events/data/ to the bucket and sending order events to the queues");
    let objects = stack.upload_sample_data().await?;
    for key in &objects {
        println!("  s3://{}/{key}", stack.spec.bucket.name);
    }
    let mut sent = scenario::send_lines(stack, STANDARD_QUEUE, scenario::ORDERS_QUEUE).await?;
    println!("  {sent} messages -> {} (xtask/demo/orders-queue.ndjson)", stack.spec.queue(STANDARD_QUEUE)?.name);
    let fifo = scenario::send_lines(stack, FIFO_QUEUE, scenario::ORDERS_FIFO).await?;
    println!("  {fifo} messages -> {} (xtask/demo/orders-fifo.ndjson)", stack.spec.queue(FIFO_QUEUE)?.name);
    sent += fifo;

    let mut driver = Driver::new(stack, lambda)?;
    let mut progress = |r: &InvocationReport| println!("  {}", describe(r));
    header("draining: the event source mappings invoke the functions");
    driver.drain(DRAIN_TIMEOUT, &mut progress).await?;

    header("sending late events: a re-delivered duplicate, an older event, a cancellation");
    let late = scenario::send_lines(stack, STANDARD_QUEUE, scenario::ORDERS_LATE).await?;
    println!("  {late} messages -> {} (xtask/demo/orders-late.ndjson)", stack.spec.queue(STANDARD_QUEUE)?.name);
    sent += late;
    driver.drain(DRAIN_TIMEOUT, &mut progress).await?;
    println!("  drained ({})", elapsed(start));

    let verdict = scenario::verdict(stack, &lambda.log_text(), sent, &objects).await?;
    let snap = &verdict.snapshot;
    header("orders");
    print!("{}", snap.orders_table());
    header("customer totals");
    print!("{}", snap.totals_table());
    header("objects");
    print!("{}", snap.manifests_table());
    header("quarantined records");
    print!("{}", snap.quarantine_table());
    header("accounting (from the functions' invocation summaries)");
    print!(
        "{}",
        table(
            &["function", "applied", "stale", "duplicate", "quarantined", "ignored", "retried"],
            verdict
                .accounting
                .iter()
                .map(|(f, a)| {
                    vec![
                        f.clone(),
                        a.applied.to_string(),
                        a.stale.to_string(),
                        a.duplicate.to_string(),
                        a.quarantined.to_string(),
                        a.ignored.to_string(),
                        a.failed.to_string(),
                    ]
                })
                .collect()
        )
    );
    println!(
        "  dead-letter queues: {}; failed stream batches: {}",
        verdict.dead_letters.iter().map(|(q, n)| format!("{q} {n}")).collect::<Vec<_>>().join(", "),
        verdict.stream_failures
    );
    header("invariant: customer totals == sum of each customer's non-CANCELLED orders");
    let expected = snap.expected_totals();
    let stored: std::collections::BTreeMap<&str, &crate::report::TotalsRow> =
        snap.totals.iter().map(|t| (t.customer_id.as_str(), t)).collect();
    let describe_totals = |t: Option<&crate::report::TotalsRow>| {
        t.map_or_else(|| "-".to_owned(), |t| format!("{} order(s), {}", t.order_count, money(&t.totals)))
    };
    print!(
        "{}",
        table(
            &["customer", "stored totals", "from the orders"],
            expected
                .iter()
                .map(|(customer, row)| {
                    vec![
                        customer.clone(),
                        describe_totals(stored.get(customer.as_str()).copied()),
                        describe_totals(Some(row)),
                    ]
                })
                .collect()
        )
    );
    println!("  finished in {}", elapsed(start));
    if verdict.holds() {
        println!("\nINVARIANT HOLDS: every record is accounted for and the totals match the orders.");
        Ok(())
    } else {
        for p in &verdict.problems {
            println!("  VIOLATION: {p}");
        }
        bail!("the invariant does not hold ({} problem(s))", verdict.problems.len())
    }
}

/// One progress line.
pub(crate) fn describe(r: &InvocationReport) -> String {
    let mut line = format!("{}: {} record(s)", r.mapping, r.records);
    if let Some(e) = &r.function_error {
        line.push_str(&format!(", invocation failed ({e}); the batch will be retried"));
    } else if r.item_failures > 0 {
        line.push_str(&format!(", {} reported for retry", r.item_failures));
    } else {
        line.push_str(", ok");
    }
    if r.sent_to_on_failure {
        line.push_str("; retries exhausted, batch sent to the on-failure queue");
    }
    line
}
