//! `cargo xtask volume`: the data volumes users have, through the local stack
//! `cargo xtask stack` runs (the same [`Stack`], its declared functions
//! served by the local Lambda, and [`Driver`]): one NDJSON object of `--lines` orders uploaded
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

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result, bail};
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use rust_decimal::Decimal;

use super::header;
use crate::driver::{Driver, InvocationReport};
use crate::dynamodb_local::Engine;
use crate::process::{Memory, largest_descendant_memory};
use crate::report::table;
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
/// BatchGetItem takes at most 100 keys.
const BATCH_GET: usize = 100;
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
    super::build_stack_functions().await?;
    header(&format!("starting the local stack (moto; DynamoDB on {})", engine.name()));
    let mut stack = Stack::start_with(engine).await?;
    stack.start_lambda().await?;
    let result = measure(&stack, lines, messages, started).await;
    if result.is_err() {
        // The run directory reports its path when it is dropped.
        stack.keep_logs();
    }
    result
}

async fn measure(stack: &Stack, lines: u64, messages: u64, started: Instant) -> Result<()> {
    let engine = stack.engine;
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

/// What is wrong with the state after the run (nothing, when it worked),
/// read item by item (`BatchGetItem`, `GetItem`, `Query`) rather than by a
/// scan of the whole table, and checked against what was sent: every order
/// present and applied once, each customer's totals those of its
/// non-cancelled orders (DESIGN.md's invariant), the manifest complete,
/// nothing quarantined or dead-lettered.
async fn check(stack: &Stack, lines: u64, messages: u64, key: &str) -> Result<Vec<String>> {
    let table = stack.spec.table("state")?.name.clone();
    let mut problems = Vec::new();
    let events = (0..lines).map(|i| ("v", i)).chain((0..messages).map(|i| ("q", i)));
    let mut expected: BTreeMap<String, (u64, BTreeMap<String, Decimal>)> = BTreeMap::new();
    let mut order_ids = Vec::new();
    for (source, i) in events {
        let event: serde_json::Value = serde_json::from_str(&order_event(source, i))?;
        let field = |name: &str| event[name].as_str().unwrap_or_default().to_owned();
        order_ids.push(field("orderId"));
        if field("status") != "CANCELLED" {
            let entry = expected.entry(field("customerId")).or_default();
            entry.0 += 1;
            *entry.1.entry(field("currency")).or_default() += field("amount").parse::<Decimal>()?;
        }
    }

    let mut found = 0u64;
    for chunk in order_ids.chunks(BATCH_GET) {
        let mut keys: Vec<HashMap<String, AttributeValue>> =
            chunk.iter().map(|id| item_key(&format!("ORDER#{id}"), "ORDER")).collect();
        while !keys.is_empty() {
            let request = KeysAndAttributes::builder()
                .set_keys(Some(keys))
                .projection_expression("orderId, version")
                .consistent_read(true)
                .build()
                .context("BatchGetItem keys")?;
            let out = stack
                .dynamodb
                .batch_get_item()
                .request_items(&table, request)
                .send()
                .await
                .context("reading the orders back")?;
            for item in out.responses().and_then(|r| r.get(&table)).into_iter().flatten() {
                found += 1;
                if number(item, "version") != Some(Decimal::ONE) {
                    problems.push(format!("order {:?} applied more than once: {item:?}", item.get("orderId")));
                }
            }
            keys = out.unprocessed_keys().and_then(|u| u.get(&table)).map(|k| k.keys().to_vec()).unwrap_or_default();
        }
    }
    if found != lines + messages {
        problems.push(format!("{found} orders in the table, {} sent", lines + messages));
    }

    for (customer, (count, sums)) in &expected {
        let item = stack
            .dynamodb
            .get_item()
            .table_name(&table)
            .set_key(Some(item_key(&format!("CUSTOMER#{customer}"), "TOTALS")))
            .consistent_read(true)
            .send()
            .await
            .context("reading customer totals")?
            .item()
            .cloned()
            .unwrap_or_default();
        let stored_sums: BTreeMap<String, Decimal> = match item.get("totals") {
            Some(AttributeValue::M(m)) => m
                .iter()
                .filter_map(|(c, v)| Some((c.clone(), v.as_n().ok()?.parse::<Decimal>().ok()?.normalize())))
                .filter(|(_, v)| !v.is_zero())
                .collect(),
            _ => BTreeMap::new(),
        };
        let want: BTreeMap<String, Decimal> = sums.iter().map(|(c, v)| (c.clone(), v.normalize())).collect();
        let stored_count = number(&item, "orderCount").unwrap_or_default();
        if stored_count != Decimal::from(*count) || stored_sums != want {
            problems.push(format!(
                "customer {customer}: stored {stored_count} order(s) {stored_sums:?}, the orders sent give {count} {want:?}"
            ));
        }
    }

    let bucket = &stack.spec.bucket.name;
    if lines > 0 {
        let manifests = query(stack, &table, &format!("OBJECT#{bucket}/{key}")).await?;
        let complete = |m: &HashMap<String, AttributeValue>| {
            m.get("status").and_then(|s| s.as_s().ok()).map(String::as_str) == Some("COMPLETED")
                && number(m, "lines") == Some(Decimal::from(lines))
                && number(m, "accepted") == Some(Decimal::from(lines))
        };
        if manifests.len() != 1 || !manifests.iter().all(complete) {
            problems.push(format!("manifest of {bucket}/{key}: {manifests:?}"));
        }
    }
    let queue_name = &stack.spec.queue(QUEUE)?.name;
    for source in [format!("s3/{bucket}/{key}"), format!("sqs/{queue_name}")] {
        let quarantined = query(stack, &table, &format!("QUARANTINE#{source}")).await?;
        if !quarantined.is_empty() {
            problems.push(format!("{} record(s) of {source} quarantined", quarantined.len()));
        }
    }
    for queue in ["ingest", QUEUE] {
        let dead = stack.queue_depth(&dlq_key(queue)).await?;
        if dead > 0 {
            problems.push(format!("{dead} message(s) in the {queue} dead-letter queue"));
        }
    }
    Ok(problems)
}

fn item_key(pk: &str, sk: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([("pk".into(), AttributeValue::S(pk.into())), ("sk".into(), AttributeValue::S(sk.into()))])
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> Option<Decimal> {
    item.get(name)?.as_n().ok()?.parse::<Decimal>().ok().map(|d| d.normalize())
}

/// Every item of one partition.
async fn query(stack: &Stack, table: &str, pk: &str) -> Result<Vec<HashMap<String, AttributeValue>>> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let out = stack
            .dynamodb
            .query()
            .table_name(table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", AttributeValue::S(pk.into()))
            .set_exclusive_start_key(start)
            .send()
            .await
            .with_context(|| format!("querying {pk}"))?;
        items.extend(out.items().iter().cloned());
        start = out.last_evaluated_key().cloned();
        if start.is_none() {
            return Ok(items);
        }
    }
}

/// What `infra/cloudflare/local/volume.mjs` measured.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct WorkerVolume {
    queue_seconds: f64,
    queue_per_second: f64,
    queue_invocations: u64,
    queue_statements_per_event: f64,
    queue_round_trips_per_invocation: f64,
    object_bytes: u64,
    object_seconds: f64,
    object_lines_per_second: f64,
    object_invocations: u64,
    object_statements_per_line: f64,
}

/// `cargo xtask volume --cloudflare`: the same volumes through the Worker
/// under workerd (local queue, R2, D1).
pub fn run_cloudflare(lines: u64, messages: u64) -> Result<()> {
    let root = crate::stack::workspace_root();
    super::header("installing the Cloudflare tools where missing and building the Worker");
    let tools = crate::cloudflare::Tools::ensure(&root)?;
    let size = tools.build()?;
    println!("  {}: {size} bytes", crate::cloudflare::wasm_module(&root)?.display());
    super::header(&format!(
        "{messages} order messages through the local queue, then one object of {lines} lines through R2 (workerd)"
    ));
    let out = tools.node_output(&["local/volume.mjs", &messages.to_string(), &lines.to_string()])?;
    let v: WorkerVolume = serde_json::from_str(out.trim()).context("reading local/volume.mjs's result")?;
    let mut rows = Vec::new();
    if messages > 0 {
        rows.push(vec![
            format!("{messages} queue messages"),
            format!("{:.2} s", v.queue_seconds),
            format!("{:.0} events/s", v.queue_per_second),
            format!("{}", v.queue_invocations),
            format!(
                "{:.2} per event ({:.1} round trips per invocation)",
                v.queue_statements_per_event, v.queue_round_trips_per_invocation
            ),
        ]);
    }
    if lines > 0 {
        rows.push(vec![
            format!("object of {lines} lines ({} bytes)", v.object_bytes),
            format!("{:.2} s", v.object_seconds),
            format!("{:.0} lines/s", v.object_lines_per_second),
            format!("{}", v.object_invocations),
            format!("{:.2} per line", v.object_statements_per_line),
        ]);
    }
    print!("{}", table(&["what", "time", "rate", "invocations", "D1 statements"], rows));
    Ok(())
}
