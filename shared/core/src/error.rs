//! The one classification of failures that every layer uses: transient
//! (retry), permanent (quarantine) or fatal (fail the invocation).

use serde::{Deserialize, Serialize};

/// How a failure should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorClass {
    /// Retry later: throttling, timeouts, 5xx, conflicts.
    Transient,
    /// The record or request itself is wrong; retrying cannot help.
    Permanent,
    /// Nothing can work: missing table, no permission.
    Fatal,
}

/// An error that knows its class: the one question every layer asks of a
/// failure. Errors of different layers convert into one another through it.
pub trait Classify {
    /// How this failure should be handled.
    fn class(&self) -> ErrorClass;
}

/// Error codes AWS services return for conditions that pass with time:
/// throttling, capacity, conflicts and server faults.
/// <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Programming.Errors.html>
const TRANSIENT_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    // A `BatchExecuteStatement` statement's codes lack the suffix.
    "ProvisionedThroughputExceeded",
    "ThrottlingError",
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "SlowDown",
    "InternalServerError",
    "InternalFailure",
    "InternalError",
    "ServiceUnavailable",
    "TransactionConflict",
    "TransactionConflictException",
    "TransactionInProgressException",
    "ItemCollectionSizeLimitExceededException",
    "RequestTimeout",
    "RequestTimeoutException",
];

/// Codes that mean nothing this function does can succeed.
const FATAL_CODES: &[&str] = &[
    "ResourceNotFoundException",
    "ResourceNotFound",
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "NoSuchBucket",
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
];

/// Classifies a service response by its error code and HTTP status.
pub fn classify_code(code: Option<&str>, status: Option<u16>) -> ErrorClass {
    if let Some(code) = code {
        if TRANSIENT_CODES.contains(&code) {
            return ErrorClass::Transient;
        }
        if FATAL_CODES.contains(&code) {
            return ErrorClass::Fatal;
        }
    }
    match status {
        Some(429) | Some(500..=599) => ErrorClass::Transient,
        Some(403) => ErrorClass::Fatal,
        _ if code.is_none() => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}
