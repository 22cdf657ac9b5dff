//! Typed parsing of the events Lambda hands to the functions: S3 notifications
//! (direct, via SQS, via SNS then SQS, via EventBridge), SQS messages,
//! DynamoDB stream records, Kinesis records (KPL aggregates split), Kafka
//! records (Amazon MSK and self-managed), and tumbling-window invocations.
//!
//! Parsing is per record: an envelope is split into raw records first, then each
//! record is parsed on its own, so a record that cannot be parsed yields an
//! [`EventError`] for that record and never fails the rest of its batch.
//! Real producers differ from the documented shapes (the local emulator omits
//! `userIdentity`, `requestParameters` and `sequencer`; stream records carry
//! `ApproximateCreationDateTime` as a number or a string), so each parser fills
//! what may be absent before handing the record to `aws_lambda_events`.

#[cfg(feature = "s3")]
pub mod envelope;
pub mod image;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "kinesis")]
pub mod kinesis;
#[cfg(feature = "s3")]
pub mod s3;
#[cfg(feature = "sqs")]
pub mod sqs;
#[cfg(feature = "dynamodb-stream")]
pub mod stream;
#[cfg(any(feature = "kinesis", feature = "dynamodb-stream"))]
pub mod window;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
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
    /// A body (or an image) that is not of the type its function reads:
    /// names the field and what is wrong with it.
    #[error("invalid: {}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
    Invalid {
        /// The field, as a path (`items[0].sku`); empty for the body as a whole.
        path: String,
        /// What is wrong with it.
        message: String,
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
    /// A Kinesis record whose data is a KPL aggregate that is not whole.
    #[cfg(feature = "kinesis")]
    #[error(transparent)]
    Aggregate(#[from] shared_core::kpl::AggregateError),
}

/// Splits an event into its raw `Records`. Fails only when the payload is not
/// an object with a `Records` array: then nothing in it can be processed.
pub fn records(payload: &Value) -> Result<&[Value], EventError> {
    match payload.get("Records") {
        Some(Value::Array(records)) => Ok(records),
        Some(_) => Err(EventError::Shape { what: "event", message: "`Records` is not an array".into() }),
        None => Err(NO_RECORDS),
    }
}

/// An event whose records are kept as raw JSON text until each is parsed on
/// its own, straight into its typed form: the functions' hot path, without a
/// `serde_json::Value` tree of the whole batch (which costs more than the
/// typed parse itself; see the README's performance section).
#[derive(Debug)]
pub struct RawBatch {
    records: Result<Vec<Box<RawValue>>, EventError>,
}

/// Reads any JSON object, splitting its `Records` into records in the same
/// pass over the text; a `Records` that is not an array is kept as the
/// error [`RawBatch::records`] reports.
impl<'de> Deserialize<'de> for RawBatch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EventVisitor)
    }
}

struct EventVisitor;

impl<'de> Visitor<'de> for EventVisitor {
    type Value = RawBatch;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawBatch, A::Error> {
        let mut records = None;
        #[cfg(feature = "kafka")]
        let mut kafka: Option<Result<Vec<Box<RawValue>>, EventError>> = None;
        while let Some(key) = map.next_key::<EventField>()? {
            match key {
                EventField::Records if records.is_some() => return Err(de::Error::duplicate_field("Records")),
                EventField::Records => records = Some(map.next_value::<RecordsField>()?.0),
                #[cfg(feature = "kafka")]
                EventField::KafkaRecords if kafka.is_some() => return Err(de::Error::duplicate_field("records")),
                #[cfg(feature = "kafka")]
                EventField::KafkaRecords => kafka = Some(map.next_value::<KafkaRecordsField>()?.0),
                EventField::Other => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        #[cfg(feature = "kafka")]
        if records.is_none() {
            records = kafka;
        }
        let records = records.unwrap_or(Err(NO_RECORDS));
        Ok(RawBatch { records })
    }
}

#[derive(Deserialize)]
#[serde(field_identifier)]
enum EventField {
    Records,
    /// A Kafka event's records, grouped by `<topic>-<partition>`.
    #[cfg(feature = "kafka")]
    #[serde(rename = "records")]
    KafkaRecords,
    #[serde(other)]
    Other,
}

/// A Kafka event's `records`: an object of groups (`<topic>-<partition>`),
/// each an array of records in offset order, read as one list of records,
/// group after group (each record names its topic and partition itself).
#[cfg(feature = "kafka")]
struct KafkaRecordsField(Result<Vec<Box<RawValue>>, EventError>);

#[cfg(feature = "kafka")]
impl<'de> Deserialize<'de> for KafkaRecordsField {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Groups;
        impl<'de> Visitor<'de> for Groups {
            type Value = KafkaRecordsField;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("Kafka records grouped by topic and partition")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KafkaRecordsField, A::Error> {
                let mut all: Result<Vec<Box<RawValue>>, EventError> = Ok(Vec::new());
                while let Some(group) = map.next_key::<String>()? {
                    let records = map.next_value::<RecordsField>()?.0;
                    match (&mut all, records) {
                        (Ok(all), Ok(records)) => all.extend(records),
                        (Ok(_), Err(_)) => {
                            all = Err(EventError::Shape {
                                what: "Kafka event",
                                message: format!("`records` group {group:?} is not an array"),
                            })
                        }
                        (Err(_), _) => {}
                    }
                }
                Ok(KafkaRecordsField(all))
            }

            fn visit_unit<E: de::Error>(self) -> Result<KafkaRecordsField, E> {
                Ok(KafkaRecordsField(Err(NO_RECORDS)))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KafkaRecordsField, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(not_an_object())
            }

            fn visit_bool<E: de::Error>(self, _: bool) -> Result<KafkaRecordsField, E> {
                Ok(not_an_object())
            }

            fn visit_i64<E: de::Error>(self, _: i64) -> Result<KafkaRecordsField, E> {
                Ok(not_an_object())
            }

            fn visit_u64<E: de::Error>(self, _: u64) -> Result<KafkaRecordsField, E> {
                Ok(not_an_object())
            }

            fn visit_f64<E: de::Error>(self, _: f64) -> Result<KafkaRecordsField, E> {
                Ok(not_an_object())
            }

            fn visit_str<E: de::Error>(self, _: &str) -> Result<KafkaRecordsField, E> {
                Ok(not_an_object())
            }
        }
        fn not_an_object() -> KafkaRecordsField {
            KafkaRecordsField(Err(EventError::Shape {
                what: "Kafka event",
                message: "`records` is not an object".into(),
            }))
        }
        deserializer.deserialize_any(Groups)
    }
}

/// The error of an event without `Records` (or with `"Records": null`).
const NO_RECORDS: EventError = EventError::MissingField { what: "event", field: "Records" };

/// `Records`: an array of raw records, or the error of a value that is not one.
struct RecordsField(Result<Vec<Box<RawValue>>, EventError>);

impl<'de> Deserialize<'de> for RecordsField {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RecordsVisitor)
    }
}

struct RecordsVisitor;

impl RecordsVisitor {
    fn not_an_array() -> RecordsField {
        RecordsField(Err(EventError::Shape { what: "event", message: "`Records` is not an array".into() }))
    }
}

impl<'de> Visitor<'de> for RecordsVisitor {
    type Value = RecordsField;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RecordsField, A::Error> {
        let mut records = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(record) = seq.next_element::<Box<RawValue>>()? {
            records.push(record);
        }
        Ok(RecordsField(Ok(records)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RecordsField, A::Error> {
        while map.next_entry::<de::IgnoredAny, de::IgnoredAny>()?.is_some() {}
        Ok(Self::not_an_array())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<RecordsField, E> {
        Ok(Self::not_an_array())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<RecordsField, E> {
        Ok(Self::not_an_array())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<RecordsField, E> {
        Ok(Self::not_an_array())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<RecordsField, E> {
        Ok(Self::not_an_array())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<RecordsField, E> {
        Ok(Self::not_an_array())
    }

    /// `"Records": null` reads as no `Records` at all.
    fn visit_unit<E: de::Error>(self) -> Result<RecordsField, E> {
        Ok(RecordsField(Err(NO_RECORDS)))
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

/// Reads JSON `text` (a message body) as a `T` of yours: text that is not
/// JSON is `malformed JSON in {what}: ...`; JSON of the wrong shape names
/// the field, `invalid: {field}: {problem}`.
///
/// ```
/// #[derive(Debug, serde::Deserialize)]
/// #[allow(dead_code)]
/// struct Reservation { sku: String, quantity: u32 }
///
/// let err = shared::event::typed::<Reservation>("SQS message body", r#"{"sku": "A", "quantity": "3"}"#).unwrap_err();
/// assert_eq!(err.to_string(), r#"invalid: quantity: invalid type: string "3", expected u32 at line 1 column 28"#);
/// let err = shared::event::typed::<Reservation>("SQS message body", r#"{"sku": "A""#).unwrap_err();
/// assert!(err.to_string().starts_with("malformed JSON in SQS message body"));
/// ```
pub fn typed<T: serde::de::DeserializeOwned>(what: &'static str, text: &str) -> Result<T, EventError> {
    typed_slice(what, text.as_bytes())
}

/// [`typed`] of bytes (a Kinesis record's data, a Kafka record's value):
/// bytes that are not UTF-8 JSON are `malformed JSON in {what}: ...`.
pub fn typed_slice<T: serde::de::DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, EventError> {
    let mut reader = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut reader).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                EventError::Invalid { path: if path == "." { String::new() } else { path }, message: inner.to_string() }
            }
            _ => json_error(what, inner),
        }
    })?;
    reader.end().map_err(|e| json_error(what, e))?;
    Ok(value)
}
