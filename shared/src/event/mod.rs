//! Typed parsing of the events Lambda hands to the functions: S3 notifications
//! (direct, via SQS, via SNS then SQS, via EventBridge), SQS messages and
//! DynamoDB stream records.
//!
//! Parsing is per record: an envelope is split into raw records first, then each
//! record is parsed on its own, so a record that cannot be parsed yields an
//! [`EventError`] for that record and never fails the rest of its batch.
//! Real producers differ from the documented shapes (the local emulator omits
//! `userIdentity`, `requestParameters` and `sequencer`; stream records carry
//! `ApproximateCreationDateTime` as a number or a string), so each parser fills
//! what may be absent before handing the record to `aws_lambda_events`.

pub mod envelope;
pub mod s3;
pub mod sqs;
pub mod stream;

use serde_json::Value;

/// Why an event or one of its records could not be parsed. Permanent: the same
/// bytes fail the same way on every delivery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("malformed JSON in {what}: {message}")]
    Json { what: &'static str, message: String },
    #[error("{what}: missing field `{field}`")]
    MissingField { what: &'static str, field: &'static str },
    #[error("{what}: {message}")]
    Shape { what: &'static str, message: String },
}

/// Splits an event into its raw `Records`. Fails only when the payload is not
/// an object with a `Records` array: then nothing in it can be processed.
pub fn records(payload: &Value) -> Result<&[Value], EventError> {
    match payload.get("Records") {
        Some(Value::Array(records)) => Ok(records),
        Some(_) => Err(EventError::Shape { what: "event", message: "`Records` is not an array".into() }),
        None => Err(EventError::MissingField { what: "event", field: "Records" }),
    }
}

pub(crate) fn json_error(what: &'static str, e: serde_json::Error) -> EventError {
    EventError::Json { what, message: e.to_string() }
}
