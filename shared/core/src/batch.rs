//! Partial batch responses, per-record outcomes and per-invocation
//! accounting, and the one implementation of each delivery's failure
//! semantics ([`settle`]).
//!
//! SQS, DynamoDB stream and Kinesis mappings with `ReportBatchItemFailures`
//! read the same response shape: `{"batchItemFailures":[{"itemIdentifier": id}]}`,
//! where the id is the SQS `messageId` or the stream record's sequence
//! number. <https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-errorhandling.html>,
//! <https://docs.aws.amazon.com/lambda/latest/dg/services-kinesis-batchfailurereporting.html>.
//! Kafka mappings name a record by its partition and offset instead (the
//! Lambda adapter writes that shape from the ids here).

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
    /// SQS `messageId`, a stream record's sequence number, or a Kafka
    /// record's topic, partition and offset.
    pub id: String,
    /// FIFO `MessageGroupId`, or a Kafka record's topic and partition;
    /// `None` elsewhere.
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
    /// Kafka (Amazon MSK or self-managed): a batch holds records of several
    /// partitions (the records' groups), each in offset order. Per partition
    /// as a stream per shard: after a failure the partition's later records
    /// wait, and only its first failure is reported (Lambda resumes the
    /// partition from that offset); other partitions go on.
    Partitioned,
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
        // Kafka: the first failure of each partition.
        Delivery::Partitioned => {
            let mut reported: std::collections::HashSet<&str> = std::collections::HashSet::new();
            BatchResponse::failed(
                records
                    .iter()
                    .zip(&retried)
                    .filter(|(record, r)| **r && record.group.as_deref().is_none_or(|g| reported.insert(g)))
                    .map(|(record, _)| record.id.clone()),
            )
        }
        Delivery::Standard | Delivery::Fifo => BatchResponse::failed(
            records.iter().zip(&retried).filter(|(_, r)| **r).map(|(record, _)| record.id.clone()),
        ),
    };
    let nothing_succeeded = match delivery {
        Delivery::Stream => retried.first().copied().unwrap_or(false),
        Delivery::Standard | Delivery::Fifo | Delivery::Partitioned => {
            !records.is_empty() && retried.iter().all(|r| *r)
        }
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
        // A record without a group (never from Lambda's Kafka mapping) is
        // its own partition.
        Delivery::Fifo | Delivery::Partitioned => {
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
        Delivery::Fifo | Delivery::Stream | Delivery::Partitioned => {
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

/// A record your planner refuses for good, with the reason (naming the
/// field and the rule): quarantined, never retried.
///
/// ```
/// use shared_core::batch::{Invalid, RecordError};
///
/// let refused: RecordError = Invalid::new("quantity: must be at least 1").into();
/// assert_eq!(refused, RecordError::Permanent("quantity: must be at least 1".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Invalid {
    reason: String,
}

impl Invalid {
    /// A refusal with this reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Self { reason: reason.into() }
    }
}

impl crate::error::Classify for RecordError {
    fn class(&self) -> crate::error::ErrorClass {
        match self {
            Self::Permanent(_) => crate::error::ErrorClass::Permanent,
            Self::Transient(_) => crate::error::ErrorClass::Transient,
        }
    }
}

impl From<Invalid> for RecordError {
    fn from(invalid: Invalid) -> Self {
        Self::Permanent(invalid.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_waits_after_its_failure_and_reports_it_alone() {
        let records: Vec<RecordRef> = [("t-0@1", "t-0"), ("t-1@1", "t-1"), ("t-0@2", "t-0"), ("t-1@2", "t-1")]
            .iter()
            .map(|(id, g)| RecordRef { id: (*id).into(), group: Some((*g).into()) })
            .collect();
        let ended = [
            Disposition::Failed("throttled".into()),
            Disposition::Done(Outcome::Applied),
            Disposition::Done(Outcome::Applied),
            Disposition::Unprocessed("not reached"),
        ];
        let (response, summary) = settle(Delivery::Partitioned, &records, &ended, false).unwrap();
        assert_eq!(response.ids(), ["t-0@1", "t-1@2"]);
        assert_eq!((summary.failed, summary.applied), (3, 1));
        let blocked = blocked_by_earlier_failures(Delivery::Partitioned, &records, &[true, false, false, false]);
        assert_eq!(blocked, [false, false, true, false]);
    }

    #[test]
    fn response_serializes_as_lambda_expects() {
        let r = BatchResponse::failed(["a", "b", "a"]);
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"batchItemFailures":[{"itemIdentifier":"a"},{"itemIdentifier":"b"}]}"#
        );
    }
}
