//! Partial batch responses and per-invocation accounting.
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
    pub batch_item_failures: Vec<ItemFailure>,
}

/// One failed record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemFailure {
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

impl Summary {
    pub fn total(&self) -> u64 {
        self.applied + self.stale + self.duplicate + self.quarantined + self.ignored + self.failed
    }

    /// Counts one store outcome.
    pub fn count(&mut self, outcome: crate::state::Outcome) {
        match outcome {
            crate::state::Outcome::Applied => self.applied += 1,
            crate::state::Outcome::Stale => self.stale += 1,
            crate::state::Outcome::Duplicate => self.duplicate += 1,
            crate::state::Outcome::KeyReused => self.quarantined += 1,
        }
    }

    /// Logs the one summary line of an invocation.
    pub fn log(&self, function: &str) {
        tracing::info!(
            function,
            applied = self.applied,
            stale = self.stale,
            duplicate = self.duplicate,
            quarantined = self.quarantined,
            ignored = self.ignored,
            failed = self.failed,
            records = self.total(),
            "invocation summary"
        );
    }
}

/// An invocation-level failure: the mapping retries the whole batch.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct InvocationError {
    pub message: String,
}

impl InvocationError {
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into() }
    }
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

    #[test]
    fn all_failed_policy() {
        let all = BatchResponse::failed(["a", "b"]);
        assert!(finish(all.clone(), 2, false).is_ok());
        assert!(finish(all, 2, true).is_err());
        assert!(finish(BatchResponse::failed(["a"]), 2, true).is_ok());
    }
}
