//! `cargo xtask demo`: the whole pipeline locally, start to finish.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rust_decimal::Decimal;

use super::{elapsed, header};
use crate::driver::{Driver, InvocationReport};
use crate::report::{Accounting, StateSnapshot, TotalsRow, money, table};
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
    header("serving the declared functions (the local Lambda)");
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
    print_state(snap, "");
    header("accounting (from the functions' invocation summaries)");
    print!("{}", accounting_table("function", &verdict.accounting));
    println!(
        "  dead-letter queues: {}; failed stream batches: {}",
        verdict.dead_letters.iter().map(|(q, n)| format!("{q} {n}")).collect::<Vec<_>>().join(", "),
        verdict.stream_failures
    );
    let fixture = expected_totals_problems(snap)?;
    header("invariant: customer totals == sum of each customer's non-CANCELLED orders");
    print!("{}", invariant_table(snap));
    println!("  finished in {}", elapsed(start));
    report_fixture(&fixture);
    if verdict.holds() && fixture.is_empty() {
        println!("\nINVARIANT HOLDS: every record is accounted for and the totals match the orders.");
        Ok(())
    } else {
        for p in &verdict.problems {
            println!("  VIOLATION: {p}");
        }
        bail!("the invariant does not hold ({} problem(s))", verdict.problems.len())
    }
}

/// The state's four tables, each under its header (`where_`: after the name).
fn print_state(snap: &StateSnapshot, where_: &str) {
    header(&format!("orders{where_}"));
    print!("{}", snap.orders_table());
    header(&format!("customer totals{where_}"));
    print!("{}", snap.totals_table());
    header(&format!("objects{where_}"));
    print!("{}", snap.manifests_table());
    header(&format!("quarantined records{where_}"));
    print!("{}", snap.quarantine_table());
}

/// The logged outcomes per function (or queue).
fn accounting_table(by: &str, accounting: &BTreeMap<String, Accounting>) -> String {
    table(
        &[by, "applied", "stale", "duplicate", "quarantined", "ignored", "retried"],
        accounting
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
            .collect(),
    )
}

/// Each customer's stored totals beside the ones its orders give.
fn invariant_table(snap: &StateSnapshot) -> String {
    let expected = snap.expected_totals();
    let stored: BTreeMap<&str, &TotalsRow> = snap.totals.iter().map(|t| (t.customer_id.as_str(), t)).collect();
    let describe_totals = |t: Option<&TotalsRow>| {
        t.map_or_else(|| "-".to_owned(), |t| format!("{} order(s), {}", t.order_count, money(&t.totals)))
    };
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
            .collect(),
    )
}

/// The totals the demo's inputs give by DESIGN's rules, whatever the
/// platform: `xtask/demo/expected-totals.json`. Both demos end with them.
const EXPECTED_TOTALS: &str = include_str!("../../demo/expected-totals.json");

/// Where the stored totals differ from [`EXPECTED_TOTALS`] (empty: they match).
pub(crate) fn expected_totals_problems(snap: &StateSnapshot) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Expected {
        order_count: u64,
        totals: BTreeMap<String, Decimal>,
    }
    let expected: BTreeMap<String, Expected> =
        serde_json::from_str(EXPECTED_TOTALS).context("reading xtask/demo/expected-totals.json")?;
    let normal = |m: &BTreeMap<String, Decimal>| -> BTreeMap<String, Decimal> {
        m.iter().filter(|(_, v)| !v.is_zero()).map(|(c, v)| (c.clone(), v.normalize())).collect()
    };
    let stored: BTreeMap<&str, &TotalsRow> = snap.totals.iter().map(|t| (t.customer_id.as_str(), t)).collect();
    let mut problems = Vec::new();
    for (customer, want) in &expected {
        match stored.get(customer.as_str()) {
            Some(got) if got.order_count == want.order_count && normal(&got.totals) == normal(&want.totals) => {}
            Some(got) => problems.push(format!(
                "customer {customer}: {} order(s), {}; the demo's inputs give {} order(s), {}",
                got.order_count,
                money(&got.totals),
                want.order_count,
                money(&want.totals)
            )),
            None => problems.push(format!("customer {customer}: no totals stored")),
        }
    }
    for customer in stored.keys().filter(|c| !expected.contains_key(**c)) {
        problems.push(format!("customer {customer}: totals stored, none expected from the demo's inputs"));
    }
    Ok(problems)
}

fn report_fixture(problems: &[String]) {
    if problems.is_empty() {
        println!("  the totals are the ones the demo's inputs give (xtask/demo/expected-totals.json)");
    }
    for p in problems {
        println!("  VIOLATION: {p}");
    }
}

/// `cargo xtask demo --cloudflare`: the same inputs through the Worker under
/// workerd, the same tables, invariant and totals.
pub fn run_cloudflare() -> Result<()> {
    let start = Instant::now();
    let root = crate::stack::workspace_root();
    header("installing the Cloudflare tools where missing (wasm32 std, wasm-bindgen, Node 22, wrangler/miniflare)");
    let tools = crate::cloudflare::Tools::ensure(&root)?;
    header("building the Worker (cargo build --target wasm32-unknown-unknown, wasm-bindgen)");
    let size = tools.build()?;
    println!("  {}: {size} bytes ({})", crate::cloudflare::wasm_module(&root)?.display(), elapsed(start));
    header(
        "starting the Worker under workerd (miniflare, infra/cloudflare/wrangler.jsonc), loading events/data/ into R2 \
         with the notifications R2 would send, sending the order events, draining",
    );
    let out = tools.node_output(&["local/demo.mjs"])?;
    let run: crate::cloudflare::DemoRun =
        serde_json::from_str(out.trim()).context("reading local/demo.mjs's result")?;
    let snap = run.snapshot()?;
    print_state(&snap, " (D1)");
    header("accounting (from the Worker's invocation summaries)");
    print!("{}", accounting_table("queue", &run.summaries));
    let mut problems = snap.invariant_violations();
    let orders = run.summaries.get("orders-events").copied().unwrap_or_default();
    let settled = orders.applied + orders.stale + orders.duplicate + orders.quarantined;
    if settled != run.sent {
        problems.push(format!("the Worker accounted for {settled} order message(s), {} were sent", run.sent));
    }
    for object in &run.objects {
        let done = snap.manifests.iter().find(|m| m.object.ends_with(&format!("/{object}")));
        match done {
            Some(m) if m.status == "COMPLETED" && m.lines == m.accepted + m.rejected + m.stale + m.duplicates => {}
            Some(m) => problems
                .push(format!("object {object}: manifest {} with counters that do not cover its lines", m.status)),
            None => problems.push(format!("object {object}: no manifest")),
        }
    }
    let fixture = expected_totals_problems(&snap)?;
    header("invariant: customer totals == sum of each customer's non-CANCELLED orders");
    print!("{}", invariant_table(&snap));
    println!(
        "  {} order message(s) and {} object(s) in {:.1}s under workerd; {} idempotency marker(s) in D1",
        run.sent,
        run.objects.len(),
        run.elapsed_ms as f64 / 1000.0,
        run.markers
    );
    println!("  finished in {}", elapsed(start));
    report_fixture(&fixture);
    for p in &problems {
        println!("  VIOLATION: {p}");
    }
    if problems.is_empty() && fixture.is_empty() {
        println!("\nINVARIANT HOLDS: every record is accounted for and the totals match the orders.");
        Ok(())
    } else {
        bail!("the invariant does not hold ({} problem(s))", problems.len() + fixture.len())
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
