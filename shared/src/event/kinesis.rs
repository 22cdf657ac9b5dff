//! Kinesis Data Streams records: base64 data decoded, the shard read from
//! the record's `eventID`, and records aggregated by the Kinesis Producer
//! Library split into their user records ([`shared_core::kpl`]).
//!
//! The event, as Lambda delivers it
//! (<https://docs.aws.amazon.com/lambda/latest/dg/with-kinesis.html>):
//!
//! ```json
//! {"Records": [{
//!   "kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": "1",
//!     "sequenceNumber": "49590338271490256608559692538361571095921575989136588898",
//!     "data": "SGVsbG8sIHRoaXMgaXMgYSB0ZXN0Lg==", "approximateArrivalTimestamp": 1545084650.987},
//!   "eventSource": "aws:kinesis", "eventVersion": "1.0",
//!   "eventID": "shardId-000000000006:49590338271490256608559692538361571095921575989136588898",
//!   "eventName": "aws:kinesis:record", "awsRegion": "us-east-2",
//!   "eventSourceARN": "arn:aws:kinesis:us-east-2:123456789012:stream/lambda-stream"}]}
//! ```
//!
//! A batch holds records of one shard, in sequence order. Every user record
//! of an aggregate shares its Kinesis record's sequence number (the one a
//! partial batch response names: Lambda resends the whole aggregate) and
//! has its own sub-sequence number, its position in the aggregate.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;
use shared_core::kpl;

use super::{EventError, json_error};

const WHAT: &str = "Kinesis record";

/// One Kinesis record, or one user record of an aggregated one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The stream's name, from `eventSourceARN` (`unknown` without one).
    pub stream: String,
    /// The shard, from `eventID` (`shardId-000000000006:<sequence number>`);
    /// empty when the record does not say.
    pub shard_id: String,
    /// `sequenceNumber`: what a partial batch response reports.
    pub sequence_number: String,
    /// The user record's position in its KPL aggregate; `None` for a record
    /// that was not aggregated.
    pub sub_sequence_number: Option<u64>,
    /// The partition key (a user record's own, for an aggregate).
    pub partition_key: String,
    /// A user record's explicit hash key, if its producer gave one.
    pub explicit_hash_key: Option<String>,
    /// `approximateArrivalTimestamp`, when the record carries one.
    pub arrival: Option<DateTime<Utc>>,
    /// The data, decoded from base64 (a user record's own, for an aggregate).
    pub data: Vec<u8>,
}

/// The fields read from a record; the rest is skipped unbuilt.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "eventID", default, borrow)]
    event_id: Option<Cow<'a, str>>,
    #[serde(rename = "eventSourceARN", default, borrow)]
    event_source_arn: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    kinesis: Option<WireKinesis<'a>>,
}

#[derive(Deserialize)]
struct WireKinesis<'a> {
    #[serde(rename = "partitionKey", default)]
    partition_key: Option<String>,
    #[serde(rename = "sequenceNumber", default)]
    sequence_number: Option<String>,
    #[serde(default, borrow)]
    data: Option<Cow<'a, str>>,
    #[serde(rename = "approximateArrivalTimestamp", default)]
    arrival: Option<f64>,
}

impl Record {
    /// Parses one raw Kinesis record into the records it holds: itself, or
    /// the user records of a KPL aggregate, in order. A record whose data is
    /// not base64, or an aggregate that is not whole (its MD5 digest does
    /// not match, its protobuf does not read), is an error naming what is
    /// wrong, for that record alone.
    pub fn parse_into(raw: &RawValue, out: &mut Vec<Self>) -> Result<(), EventError> {
        let text = raw.get();
        if !text.starts_with('{') {
            return Err(EventError::Shape { what: WHAT, message: "expected a JSON object".into() });
        }
        let wire: Wire = serde_json::from_str(text).map_err(|e| json_error(WHAT, e))?;
        let kinesis = wire.kinesis.ok_or(EventError::MissingField { what: WHAT, field: "kinesis" })?;
        let sequence_number = kinesis
            .sequence_number
            .filter(|s| !s.is_empty())
            .ok_or(EventError::MissingField { what: WHAT, field: "sequenceNumber" })?;
        let data = kinesis.data.ok_or(EventError::MissingField { what: WHAT, field: "data" })?;
        let data = aws_smithy_types::base64::decode(data.as_ref())
            .map_err(|e| EventError::Shape { what: WHAT, message: format!("`data` is not base64: {e}") })?;
        let arrival = kinesis.arrival.map(arrival_time).transpose()?;
        let stream = stream_name(wire.event_source_arn.as_deref()).to_owned();
        let shard_id = wire.event_id.as_deref().and_then(shard_of).unwrap_or_default().to_owned();
        let partition_key = kinesis.partition_key.unwrap_or_default();
        match kpl::split(&data) {
            None => out.push(Self {
                stream,
                shard_id,
                sequence_number,
                sub_sequence_number: None,
                partition_key,
                explicit_hash_key: None,
                arrival,
                data,
            }),
            Some(users) => {
                let users = users.map_err(EventError::Aggregate)?;
                out.reserve(users.len());
                for (sub, user) in (0u64..).zip(users) {
                    out.push(Self {
                        stream: stream.clone(),
                        shard_id: shard_id.clone(),
                        sequence_number: sequence_number.clone(),
                        sub_sequence_number: Some(sub),
                        partition_key: user.partition_key,
                        explicit_hash_key: user.explicit_hash_key,
                        arrival,
                        data: user.data,
                    });
                }
            }
        }
        Ok(())
    }

    /// [`parse_into`](Self::parse_into) of a record as a `Value`, into a
    /// new list.
    pub fn parse(record: &Value) -> Result<Vec<Self>, EventError> {
        let raw = RawValue::from_string(record.to_string()).map_err(|e| json_error(WHAT, e))?;
        let mut out = Vec::new();
        Self::parse_into(&raw, &mut out)?;
        Ok(out)
    }

    /// The record's id in logs and quarantine: its shard and sequence
    /// number as Lambda's `eventID` writes them (`shardId-000000000006:4959...`;
    /// sequence numbers are unique per shard, not per stream), and for a
    /// user record of an aggregate `/` and its sub-sequence number.
    pub fn record_id(&self) -> String {
        let shard = if self.shard_id.is_empty() { String::new() } else { format!("{}:", self.shard_id) };
        match self.sub_sequence_number {
            Some(sub) => format!("{shard}{}/{sub}", self.sequence_number),
            None => format!("{shard}{}", self.sequence_number),
        }
    }

    /// The data read as JSON of your `T` ([`super::typed`]): data that is
    /// not JSON is `malformed JSON in Kinesis record data: ...`; the wrong
    /// shape names the field.
    pub fn json_data<T: DeserializeOwned>(&self) -> Result<T, EventError> {
        super::typed_slice("Kinesis record data", &self.data)
    }
}

/// `approximateArrivalTimestamp` (epoch seconds with a fraction) as a time.
fn arrival_time(seconds: f64) -> Result<DateTime<Utc>, EventError> {
    let millis = seconds * 1000.0;
    // Within i64 milliseconds (and so a cast that keeps the value).
    let in_range = millis.is_finite() && millis.abs() < 9.0e18;
    in_range.then(|| DateTime::from_timestamp_millis(millis as i64)).flatten().ok_or_else(|| EventError::Shape {
        what: WHAT,
        message: format!("`approximateArrivalTimestamp` {seconds} is not a time"),
    })
}

/// The shard of an `eventID` (`shardId-000000000006:4959...`).
fn shard_of(event_id: &str) -> Option<&str> {
    event_id.split_once(':').map(|(shard, _)| shard).filter(|s| s.starts_with("shardId-"))
}

/// The stream name of a stream ARN (`arn:aws:kinesis:region:account:stream/NAME`).
pub fn stream_name(arn: Option<&str>) -> &str {
    arn.and_then(|a| a.split_once(":stream/")).map(|(_, name)| name).filter(|n| !n.is_empty()).unwrap_or("unknown")
}

/// The quarantine source of a stream's records: `kinesis/<stream>`.
pub fn source(stream: &str) -> String {
    format!("kinesis/{stream}")
}

/// The sequence number of a raw record, if it has one (to report a record
/// that failed to parse).
pub fn sequence_number_of(record: &Value) -> Option<&str> {
    record.pointer("/kinesis/sequenceNumber").and_then(Value::as_str).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use shared_core::kpl::{UserRecord, aggregate};

    use super::*;

    fn record(data: &[u8]) -> Value {
        json!({
            "kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": "pk", "sequenceNumber": "4959",
                "data": aws_smithy_types::base64::encode(data), "approximateArrivalTimestamp": 1545084650.987},
            "eventSource": "aws:kinesis", "eventID": "shardId-000000000006:4959",
            "eventSourceARN": "arn:aws:kinesis:us-east-2:123456789012:stream/telemetry",
        })
    }

    #[test]
    fn a_plain_record_reads_its_data_shard_and_stream() {
        let [r] = &Record::parse(&record(br#"{"n":1}"#)).unwrap()[..] else { panic!("one record") };
        assert_eq!(
            (r.stream.as_str(), r.shard_id.as_str(), r.record_id()),
            ("telemetry", "shardId-000000000006", "shardId-000000000006:4959".into())
        );
        assert_eq!(r.arrival.unwrap().timestamp_millis(), 1_545_084_650_987);
        assert_eq!(r.json_data::<Value>().unwrap(), json!({"n": 1}));
    }

    #[test]
    fn an_aggregate_is_split_into_user_records_numbered_in_order() {
        let data = aggregate(&[UserRecord::new("d-1", b"1".to_vec()), UserRecord::new("d-2", b"2".to_vec())]);
        let records = Record::parse(&record(&data)).unwrap();
        let ids: Vec<(String, String)> = records.iter().map(|r| (r.record_id(), r.partition_key.clone())).collect();
        assert_eq!(
            ids,
            [
                ("shardId-000000000006:4959/0".into(), "d-1".into()),
                ("shardId-000000000006:4959/1".into(), "d-2".into())
            ]
        );
        assert!(records.iter().all(|r| r.sequence_number == "4959"));
    }

    #[test]
    fn bad_data_and_a_damaged_aggregate_are_errors_naming_them() {
        let mut bad = record(b"x");
        bad["kinesis"]["data"] = json!("not base64!");
        assert!(Record::parse(&bad).unwrap_err().to_string().starts_with("Kinesis record: `data` is not base64"));
        let mut data = aggregate(&[UserRecord::new("d-1", b"1".to_vec())]);
        let last = data.len() - 1;
        data[last] ^= 0xFF;
        assert_eq!(
            Record::parse(&record(&data)).unwrap_err().to_string(),
            "KPL aggregated record: MD5 checksum mismatch (the aggregate is truncated or corrupt)"
        );
        let mut no_sequence = record(b"1");
        no_sequence["kinesis"].as_object_mut().unwrap().remove("sequenceNumber");
        assert_eq!(
            Record::parse(&no_sequence).unwrap_err().to_string(),
            "Kinesis record: missing field `sequenceNumber`"
        );
        let mut far = record(b"1");
        far["kinesis"]["approximateArrivalTimestamp"] = json!(1e300);
        assert!(Record::parse(&far).unwrap_err().to_string().contains("is not a time"));
    }
}
