//! Device telemetry on a Kinesis stream: each reading adds its energy to
//! its device's counters exactly once ([`count`]), and each tumbling window
//! of readings gives one item of per-device totals ([`fold`], [`totals`]),
//! or a record is quarantined with the reason it cannot be read.
//!
//! The toolkit does the rest: the shard's order (after a failure, the rest
//! of the shard's batch waits and Lambda retries from the failed record),
//! producers' KPL aggregates read record by record, the window's state
//! handed back to Lambda between invocations, and the markers committed
//! with the writes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shared::WindowClosed;
use shared::dynamodb::types::{AttributeValue, Put, Update};
use shared::{UnitOfWork, Write};

/// A device's id: not empty (a reading without one is quarantined as
/// `invalid: deviceId: must not be empty`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct DeviceId(String);

impl TryFrom<String> for DeviceId {
    type Error = String;

    fn try_from(id: String) -> Result<Self, String> {
        if id.trim().is_empty() { Err("must not be empty".into()) } else { Ok(Self(id)) }
    }
}

/// A reading, the data of one Kinesis record (or of one user record of a
/// KPL aggregate).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reading {
    /// The device that measured it.
    pub device_id: DeviceId,
    /// Energy used since its last reading, in watt-hours.
    pub wh: u32,
}

/// The reading's addition to its device's counters in `table` (key
/// `device`): one more reading and its watt-hours, once per record (the
/// record's stream, shard, sequence and sub-sequence numbers are its key).
pub fn count(table: &str, r: Reading) -> UnitOfWork {
    let add = Update::builder()
        .table_name(table)
        .key("device", AttributeValue::S(r.device_id.0))
        .update_expression("ADD readings :one, wh :wh")
        .expression_attribute_values(":one", AttributeValue::N("1".into()))
        .expression_attribute_values(":wh", AttributeValue::N(r.wh.to_string()));
    UnitOfWork::for_record().write(Write::update(add))
}

/// A window's state: watt-hours per device so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Watt-hours per device.
    pub wh: BTreeMap<DeviceId, u64>,
}

/// Adds a reading to its window's totals.
pub fn fold(totals: &mut Totals, r: Reading) {
    let wh = totals.wh.entry(r.device_id).or_default();
    *wh = wh.saturating_add(u64::from(r.wh));
}

/// The window's result in `table`: the item `WINDOW#<start>#<shard>` with
/// each device's watt-hours and the number of readings, committed once per
/// window (a final invocation delivered again is a duplicate). Nothing for a
/// window without readings.
pub fn totals(table: &str, closed: WindowClosed<Totals>) -> Option<UnitOfWork> {
    if closed.records == 0 {
        return None;
    }
    let start = closed.window.start.to_rfc3339();
    let wh = closed.state.wh.into_iter().map(|(device, wh)| (device.0, AttributeValue::N(wh.to_string()))).collect();
    let put = Put::builder()
        .table_name(table)
        .item("device", AttributeValue::S(format!("WINDOW#{start}#{}", closed.shard_id)))
        .item("windowEnd", AttributeValue::S(closed.window.end.to_rfc3339()))
        .item("readings", AttributeValue::N(closed.records.to_string()))
        .item("wh", AttributeValue::M(wh));
    Some(UnitOfWork::for_record().write(Write::put(put, &["device"])))
}
