//! SQS messages: the fields the batch layer needs (id, FIFO group and
//! deduplication id, receive count) and typed JSON bodies.

use std::borrow::Cow;

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
///
/// The body is taken as its JSON literal and unescaped by
/// [`unescape_literal`] into a string of its final size: serde_json would
/// unescape it into a scratch buffer that every record's parse grows anew
/// from empty, then copy it out.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "messageId", default)]
    message_id: Option<String>,
    #[serde(default, borrow)]
    body: Option<&'a RawValue>,
    #[serde(rename = "eventSourceARN", default)]
    event_source_arn: Option<String>,
    #[serde(default, borrow)]
    attributes: Option<WireAttributes<'a>>,
}

/// The system attributes the batch layer reads.
#[derive(Deserialize, Default)]
struct WireAttributes<'a> {
    #[serde(rename = "MessageGroupId", default)]
    group_id: Option<String>,
    #[serde(rename = "MessageDeduplicationId", default)]
    deduplication_id: Option<String>,
    #[serde(rename = "ApproximateReceiveCount", default, borrow)]
    receive_count: Option<Cow<'a, str>>,
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
        if !body.get().starts_with('"') {
            return Err(EventError::Shape { what: WHAT, message: "`body` is not a string".into() });
        }
        let body = unescape_literal(body.get())
            .map_err(|reason| EventError::Json { what: WHAT, message: format!("`body`: {reason}") })?;
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

    /// The body read as your `T` ([`super::typed`]): not JSON is
    /// `malformed JSON in SQS message body: ...`; the wrong shape names the
    /// field, `invalid: {field}: ...`.
    pub fn json_body<T: DeserializeOwned>(&self) -> Result<T, EventError> {
        super::typed("SQS message body", &self.body)
    }
}

/// The string a JSON string literal stands for. `literal` is one serde_json
/// has already read as a value (so its escapes are well-formed and it has no
/// raw control characters); what it may still hold is a `\u` escape of half
/// a surrogate pair, an error here as it is to serde_json.
fn unescape_literal(literal: &str) -> Result<String, &'static str> {
    let inner = literal.strip_prefix('"').and_then(|l| l.strip_suffix('"')).ok_or("not a string")?;
    let mut out = String::with_capacity(inner.len());
    let mut rest = inner;
    while let Some(at) = memchr::memchr(b'\\', rest.as_bytes()) {
        out.push_str(&rest[..at]);
        let escape = &rest[at + 1..];
        let (ch, used) = match escape.as_bytes().first() {
            Some(b'"') => ('"', 1),
            Some(b'\\') => ('\\', 1),
            Some(b'/') => ('/', 1),
            Some(b'b') => ('\u{8}', 1),
            Some(b'f') => ('\u{c}', 1),
            Some(b'n') => ('\n', 1),
            Some(b'r') => ('\r', 1),
            Some(b't') => ('\t', 1),
            Some(b'u') => unicode_escape(escape)?,
            _ => return Err("invalid escape"),
        };
        out.push(ch);
        rest = &escape[used..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The character of `escape` (`u` and its hex digits, after the backslash),
/// a surrogate pair's two escapes taken together, and the bytes it used.
fn unicode_escape(escape: &str) -> Result<(char, usize), &'static str> {
    let hex = |at: usize| {
        escape
            .get(at..at + 4)
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|h| u16::from_str_radix(h, 16).ok())
            .ok_or("invalid \\u escape")
    };
    match hex(1)? {
        first @ 0xD800..=0xDBFF => {
            let second = escape.get(5..7).filter(|s| *s == "\\u").map(|_| hex(7)).transpose()?;
            let Some(second @ 0xDC00..=0xDFFF) = second else {
                return Err("lone leading surrogate in hex escape");
            };
            let code = 0x10000 + ((u32::from(first) - 0xD800) << 10) + (u32::from(second) - 0xDC00);
            char::from_u32(code).map(|c| (c, 11)).ok_or("invalid unicode code point")
        }
        0xDC00..=0xDFFF => Err("lone trailing surrogate in hex escape"),
        code => char::from_u32(u32::from(code)).map(|c| (c, 5)).ok_or("invalid unicode code point"),
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
    fn a_body_that_is_not_a_string_or_not_valid_text_names_what_is_wrong() {
        let record = |body: &str| RawValue::from_string(format!(r#"{{"messageId":"m-1","body":{body}}}"#)).unwrap();
        assert_eq!(
            Message::parse_raw(&record("5")),
            Err(EventError::Shape { what: WHAT, message: "`body` is not a string".into() })
        );
        assert_eq!(
            Message::parse_raw(&record(r#""a\ud800b""#)),
            Err(EventError::Json { what: WHAT, message: "`body`: lone leading surrogate in hex escape".into() })
        );
        assert_eq!(Message::parse_raw(&record(r#""\ud83d\ude00 \u00e9\n""#)).unwrap().body, "\u{1F600} \u{e9}\n");
    }

    /// A JSON string literal built of arbitrary pieces: text, every short
    /// escape, and `\u` escapes of any code unit (lone surrogates included).
    fn literal() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            "[^\"\\\\\u{0}-\u{1f}]{0,6}",
            prop::sample::select(vec!["\\\"", "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t"])
                .prop_map(str::to_owned),
            any::<u16>().prop_map(|u| format!("\\u{u:04x}")),
            (0xD800u16..0xDC00, 0xDC00u16..0xE000).prop_map(|(h, l)| format!("\\u{h:04X}\\u{l:04x}")),
        ];
        prop::collection::vec(piece, 0..12).prop_map(|pieces| format!("\"{}\"", pieces.concat()))
    }

    proptest::proptest! {
        /// The body's unescaping agrees with serde_json's on every literal:
        /// the same string, or an error for both.
        #[test]
        fn unescaping_agrees_with_serde_json(literal in literal()) {
            let ours = unescape_literal(&literal);
            match serde_json::from_str::<String>(&literal) {
                Ok(theirs) => proptest::prop_assert_eq!(ours, Ok(theirs), "{}", literal),
                Err(e) => proptest::prop_assert!(ours.is_err(), "{} parsed, serde_json: {}", literal, e),
            }
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
