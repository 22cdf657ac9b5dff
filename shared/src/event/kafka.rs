//! Kafka records from Amazon MSK or a self-managed cluster: topic,
//! partition, offset, base64 key and value decoded, headers as bytes.
//!
//! The event, as Lambda's Kafka event source mapping delivers it
//! (<https://docs.aws.amazon.com/lambda/latest/dg/with-msk.html>,
//! <https://docs.aws.amazon.com/lambda/latest/dg/with-kafka.html>): records
//! grouped by `<topic>-<partition>`, each group in offset order, and the
//! source at the top (`"eventSource": "aws:kafka"` with the cluster's
//! `eventSourceArn` for MSK, `"SelfManagedKafka"` with `bootstrapServers`
//! otherwise):
//!
//! ```json
//! {"eventSource": "aws:kafka", "eventSourceArn": "arn:aws:kafka:us-east-1:123456789012:cluster/demo/...",
//!  "bootstrapServers": "b-1.demo.kafka.us-east-1.amazonaws.com:9092",
//!  "records": {"mytopic-0": [{"topic": "mytopic", "partition": 0, "offset": 15,
//!    "timestamp": 1545084650987, "timestampType": "CREATE_TIME",
//!    "key": "a2V5", "value": "SGVsbG8sIHRoaXMgaXMgYSB0ZXN0Lg==",
//!    "headers": [{"headerKey": [104, 101, 97, 100, 101, 114, 86, 97, 108, 117, 101]}]}]}}
//! ```
//!
//! [`RawBatch`](super::RawBatch) reads the groups' records in order as the
//! batch's records; each record names its own topic and partition.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::{EventError, json_error};

const WHAT: &str = "Kafka record";

/// One Kafka record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The topic.
    pub topic: String,
    /// The partition within the topic.
    pub partition: i64,
    /// The record's offset in its partition.
    pub offset: i64,
    /// `timestamp` (epoch milliseconds), when the record carries one.
    pub timestamp: Option<DateTime<Utc>>,
    /// `timestampType`: `CREATE_TIME` or `LOG_APPEND_TIME`.
    pub timestamp_type: Option<String>,
    /// The key, decoded from base64; `None` for a record without one.
    pub key: Option<Vec<u8>>,
    /// The value, decoded from base64; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// The headers, in order, each value as its bytes.
    pub headers: Vec<(String, Vec<u8>)>,
}

#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    partition: Option<i64>,
    #[serde(default)]
    offset: Option<i64>,
    #[serde(default)]
    timestamp: Option<i64>,
    #[serde(rename = "timestampType", default)]
    timestamp_type: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    headers: Option<Vec<serde_json::Map<String, Value>>>,
}

impl Record {
    /// Parses one raw Kafka record (one element of a `records` group).
    pub fn parse_raw(raw: &RawValue) -> Result<Self, EventError> {
        let text = raw.get();
        if !text.starts_with('{') {
            return Err(EventError::Shape { what: WHAT, message: "expected a JSON object".into() });
        }
        let wire: Wire = serde_json::from_str(text).map_err(|e| json_error(WHAT, e))?;
        let topic =
            wire.topic.filter(|t| !t.is_empty()).ok_or(EventError::MissingField { what: WHAT, field: "topic" })?;
        let partition = wire.partition.ok_or(EventError::MissingField { what: WHAT, field: "partition" })?;
        let offset = wire.offset.ok_or(EventError::MissingField { what: WHAT, field: "offset" })?;
        let decode = |field: &'static str, text: Option<String>| {
            text.map(|t| {
                aws_smithy_types::base64::decode(&t)
                    .map_err(|e| EventError::Shape { what: WHAT, message: format!("`{field}` is not base64: {e}") })
            })
            .transpose()
        };
        let timestamp = wire
            .timestamp
            .map(|ms| {
                DateTime::from_timestamp_millis(ms)
                    .ok_or_else(|| EventError::Shape { what: WHAT, message: format!("`timestamp` {ms} is not a time") })
            })
            .transpose()?;
        let mut headers = Vec::new();
        for header in wire.headers.unwrap_or_default() {
            for (name, value) in header {
                headers.push((name.clone(), header_bytes(&name, &value)?));
            }
        }
        Ok(Self {
            topic,
            partition,
            offset,
            timestamp,
            timestamp_type: wire.timestamp_type,
            key: decode("key", wire.key)?,
            value: decode("value", wire.value)?,
            headers,
        })
    }

    /// [`parse_raw`](Self::parse_raw) of a record as a `Value`.
    pub fn parse(record: &Value) -> Result<Self, EventError> {
        let raw = RawValue::from_string(record.to_string()).map_err(|e| json_error(WHAT, e))?;
        Self::parse_raw(&raw)
    }

    /// The partition as Lambda names it: `<topic>-<partition>`, the key of
    /// its group in the event and of a partial batch response's item.
    pub fn topic_partition(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }

    /// The record's id in logs, quarantine and the engine's response:
    /// `<topic>-<partition>@<offset>` ([`item_identifier`] reads it back).
    pub fn record_id(&self) -> String {
        format!("{}@{}", self.topic_partition(), self.offset)
    }

    /// The value read as JSON of your `T` ([`super::typed`]); a tombstone
    /// (no value) reads as JSON `null`, so an `Option` of yours sees `None`.
    pub fn json_value<T: DeserializeOwned>(&self) -> Result<T, EventError> {
        super::typed_slice("Kafka record value", self.value.as_deref().unwrap_or(b"null"))
    }

    /// The first header named `name`, if any.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }
}

/// A header's value: an array of bytes, each `0..=255` or, as Java's signed
/// bytes print, `-128..=-1`.
fn header_bytes(name: &str, value: &Value) -> Result<Vec<u8>, EventError> {
    let invalid = || EventError::Shape { what: WHAT, message: format!("header {name:?} is not an array of bytes") };
    let items = value.as_array().ok_or_else(invalid)?;
    items
        .iter()
        .map(|b| {
            let n = b.as_i64().ok_or_else(invalid)?;
            match n {
                0..=255 => u8::try_from(n).map_err(|_| invalid()),
                -128..=-1 => i8::try_from(n).map(|s| s as u8).map_err(|_| invalid()),
                _ => Err(invalid()),
            }
        })
        .collect()
}

/// A partial batch response's item for a Kafka record, read back from its
/// [`Record::record_id`]: `{"partition": "<topic>-<partition>", "offset": N}`.
/// `None` for an id that is not one (a record that could not be parsed is
/// named `record-<index>`).
pub fn item_identifier(record_id: &str) -> Option<(String, i64)> {
    let (partition, offset) = record_id.rsplit_once('@')?;
    Some((partition.to_owned(), offset.parse().ok()?))
}

/// The partial batch response of a Kafka batch: each failed partition's
/// first failed record, named by its partition (`<topic>-<partition>`, the
/// event's group key) and offset. Lambda's Kafka event source mapping reads
/// it with `ReportBatchItemFailures` on ("Partial batch response – Allow
/// your function to return information about which records in a batch
/// failed processing, so Lambda can retry only the failed records",
/// <https://docs.aws.amazon.com/lambda/latest/dg/kafka-retry-configurations.html>);
/// the item's shape is the one Powertools for AWS Lambda (Python) writes
/// for Kafka (`{"itemIdentifier": {"partition": ..., "offset": ...}}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchResponse {
    /// The records to retry from; empty when the whole batch succeeded.
    pub batch_item_failures: Vec<ItemFailure>,
}

/// One failed partition's first failed record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemFailure {
    /// Its partition and offset.
    pub item_identifier: ItemIdentifier,
}

/// A record's place: `<topic>-<partition>` and offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemIdentifier {
    /// `<topic>-<partition>`.
    pub partition: String,
    /// The record's offset.
    pub offset: i64,
}

impl BatchResponse {
    /// The Kafka response of the engine's, whose ids are records'
    /// [`Record::record_id`]s. An id that is not one (a record that could
    /// not even be read, whose quarantine write then failed) cannot be
    /// reported by partition: the invocation fails, and Lambda retries the
    /// whole batch.
    pub fn from_ids(response: &crate::batch::BatchResponse) -> Result<Self, crate::batch::InvocationError> {
        let items = response
            .ids()
            .into_iter()
            .map(|id| {
                let (partition, offset) = item_identifier(id).ok_or_else(|| {
                    crate::batch::InvocationError::new(format!(
                        "record {id} failed and cannot be reported by partition and offset"
                    ))
                })?;
                Ok(ItemFailure { item_identifier: ItemIdentifier { partition, offset } })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { batch_item_failures: items })
    }
}

/// The quarantine source of a topic's records: `kafka/<topic>`.
pub fn source(topic: &str) -> String {
    format!("kafka/{topic}")
}

/// The id of a raw record, as much of it as can be read (to report a record
/// that failed to parse).
pub fn record_id_of(record: &Value) -> Option<String> {
    let topic = record.get("topic")?.as_str()?;
    let partition = record.get("partition")?.as_i64()?;
    let offset = record.get("offset")?.as_i64()?;
    Some(format!("{topic}-{partition}@{offset}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record() -> Value {
        json!({"topic": "readings", "partition": 2, "offset": 15, "timestamp": 1545084650987i64,
            "timestampType": "CREATE_TIME", "key": "ZC0x", "value": "eyJuIjoxfQ==",
            "headers": [{"source": [104, 105]}, {"signed": [-1, 127]}]})
    }

    #[test]
    fn a_record_reads_its_partition_key_value_and_headers() {
        let r = Record::parse(&record()).unwrap();
        assert_eq!((r.topic_partition(), r.record_id()), ("readings-2".into(), "readings-2@15".into()));
        assert_eq!(r.key.as_deref(), Some(&b"d-1"[..]));
        assert_eq!(r.json_value::<Value>().unwrap(), json!({"n": 1}));
        assert_eq!(r.header("source"), Some(&b"hi"[..]));
        assert_eq!(r.header("signed"), Some(&[0xFF, 0x7F][..]));
        assert_eq!(item_identifier(&r.record_id()), Some(("readings-2".into(), 15)));
        let response = BatchResponse::from_ids(&crate::batch::BatchResponse::failed([r.record_id()])).unwrap();
        assert_eq!(
            serde_json::to_value(&response).unwrap(),
            json!({"batchItemFailures": [{"itemIdentifier": {"partition": "readings-2", "offset": 15}}]})
        );
    }

    #[test]
    fn a_tombstone_reads_as_null() {
        let mut tombstone = record();
        tombstone.as_object_mut().unwrap().remove("value");
        let r = Record::parse(&tombstone).unwrap();
        assert_eq!(r.json_value::<Option<Value>>().unwrap(), None);
        assert!(r.json_value::<Vec<u8>>().unwrap_err().to_string().starts_with("invalid: invalid type: null"));
    }

    #[test]
    fn bad_fields_are_errors_naming_them() {
        let mut bad = record();
        bad["headers"] = json!([{"h": [256]}]);
        assert_eq!(
            Record::parse(&bad).unwrap_err().to_string(),
            r#"Kafka record: header "h" is not an array of bytes"#
        );
        let mut bad = record();
        bad["value"] = json!("%%%");
        assert!(Record::parse(&bad).unwrap_err().to_string().starts_with("Kafka record: `value` is not base64"));
        let mut bad = record();
        bad.as_object_mut().unwrap().remove("offset");
        assert_eq!(Record::parse(&bad).unwrap_err().to_string(), "Kafka record: missing field `offset`");
    }
}
