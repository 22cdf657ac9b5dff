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
//!
//! Identities longer than [`MAX_IDENTITY_BYTES`] are replaced by their SHA-256
//! (DynamoDB keys are limited to 2048 bytes; object keys alone may take 1024).

use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::event::s3::ObjectRef;
use crate::event::{sqs, stream};

/// Longest identity kept readable in a key.
pub const MAX_IDENTITY_BYTES: usize = 512;

/// Where an SQS message's key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The SQS `messageId` (the default): deduplicates redeliveries of one message.
    MessageId,
    /// A JSON pointer into the body, such as `/eventId`: deduplicates
    /// producers that send the same event twice.
    BodyPointer(String),
    /// The FIFO queue's `MessageDeduplicationId`.
    DeduplicationId,
}

impl FromStr for KeySource {
    type Err = KeyError;

    /// `messageId`, `deduplicationId`, or a JSON pointer starting with `/`.
    fn from_str(s: &str) -> Result<Self, KeyError> {
        match s {
            "messageId" => Ok(Self::MessageId),
            "deduplicationId" => Ok(Self::DeduplicationId),
            p if p.starts_with('/') && p.len() > 1 => Ok(Self::BodyPointer(p.to_owned())),
            other => Err(KeyError::BadSource(other.to_owned())),
        }
    }
}

/// Why a record has no key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no idempotency key: {0}")]
    Missing(String),
    #[error("idempotency key source {0:?} is not messageId, deduplicationId or a JSON pointer such as /eventId")]
    BadSource(String),
}

/// Derives keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    prefix: String,
    allow_missing: bool,
}

impl IdempotencyKey {
    /// Keys under `prefix`. A record with no key is an error.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into(), allow_missing: false }
    }

    /// Opt out explicitly: a record with no key is processed without
    /// idempotency (`Ok(None)`) instead of failing.
    pub fn allowing_missing(mut self) -> Self {
        self.allow_missing = true;
        self
    }

    fn key(&self, kind: &str, identity: &str) -> String {
        if identity.len() > MAX_IDENTITY_BYTES {
            format!("{}#{kind}#sha256:{}", self.prefix, super::hex(&Sha256::digest(identity.as_bytes())))
        } else {
            format!("{}#{kind}#{identity}", self.prefix)
        }
    }

    fn missing(&self, why: String) -> Result<Option<String>, KeyError> {
        if self.allow_missing { Ok(None) } else { Err(KeyError::Missing(why)) }
    }

    /// The key of an S3 object revision.
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
            (None, _) => self.missing(format!("{} has neither versionId nor eTag", object.uri())),
        }
    }

    /// The key of an SQS message.
    pub fn sqs(&self, source: &KeySource, message: &sqs::Message) -> Result<Option<String>, KeyError> {
        match source {
            KeySource::MessageId => Ok(Some(self.key("sqs", &message.message_id))),
            KeySource::DeduplicationId => match &message.deduplication_id {
                Some(id) => Ok(Some(self.key("sqs-dedup", id))),
                None => self.missing(format!(
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
                    _ => self.missing(format!(
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
        self.key("sqs-body", &format!("{pointer}={value}"))
    }

    /// The key of a DynamoDB stream record.
    pub fn stream(&self, record: &stream::Record) -> Result<Option<String>, KeyError> {
        if record.event_id.is_empty() {
            return self.missing("stream record has no eventID".into());
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
