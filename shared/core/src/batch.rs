//! Partial batch responses, per-record outcomes and per-invocation
//! accounting, and the one implementation of each delivery's failure
//! semantics ([`settle`]).
//!
//! SQS and DynamoDB stream mappings with `ReportBatchItemFailures` read the
//! same response shape: `{"batchItemFailures":[{"itemIdentifier": id}]}`,
//! where the id is the SQS `messageId` or the stream record's
//! `SequenceNumber`. <https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-errorhandling.html>

use serde::{Deserialize, Serialize};

/// The partial batch response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchResponse {
    /// The records to retry; empty when the whole batch succeeded.
    pub batch_item_failures: Vec<ItemFailure>,
}

/// One failed record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemFailure {
    /// SQS `messageId`, or the stream record's `SequenceNumber`.
    pub item_identifier: String,
}

impl BatchResponse {
    /// A response reporting these ids, in the order given, without repeats.
    pub fn failed<I: IntoIterator<Item = S>, S: Into<String>>(ids: I) -> Self {
        let mut failures: Vec<ItemFailure> = Vec::new();
        for id in ids {
            let id = id.into();
            if !failures.iter().any(|f| f.item_identifier == id) {
                failures.push(ItemFailure { item_identifier: id });
            }
        }
        Self { batch_item_failures: failures }
    }

    /// The reported ids.
    pub fn ids(&self) -> Vec<&str> {
        self.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect()
    }
}

/// What committing one record's effect did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The record's effect was committed now.
    Applied,
    /// Older than the stored state (for orders: by the apply rule): counted,
    /// not applied.
    Stale,
    /// The record's effect had already been committed.
    Duplicate,
    /// The record's idempotency key was used before with a different payload:
    /// nothing was applied; the record is quarantined.
    KeyReused,
}

/// One record of a batch as the delivery sees it: the id reported on failure
/// and, for FIFO queues, its message group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRef {
    /// SQS `messageId` or stream `SequenceNumber`.
    pub id: String,
    /// FIFO `MessageGroupId`; `None` elsewhere.
    pub group: Option<String>,
}

/// How a source delivers batches, which decides what a failure means for the
/// records after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// SQS standard queue: records are independent; each failed one is reported.
    Standard,
    /// SQS FIFO queue: after a failure in a message group, every later message
    /// of that group is reported failed too (it must not take effect first);
    /// other groups go on.
    Fifo,
    /// DynamoDB or Kinesis stream: processing stops at the first failure,
    /// which alone is reported; Lambda retries the shard from there.
    Stream,
}

/// Where one record of a batch ended, before the delivery's rules apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Its effect was decided: applied, stale or duplicate (a reused key is
    /// quarantined, see [`Disposition::Quarantined`]).
    Done(Outcome),
    /// Not for this function (another entity, a test event): acknowledged.
    Ignored,
    /// Permanently bad: written to quarantine with its reason, acknowledged.
    Quarantined,
    /// Transient failure, with the reason: to be retried.
    Failed(String),
    /// Not attempted (an earlier failure in its group or shard, or the
    /// deadline): to be retried.
    Unprocessed(&'static str),
}

impl Disposition {
    /// Whether the record must be retried.
    pub fn is_failure(&self) -> bool {
        matches!(self, Self::Failed(_) | Self::Unprocessed(_))
    }
}

/// The partial batch response and the accounting of a batch whose records
/// ended as `dispositions` (same positions as `records`), by the rules of
/// `delivery`. Every record lands in exactly one counter of the summary: a
/// record that will be delivered again counts as `failed`, whatever else it
/// did (for FIFO, a later message of a failed group; for streams, every
/// record from the first failure on).
///
/// With `fail_on_all_failed`, a batch in which nothing succeeded (for a
/// stream: whose first record failed) fails the whole invocation instead.
///
/// ```
/// use shared_core::batch::{Delivery, Disposition, Outcome, RecordRef, settle};
///
/// let records: Vec<RecordRef> = [("a1", "A"), ("a2", "A"), ("b1", "B")]
///     .iter()
///     .map(|(id, g)| RecordRef { id: (*id).into(), group: Some((*g).into()) })
///     .collect();
/// let ended = [
///     Disposition::Failed("throttled".into()),
///     Disposition::Unprocessed("an earlier message of its group failed"),
///     Disposition::Done(Outcome::Applied),
/// ];
/// let (response, summary) = settle(Delivery::Fifo, &records, &ended, false).unwrap();
/// assert_eq!(response.ids(), ["a1", "a2"]);
/// assert_eq!((summary.failed, summary.applied), (2, 1));
/// ```
pub fn settle(
    delivery: Delivery,
    records: &[RecordRef],
    dispositions: &[Disposition],
    fail_on_all_failed: bool,
) -> Result<(BatchResponse, Summary), InvocationError> {
    debug_assert_eq!(records.len(), dispositions.len(), "one disposition per record");
    let retried = retried(delivery, records, dispositions);
    let mut summary = Summary::default();
    for (disposition, retry) in dispositions.iter().zip(&retried) {
        if *retry {
            summary.failed += 1;
            continue;
        }
        match disposition {
            Disposition::Done(outcome) => summary.count(*outcome),
            Disposition::Ignored => summary.ignored += 1,
            Disposition::Quarantined => summary.quarantined += 1,
            // A failure is always retried (see `retried`).
            Disposition::Failed(_) | Disposition::Unprocessed(_) => summary.failed += 1,
        }
    }
    let response = match delivery {
        // Streams: the first failure only; Lambda resumes the shard from it.
        Delivery::Stream => BatchResponse::failed(retried.iter().position(|r| *r).map(|i| records[i].id.clone())),
        Delivery::Standard | Delivery::Fifo => BatchResponse::failed(
            records.iter().zip(&retried).filter(|(_, r)| **r).map(|(record, _)| record.id.clone()),
        ),
    };
    let nothing_succeeded = match delivery {
        Delivery::Stream => retried.first().copied().unwrap_or(false),
        Delivery::Standard | Delivery::Fifo => !records.is_empty() && retried.iter().all(|r| *r),
    };
    if fail_on_all_failed && nothing_succeeded {
        let what = match delivery {
            Delivery::Stream => "the first record of the shard's batch failed".to_owned(),
            _ => format!("all {} records of the batch failed", records.len()),
        };
        return Err(InvocationError::new(what));
    }
    Ok((response, summary))
}

/// Which records the delivery will deliver again.
fn retried(delivery: Delivery, records: &[RecordRef], dispositions: &[Disposition]) -> Vec<bool> {
    match delivery {
        Delivery::Standard => dispositions.iter().map(Disposition::is_failure).collect(),
        Delivery::Fifo => {
            let mut failed_groups: std::collections::HashSet<&str> = std::collections::HashSet::new();
            records
                .iter()
                .zip(dispositions)
                .map(|(record, disposition)| {
                    let group = record.group.as_deref();
                    let blocked = group.is_some_and(|g| failed_groups.contains(g));
                    let retry = blocked || disposition.is_failure();
                    if retry && let Some(g) = group {
                        failed_groups.insert(g);
                    }
                    retry
                })
                .collect()
        }
        Delivery::Stream => {
            let first = dispositions.iter().position(Disposition::is_failure).unwrap_or(dispositions.len());
            (0..dispositions.len()).map(|i| i >= first).collect()
        }
    }
}

/// The records that must not be attempted because an earlier record of
/// their FIFO group (or, for streams, of the shard) already failed: for
/// handlers that attempt records in stages, so that a later stage does not
/// take effect before an earlier failure is retried. `failed[i]` says
/// record `i` failed in an earlier stage.
pub fn blocked_by_earlier_failures(delivery: Delivery, records: &[RecordRef], failed: &[bool]) -> Vec<bool> {
    let dispositions: Vec<Disposition> =
        failed.iter().map(|f| if *f { Disposition::Failed(String::new()) } else { Disposition::Ignored }).collect();
    match delivery {
        Delivery::Standard => vec![false; records.len()],
        Delivery::Fifo | Delivery::Stream => {
            retried(delivery, records, &dispositions).into_iter().zip(failed).map(|(r, f)| r && !*f).collect()
        }
    }
}

/// What happened to the records of one invocation. Every record ends in
/// exactly one counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Effect committed by this invocation.
    pub applied: u64,
    /// Older than the stored state (orders), counted and acknowledged.
    pub stale: u64,
    /// Already applied before, acknowledged.
    pub duplicate: u64,
    /// Permanently bad, written to quarantine with the reason, acknowledged.
    pub quarantined: u64,
    /// Not for this function (other entities, S3 test events), acknowledged.
    pub ignored: u64,
    /// Reported as batch item failures, to be retried.
    pub failed: u64,
}

impl std::ops::AddAssign for Summary {
    fn add_assign(&mut self, more: Summary) {
        self.applied += more.applied;
        self.stale += more.stale;
        self.duplicate += more.duplicate;
        self.quarantined += more.quarantined;
        self.ignored += more.ignored;
        self.failed += more.failed;
    }
}

impl Summary {
    /// The records counted.
    pub fn total(&self) -> u64 {
        self.applied + self.stale + self.duplicate + self.quarantined + self.ignored + self.failed
    }

    /// Counts one store outcome.
    pub fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Applied => self.applied += 1,
            Outcome::Stale => self.stale += 1,
            Outcome::Duplicate => self.duplicate += 1,
            Outcome::KeyReused => self.quarantined += 1,
        }
    }
}

/// An invocation-level failure: the mapping retries the whole batch.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct InvocationError {
    /// What made the whole invocation fail.
    pub message: String,
}

impl InvocationError {
    /// An invocation error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into() }
    }
}

impl InvocationError {
    /// The error type Lambda reports for a failed invocation: a stable name
    /// makes failed invocations easy to find in logs.
    pub const ERROR_TYPE: &'static str = "StreamProcessor.InvocationError";
}

/// Applies the "every record failed" policy: with `fail_on_all_failed`, a
/// batch whose records all failed fails the invocation instead.
pub fn finish(
    response: BatchResponse,
    records: usize,
    fail_on_all_failed: bool,
) -> Result<BatchResponse, InvocationError> {
    if fail_on_all_failed && records > 0 && response.batch_item_failures.len() == records {
        return Err(InvocationError::new(format!("all {records} records of the batch failed")));
    }
    Ok(response)
}

/// How the records of a batch relate, which decides concurrency and what a
/// failure means for the records after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    /// SQS standard queue: records are independent; up to `concurrency` at once.
    Standard {
        /// Records in flight at once.
        concurrency: usize,
    },
    /// SQS FIFO queue: in order within a message group, groups concurrently;
    /// after a failure in a group, its later records fail unprocessed.
    Fifo {
        /// Message groups in flight at once.
        concurrency: usize,
    },
    /// DynamoDB or Kinesis stream: one at a time in order; stop at the first
    /// failure and report only it (Lambda retries the shard from there).
    Stream,
}

/// Records processed at once by default: DynamoDB and S3 calls are I/O-bound,
/// and a Lambda function's one or two vCPUs are idle while they wait.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// One record handed to the processor.
#[derive(Debug, Clone)]
pub struct BatchRecord<T> {
    /// The id reported on failure: SQS `messageId` or stream `SequenceNumber`.
    pub id: String,
    /// FIFO message group (ignored unless [`Ordering::Fifo`]).
    pub group: Option<String>,
    /// What the handler gets.
    pub payload: T,
}

/// Why a record handler failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The record can never succeed: quarantine it and acknowledge it.
    #[error("{0}")]
    Permanent(String),
    /// Retry later: report the record as a batch item failure.
    #[error("{0}")]
    Transient(String),
}

/// What happened to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// The handler returned `Ok`.
    Succeeded,
    /// Permanent failure, with the reason to quarantine.
    Quarantine(String),
    /// Transient failure (including a panicking handler).
    Failed(String),
    /// Not started: an earlier record of its group or shard failed, or the
    /// invocation was about to time out.
    Unprocessed(&'static str),
}

/// The result of a batch: outcomes in input order, and the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchReport {
    /// Each record's id and outcome, in input order.
    pub outcomes: Vec<(String, RecordOutcome)>,
    /// The partial batch response.
    pub response: BatchResponse,
}

/// A FIFO message group and its records, with their batch positions.
type Group<T> = (Option<String>, Vec<(usize, BatchRecord<T>)>);

/// A partial-batch processor: a per-record async handler in, the right
/// partial batch response out.
#[derive(Debug, Clone)]
pub struct Processor {
    /// How the records relate.
    pub ordering: Ordering,
    /// Records not started by `deadline - margin` are reported failed instead
    /// of being lost with the invocation's timeout.
    pub deadline: Option<std::time::SystemTime>,
    /// How long before the deadline to stop starting records.
    pub margin: std::time::Duration,
}

impl Processor {
    /// A processor without a deadline.
    pub fn new(ordering: Ordering) -> Self {
        Self { ordering, deadline: None, margin: std::time::Duration::ZERO }
    }

    /// Stops starting records `margin` before `deadline`.
    pub fn with_deadline(mut self, deadline: std::time::SystemTime, margin: std::time::Duration) -> Self {
        self.deadline = Some(deadline);
        self.margin = margin;
        self
    }

    fn out_of_time(&self) -> bool {
        self.deadline.is_some_and(|d| std::time::SystemTime::now() + self.margin >= d)
    }

    /// Processes the batch. A handler that panics fails its record only.
    pub async fn process<T, F, Fut>(&self, records: Vec<BatchRecord<T>>, handler: F) -> BatchReport
    where
        F: Fn(T) -> Fut,
        Fut: std::future::Future<Output = Result<(), RecordError>>,
    {
        use futures::StreamExt;
        let refs: Vec<RecordRef> =
            records.iter().map(|r| RecordRef { id: r.id.clone(), group: r.group.clone() }).collect();
        let ids: Vec<String> = refs.iter().map(|r| r.id.clone()).collect();
        let mut outcomes: Vec<Option<RecordOutcome>> = vec![None; records.len()];
        let handler = &handler;
        match self.ordering {
            Ordering::Standard { concurrency } => {
                let results: Vec<(usize, RecordOutcome)> = futures::stream::iter(records.into_iter().enumerate())
                    .map(|(i, r)| async move { (i, self.run_one(r, handler).await) })
                    .buffer_unordered(concurrency.max(1))
                    .collect()
                    .await;
                for (i, o) in results {
                    outcomes[i] = Some(o);
                }
            }
            Ordering::Fifo { concurrency } => {
                let mut groups: Vec<Group<T>> = Vec::new();
                for (i, r) in records.into_iter().enumerate() {
                    match groups.iter_mut().find(|(g, _)| *g == r.group) {
                        Some((_, members)) => members.push((i, r)),
                        None => groups.push((r.group.clone(), vec![(i, r)])),
                    }
                }
                let results: Vec<Vec<(usize, RecordOutcome)>> = futures::stream::iter(groups)
                    .map(|(_, members)| async move {
                        let mut done = Vec::with_capacity(members.len());
                        let mut blocked = false;
                        for (i, r) in members {
                            if blocked {
                                done.push((i, RecordOutcome::Unprocessed("an earlier message of its group failed")));
                                continue;
                            }
                            let outcome = self.run_one(r, handler).await;
                            blocked = matches!(outcome, RecordOutcome::Failed(_) | RecordOutcome::Unprocessed(_));
                            done.push((i, outcome));
                        }
                        done
                    })
                    .buffer_unordered(concurrency.max(1))
                    .collect()
                    .await;
                for (i, o) in results.into_iter().flatten() {
                    outcomes[i] = Some(o);
                }
            }
            Ordering::Stream => {
                let mut stopped = false;
                for (i, r) in records.into_iter().enumerate() {
                    if stopped {
                        outcomes[i] = Some(RecordOutcome::Unprocessed("an earlier record of its shard failed"));
                        continue;
                    }
                    let outcome = self.run_one(r, handler).await;
                    stopped = matches!(outcome, RecordOutcome::Failed(_) | RecordOutcome::Unprocessed(_));
                    outcomes[i] = Some(outcome);
                }
            }
        }
        let outcomes: Vec<(String, RecordOutcome)> = ids
            .into_iter()
            .zip(outcomes)
            .map(|(id, o)| (id, o.unwrap_or(RecordOutcome::Unprocessed("not reached"))))
            .collect();
        // The response by the one implementation of the delivery's rules.
        let delivery = match self.ordering {
            Ordering::Standard { .. } => Delivery::Standard,
            Ordering::Fifo { .. } => Delivery::Fifo,
            Ordering::Stream => Delivery::Stream,
        };
        let dispositions: Vec<Disposition> = outcomes
            .iter()
            .map(|(_, o)| match o {
                RecordOutcome::Succeeded => Disposition::Done(Outcome::Applied),
                RecordOutcome::Quarantine(_) => Disposition::Quarantined,
                RecordOutcome::Failed(reason) => Disposition::Failed(reason.clone()),
                RecordOutcome::Unprocessed(why) => Disposition::Unprocessed(why),
            })
            .collect();
        let response = match settle(delivery, &refs, &dispositions, false) {
            Ok((response, _)) => response,
            Err(_) => unreachable!("settle fails only with fail_on_all_failed"),
        };
        BatchReport { outcomes, response }
    }

    async fn run_one<T, F, Fut>(&self, record: BatchRecord<T>, handler: &F) -> RecordOutcome
    where
        F: Fn(T) -> Fut,
        Fut: std::future::Future<Output = Result<(), RecordError>>,
    {
        use futures::FutureExt;
        use tracing::Instrument;
        if self.out_of_time() {
            return RecordOutcome::Unprocessed("the invocation was about to time out");
        }
        let span = tracing::info_span!("record", id = %record.id);
        let result = std::panic::AssertUnwindSafe(handler(record.payload).instrument(span)).catch_unwind().await;
        match result {
            Ok(Ok(())) => RecordOutcome::Succeeded,
            Ok(Err(RecordError::Permanent(reason))) => RecordOutcome::Quarantine(reason),
            Ok(Err(RecordError::Transient(reason))) => RecordOutcome::Failed(reason),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".into());
                tracing::error!(%message, "record handler panicked");
                RecordOutcome::Failed(format!("handler panicked: {message}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_serializes_as_lambda_expects() {
        let r = BatchResponse::failed(["a", "b", "a"]);
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"batchItemFailures":[{"itemIdentifier":"a"},{"itemIdentifier":"b"}]}"#
        );
    }

    fn records(ids: &[(&str, Option<&str>)]) -> Vec<BatchRecord<String>> {
        ids.iter()
            .map(|(id, g)| BatchRecord { id: (*id).into(), group: g.map(Into::into), payload: (*id).into() })
            .collect()
    }

    async fn handler(id: String) -> Result<(), RecordError> {
        match id.as_str() {
            i if i.starts_with("bad") => Err(RecordError::Permanent(format!("{i} is malformed"))),
            i if i.starts_with("flaky") => Err(RecordError::Transient("throttled".into())),
            i if i.starts_with("boom") => panic!("handler bug on {i}"),
            _ => Ok(()),
        }
    }

    #[test]
    fn standard_batch_reports_transient_failures_and_panics_only() {
        futures::executor::block_on(async {
            let p = Processor::new(Ordering::Standard { concurrency: 4 });
            let report = p
                .process(
                    records(&[("a", None), ("bad1", None), ("flaky1", None), ("boom1", None), ("b", None)]),
                    handler,
                )
                .await;
            assert_eq!(report.response.ids(), ["flaky1", "boom1"]);
            assert_eq!(report.outcomes[1].1, RecordOutcome::Quarantine("bad1 is malformed".into()));
            assert_eq!(report.outcomes[3].1, RecordOutcome::Failed("handler panicked: handler bug on boom1".into()));
            assert_eq!(report.outcomes[4].1, RecordOutcome::Succeeded);
        })
    }

    #[test]
    fn fifo_failure_blocks_the_rest_of_its_group_only() {
        futures::executor::block_on(async {
            let p = Processor::new(Ordering::Fifo { concurrency: 4 });
            let order = std::sync::Mutex::new(Vec::new());
            let report = p
                .process(
                    records(&[
                        ("g1-a", Some("1")),
                        ("flaky-g1", Some("1")),
                        ("g2-a", Some("2")),
                        ("g1-c", Some("1")),
                        ("g2-b", Some("2")),
                    ]),
                    |id: String| {
                        order.lock().unwrap().push(id.clone());
                        handler(id)
                    },
                )
                .await;
            assert_eq!(report.response.ids(), ["flaky-g1", "g1-c"]);
            assert_eq!(report.outcomes[3].1, RecordOutcome::Unprocessed("an earlier message of its group failed"));
            let order = order.into_inner().unwrap();
            assert!(!order.contains(&"g1-c".to_owned()), "never started after its group failed");
            let g2: Vec<&String> = order.iter().filter(|i| i.starts_with("g2")).collect();
            assert_eq!(g2, ["g2-a", "g2-b"], "in order within a group");
        })
    }

    #[test]
    fn stream_stops_at_the_first_failure_and_reports_it_alone() {
        futures::executor::block_on(async {
            let p = Processor::new(Ordering::Stream);
            let report =
                p.process(records(&[("1", None), ("bad2", None), ("flaky3", None), ("4", None)]), handler).await;
            assert_eq!(report.response.ids(), ["flaky3"]);
            assert_eq!(report.outcomes[3].1, RecordOutcome::Unprocessed("an earlier record of its shard failed"));
        })
    }

    #[test]
    fn records_not_started_before_the_deadline_are_reported_failed() {
        futures::executor::block_on(async {
            let p = Processor::new(Ordering::Standard { concurrency: 1 })
                .with_deadline(std::time::SystemTime::now(), std::time::Duration::from_secs(1));
            let report = p.process(records(&[("a", None), ("b", None)]), handler).await;
            assert_eq!(report.response.ids(), ["a", "b"]);
            assert!(report.outcomes.iter().all(|(_, o)| matches!(o, RecordOutcome::Unprocessed(_))));
        })
    }

    #[test]
    fn all_failed_policy() {
        let all = BatchResponse::failed(["a", "b"]);
        assert!(finish(all.clone(), 2, false).is_ok());
        assert!(finish(all, 2, true).is_err());
        assert!(finish(BatchResponse::failed(["a"]), 2, true).is_ok());
    }
}
