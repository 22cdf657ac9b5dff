//! A DynamoDB endpoint that accepts every request and answers `{}`: every
//! write succeeds, every read finds nothing. Against it the functions' own
//! cost shows (the real SDK, request building, signing, serialisation), with
//! the database's cost at zero: their ceiling, and their memory on large
//! batches without an emulator whose own time grows with the table.
//!
//! With a [`Latency`] model it answers each request only after the delay the
//! model gives it: DynamoDB's service time without DynamoDB, the same for
//! every client (our functions and the Powertools peer), so a run compares
//! how the programs use the database rather than how fast an emulator is.
//! Connections are served each on its own thread, so concurrent requests are
//! delayed concurrently, as DynamoDB serves them.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long the endpoint takes to answer a request.
///
/// The default model: 4 ms for a single-item call (`PutItem`, `UpdateItem`,
/// `GetItem`, `DeleteItem`, and any other call), 8 ms + 0.3 ms per action
/// for `TransactWriteItems` (and `TransactGetItems`), 4 ms + 0.3 ms per item
/// for `BatchWriteItem`, `BatchGetItem` and `BatchExecuteStatement`. Why: DynamoDB answers single-item
/// calls within a region in single-digit milliseconds (its documented
/// latency class; a few ms at the median as clients in the same region
/// measure it); a transaction is a two-phase commit through a coordinator
/// (prepare on every item's partition, then commit), so its fixed cost is
/// about two single writes, and each action adds its partition's work and a
/// larger request and response. A model, not a measurement of DynamoDB: the
/// figures on it compare two clients' use of the same service times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// A call on one item.
    pub single: Duration,
    /// The fixed part of a transaction.
    pub transaction: Duration,
    /// Each action of a transaction, or item of a batch call.
    pub per_action: Duration,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            single: Duration::from_millis(4),
            transaction: Duration::from_millis(8),
            per_action: Duration::from_micros(300),
        }
    }
}

impl Latency {
    /// The delay of one request with this JSON body.
    pub fn delay(&self, body: &[u8]) -> Duration {
        let value: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
        self.delay_of(&value)
    }

    fn delay_of(&self, value: &serde_json::Value) -> Duration {
        if let Some(actions) = value.get("TransactItems").and_then(serde_json::Value::as_array) {
            return self.transaction + self.per_action * actions.len() as u32;
        }
        if let Some(statements) = value.get("Statements").and_then(serde_json::Value::as_array) {
            return self.single + self.per_action * statements.len() as u32;
        }
        if let Some(tables) = value.get("RequestItems").and_then(serde_json::Value::as_object) {
            let items: usize = tables
                .values()
                .map(|t| {
                    t.as_array().map_or_else(|| t.get("Keys").and_then(|k| k.as_array()).map_or(0, Vec::len), Vec::len)
                })
                .sum();
            return self.single + self.per_action * items as u32;
        }
        self.single
    }

    /// The model in words, for the report.
    pub fn describe(&self) -> String {
        format!(
            "{} ms per single-item call, {} ms + {} ms per action per transaction",
            self.single.as_secs_f64() * 1e3,
            self.transaction.as_secs_f64() * 1e3,
            self.per_action.as_secs_f64() * 1e3
        )
    }
}

/// Bytes of one attribute value in DynamoDB's wire JSON (`{"S": "..."}`),
/// by AWS's item-size rules
/// (<https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/CapacityUnitCalculations.html>):
/// a string its UTF-8 bytes, a number 1 byte per two significant digits
/// plus 1, binary its raw bytes, a boolean or null 1, a list or map 3 bytes
/// plus its elements (each 1 byte more, a map's with their names), a set its
/// elements.
pub fn value_size(value: &serde_json::Value) -> u64 {
    let Some((kind, v)) = value.as_object().and_then(|o| o.iter().next()) else { return 0 };
    let text = |v: &serde_json::Value| v.as_str().map_or(0, |s| s.len() as u64);
    let binary = |v: &serde_json::Value| v.as_str().map_or(0, |s| (s.len() as u64 * 3).div_ceil(4));
    match kind.as_str() {
        "S" => text(v),
        "N" => number_size(v.as_str().unwrap_or_default()),
        "B" => binary(v),
        "BOOL" | "NULL" => 1,
        "SS" => v.as_array().map_or(0, |a| a.iter().map(text).sum()),
        "NS" => v.as_array().map_or(0, |a| a.iter().map(|n| number_size(n.as_str().unwrap_or_default())).sum()),
        "BS" => v.as_array().map_or(0, |a| a.iter().map(binary).sum()),
        "L" => 3 + v.as_array().map_or(0, |a| a.iter().map(|e| 1 + value_size(e)).sum()),
        "M" => 3 + v.as_object().map_or(0, |m| m.iter().map(|(k, e)| 1 + k.len() as u64 + value_size(e)).sum()),
        _ => 0,
    }
}

/// A number's bytes: 1 per two significant digits (leading and trailing
/// zeroes trimmed) plus 1.
fn number_size(n: &str) -> u64 {
    let digits: String = n.chars().filter(char::is_ascii_digit).collect();
    let significant = digits.trim_start_matches('0').trim_end_matches('0').len().max(1) as u64;
    significant.div_ceil(2) + 1
}

/// Bytes of an item in wire JSON: each attribute's name and value.
pub fn item_size(item: &serde_json::Value) -> u64 {
    item.as_object().map_or(0, |o| o.iter().map(|(name, v)| name.len() as u64 + value_size(v)).sum())
}

/// Write request units of one write of an item of `bytes`: one per
/// started KB, at least one.
pub fn write_units_of(bytes: u64) -> u64 {
    bytes.div_ceil(1024).max(1)
}

/// Capacity a request would be billed on on-demand DynamoDB, by AWS's
/// documented rules from the sizes of the items the request writes: a
/// `PutItem` (or a batch's put, or a statement's `INSERT`) bills its item's
/// started KB; an `UpdateItem` (or a statement's `UPDATE`) the item it
/// leaves, estimated as its key and the values it sets; a delete 1; every
/// write of a `TransactWriteItems` twice (a transactional write takes two).
/// Reads bill one read unit per item of up to 4 KB strongly consistent,
/// half eventually consistent, also for an item that is not there (the
/// null endpoint finds none). DynamoDB Local reports these for single
/// writes (checked against it by `tests/tests/capacity.rs`), but not for
/// `BatchExecuteStatement`, and one unit per transactional write instead of
/// two; so both programs' units are counted here, from their requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Units {
    /// Write request units.
    pub write: u64,
    /// Read request units, in halves (an eventually consistent read is half).
    pub read_halves: u64,
}

/// The [`Units`] of one request body.
pub fn units(value: &serde_json::Value) -> Units {
    let get = |v: &serde_json::Value, k: &str| v.get(k).cloned().unwrap_or(serde_json::Value::Null);
    // An update leaves (at least) its key and the values it sets.
    let update_size = |u: &serde_json::Value| {
        item_size(&get(u, "Key"))
            + get(u, "ExpressionAttributeValues").as_object().map_or(0, |o| o.values().map(value_size).sum::<u64>())
    };
    let single = |v: &serde_json::Value| -> u64 {
        if let Some(item) = v.get("Item") {
            write_units_of(item_size(item))
        } else if v.get("UpdateExpression").is_some() {
            write_units_of(update_size(v))
        } else if v.get("Key").is_some() && v.get("ConditionExpression").is_some() {
            1
        } else {
            0
        }
    };
    if let Some(actions) = value.get("TransactItems").and_then(serde_json::Value::as_array) {
        let write = actions
            .iter()
            .filter_map(|a| a.get("Put").or_else(|| a.get("Update")).or_else(|| a.get("Delete")))
            .map(|w| 2 * single(w).max(1))
            .sum();
        return Units { write, read_halves: 0 };
    }
    if let Some(statements) = value.get("Statements").and_then(serde_json::Value::as_array) {
        let write = statements.iter().map(statement_units).sum();
        return Units { write, read_halves: 0 };
    }
    if let Some(tables) = value.get("RequestItems").and_then(serde_json::Value::as_object) {
        let mut out = Units::default();
        for table in tables.values() {
            if let Some(requests) = table.as_array() {
                out.write += requests
                    .iter()
                    .map(|r| r.pointer("/PutRequest/Item").map_or(1, |item| write_units_of(item_size(item))))
                    .sum::<u64>();
            } else if let Some(keys) = table.get("Keys").and_then(serde_json::Value::as_array) {
                let consistent = table.get("ConsistentRead").and_then(serde_json::Value::as_bool) == Some(true);
                out.read_halves += keys.len() as u64 * if consistent { 2 } else { 1 };
            }
        }
        return out;
    }
    if value.get("Key").is_some()
        && value.get("UpdateExpression").is_none()
        && value.get("ConditionExpression").is_none()
    {
        // A GetItem.
        let consistent = value.get("ConsistentRead").and_then(serde_json::Value::as_bool) == Some(true);
        return Units { write: 0, read_halves: if consistent { 2 } else { 1 } };
    }
    Units { write: single(value), read_halves: 0 }
}

/// A PartiQL statement's write units: an `INSERT`'s item (its `VALUE`'s
/// names and parameters), an `UPDATE`'s key and set values (its
/// parameters, and the names it sets), a `DELETE` 1, a `SELECT` none.
fn statement_units(statement: &serde_json::Value) -> u64 {
    let text = statement.get("Statement").and_then(serde_json::Value::as_str).unwrap_or_default();
    let parameters: u64 =
        statement.get("Parameters").and_then(serde_json::Value::as_array).map_or(0, |p| p.iter().map(value_size).sum());
    // The quoted names, the table's (the first) left out.
    let names: u64 = text.split(['\'', '"']).skip(1).step_by(2).skip(1).map(|n| n.len() as u64).sum();
    match text.split_whitespace().next().map(str::to_ascii_uppercase).as_deref() {
        Some("INSERT" | "UPDATE") => write_units_of(parameters + names),
        Some("DELETE") => 1,
        _ => 0,
    }
}

/// The running endpoint; it lives as long as the process.
pub struct NullDynamo {
    pub addr: SocketAddr,
    /// Requests answered so far.
    pub requests: Arc<AtomicU64>,
    /// Write request units of those requests ([`units`]).
    pub write_units: Arc<AtomicU64>,
    /// Read request units of those requests, in halves ([`units`]).
    pub read_halves: Arc<AtomicU64>,
}

impl NullDynamo {
    /// Answers at once.
    pub fn start() -> std::io::Result<Self> {
        Self::start_with(None)
    }

    /// Answers after the delay `latency` gives each request.
    pub fn with_latency(latency: Latency) -> std::io::Result<Self> {
        Self::start_with(Some(latency))
    }

    fn start_with(latency: Option<Latency>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let write_units = Arc::new(AtomicU64::new(0));
        let read_halves = Arc::new(AtomicU64::new(0));
        let counters = (requests.clone(), write_units.clone(), read_halves.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counters = counters.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &counters, latency);
                });
            }
        });
        Ok(Self { addr, requests, write_units, read_halves })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Write request units of the requests answered so far.
    pub fn write_units(&self) -> u64 {
        self.write_units.load(Ordering::Relaxed)
    }

    /// Read request units of the requests answered so far.
    pub fn read_units(&self) -> f64 {
        self.read_halves.load(Ordering::Relaxed) as f64 / 2.0
    }
}

type Counters = (Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicU64>);

fn serve(
    stream: TcpStream,
    (requests, write_units, read_halves): &Counters,
    latency: Option<Latency>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some((_, _, body)) = crate::runtime_api::read_request(&mut reader)? {
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        if let Some(latency) = latency {
            std::thread::sleep(latency.delay_of(&value));
        }
        let billed = units(&value);
        write_units.fetch_add(billed.write, Ordering::Relaxed);
        read_halves.fetch_add(billed.read_halves, Ordering::Relaxed);
        requests.fetch_add(1, Ordering::Relaxed);
        // Every write succeeds: a BatchExecuteStatement answers each of its
        // statements; anything else answers `{}`.
        let body = match value.get("Statements").and_then(serde_json::Value::as_array) {
            Some(statements) => {
                serde_json::json!({ "Responses": vec![serde_json::json!({}); statements.len()] }).to_string()
            }
            None => "{}".to_owned(),
        };
        writer.write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\nx-amzn-RequestId: bench\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )?;
        writer.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_grows_with_the_transaction() {
        let model = Latency::default();
        assert_eq!(model.delay(br#"{"TableName":"t","Item":{}}"#), Duration::from_millis(4));
        let tx = br#"{"TransactItems":[{"Put":{}},{"Update":{}},{"Put":{}}]}"#;
        assert_eq!(model.delay(tx), Duration::from_millis(8) + Duration::from_micros(900));
        let batch = br#"{"RequestItems":{"t":[{"PutRequest":{}},{"PutRequest":{}}],"u":{"Keys":[{},{}]}}}"#;
        assert_eq!(model.delay(batch), Duration::from_millis(4) + Duration::from_micros(1200));
    }

    #[test]
    fn units_follow_the_on_demand_rules_from_item_sizes() {
        let units = |body: &str| units(&serde_json::from_str(body).unwrap());
        let w = |write| Units { write, read_halves: 0 };
        assert_eq!(
            units(
                r#"{"TransactItems":[{"Put":{"Item":{}}},{"Update":{"Key":{},"UpdateExpression":"SET a = :a"}},{"ConditionCheck":{}}]}"#
            ),
            w(4)
        );
        assert_eq!(units(r#"{"TableName":"t","Item":{}}"#), w(1));
        assert_eq!(units(r#"{"TableName":"t","Key":{},"UpdateExpression":"SET a = :a"}"#), w(1));
        // 1,020 bytes of string and a 3-byte name: 1,023 bytes, one unit; two more bytes, two.
        let big = |n: usize| format!(r#"{{"TableName":"t","Item":{{"abc":{{"S":"{}"}}}}}}"#, "x".repeat(n));
        assert_eq!(units(&big(1020)), w(1));
        assert_eq!(units(&big(1022)), w(2));
        assert_eq!(
            units(r#"{"RequestItems":{"t":{"Keys":[{},{}],"ConsistentRead":true}}}"#),
            Units { write: 0, read_halves: 4 }
        );
        assert_eq!(units(r#"{"TableName":"t","Key":{},"ConsistentRead":true}"#), Units { write: 0, read_halves: 2 });
        let statements = r#"{"Statements":[
            {"Statement":"INSERT INTO \"t\" VALUE {'pk': ?}","Parameters":[{"S":"a"}]},
            {"Statement":"UPDATE \"t\" SET \"n\" = ? WHERE \"pk\" = ?","Parameters":[{"N":"1"},{"S":"a"}]},
            {"Statement":"SELECT * FROM \"t\""}]}"#;
        assert_eq!(units(statements), w(2));
    }

    #[test]
    fn sizes_follow_aws_rules() {
        let size = |v: &str| value_size(&serde_json::from_str(v).unwrap());
        assert_eq!(size(r#"{"S":"héllo"}"#), 6);
        assert_eq!(size(r#"{"N":"12345"}"#), 4, "5 significant digits: 3 bytes, plus 1");
        assert_eq!(size(r#"{"N":"1000.00"}"#), 2, "trailing zeroes trimmed");
        assert_eq!(size(r#"{"BOOL":true}"#), 1);
        assert_eq!(size(r#"{"M":{"ab":{"S":"c"}}}"#), 3 + 1 + 2 + 1);
        assert_eq!(size(r#"{"L":[{"S":"a"},{"N":"7"}]}"#), 3 + (1 + 1) + (1 + 2));
    }
}
