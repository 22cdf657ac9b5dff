//! SQS messages: the fields the batch layer needs (id, FIFO group and
//! deduplication id, receive count) and typed JSON bodies.

use aws_lambda_events::event::sqs::SqsMessage;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;

use super::{EventError, json_error};

const WHAT: &str = "SQS message";

/// One SQS message as delivered to Lambda.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// `messageId`: the id reported in `batchItemFailures`.
    pub message_id: String,
    /// `body`, as sent (SQS bodies are text).
    pub body: String,
    /// `MessageGroupId` of a FIFO queue's message.
    pub group_id: Option<String>,
    /// `MessageDeduplicationId` of a FIFO queue's message.
    pub deduplication_id: Option<String>,
    /// How many times SQS has delivered this message (1 on first delivery).
    pub receive_count: u32,
    /// `eventSourceARN`: the queue's ARN (a FIFO queue's ends in `.fifo`).
    pub(crate) event_source_arn: Option<String>,
    /// The record's JSON text, for [`sqs_message`](Self::sqs_message).
    pub(crate) raw: String,
}

/// The wire form of the fields read on every message; everything else (the
/// message attributes, the receipt handle, the MD5s) is skipped without being
/// built. `aws_lambda_events`' `SqsMessage` builds all of it, two maps
/// included, which cost the handler about a quarter of its time per record.
#[derive(Deserialize)]
struct Wire {
    #[serde(rename = "messageId", default)]
    message_id: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(rename = "eventSourceARN", default)]
    event_source_arn: Option<String>,
    #[serde(default)]
    attributes: Option<WireAttributes>,
}

/// The system attributes the batch layer reads.
#[derive(Deserialize, Default)]
struct WireAttributes {
    #[serde(rename = "MessageGroupId", default)]
    group_id: Option<String>,
    #[serde(rename = "MessageDeduplicationId", default)]
    deduplication_id: Option<String>,
    #[serde(rename = "ApproximateReceiveCount", default)]
    receive_count: Option<String>,
}

impl Message {
    /// Parses one raw SQS record. A record without `messageId` cannot be
    /// reported in a partial batch response, so it is an error here.
    pub fn parse(record: &Value) -> Result<Self, EventError> {
        // serde reads a struct from an array too (by field position), which
        // would give a message that `message_id_of` cannot report.
        if !record.is_object() {
            return Err(not_an_object());
        }
        let raw = RawValue::from_string(record.to_string()).map_err(|e| json_error(WHAT, e))?;
        Self::parse_raw(&raw)
    }

    /// [`parse`](Self::parse) of a record still in its JSON text: straight
    /// into the typed form, without a `Value` tree first.
    pub fn parse_raw(record: &RawValue) -> Result<Self, EventError> {
        let text = record.get();
        if !text.starts_with('{') {
            return Err(not_an_object());
        }
        let wire: Wire = serde_json::from_str(text).map_err(|e| json_error(WHAT, e))?;
        let message_id = wire
            .message_id
            .filter(|id| !id.is_empty())
            .ok_or(EventError::MissingField { what: WHAT, field: "messageId" })?;
        let body = wire.body.ok_or(EventError::MissingField { what: WHAT, field: "body" })?;
        let attributes = wire.attributes.unwrap_or_default();
        Ok(Self {
            message_id,
            body,
            group_id: attributes.group_id,
            deduplication_id: attributes.deduplication_id,
            receive_count: attributes.receive_count.and_then(|n| n.parse().ok()).unwrap_or(1),
            event_source_arn: wire.event_source_arn,
            raw: text.to_owned(),
        })
    }

    /// The whole message as `aws_lambda_events` reads it (message
    /// attributes, receipt handle, MD5s, every system attribute), parsed
    /// from the record's text when asked for: the batch layer reads only
    /// the fields above.
    pub fn sqs_message(&self) -> Result<SqsMessage, EventError> {
        serde_json::from_str(&self.raw).map_err(|e| json_error(WHAT, e))
    }

    /// True when the message came from a FIFO queue.
    pub fn is_fifo(&self) -> bool {
        self.group_id.is_some() || self.event_source_arn.as_deref().is_some_and(|a| a.ends_with(".fifo"))
    }

    /// Deserializes the body as JSON into `T`.
    pub fn json_body<T: DeserializeOwned>(&self) -> Result<T, EventError> {
        serde_json::from_str(&self.body).map_err(|e| json_error("SQS message body", e))
    }
}

fn not_an_object() -> EventError {
    EventError::Shape { what: WHAT, message: "expected a JSON object".into() }
}

/// The message id of a raw record, if it has one (to report a record that
/// failed to parse).
pub fn message_id_of(record: &Value) -> Option<&str> {
    record.get("messageId").and_then(Value::as_str).filter(|id| !id.is_empty())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_record_that_is_not_an_object_is_a_shape_error() {
        for record in [json!(["m-1", "receipt", "body"]), json!("m-1"), json!(null)] {
            assert_eq!(
                Message::parse(&record),
                Err(EventError::Shape { what: WHAT, message: "expected a JSON object".into() }),
                "{record}"
            );
        }
    }

    #[test]
    fn a_raw_record_parses_as_its_value_does() {
        let record = json!({
            "messageId": "m-1",
            "body": "{\"eventId\":\"e-1\"}",
            "attributes": {"MessageGroupId": "g", "ApproximateReceiveCount": "2"},
            "eventSourceARN": "arn:aws:sqs:eu-west-1:123456789012:orders.fifo",
        });
        let raw = RawValue::from_string(record.to_string()).unwrap();
        assert_eq!(Message::parse_raw(&raw).unwrap(), Message::parse(&record).unwrap());
        for bad in ["[\"m-1\"]", "\"m-1\"", "{\"body\": \"x\"}"] {
            let raw = RawValue::from_string(bad.to_owned()).unwrap();
            let value: Value = serde_json::from_str(bad).unwrap();
            assert_eq!(Message::parse_raw(&raw), Message::parse(&value), "{bad}");
        }
    }

    #[test]
    fn fifo_attributes_and_receive_count_are_read() {
        let record = json!({
            "messageId": "m-1",
            "body": "{}",
            "attributes": {"MessageGroupId": "g", "MessageDeduplicationId": "d", "ApproximateReceiveCount": "3"},
        });
        let message = Message::parse(&record).unwrap();
        assert_eq!(message.group_id.as_deref(), Some("g"));
        assert_eq!(message.deduplication_id.as_deref(), Some("d"));
        assert_eq!(message.receive_count, 3);
        assert!(message.is_fifo());
    }
}
