//! DynamoDB stream records, with typed old and new images.

use aws_lambda_events::event::dynamodb::EventRecord;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{EventError, json_error};

const WHAT: &str = "DynamoDB stream record";

/// The kind of change a stream record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// `INSERT`: a new item (no old image).
    Insert,
    /// `MODIFY`: an item replaced or updated.
    Modify,
    /// `REMOVE`: an item deleted, including by TTL (no new image).
    Remove,
}

/// One stream record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// `eventID`: unique per stream record.
    pub event_id: String,
    /// `eventName`, as a [`ChangeKind`].
    pub change: ChangeKind,
    /// Absent in records of DynamoDB change data delivered through Kinesis.
    pub sequence_number: Option<String>,
    /// The record as `aws_lambda_events` parsed it; the images are read
    /// through [`Record::keys`], [`Record::old_image`] and [`Record::new_image`].
    pub raw: EventRecord,
}

impl Record {
    /// Parses one raw stream record. Accepts `ApproximateCreationDateTime` as
    /// epoch seconds (number or numeric string) or as a date-time string, and
    /// `SizeBytes` as a number or numeric string, as emulators send them.
    pub fn parse(record: &Value) -> Result<Self, EventError> {
        let object = record
            .as_object()
            .ok_or_else(|| EventError::Shape { what: WHAT, message: "record is not an object".into() })?;
        let change = object
            .get("dynamodb")
            .and_then(Value::as_object)
            .ok_or(EventError::MissingField { what: WHAT, field: "dynamodb" })?;
        // Records as Lambda delivers them deserialize as they are; the shapes
        // emulators send are normalized on a copy first.
        let raw: EventRecord = if needs_normalizing(object, change) {
            let mut record = object.clone();
            fill(&mut record, "awsRegion", Value::String(String::new()));
            let change = record.get_mut("dynamodb").and_then(Value::as_object_mut).expect("checked above");
            normalize_creation_time(change)?;
            normalize_size(change)?;
            serde_json::from_value(Value::Object(record))
        } else {
            EventRecord::deserialize(record)
        }
        .map_err(|e| json_error(WHAT, e))?;
        Self::from_raw(raw)
    }

    /// [`parse`](Self::parse) of a record still in its JSON text: records as
    /// Lambda delivers them go straight into the typed form; anything else
    /// (emulator shapes to normalize, errors to report) takes the `Value` path.
    pub fn parse_raw(record: &RawValue) -> Result<Self, EventError> {
        if record.get().starts_with('{')
            && let Ok(raw) = serde_json::from_str::<EventRecord>(record.get())
        {
            return Self::from_raw(raw);
        }
        let value: Value = serde_json::from_str(record.get()).map_err(|e| json_error(WHAT, e))?;
        Self::parse(&value)
    }

    fn from_raw(raw: EventRecord) -> Result<Self, EventError> {
        let sequence_number = raw.change.sequence_number.clone().filter(|s| !s.is_empty());
        let change = match raw.event_name.as_str() {
            "INSERT" => ChangeKind::Insert,
            "MODIFY" => ChangeKind::Modify,
            "REMOVE" => ChangeKind::Remove,
            other => {
                return Err(EventError::Shape { what: WHAT, message: format!("unknown eventName {other:?}") });
            }
        };
        Ok(Self { event_id: raw.event_id.clone(), change, sequence_number, raw })
    }

    /// The item's key attributes.
    pub fn keys(&self) -> &serde_dynamo::Item {
        &self.raw.change.keys
    }

    /// The item before the change (absent for INSERT, or for a stream view
    /// type without old images).
    pub fn old_image(&self) -> Option<&serde_dynamo::Item> {
        Some(&self.raw.change.old_image).filter(|i| !i.is_empty())
    }

    /// The item after the change (absent for REMOVE, or for a stream view
    /// type without new images).
    pub fn new_image(&self) -> Option<&serde_dynamo::Item> {
        Some(&self.raw.change.new_image).filter(|i| !i.is_empty())
    }

    /// The change with its images read as a `T` of yours (numbers exactly:
    /// see [`super::image`]); an image that does not read names the image
    /// and the field (`invalid: new image: amount: ...`).
    pub fn typed<T: serde::de::DeserializeOwned>(&self) -> Result<Change<T>, EventError> {
        let read =
            |what, image: Option<&serde_dynamo::Item>| image.map(|i| super::image::from_item(what, i)).transpose();
        Ok(Change {
            kind: self.change,
            old: read("old image", self.old_image())?,
            new: read("new image", self.new_image())?,
        })
    }
}

/// A stream record's change, its images read as a type of yours.
#[derive(Debug, Clone, PartialEq)]
pub struct Change<T> {
    /// Insert, modify or remove.
    pub kind: ChangeKind,
    /// The item before (absent for an insert, or without old images).
    pub old: Option<T>,
    /// The item after (absent for a remove, or without new images).
    pub new: Option<T>,
}

/// True when the record needs a fix before `aws_lambda_events` reads it:
/// no `awsRegion`, or `ApproximateCreationDateTime` or `SizeBytes` as a
/// string or missing, as emulators send them.
fn needs_normalizing(record: &Map<String, Value>, change: &Map<String, Value>) -> bool {
    record.get("awsRegion").is_none_or(Value::is_null)
        || matches!(change.get("ApproximateCreationDateTime"), Some(Value::String(_)))
        || !matches!(change.get("SizeBytes"), Some(Value::Number(_)))
}

fn normalize_size(change: &mut Map<String, Value>) -> Result<(), EventError> {
    match change.get("SizeBytes") {
        None | Some(Value::Null) => {
            change.insert("SizeBytes".into(), Value::from(0));
        }
        Some(Value::String(s)) => {
            let n: i64 = s.parse().map_err(|_| EventError::Shape {
                what: WHAT,
                message: format!("dynamodb.SizeBytes is not a number: {s:?}"),
            })?;
            change.insert("SizeBytes".into(), Value::from(n));
        }
        Some(_) => {}
    }
    Ok(())
}

/// The sequence number of a raw record, if it has one (to report a record
/// that failed to parse).
pub fn sequence_number_of(record: &Value) -> Option<&str> {
    record.pointer("/dynamodb/SequenceNumber").and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn normalize_creation_time(change: &mut Map<String, Value>) -> Result<(), EventError> {
    const FIELD: &str = "ApproximateCreationDateTime";
    let Some(Value::String(s)) = change.get(FIELD) else {
        return Ok(());
    };
    let seconds = if let Ok(n) = s.parse::<f64>() {
        n
    } else if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        epoch_seconds(t.with_timezone(&Utc))
    } else if let Ok(t) = DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%:z") {
        epoch_seconds(t.with_timezone(&Utc))
    } else if let Ok(t) = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f") {
        epoch_seconds(t.and_utc())
    } else {
        return Err(EventError::Shape {
            what: WHAT,
            message: format!("dynamodb.{FIELD} is neither epoch seconds nor a date-time: {s:?}"),
        });
    };
    change.insert(FIELD.into(), Value::from(seconds));
    Ok(())
}

fn epoch_seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_micros()) / 1e6
}

fn fill(record: &mut Map<String, Value>, field: &str, default: Value) {
    if record.get(field).is_none_or(Value::is_null) {
        record.insert(field.to_owned(), default);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(creation: Value) -> Value {
        serde_json::json!({
            "eventID": "e1", "eventName": "INSERT", "eventSource": "aws:dynamodb",
            "dynamodb": {"ApproximateCreationDateTime": creation, "Keys": {"pk": {"S": "a"}, "sk": {"S": "b"}},
                "NewImage": {"pk": {"S": "a"}, "sk": {"S": "b"}, "n": {"N": "1.50"}},
                "SequenceNumber": "100", "SizeBytes": "26", "StreamViewType": "NEW_AND_OLD_IMAGES"}
        })
    }

    #[test]
    fn creation_time_in_every_shape_parses_to_the_same_instant() {
        let shapes = [
            Value::from(1_795_884_005.288),
            Value::from("1795884005.288"),
            Value::from("2026-11-28T16:40:05.288Z"),
            Value::from("2026-11-28 16:40:05.288000+00:00"),
        ];
        let times: Vec<_> = shapes
            .into_iter()
            .map(|s| Record::parse(&record(s)).unwrap().raw.change.approximate_creation_date_time.timestamp_millis())
            .collect();
        // aws_lambda_events keeps whole seconds of this field.
        assert!(times.iter().all(|t| *t == 1_795_884_005_000), "{times:?}");
    }

    #[test]
    fn a_raw_record_parses_as_its_value_does() {
        let shapes = [
            record(Value::from(1_795_884_005.288)),
            record(Value::from("2026-11-28T16:40:05.288Z")),
            serde_json::json!({"eventID": "e1", "eventName": "INSERT"}),
            serde_json::json!(["e1", "INSERT"]),
        ];
        for value in shapes {
            let raw = RawValue::from_string(value.to_string()).unwrap();
            assert_eq!(Record::parse_raw(&raw), Record::parse(&value), "{value}");
        }
        let mut full = record(Value::from(1_795_884_005));
        full["awsRegion"] = Value::from("eu-west-1");
        full["dynamodb"]["SizeBytes"] = Value::from(26);
        let raw = RawValue::from_string(full.to_string()).unwrap();
        assert_eq!(Record::parse_raw(&raw).unwrap(), Record::parse(&full).unwrap());
    }

    #[test]
    fn record_without_dynamodb_section_is_an_error_naming_it() {
        let mut r = record(Value::from(1));
        r.as_object_mut().unwrap().remove("dynamodb");
        let err = Record::parse(&r).unwrap_err();
        assert!(err.to_string().contains("`dynamodb`"), "{err}");
    }

    #[test]
    fn unknown_event_name_is_an_error() {
        let mut r = record(Value::from(1));
        r["eventName"] = Value::from("TRUNCATE");
        assert!(Record::parse(&r).unwrap_err().to_string().contains("TRUNCATE"));
    }
}
