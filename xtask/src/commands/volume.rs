//! `cargo xtask volume`: the data volumes users have, through the local stack
//! `cargo xtask stack` runs (the same [`Stack`], functions under `cargo lambda
//! watch`, and [`Driver`]): one NDJSON object of `--lines` orders uploaded
//! under `incoming/` (S3 notification, ingest queue, s3-ingest, the state
//! table's stream, stream-aggregator), then `--messages` order events on the
//! orders queue (sqs-consumer). Reports each phase's time and each
//! emulator's memory (`VmRSS` as it goes, `VmHWM` at the end, from
//! `/proc/<pid>/status`), then checks the result: every line and message
//! applied once, the object's manifest complete, DESIGN.md's invariant.
//!
//! The messages go out in waves of [`WAVE`], each drained before the next:
//! moto's SQS receive scans the whole queue per message, so its cost grows
//! with the queue's depth.
//!
//! `cargo xtask volume --lines 3000 --messages 0` is issue 17's 3,000-line
//! upload.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

use super::header;
use crate::driver::{Driver, InvocationReport};
use crate::dynamodb_local::Engine;
use crate::process::{Memory, largest_descendant_memory};
use crate::report::{StateSnapshot, table};
use crate::stack::{Stack, dlq_key};

pub const DEFAULT_LINES: u64 = 100_000;
pub const DEFAULT_MESSAGES: u64 = 10_000;
/// Bound on each phase's drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3 * 3600);
/// Customers the orders are spread over (so the aggregator's deltas combine
/// within a batch, as real traffic's do).
const CUSTOMERS: u64 = 100;
/// How often the drain prints progress (with the emulators' memory).
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// SendMessageBatch takes at most 10 messages.
const SQS_BATCH: usize = 10;
/// The queue the messages go to (stack.json key).
const QUEUE: &str = "orders";
/// Messages sent before each drain (see `run`).
const WAVE: u64 = 500;

/// One order event; `source` keeps the object's orders apart from the
/// queue's.
fn order_event(source: &str, i: u64) -> String {
    serde_json::json!({
        "eventId": format!("e-{source}{i}"),
        "orderId": format!("o-{source}{i}"),
        "customerId": format!("c-{}", i % CUSTOMERS),
        "status": if i % 10 == 9 { "CANCELLED" } else { "PAID" },
        "amount": format!("{}.{:02}", i % 1000, i % 100),
        "currency": if i.is_multiple_of(2) { "EUR" } else { "USD" },
        "occurredAt": "2026-11-29T10:00:00Z",
    })
    .to_string()
}

/// A phase's figures.
struct Phase {
    name: String,
    records: u64,
    seconds: f64,
    invocations: u64,
    memory: Vec<(&'static str, Option<Memory>)>,
}

fn memory_now(stack: &Stack) -> Vec<(&'static str, Option<Memory>)> {
    stack.emulator_pids().into_iter().map(|(name, pid)| (name, largest_descendant_memory(pid))).collect()
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

fn describe_memory(memory: &[(&'static str, Option<Memory>)]) -> String {
    memory
        .iter()
        .map(|(name, m)| match m {
            Some(m) => format!("{name} {} (peak {})", mib(m.rss_kib), mib(m.peak_kib)),
            None => format!("{name} ?"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Drains with a progress line (and the emulators' memory) every
/// [`PROGRESS_EVERY`]; returns the invocations made.
async fn drain(stack: &Stack, driver: &mut Driver<'_>) -> Result<u64> {
    let start = Instant::now();
    let mut last = Instant::now();
    let mut invocations = 0u64;
    let mut records = 0u64;
    let mut progress = |r: &InvocationReport| {
        invocations += 1;
        records += r.records as u64;
        if r.function_error.is_some() || r.item_failures > 0 {
            println!("  {}", super::demo::describe(r));
        }
        if last.elapsed() >= PROGRESS_EVERY {
            last = Instant::now();
            println!(
                "  {:>6.0}s: {invocations} invocations, {records} records; {}",
                start.elapsed().as_secs_f64(),
                describe_memory(&memory_now(stack))
            );
        }
    };
    driver.drain(DRAIN_TIMEOUT, &mut progress).await?;
    Ok(invocations)
}

pub async fn run(engine: Engine, lines: u64, messages: u64) -> Result<()> {
    let started = Instant::now();
    header("building the functions");
    let spec = crate::spec::StackSpec::load()?;
    let functions: Vec<String> = spec.function_names().map(str::to_owned).collect();
    let root = crate::stack::workspace_root();
    tokio::task::spawn_blocking(move || crate::lambda::build_functions_visibly(&root, &functions))
        .await
        .context("build task panicked")??;
    header(&format!("starting the local stack (moto; DynamoDB on {})", engine.name()));
    let mut stack = Stack::start_with(engine).await?;
    stack.start_lambda().await?;
    let stack = &stack;
    let lambda = stack.lambda().context("lambda just started")?;
    println!("  moto (S3, SQS) {}; {} (DynamoDB) {}", stack.endpoint, engine.name(), stack.dynamodb_endpoint);
    println!("  memory with the stack up: {}", describe_memory(&memory_now(stack)));
    let mut driver = Driver::new(stack, lambda)?;
    let mut phases = Vec::new();

    let prefix = &stack.spec.bucket.notifications.first().context("stack.json declares no notification")?.prefix;
    let key = format!("{prefix}volume-{lines}.ndjson");
    if lines > 0 {
        let body: String = (0..lines).map(|i| order_event("v", i) + "\n").collect();
        header(&format!("uploading s3://{}/{key}: {lines} lines, {} KiB", stack.spec.bucket.name, body.len() / 1024));
        let phase_start = Instant::now();
        stack.put_object(&key, body.into_bytes()).await?;
        let invocations = drain(stack, &mut driver).await?;
        phases.push(Phase {
            name: format!("object of {lines} lines: ingest + stream aggregation"),
            records: lines,
            seconds: phase_start.elapsed().as_secs_f64(),
            invocations,
            memory: memory_now(stack),
        });
        println!("  drained in {:.1}s", phase_start.elapsed().as_secs_f64());
    }
    if messages > 0 {
        header(&format!("sending {messages} order events to {}", stack.spec.queue(QUEUE)?.name));
        let phase_start = Instant::now();
        // In waves, as a producer that keeps pace with its consumer: moto's
        // SQS scans the whole queue for every message it receives (and for
        // every send), so 10,000 messages waiting at once would make each
        // receive take seconds: an emulator artefact, not the pipeline's.
        let mut invocations = 0;
        let mut sent = 0;
        while sent < messages {
            let wave = (messages - sent).min(WAVE);
            send_messages(stack, sent, wave).await?;
            sent += wave;
            invocations += drain(stack, &mut driver).await?;
            println!(
                "  {sent} sent and drained ({:.1}s); {}",
                phase_start.elapsed().as_secs_f64(),
                describe_memory(&memory_now(stack))
            );
        }
        phases.push(Phase {
            name: format!("{messages} queue messages: sqs-consumer + stream aggregation"),
            records: messages,
            seconds: phase_start.elapsed().as_secs_f64(),
            invocations,
            memory: memory_now(stack),
        });
        println!("  drained in {:.1}s", phase_start.elapsed().as_secs_f64());
    }

    header("results");
    let mut rows = Vec::new();
    for p in &phases {
        let mut row = vec![
            p.name.clone(),
            format!("{:.1}", p.seconds),
            format!("{:.0}", p.records as f64 / p.seconds),
            p.invocations.to_string(),
        ];
        row.extend(p.memory.iter().map(|(_, m)| m.map_or("?".into(), |m| mib(m.rss_kib))));
        rows.push(row);
    }
    let mut headings = vec!["phase", "seconds", "records/s", "invocations"];
    let names: Vec<String> = memory_now(stack).iter().map(|(n, _)| format!("{n} RSS after")).collect();
    headings.extend(names.iter().map(String::as_str));
    print!("{}", table(&headings, rows));
    let peaks = memory_now(stack);
    for (name, m) in &peaks {
        match m {
            Some(m) => println!("  {name} (pid {}): peak resident memory (VmHWM) {}", m.pid, mib(m.peak_kib)),
            None => println!("  {name}: memory unknown (process gone?)"),
        }
    }

    header("checking the result");
    let problems = check(stack, lines, messages, &key).await?;
    println!("  total {:.1}s", started.elapsed().as_secs_f64());
    if problems.is_empty() {
        println!("\nVOLUME RUN OK: {lines} lines and {messages} messages applied once each; the invariant holds.");
        Ok(())
    } else {
        for p in &problems {
            println!("  PROBLEM: {p}");
        }
        stack.keep_logs();
        bail!("the volume run left {} problem(s)", problems.len())
    }
}

/// Sends the order events `first..first + count`.
async fn send_messages(stack: &Stack, first: u64, count: u64) -> Result<()> {
    let url = stack.queue_url(QUEUE)?.to_owned();
    let bodies: Vec<String> = (first..first + count).map(|i| order_event("q", i)).collect();
    for chunk in bodies.chunks(SQS_BATCH) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, body)| {
                SendMessageBatchRequestEntry::builder().id(i.to_string()).message_body(body).build().context("entry")
            })
            .collect::<Result<Vec<_>>>()?;
        let out = stack
            .sqs
            .send_message_batch()
            .queue_url(&url)
            .set_entries(Some(entries))
            .send()
            .await
            .context("sending order events")?;
        if !out.failed().is_empty() {
            bail!("SendMessageBatch failed for {:?}", out.failed());
        }
    }
    Ok(())
}

/// What is wrong with the state after the run (nothing, when it worked).
async fn check(stack: &Stack, lines: u64, messages: u64, key: &str) -> Result<Vec<String>> {
    let snapshot = StateSnapshot::read(stack).await?;
    let mut problems = snapshot.invariant_violations();
    let count = |prefix: &str| snapshot.orders.iter().filter(|o| o.order_id.starts_with(prefix)).count() as u64;
    if count("o-v") != lines {
        problems.push(format!("{} orders from the object, expected {lines}", count("o-v")));
    }
    if count("o-q") != messages {
        problems.push(format!("{} orders from the queue, expected {messages}", count("o-q")));
    }
    if let Some(o) = snapshot.orders.iter().find(|o| o.version != 1) {
        problems.push(format!("order {} applied {} times", o.order_id, o.version));
    }
    if lines > 0 {
        let object = format!("{}/{key}", stack.spec.bucket.name);
        match snapshot.manifests.iter().find(|m| m.object == object) {
            Some(m) if m.status == "COMPLETED" && m.lines == lines && m.accepted == lines => {}
            Some(m) => problems.push(format!("manifest of {object}: {m:?}")),
            None => problems.push(format!("no manifest of {object}")),
        }
    }
    if !snapshot.quarantine.is_empty() {
        problems.push(format!("{} records quarantined", snapshot.quarantine.len()));
    }
    let customers: u64 = snapshot.totals.iter().map(|t| t.order_count).sum();
    let live = snapshot.orders.iter().filter(|o| o.status != "CANCELLED").count() as u64;
    if customers != live {
        problems.push(format!("customer totals count {customers} orders, {live} are not cancelled"));
    }
    for queue in ["ingest", QUEUE] {
        let dead = stack.queue_depth(&dlq_key(queue)).await?;
        if dead > 0 {
            problems.push(format!("{dead} message(s) in the {queue} dead-letter queue"));
        }
    }
    Ok(problems)
}
