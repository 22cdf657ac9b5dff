//! Idempotency keys, derived from event identity (never from function or type
//! names, so renaming code never silently disables deduplication).
//!
//! A key is `{prefix}#{kind}#{identity}`:
//!
//! | kind | identity |
//! |---|---|
//! | `s3` | `bucket/key/versionId`, or `bucket/key/eTag/sequencer` when unversioned |
//! | `sqs` | the `messageId` |
//! | `sqs-body` | the JSON pointer and the value it selects in the body, e.g. `/eventId=e-1` |
//! | `sqs-dedup` | the FIFO `MessageDeduplicationId` |
//! | `ddb-stream` | the stream record's `eventID` |
//! | `kinesis` | `stream/shardId/sequenceNumber`, and `/subSequenceNumber` for a user record of a KPL aggregate |
//! | `kafka` | `topic/partition/offset` |
//! | `kinesis-body`, `kafka-body` | as `sqs-body`: a JSON pointer into the data (value) and what it selects |
//! | `window` | a tumbling window's result: `source/shardId/start/first record` (see [`IdempotencyKey::window`]) |
//!
//! Identities longer than [`MAX_IDENTITY_BYTES`] are replaced by their SHA-256
//! (DynamoDB keys are limited to 2048 bytes; object keys alone may take 1024).

#[cfg(feature = "kafka")]
use crate::event::kafka;
#[cfg(feature = "kinesis")]
use crate::event::kinesis;
#[cfg(feature = "s3")]
use crate::event::s3::ObjectRef;
#[cfg(feature = "sqs")]
use crate::event::sqs;
#[cfg(feature = "dynamodb-stream")]
use crate::event::stream;

pub use shared_core::key::{KeyError, KeySource, Keys, MAX_IDENTITY_BYTES};

/// Derives keys under one prefix, from the identity of the toolkit's event
/// types; [`custom`](Keys::custom) (through `Deref`) for identities of your own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    keys: Keys,
}

impl std::ops::Deref for IdempotencyKey {
    type Target = Keys;

    fn deref(&self) -> &Keys {
        &self.keys
    }
}

impl IdempotencyKey {
    /// Keys under `prefix`. A record with no key is an error.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { keys: Keys::new(prefix) }
    }

    /// Opt out explicitly: a record with no key is processed without
    /// idempotency (`Ok(None)`) instead of failing.
    pub fn allowing_missing(self) -> Self {
        Self { keys: self.keys.allowing_missing() }
    }

    #[cfg(any(feature = "sqs", feature = "dynamodb-stream", feature = "kinesis", feature = "kafka", feature = "s3"))]
    fn key(&self, kind: &str, identity: &str) -> String {
        self.keys.custom(kind, identity)
    }

    /// The key of an S3 object revision.
    #[cfg(feature = "s3")]
    pub fn s3_object(&self, object: &ObjectRef) -> Result<Option<String>, KeyError> {
        let base = format!("{}/{}", object.bucket, object.key);
        if let Some(version) = object.version_id.as_deref().filter(|v| !v.is_empty() && *v != "null") {
            return Ok(Some(self.key("s3", &format!("{base}/{version}"))));
        }
        match (&object.e_tag, &object.sequencer) {
            (Some(e_tag), sequencer) => {
                let sequencer = sequencer.as_deref().unwrap_or("");
                Ok(Some(self.key("s3", &format!("{base}/{e_tag}/{sequencer}"))))
            }
            (None, _) => self.keys.missing(format!("{} has neither versionId nor eTag", object.uri())),
        }
    }

    /// The key of an SQS message.
    #[cfg(feature = "sqs")]
    pub fn sqs(&self, source: &KeySource, message: &sqs::Message) -> Result<Option<String>, KeyError> {
        match source {
            KeySource::MessageId => Ok(Some(self.key("sqs", &message.message_id))),
            KeySource::DeduplicationId => match &message.deduplication_id {
                Some(id) => Ok(Some(self.key("sqs-dedup", id))),
                None => self.keys.missing(format!(
                    "message {} has no MessageDeduplicationId (not from a FIFO queue?)",
                    message.message_id
                )),
            },
            KeySource::BodyPointer(pointer) => {
                let value = serde_json::from_str::<serde_json::Value>(&message.body)
                    .ok()
                    .and_then(|body| body.pointer(pointer).cloned());
                match value {
                    Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(Some(self.sqs_body_string(pointer, &s))),
                    Some(v @ serde_json::Value::Number(_)) => Ok(Some(self.key("sqs-body", &format!("{pointer}={v}")))),
                    _ => self.keys.missing(format!(
                        "message {} has no string or number at {pointer} in its body",
                        message.message_id
                    )),
                }
            }
        }
    }

    /// The key [`sqs`](Self::sqs) derives for a body whose `pointer` selects
    /// the string `value`: for handlers that have already parsed the body and
    /// read that field, so the body is not parsed a second time.
    pub fn sqs_body_string(&self, pointer: &str, value: &str) -> String {
        self.keys.body_string(pointer, value)
    }

    /// The key of a Kinesis record: its stream, shard and sequence number,
    /// and a user record's sub-sequence number; or, with a JSON pointer as
    /// the key source (`IDEMPOTENCY_KEY_SOURCE=/eventId`), what it selects
    /// in the data.
    #[cfg(feature = "kinesis")]
    pub fn kinesis(&self, source: &KeySource, record: &kinesis::Record) -> Result<Option<String>, KeyError> {
        match source {
            KeySource::MessageId => {
                let sub = record.sub_sequence_number.map(|s| format!("/{s}")).unwrap_or_default();
                let identity = [&record.stream, "/", &record.shard_id, "/", &record.sequence_number, &sub];
                Ok(Some(self.key("kinesis", &identity.concat())))
            }
            KeySource::BodyPointer(pointer) => self.body_pointer("kinesis-body", pointer, &record.data, || {
                format!("Kinesis record {} has no string or number at {pointer} in its data", record.record_id())
            }),
            KeySource::DeduplicationId => self.keys.missing(
                "Kinesis records have no deduplication id: use the record's identity or a JSON pointer".into(),
            ),
        }
    }

    /// The key of a Kafka record: its topic, partition and offset; or, with
    /// a JSON pointer as the key source, what it selects in the value.
    #[cfg(feature = "kafka")]
    pub fn kafka(&self, source: &KeySource, record: &kafka::Record) -> Result<Option<String>, KeyError> {
        match source {
            KeySource::MessageId => {
                Ok(Some(self.key("kafka", &format!("{}/{}/{}", record.topic, record.partition, record.offset))))
            }
            KeySource::BodyPointer(pointer) => {
                self.body_pointer("kafka-body", pointer, record.value.as_deref().unwrap_or_default(), || {
                    format!("Kafka record {} has no string or number at {pointer} in its value", record.record_id())
                })
            }
            KeySource::DeduplicationId => self
                .keys
                .missing("Kafka records have no deduplication id: use the record's identity or a JSON pointer".into()),
        }
    }

    /// The key of a tumbling window's result (kind `window`): the stream's
    /// source (`kinesis/<stream>`, `ddb-stream/<table>`), the shard, the
    /// window's start, and the first record folded into its state. The
    /// first record tells apart the parts of a window Lambda ended early
    /// (its state outgrew 1 MB; the window goes on with a fresh state, and
    /// each part has a result of its own).
    #[cfg(any(feature = "kinesis", feature = "dynamodb-stream"))]
    pub fn window(&self, source: &str, shard_id: &str, start: &str, first: Option<&str>) -> String {
        self.key("window", &[source, "/", shard_id, "/", start, "/", first.unwrap_or("-")].concat())
    }

    /// The key `kind` of what `pointer` selects in JSON `data`.
    #[cfg(any(feature = "kinesis", feature = "kafka"))]
    fn body_pointer(
        &self,
        kind: &str,
        pointer: &str,
        data: &[u8],
        missing: impl FnOnce() -> String,
    ) -> Result<Option<String>, KeyError> {
        let value =
            serde_json::from_slice::<serde_json::Value>(data).ok().and_then(|body| body.pointer(pointer).cloned());
        match value {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(Some(self.key(kind, &format!("{pointer}={s}")))),
            Some(v @ serde_json::Value::Number(_)) => Ok(Some(self.key(kind, &format!("{pointer}={v}")))),
            _ => self.keys.missing(missing()),
        }
    }

    /// The key of a DynamoDB stream record.
    #[cfg(feature = "dynamodb-stream")]
    pub fn stream(&self, record: &stream::Record) -> Result<Option<String>, KeyError> {
        if record.event_id.is_empty() {
            return self.keys.missing("stream record has no eventID".into());
        }
        Ok(Some(self.key("ddb-stream", &record.event_id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(body: &str, attributes: serde_json::Value) -> sqs::Message {
        sqs::Message::parse(&json!({"messageId": "m-1", "body": body, "attributes": attributes})).unwrap()
    }

    #[test]
    fn keys_are_stable_and_documented() {
        let keys = IdempotencyKey::new("orders");
        let m = message(r#"{"eventId":"e-1"}"#, json!({"MessageDeduplicationId": "d-1"}));
        assert_eq!(keys.sqs(&KeySource::MessageId, &m).unwrap().unwrap(), "orders#sqs#m-1");
        assert_eq!(keys.sqs(&"/eventId".parse().unwrap(), &m).unwrap().unwrap(), "orders#sqs-body#/eventId=e-1");
        assert_eq!(keys.sqs_body_string("/eventId", "e-1"), "orders#sqs-body#/eventId=e-1");
        assert_eq!(keys.sqs(&KeySource::DeduplicationId, &m).unwrap().unwrap(), "orders#sqs-dedup#d-1");
        let object = ObjectRef {
            bucket: "b".into(),
            key: "k 1".into(),
            size: None,
            e_tag: Some("etag".into()),
            version_id: None,
            sequencer: Some("0A".into()),
        };
        assert_eq!(keys.s3_object(&object).unwrap().unwrap(), "orders#s3#b/k 1/etag/0A");
        let versioned = ObjectRef { version_id: Some("v2".into()), ..object };
        assert_eq!(keys.s3_object(&versioned).unwrap().unwrap(), "orders#s3#b/k 1/v2");
    }

    #[test]
    fn missing_key_is_an_error_unless_opted_out() {
        let m = message(r#"{"other":1}"#, json!({}));
        let err = IdempotencyKey::new("p").sqs(&"/eventId".parse().unwrap(), &m).unwrap_err();
        assert_eq!(err.to_string(), "no idempotency key: message m-1 has no string or number at /eventId in its body");
        assert_eq!(IdempotencyKey::new("p").allowing_missing().sqs(&KeySource::DeduplicationId, &m).unwrap(), None);
        assert!("eventId".parse::<KeySource>().is_err());
    }

    #[test]
    fn long_identities_are_hashed_to_a_bounded_key() {
        let m = message("{}", json!({}));
        let long = sqs::Message { message_id: "x".repeat(5000), ..m };
        let key = IdempotencyKey::new("p").sqs(&KeySource::MessageId, &long).unwrap().unwrap();
        assert!(key.starts_with("p#sqs#sha256:") && key.len() < 100, "{key}");
    }
}
