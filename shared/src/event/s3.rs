//! S3 object notifications in every shape they reach a function: a direct S3
//! event, an SQS message whose body is an S3 event, an SNS notification of an
//! S3 event delivered through SQS, and an EventBridge "Object Created" event.
//! All yield one [`ObjectRef`].

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::s3::S3EventRecord;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{EventError, json_error};

const WHAT: &str = "S3 notification";

/// The object a notification is about. `key` is decoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    /// `s3.bucket.name` (EventBridge: `detail.bucket.name`).
    pub bucket: String,
    /// `s3.object.key`, form-decoded (see [`decode_key`]).
    pub key: String,
    /// `s3.object.size`, in bytes.
    pub size: Option<u64>,
    /// `s3.object.eTag` (EventBridge: `etag`): the content's identity.
    pub e_tag: Option<String>,
    /// `s3.object.versionId`, on versioned buckets (`"null"` for an object
    /// written before versioning was enabled).
    pub version_id: Option<String>,
    /// `s3.object.sequencer`: orders the events of one key.
    pub sequencer: Option<String>,
}

impl ObjectRef {
    /// `s3://bucket/key`, for logs and errors.
    pub fn uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    /// The version this notification is about: the version id on versioned
    /// buckets, else the eTag (content identity), else the sequencer.
    pub fn revision(&self) -> &str {
        self.version_id
            .as_deref()
            .filter(|v| !v.is_empty() && *v != "null")
            .or(self.e_tag.as_deref().filter(|e| !e.is_empty()))
            .or(self.sequencer.as_deref())
            .unwrap_or("-")
    }
}

/// What one notification asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// An object was created.
    ObjectCreated(ObjectRef),
    /// S3's `s3:TestEvent`, sent when notifications are configured: nothing to do.
    TestEvent,
    /// Another S3 event (for example `ObjectRemoved`): nothing to do.
    Ignored {
        /// `eventName` (EventBridge: `detail-type`), e.g. `ObjectRemoved:Delete`.
        event_name: String,
    },
}

/// Decodes an object key as S3 notifications encode it: form-style, so `+`
/// is a space, `%2B` a plus, and `%XX` escapes are UTF-8 bytes.
pub fn decode_key(encoded: &str) -> Result<String, EventError> {
    let spaced = encoded.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).decode_utf8().map(|k| k.into_owned()).map_err(|_| EventError::Shape {
        what: WHAT,
        message: format!("object key {encoded:?} does not decode to UTF-8"),
    })
}

/// Parses the notifications in an SQS message body: an S3 event, an SNS
/// envelope of one, an EventBridge event, or S3's test event.
pub fn from_sqs_body(body: &str) -> Vec<Result<Notification, EventError>> {
    match serde_json::from_str::<Value>(body) {
        Ok(value) => from_value(&value, 0),
        Err(e) => vec![Err(json_error("SQS message body", e))],
    }
}

/// Parses the notifications of any supported shape (see [`from_sqs_body`]).
pub fn from_value(value: &Value, depth: u8) -> Vec<Result<Notification, EventError>> {
    let Some(object) = value.as_object() else {
        return vec![Err(EventError::Shape { what: WHAT, message: "expected a JSON object".into() })];
    };
    if object.contains_key("Records") {
        return match super::records(value) {
            Ok(records) => records
                .iter()
                .flat_map(|r| {
                    // SNS -> Lambda: each record wraps one notification.
                    if r.get("Sns").is_some() && depth == 0 { from_sns(r, depth) } else { vec![from_s3_record(r)] }
                })
                .collect(),
            Err(e) => vec![Err(e)],
        };
    }
    if object.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return vec![Ok(Notification::TestEvent)];
    }
    if super::envelope::is_sns(value) {
        return from_sns(value, depth);
    }
    if object.contains_key("detail-type") {
        return vec![from_eventbridge(value)];
    }
    vec![Err(EventError::Shape {
        what: WHAT,
        message:
            "unknown shape: expected an S3 event (`Records`), an SNS notification, an EventBridge event or s3:TestEvent"
                .into(),
    })]
}

/// Unwraps an SNS notification whose `Message` is an S3 event (SNS does not
/// wrap SNS, so only one level).
fn from_sns(value: &Value, depth: u8) -> Vec<Result<Notification, EventError>> {
    if depth > 0 {
        return vec![Err(EventError::Shape { what: WHAT, message: "nested SNS envelope".into() })];
    }
    match super::envelope::sns_message(value) {
        Ok(sns) => match serde_json::from_str::<Value>(&sns.message) {
            Ok(inner) => from_value(&inner, depth + 1),
            Err(e) => vec![Err(json_error("SNS Message", e))],
        },
        Err(e) => vec![Err(e)],
    }
}

/// Parses one record of an S3 event.
pub fn from_s3_record(record: &Value) -> Result<Notification, EventError> {
    let mut record = record
        .as_object()
        .cloned()
        .ok_or_else(|| EventError::Shape { what: WHAT, message: "record is not an object".into() })?;
    // Fields S3 always sends but emulators and hand-written events omit, and
    // which `aws_lambda_events` requires. None of them is used here.
    fill(&mut record, "userIdentity", Value::Object(Map::new()));
    fill(&mut record, "requestParameters", Value::Object(Map::new()));
    fill(&mut record, "eventTime", Value::String("1970-01-01T00:00:00Z".into()));
    let record: S3EventRecord = serde_json::from_value(Value::Object(record)).map_err(|e| json_error(WHAT, e))?;
    let event_name = record.event_name.clone().unwrap_or_default();
    if !event_name.is_empty()
        && !event_name.starts_with("ObjectCreated:")
        && !event_name.starts_with("s3:ObjectCreated:")
    {
        return Ok(Notification::Ignored { event_name });
    }
    let bucket = record
        .s3
        .bucket
        .name
        .filter(|b| !b.is_empty())
        .ok_or(EventError::MissingField { what: WHAT, field: "s3.bucket.name" })?;
    let encoded = record
        .s3
        .object
        .key
        .filter(|k| !k.is_empty())
        .ok_or(EventError::MissingField { what: WHAT, field: "s3.object.key" })?;
    let size = match record.s3.object.size {
        Some(n) if n < 0 => {
            return Err(EventError::Shape { what: WHAT, message: format!("s3.object.size is negative: {n}") });
        }
        n => n.map(|n| n as u64),
    };
    Ok(Notification::ObjectCreated(ObjectRef {
        bucket,
        key: decode_key(&encoded)?,
        size,
        e_tag: record.s3.object.e_tag.filter(|e| !e.is_empty()),
        version_id: record.s3.object.version_id.filter(|v| !v.is_empty()),
        sequencer: record.s3.object.sequencer.filter(|s| !s.is_empty()),
    }))
}

#[derive(Deserialize)]
struct EventBridgeDetail {
    bucket: EventBridgeBucket,
    object: EventBridgeObject,
}

#[derive(Deserialize)]
struct EventBridgeBucket {
    name: String,
}

#[derive(Deserialize)]
struct EventBridgeObject {
    key: String,
    size: Option<u64>,
    etag: Option<String>,
    #[serde(rename = "version-id")]
    version_id: Option<String>,
    sequencer: Option<String>,
}

/// Parses an EventBridge event from S3. Only "Object Created" is acted on.
/// EventBridge carries the key as is, not form-encoded like S3 notifications.
fn from_eventbridge(value: &Value) -> Result<Notification, EventError> {
    const WHAT_EB: &str = "EventBridge S3 event";
    let event: EventBridgeEvent<Value> = super::envelope::eventbridge(value)?;
    if event.source != "aws.s3" {
        return Err(EventError::Shape { what: WHAT_EB, message: format!("source is {:?}, not aws.s3", event.source) });
    }
    if event.detail_type != "Object Created" {
        return Ok(Notification::Ignored { event_name: event.detail_type });
    }
    let detail: EventBridgeDetail = serde_json::from_value(event.detail).map_err(|e| json_error(WHAT_EB, e))?;
    Ok(Notification::ObjectCreated(ObjectRef {
        bucket: detail.bucket.name,
        key: detail.object.key,
        size: detail.object.size,
        e_tag: detail.object.etag,
        version_id: detail.object.version_id,
        sequencer: detail.object.sequencer,
    }))
}

fn fill(record: &mut Map<String, Value>, field: &str, default: Value) {
    if record.get(field).is_none_or(Value::is_null) {
        record.insert(field.to_owned(), default);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_decode_form_style() {
        for (encoded, decoded) in [
            ("incoming/orders+2026.ndjson", "incoming/orders 2026.ndjson"),
            ("incoming/a%2Bb.csv", "incoming/a+b.csv"),
            ("incoming%2Fsub%2Fx.ndjson", "incoming/sub/x.ndjson"),
            ("incoming/caf%C3%A9+%E2%82%AC.csv", "incoming/café €.csv"),
            ("incoming/a%20b", "incoming/a b"),
        ] {
            assert_eq!(decode_key(encoded).unwrap(), decoded, "{encoded}");
        }
    }

    #[test]
    fn key_that_is_not_utf8_is_an_error_naming_it() {
        let err = decode_key("bad%FF").unwrap_err();
        assert!(err.to_string().contains("bad%FF"), "{err}");
    }

    #[test]
    fn emulator_shaped_record_without_optional_fields_parses() {
        let body = r#"{"Records":[{"eventVersion":"2.1","eventSource":"aws:s3","awsRegion":"us-east-1",
            "eventTime":"2026-11-28T16:40:10.982Z","eventName":"ObjectCreated:Put",
            "s3":{"s3SchemaVersion":"1.0","configurationId":"x","bucket":{"name":"b","arn":"arn:aws:s3:::b"},
            "object":{"key":"incoming%2Fa+b%2Bc.ndjson","size":2,"eTag":"401b"}}}]}"#;
        let parsed = from_sqs_body(body);
        assert_eq!(
            parsed,
            vec![Ok(Notification::ObjectCreated(ObjectRef {
                bucket: "b".into(),
                key: "incoming/a b+c.ndjson".into(),
                size: Some(2),
                e_tag: Some("401b".into()),
                version_id: None,
                sequencer: None,
            }))]
        );
    }

    #[test]
    fn test_event_and_unknown_shapes() {
        assert_eq!(
            from_sqs_body(r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"b"}"#),
            vec![Ok(Notification::TestEvent)]
        );
        let unknown = from_sqs_body(r#"{"hello":"world"}"#);
        assert!(matches!(&unknown[..], [Err(EventError::Shape { .. })]));
        assert!(matches!(&from_sqs_body("not json")[..], [Err(EventError::Json { .. })]));
    }

    #[test]
    fn one_bad_record_does_not_fail_the_others() {
        let body = r#"{"Records":[
            {"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"k1"}}},
            {"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"}}},
            {"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"k3"}}}]}"#;
        let parsed = from_sqs_body(body);
        assert_eq!(parsed.len(), 3);
        assert!(parsed[0].is_ok() && parsed[1].is_err() && parsed[2].is_ok(), "{parsed:?}");
        assert!(parsed[1].as_ref().unwrap_err().to_string().contains("object"), "{parsed:?}");
    }
}
