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

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// Why an event or one of its records could not be parsed. Permanent: the same
/// bytes fail the same way on every delivery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The text is not valid JSON, or not of the shape its type expects.
    #[error("malformed JSON in {what}: {message}")]
    Json {
        /// What was being parsed, e.g. `"SQS message"`.
        what: &'static str,
        /// serde_json's error, with its line and column.
        message: String,
    },
    /// A field the record cannot be processed without is absent.
    #[error("{what}: missing field `{field}`")]
    MissingField {
        /// What was being parsed, e.g. `"SQS message"`.
        what: &'static str,
        /// The field's wire name, e.g. `messageId`.
        field: &'static str,
    },
    /// Valid JSON of the wrong shape: not an object, an unknown event name,
    /// a number that is not one.
    #[error("{what}: {message}")]
    Shape {
        /// What was being parsed, e.g. `"SQS message"`.
        what: &'static str,
        /// What is wrong with it.
        message: String,
    },
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

/// An event whose records are kept as raw JSON text until each is parsed on
/// its own, straight into its typed form: the functions' hot path, without a
/// `serde_json::Value` tree of the whole batch (which costs more than the
/// typed parse itself; see the README's performance section).
#[derive(Debug, Deserialize)]
#[serde(from = "RawEvent")]
pub struct RawBatch {
    records: Result<Vec<Box<RawValue>>, EventError>,
}

/// The wire form: any JSON object; `Records` is checked after.
#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "Records", default)]
    records: Option<Box<RawValue>>,
}

impl From<RawEvent> for RawBatch {
    fn from(event: RawEvent) -> Self {
        let records = match event.records {
            None => Err(EventError::MissingField { what: "event", field: "Records" }),
            Some(raw) => serde_json::from_str(raw.get())
                .map_err(|_| EventError::Shape { what: "event", message: "`Records` is not an array".into() }),
        };
        Self { records }
    }
}

impl RawBatch {
    /// Reads an event from its JSON text.
    pub fn from_json(text: &str) -> Result<Self, EventError> {
        serde_json::from_str(text).map_err(|e| json_error("event", e))
    }

    /// The same event from a `Value` (for tests and tools that build events
    /// as values).
    pub fn from_value(payload: &Value) -> Result<Self, EventError> {
        Self::from_json(&payload.to_string())
    }

    /// The raw records. Fails, like [`records`], only when `Records` is
    /// missing or not an array.
    pub fn records(&self) -> Result<&[Box<RawValue>], EventError> {
        self.records.as_deref().map_err(Clone::clone)
    }
}

pub(crate) fn json_error(what: &'static str, e: serde_json::Error) -> EventError {
    EventError::Json { what, message: e.to_string() }
}
