//! `cargo xtask soak --cloudflare [--minutes N] [--concurrency N] [--seed S]`:
//! the orders Worker, on the toolkit's Workers adapter, under workerd for a
//! while, then an exact check of the result, as the Lambda soak
//! ([`super::soak`]) checks the AWS pipeline.
//!
//! - The workload is the Lambda soak's seeded producer ([`Producer`]): new
//!   orders, updates, exact resends, resends that differ only in JSON
//!   formatting, older events sent after newer ones, poison messages, and
//!   now and then an NDJSON object with two bad lines. Cloudflare Queues has
//!   no FIFO queues: the FIFO share goes to the one orders queue.
//! - D1 fails at the Lambda soak's rate (10% of D1 batches), half before a
//!   batch runs and half after it ran with its answer lost, through the
//!   local stack's fault wrapper around the Worker's D1 binding.
//! - A share of the messages goes straight to the queue handler in batches
//!   of their own, `--concurrency` at a time, some delivered twice at once;
//!   the rest through the local queue, which batches, retries with delay
//!   and dead-letters (`infra/cloudflare/local/soak.mjs`).
//!
//! At the end (producer stopped, everything drained) it checks DESIGN's
//! invariant, every order against the apply rule and every valid event sent
//! for it, every poison message quarantined, every object COMPLETED with
//! every line accounted for, and the Worker's accounting: one settled
//! outcome per queue message and per direct delivery chain, none left over.
//! The seed fixes the workload and the fault draws; which request a draw
//! lands on depends on timing.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::soak::{EVENTS_PER_TICK, FAULT_RATE, OBJECT_EVERY_TICKS, Options, Producer, Sent, TICK};
use super::{elapsed, header};
use crate::cloudflare::{DemoRun, Tools};
use crate::report::table;

/// What `local/soak.mjs` did, beside D1's tables.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SoakRun {
    #[serde(flatten)]
    run: DemoRun,
    queue_sent: u64,
    direct: Direct,
    #[serde(default)]
    drain_timed_out: bool,
    #[serde(default)]
    dead_lettered: u64,
    faults: Faults,
    quarantined_messages: u64,
}

/// The deliveries the driver made straight to the queue handler.
#[derive(Debug, Default, serde::Deserialize)]
struct Direct {
    batches: u64,
    twice: u64,
    messages: u64,
    deliveries: u64,
    chains: u64,
    retried: u64,
    lost: u64,
}

#[derive(Debug, Default, serde::Deserialize)]
struct Faults {
    before: u64,
    after: u64,
}

/// The workload of `ticks` producer ticks, as `local/soak.mjs` reads it.
fn workload(producer: &mut Producer, ticks: u64, options: &Options) -> serde_json::Value {
    let ticks: Vec<serde_json::Value> = (1..=ticks)
        .map(|tick| {
            let messages: Vec<serde_json::Value> = producer
                .tick_messages()
                .into_iter()
                .map(|(_, body, _, poison)| {
                    producer.sent.messages += 1;
                    json!({ "body": body, "poison": poison })
                })
                .collect();
            let object = tick.is_multiple_of(OBJECT_EVERY_TICKS).then(|| {
                let (key, bytes) = producer.object();
                json!({ "key": key, "text": String::from_utf8_lossy(&bytes) })
            });
            json!({ "messages": messages, "object": object })
        })
        .collect();
    json!({
        "seed": options.seed,
        "tickMs": TICK.as_millis() as u64,
        "faultRate": FAULT_RATE,
        "concurrency": options.concurrency,
        "ticks": ticks,
    })
}

/// Runs the Workers soak; fails when any check fails.
pub fn run(options: Options) -> Result<()> {
    let start = Instant::now();
    let ticks = (options.duration.as_secs_f64() / TICK.as_secs_f64()).ceil().max(1.0) as u64;
    println!(
        "soak --cloudflare: {:.1} min of traffic ({ticks} ticks of {EVENTS_PER_TICK} messages), concurrency {}, \
         seed {}, D1 faults at {:.0}%",
        options.duration.as_secs_f64() / 60.0,
        options.concurrency,
        options.seed,
        FAULT_RATE * 100.0
    );
    let root = crate::stack::workspace_root();
    header("installing the Cloudflare tools where missing and building the Workers");
    let tools = Tools::ensure(&root)?;
    let size = tools.build()?;
    println!("  {}: {size} bytes ({})", crate::cloudflare::wasm_module(&root)?.display(), elapsed(start));
    let mut producer = Producer::new(options.seed);
    let path = crate::cloudflare::out_dir(&root)?.join("soak-workload.json");
    std::fs::write(&path, workload(&mut producer, ticks, &options).to_string()).context("writing the workload")?;
    header("traffic: producer, D1 faults, concurrent and repeated deliveries (a line per minute)");
    let out = tools.node_output(&["local/soak.mjs", &path.to_string_lossy()])?;
    let soak: SoakRun = serde_json::from_str(out.trim()).context("reading local/soak.mjs's result")?;
    let problems = check(&producer, &soak)?;
    report(&producer.sent, &soak, &problems, &options, start);
    if !problems.is_empty() {
        bail!(
            "the soak found {} problem(s); reproduce with: cargo xtask soak --cloudflare --minutes {} --concurrency {} --seed {}",
            problems.len(),
            options.duration.as_secs_f64() / 60.0,
            options.concurrency,
            options.seed
        );
    }
    Ok(())
}

/// Every check's problems (none when the run is right).
fn check(producer: &Producer, soak: &SoakRun) -> Result<Vec<String>> {
    let snapshot = soak.run.snapshot()?;
    let mut problems = snapshot.invariant_violations();
    if soak.dead_lettered > 0 {
        problems.push(format!("{} message(s) moved to a dead-letter queue", soak.dead_lettered));
    }
    if soak.drain_timed_out {
        problems.push("the Worker did not drain within 300 s of the producer's end".into());
    }

    // Every order as the apply rule leaves it, no order more.
    problems.extend(producer.order_problems(&snapshot));

    // Every poison message quarantined with its reason, once.
    if soak.quarantined_messages != producer.sent.poison {
        problems.push(format!(
            "{} message(s) quarantined under the orders queue, {} poison message(s) sent",
            soak.quarantined_messages, producer.sent.poison
        ));
    }
    if let Some(q) = snapshot.quarantine.iter().find(|q| q.reason.trim().is_empty()) {
        problems.push(format!("{}/{} is quarantined without a reason", q.source, q.record_id));
    }

    // Every object COMPLETED, every line counted once.
    for key in &soak.run.objects {
        match snapshot.manifests.iter().find(|m| m.object.ends_with(&format!("/{key}"))) {
            Some(m)
                if m.status == "COMPLETED"
                    && m.lines == super::soak::OBJECT_LINES as u64
                    && m.lines == m.accepted + m.rejected + m.stale + m.duplicates => {}
            Some(m) => problems.push(format!("object {key}: {} with {} line(s) counted", m.status, m.lines)),
            None => problems.push(format!("object {key}: no manifest")),
        }
    }
    let rejected: u64 = snapshot.manifests.iter().map(|m| m.rejected).sum();
    if rejected != producer.sent.bad_object_lines {
        problems
            .push(format!("{rejected} object line(s) rejected, {} bad line(s) sent", producer.sent.bad_object_lines));
    }

    // The Worker's accounting: one settled outcome per queue message and
    // per direct delivery chain; nothing lost, nothing settled twice.
    let orders = soak.run.summaries.get("orders-events").copied().unwrap_or_default();
    let settled = orders.applied + orders.stale + orders.duplicate + orders.quarantined;
    let deliveries = soak.queue_sent + soak.direct.chains;
    if settled != deliveries {
        problems.push(format!(
            "the Worker settled {settled} message deliveries, {deliveries} were made ({} through the queue, {} direct \
             chains): {}",
            soak.queue_sent,
            soak.direct.chains,
            if settled < deliveries { "some were lost or dead-lettered" } else { "some were settled twice" }
        ));
    }
    if soak.run.sent != producer.sent.messages {
        problems.push(format!("{} message(s) sent, the workload holds {}", soak.run.sent, producer.sent.messages));
    }
    if soak.direct.lost > 0 {
        problems.push(format!("{} direct message(s) still retried after every attempt", soak.direct.lost));
    }
    Ok(problems)
}

fn report(sent: &Sent, soak: &SoakRun, problems: &[String], options: &Options, start: Instant) {
    header("soak report (Cloudflare Workers: the orders Worker under workerd)");
    println!(
        "  {:.1} min of traffic, concurrency {}, seed {}, {} in all ({:.1} s under workerd)",
        options.duration.as_secs_f64() / 60.0,
        options.concurrency,
        options.seed,
        elapsed(start),
        soak.run.elapsed_ms as f64 / 1000.0
    );
    let n = |v: u64| v.to_string();
    print!("{}", table(&["events", "count"], sent.rows("messages sent", "  the Lambda soak's FIFO share")));
    let d = &soak.direct;
    print!(
        "{}",
        table(
            &["deliveries", "count"],
            vec![
                vec!["through the local queue".into(), n(soak.queue_sent)],
                vec!["straight to the handler: messages".into(), n(d.messages)],
                vec!["  in batches (delivered twice at once)".into(), format!("{} ({})", d.batches, d.twice)],
                vec!["  deliveries (retried by the handler)".into(), format!("{} ({})", d.deliveries, d.retried)],
                vec!["moved to a dead-letter queue".into(), n(soak.dead_lettered)],
                vec!["D1 batches failed before running".into(), n(soak.faults.before)],
                vec!["D1 batches run, answer lost".into(), n(soak.faults.after)],
            ]
        )
    );
    print!("{}", super::demo::accounting_table("queue", &soak.run.summaries));
    let orders = soak.run.summaries.get("orders-events").copied().unwrap_or_default();
    println!(
        "  orders checked against the apply rule: {}; settled deliveries {} = {} queue messages + {} direct chains; \
         {} idempotency markers",
        soak.run.snapshot().map(|s| s.orders.len()).unwrap_or(0),
        orders.applied + orders.stale + orders.duplicate + orders.quarantined,
        soak.queue_sent,
        soak.direct.chains,
        soak.run.markers
    );
    if problems.is_empty() {
        println!("\nINVARIANT HOLDS; every message accounted for");
    } else {
        println!("\nPROBLEMS:");
        for p in problems {
            println!("  - {p}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_is_the_lambda_soaks_producer_with_its_objects() {
        let options = Options {
            duration: std::time::Duration::from_secs(60),
            concurrency: 3,
            seed: 5,
            engine: crate::dynamodb_local::Engine::Local,
        };
        let mut producer = Producer::new(5);
        let w = workload(&mut producer, 60, &options);
        let ticks = w["ticks"].as_array().unwrap();
        assert_eq!(ticks.len(), 60);
        let messages: usize = ticks.iter().map(|t| t["messages"].as_array().unwrap().len()).sum();
        assert_eq!(messages as u64, producer.sent.messages);
        assert_eq!(ticks.iter().filter(|t| !t["object"].is_null()).count() as u64, producer.sent.objects);
        let poison =
            ticks.iter().flat_map(|t| t["messages"].as_array().unwrap()).filter(|m| m["poison"] == true).count();
        assert_eq!(poison as u64, producer.sent.poison);
        assert_eq!(w, workload(&mut Producer::new(5), 60, &options), "a seed gives the same workload");
    }
}
