//! Tumbling-window invocations of Kinesis and DynamoDB stream mappings: the
//! batch's records with the window they belong to, the state the previous
//! invocation of the window returned, and whether this is the window's
//! final invocation
//! (<https://docs.aws.amazon.com/lambda/latest/dg/services-kinesis-windows.html>,
//! <https://docs.aws.amazon.com/lambda/latest/dg/services-ddb-windows.html>):
//!
//! ```json
//! {"Records": [...],
//!  "window": {"start": "2020-07-30T17:00:00Z", "end": "2020-07-30T17:05:00Z"},
//!  "state": {"1": 282, "2": 715},
//!  "shardId": "shardId-000000000006",
//!  "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/lambda-stream",
//!  "isFinalInvokeForWindow": false,
//!  "isWindowTerminatedEarly": false}
//! ```
//!
//! `aws_lambda_events` reads `state` as a map of strings, which the
//! documented example above (numbers) is not; here it is any JSON object.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_json::{Map, Value};

use super::{EventError, RawBatch, RecordsField};

/// The window of an invocation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Window {
    /// When the window starts.
    pub start: DateTime<Utc>,
    /// When it ends.
    pub end: DateTime<Utc>,
}

/// A tumbling-window invocation: the batch and what Lambda says of its
/// window.
#[derive(Debug)]
pub struct WindowBatch {
    /// The records, each parsed on its own as in any batch.
    pub batch: RawBatch,
    /// The window; `None` when the event has none (not a window
    /// invocation), which the window entry points refuse.
    pub window: Option<Window>,
    /// `state`: what the previous invocation of the window returned
    /// (empty at the window's start).
    pub state: Map<String, Value>,
    /// `shardId`.
    pub shard_id: Option<String>,
    /// `eventSourceARN`: the stream's.
    pub event_source_arn: Option<String>,
    /// `isFinalInvokeForWindow`: the window is over; its result is due.
    pub is_final: bool,
    /// `isWindowTerminatedEarly`: Lambda ended the window before its time
    /// (its state outgrew 1 MB); the next invocation goes on with the same
    /// window and a fresh state.
    pub terminated_early: bool,
}

impl WindowBatch {
    /// Reads a window invocation from its JSON text.
    pub fn from_json(text: &str) -> Result<Self, EventError> {
        serde_json::from_str(text).map_err(|e| super::json_error("window event", e))
    }
}

impl<'de> Deserialize<'de> for WindowBatch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(WindowVisitor)
    }
}

#[derive(Deserialize)]
#[serde(field_identifier)]
enum Field {
    Records,
    #[serde(rename = "window")]
    Window,
    #[serde(rename = "state")]
    State,
    #[serde(rename = "shardId")]
    ShardId,
    #[serde(rename = "eventSourceARN")]
    EventSourceArn,
    #[serde(rename = "isFinalInvokeForWindow")]
    IsFinal,
    #[serde(rename = "isWindowTerminatedEarly")]
    TerminatedEarly,
    #[serde(other)]
    Other,
}

struct WindowVisitor;

impl<'de> Visitor<'de> for WindowVisitor {
    type Value = WindowBatch;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a tumbling-window event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WindowBatch, A::Error> {
        let mut records = None;
        let mut out = WindowBatch {
            batch: RawBatch { records: Err(super::NO_RECORDS) },
            window: None,
            state: Map::new(),
            shard_id: None,
            event_source_arn: None,
            is_final: false,
            terminated_early: false,
        };
        while let Some(key) = map.next_key::<Field>()? {
            match key {
                Field::Records if records.is_some() => return Err(de::Error::duplicate_field("Records")),
                Field::Records => records = Some(map.next_value::<RecordsField>()?.0),
                Field::Window => out.window = map.next_value()?,
                Field::State => out.state = map.next_value::<Option<Map<String, Value>>>()?.unwrap_or_default(),
                Field::ShardId => out.shard_id = map.next_value()?,
                Field::EventSourceArn => out.event_source_arn = map.next_value()?,
                Field::IsFinal => out.is_final = map.next_value::<Option<bool>>()?.unwrap_or(false),
                Field::TerminatedEarly => out.terminated_early = map.next_value::<Option<bool>>()?.unwrap_or(false),
                Field::Other => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        // A final invocation may come without records.
        out.batch = RawBatch { records: records.unwrap_or_else(|| Ok(Vec::new())) };
        Ok(out)
    }
}

impl crate::runtime::Payload for WindowBatch {
    fn batch_size(&self) -> usize {
        self.batch.records().map_or(0, <[_]>::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_window_event_reads() {
        let event = WindowBatch::from_json(
            r#"{"Records": [{"a": 1}], "window": {"start": "2020-07-30T17:00:00Z", "end": "2020-07-30T17:05:00Z"},
                "state": {"1": 282, "2": 715}, "shardId": "shardId-000000000006",
                "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/lambda-stream",
                "isFinalInvokeForWindow": false, "isWindowTerminatedEarly": false}"#,
        )
        .unwrap();
        assert_eq!(event.batch.records().unwrap().len(), 1);
        assert_eq!(event.window.unwrap().start.to_rfc3339(), "2020-07-30T17:00:00+00:00");
        assert_eq!(event.state["2"], 715);
        assert!(!event.is_final);
        let last = WindowBatch::from_json(
            r#"{"window": {"start": "2020-07-30T17:00:00Z", "end": "2020-07-30T17:05:00Z"}, "state": null,
                "isFinalInvokeForWindow": true}"#,
        )
        .unwrap();
        assert!(last.is_final && last.state.is_empty() && last.batch.records().unwrap().is_empty());
    }
}
