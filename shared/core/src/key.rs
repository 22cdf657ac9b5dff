//! Idempotency keys derived from event identity (never from function or type
//! names, so renaming code never silently disables deduplication), and
//! payload fingerprints that tell a duplicate from a reused key.
//!
//! A key is `{prefix}#{kind}#{identity}`. The toolkit's adapters use these
//! kinds; a domain of your own picks its own with [`Keys::custom`]:
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
//!
//! ```
//! use shared_core::key::{Keys, fingerprint};
//!
//! let keys = Keys::new("inventory");
//! assert_eq!(keys.custom("reservation", "r-42"), "inventory#reservation#r-42");
//! // Same payload, same fingerprint: a duplicate. Another payload under the
//! // same key: a reused key, reported instead of replayed.
//! assert_eq!(fingerprint(b"{\"sku\":\"A\"}"), fingerprint(b"{\"sku\":\"A\"}"));
//! assert_ne!(fingerprint(b"{\"sku\":\"A\"}"), fingerprint(b"{\"sku\":\"B\"}"));
//! ```

use std::str::FromStr;

use sha2::{Digest, Sha256};

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
    /// The record lacks what its key is derived from.
    #[error("no idempotency key: {0}")]
    Missing(String),
    /// A configured key source that is none of the known forms.
    #[error("idempotency key source {0:?} is not messageId, deduplicationId or a JSON pointer such as /eventId")]
    BadSource(String),
}

/// Derives keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
    allow_missing: bool,
}

impl Keys {
    /// Keys under `prefix`. A record with no key is an error.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into(), allow_missing: false }
    }

    /// Opt out explicitly: a record with no key is processed without
    /// idempotency (`Ok(None)` from [`missing`](Self::missing)) instead of failing.
    pub fn allowing_missing(mut self) -> Self {
        self.allow_missing = true;
        self
    }

    /// The prefix keys are made under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key of an identity of your own kind: `{prefix}#{kind}#{identity}`.
    pub fn custom(&self, kind: &str, identity: &str) -> String {
        self.joined(kind, &[identity])
    }

    /// [`custom`](Self::custom) of the identity `parts` make together, built
    /// in one allocation (keys are made for every record).
    fn joined(&self, kind: &str, parts: &[&str]) -> String {
        let identity_len: usize = parts.iter().map(|p| p.len()).sum();
        if identity_len > MAX_IDENTITY_BYTES {
            let mut digest = Sha256::new();
            parts.iter().for_each(|p| digest.update(p.as_bytes()));
            return format!("{}#{kind}#sha256:{}", self.prefix, hex(&digest.finalize()));
        }
        let mut key = String::with_capacity(self.prefix.len() + kind.len() + 2 + identity_len);
        key.push_str(&self.prefix);
        key.push('#');
        key.push_str(kind);
        key.push('#');
        parts.iter().for_each(|p| key.push_str(p));
        key
    }

    /// What to return when a record has nothing to derive its key from: the
    /// error naming `why`, or `Ok(None)` after [`allowing_missing`](Self::allowing_missing).
    pub fn missing(&self, why: String) -> Result<Option<String>, KeyError> {
        if self.allow_missing { Ok(None) } else { Err(KeyError::Missing(why)) }
    }

    /// The key of a message body whose JSON `pointer` selects the string
    /// `value` (kind `sqs-body`).
    pub fn body_string(&self, pointer: &str, value: &str) -> String {
        self.joined("sqs-body", &[pointer, "=", value])
    }

    /// The key of a message body by the value its JSON `pointer` selects
    /// (kind `sqs-body`): a non-empty string as it is, a number as written;
    /// `None` when the body has neither there.
    ///
    /// ```
    /// use serde_json::json;
    /// use shared_core::key::Keys;
    ///
    /// let keys = Keys::new("p");
    /// assert_eq!(keys.body_pointer("/id", &json!({"id": "e-1"})).as_deref(), Some("p#sqs-body#/id=e-1"));
    /// assert_eq!(keys.body_pointer("/id", &json!({"id": 7})).as_deref(), Some("p#sqs-body#/id=7"));
    /// assert_eq!(keys.body_pointer("/id", &json!({"id": ""})), None);
    /// ```
    pub fn body_pointer(&self, pointer: &str, body: &serde_json::Value) -> Option<String> {
        match body.pointer(pointer)? {
            serde_json::Value::String(s) if !s.is_empty() => Some(self.body_string(pointer, s)),
            n @ serde_json::Value::Number(_) => Some(self.joined("sqs-body", &[pointer, "=", &n.to_string()])),
            _ => None,
        }
    }
}

/// SHA-256 of a payload, hex: the `validation` attribute of an idempotency
/// record, which tells a duplicate (same fingerprint) from a key reused with
/// another payload.
pub fn fingerprint(payload: &[u8]) -> String {
    hex(&Sha256::digest(payload))
}

/// [`fingerprint`] of a JSON value's meaning, not its text: object members
/// in key order and no white space, so a resend with its fields reordered or
/// spaced otherwise is the same payload (Powertools hashes `json.dumps` with
/// `sort_keys=True` for the same reason).
///
/// ```
/// use serde_json::json;
/// use shared_core::key::fingerprint_json;
///
/// assert_eq!(fingerprint_json(&json!({"a": 1, "b": [2, {"d": 4, "c": 3}]})),
///            fingerprint_json(&json!({"b": [2, {"c": 3, "d": 4}], "a": 1})));
/// assert_ne!(fingerprint_json(&json!({"a": 1})), fingerprint_json(&json!({"a": 2})));
/// ```
pub fn fingerprint_json(value: &serde_json::Value) -> String {
    use std::fmt::Write;
    fn write(out: &mut Hasher, value: &serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                let mut members: Vec<(&String, &serde_json::Value)> = map.iter().collect();
                members.sort_by(|a, b| a.0.cmp(b.0));
                out.0.update(b"{");
                for (i, (k, v)) in members.into_iter().enumerate() {
                    if i > 0 {
                        out.0.update(b",");
                    }
                    let _ = write!(out, "{}:", serde_json::Value::String(k.clone()));
                    write(out, v);
                }
                out.0.update(b"}");
            }
            serde_json::Value::Array(items) => {
                out.0.update(b"[");
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.0.update(b",");
                    }
                    write(out, v);
                }
                out.0.update(b"]");
            }
            scalar => {
                let _ = write!(out, "{scalar}");
            }
        }
    }
    let mut hasher = Hasher::default();
    write(&mut hasher, value);
    hasher.finish()
}

/// [`fingerprint`] of text written piece by piece (`write!` into it), without
/// building the text: the same digest as `fingerprint` of the whole.
#[derive(Debug, Default)]
pub struct Hasher(Sha256);

impl Hasher {
    /// The lower-case hex SHA-256 of everything written.
    pub fn finish(self) -> String {
        hex(&self.0.finalize())
    }
}

impl std::fmt::Write for Hasher {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_keys_are_stable_and_long_identities_bounded() {
        let keys = Keys::new("p");
        assert_eq!(keys.custom("kind", "id-1"), "p#kind#id-1");
        assert_eq!(keys.body_string("/eventId", "e-1"), "p#sqs-body#/eventId=e-1");
        let long = keys.custom("kind", &"x".repeat(5000));
        assert!(long.starts_with("p#kind#sha256:") && long.len() < 100, "{long}");
        // A body key's identity is bounded as a whole, as one string.
        let value = "v".repeat(MAX_IDENTITY_BYTES);
        let joined = format!("/eventId={value}");
        assert_eq!(keys.body_string("/eventId", &value), keys.custom("sqs-body", &joined));
        assert_eq!(keys.body_string("/eventId", &value[..500]), format!("p#sqs-body#/eventId={}", &value[..500]));
    }

    #[test]
    fn missing_is_an_error_unless_opted_out() {
        assert!(Keys::new("p").missing("none".into()).is_err());
        assert_eq!(Keys::new("p").allowing_missing().missing("none".into()), Ok(None));
    }

    #[test]
    fn fingerprint_is_hex_sha256() {
        assert_eq!(fingerprint(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
