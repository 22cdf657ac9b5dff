//! The demo scenario, shared by `cargo xtask demo` and the end-to-end tests:
//! the sample data files, the sample order events of `xtask/demo/`, and the
//! verdict (DESIGN.md's invariant, and every input record accounted for).

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use crate::report::{Accounting, StateSnapshot, accounting_from_logs};
use crate::stack::{Stack, dlq_key};

/// Order events for the standard queue: new orders, a poison message with a
/// bad field, one that is not JSON.
pub const ORDERS_QUEUE: &str = include_str!("../demo/orders-queue.ndjson");
/// Sent after the first drain, to the standard queue: a re-sent event
/// (duplicate), an event older than the stored state (stale), a cancellation.
pub const ORDERS_LATE: &str = include_str!("../demo/orders-late.ndjson");
/// Order events for the FIFO queue, grouped by customer.
pub const ORDERS_FIFO: &str = include_str!("../demo/orders-fifo.ndjson");

/// The queue keys (stack.json) the files go to.
pub const STANDARD_QUEUE: &str = "orders";
pub const FIFO_QUEUE: &str = "ordersFifo";

/// The FIFO message group of a line: its customer (orders of one customer in
/// order), or `unparsed` for a line that is not an order.
pub fn message_group(line: &str) -> String {
    serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("customerId")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unparsed".into())
}

/// The non-empty lines of an ndjson file.
pub fn lines(ndjson: &str) -> impl Iterator<Item = &str> {
    ndjson.lines().filter(|l| !l.trim().is_empty())
}

/// Sends every line of `ndjson` to a queue; returns how many were sent.
pub async fn send_lines(stack: &Stack, queue_key: &str, ndjson: &str) -> Result<u64> {
    let fifo = stack.spec.queue(queue_key)?.fifo;
    let mut sent = 0;
    for line in lines(ndjson) {
        let group = fifo.then(|| message_group(line));
        stack.send(queue_key, line, group.as_deref()).await?;
        sent += 1;
    }
    Ok(sent)
}

/// What the pipeline did with the inputs, and whether that is right.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub snapshot: StateSnapshot,
    /// Per function, from the functions' summary log lines.
    pub accounting: BTreeMap<String, Accounting>,
    /// Messages left in each dead-letter queue, by source queue key.
    pub dead_letters: BTreeMap<String, u64>,
    /// Failed stream batches in the on-failure queue.
    pub stream_failures: u64,
    /// Everything that is wrong; empty when the run is correct.
    pub problems: Vec<String>,
}

impl Verdict {
    pub fn holds(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Reads the results back and checks them. `messages_sent` is the number of
/// SQS messages the producer sent (all queues); `objects` the uploaded keys.
pub async fn verdict(stack: &Stack, lambda_log: &str, messages_sent: u64, objects: &[String]) -> Result<Verdict> {
    verdict_allowing(stack, lambda_log, messages_sent, objects, 0).await
}

/// [`verdict`], allowing sqs-consumer's logged outcomes to exceed the
/// messages sent by up to `may_count_twice`: the records of invocations
/// that crashed, which may have logged their outcomes before their answer
/// was lost (the soak kills processes).
pub async fn verdict_allowing(
    stack: &Stack,
    lambda_log: &str,
    messages_sent: u64,
    objects: &[String],
    may_count_twice: u64,
) -> Result<Verdict> {
    let snapshot = StateSnapshot::read(stack).await?;
    let accounting = accounting_from_logs(lambda_log);
    let mut problems = snapshot.invariant_violations();

    let mut dead_letters = BTreeMap::new();
    for key in stack.spec.source_queue_keys() {
        if stack.resources.queue_urls.contains_key(&dlq_key(key)) {
            dead_letters.insert(key.to_owned(), stack.queue_depth(&dlq_key(key)).await?);
        }
    }
    let stream_failures = match stack.spec.mappings.iter().find_map(|m| m.on_failure.as_ref()) {
        Some(f) => stack.queue_depth(&f.queue).await?,
        None => 0,
    };
    for (queue, n) in &dead_letters {
        if *n > 0 {
            problems.push(format!("{n} message(s) in the dead-letter queue of {queue}"));
        }
    }
    if stream_failures > 0 {
        problems.push(format!("{stream_failures} stream batch(es) in the on-failure queue"));
    }

    // SQS: every message sent ends applied, stale, duplicate or quarantined.
    let sqs = accounting.get("sqs-consumer").copied().unwrap_or_default();
    let settled = sqs.applied + sqs.stale + sqs.duplicate + sqs.quarantined;
    if settled < messages_sent || settled > messages_sent + may_count_twice {
        problems.push(format!(
            "sqs-consumer accounted for {settled} message(s) (applied {}, stale {}, duplicate {}, quarantined {}) but {messages_sent} were sent",
            sqs.applied, sqs.stale, sqs.duplicate, sqs.quarantined
        ));
    }
    // S3: every uploaded object has a COMPLETED manifest whose counters cover
    // every line.
    let bucket = &stack.spec.bucket.name;
    for key in objects {
        let object = format!("{bucket}/{key}");
        match snapshot.manifests.iter().find(|m| m.object == object) {
            None => problems.push(format!("no manifest for s3://{object}")),
            Some(m) => {
                if m.status != "COMPLETED" {
                    problems.push(format!("s3://{object} is {}", m.status));
                }
                let counted = m.accepted + m.rejected + m.stale + m.duplicates;
                if counted != m.lines {
                    problems.push(format!("s3://{object}: {} lines but {counted} accounted for", m.lines));
                }
            }
        }
    }
    let quarantined_with_reason = snapshot.quarantine.iter().filter(|q| !q.reason.trim().is_empty()).count() as u64;
    let rejected: u64 = snapshot.manifests.iter().map(|m| m.rejected).sum();
    if quarantined_with_reason + may_count_twice < sqs.quarantined + rejected {
        problems.push(format!(
            "{} record(s) reported quarantined but only {quarantined_with_reason} quarantine item(s) with a reason exist",
            sqs.quarantined + rejected
        ));
    }
    Ok(Verdict { snapshot, accounting, dead_letters, stream_failures, problems })
}

/// The number of lines of the demo's SQS files.
pub fn demo_message_count() -> u64 {
    [ORDERS_QUEUE, ORDERS_LATE, ORDERS_FIFO].iter().map(|f| lines(f).count() as u64).sum()
}

/// Reads a sample file (for tests that upload a single object).
pub fn sample_file(stack: &Stack, name: &str) -> Result<Vec<u8>> {
    let path = stack.root.join("events").join("data").join(name);
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_files_hold_the_promised_cases() {
        let all: Vec<&str> = lines(ORDERS_QUEUE).chain(lines(ORDERS_LATE)).collect();
        let parsed: Vec<serde_json::Value> = all.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
        assert!(parsed.len() < all.len(), "a line that is not JSON");
        let ids: Vec<&str> = parsed.iter().filter_map(|v| v["eventId"].as_str()).collect();
        let unique: std::collections::BTreeSet<&&str> = ids.iter().collect();
        assert!(unique.len() < ids.len(), "a duplicate event");
        assert!(parsed.iter().any(|v| v["status"] == "REFUNDED"), "an invalid status");
        assert_eq!(message_group(lines(ORDERS_FIFO).next().unwrap()), "c-gina");
        assert_eq!(message_group("not json"), "unparsed");
        assert_eq!(demo_message_count(), 13);
    }
}
