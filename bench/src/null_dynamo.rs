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
/// for `BatchWriteItem` and `BatchGetItem`. Why: DynamoDB answers single-item
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

/// The write request units a request would be billed on on-demand
/// DynamoDB, for items of at most 1 KB (the bench's are): 2 per action of a
/// `TransactWriteItems` (a transactional write takes two), 1 per item of a
/// `BatchWriteItem`, 1 for a `PutItem`, `UpdateItem` or `DeleteItem` (told
/// from reads by their body: an `Item`, an `UpdateExpression`, or a `Key`
/// with a `ConditionExpression`), 0 for reads.
pub fn write_units(value: &serde_json::Value) -> u64 {
    if let Some(actions) = value.get("TransactItems").and_then(serde_json::Value::as_array) {
        return 2 * actions.iter().filter(|a| a.get("ConditionCheck").is_none()).count() as u64;
    }
    if let Some(tables) = value.get("RequestItems").and_then(serde_json::Value::as_object) {
        return tables.values().filter_map(serde_json::Value::as_array).map(|t| t.len() as u64).sum();
    }
    let single = value.get("Item").is_some()
        || value.get("UpdateExpression").is_some()
        || (value.get("Key").is_some() && value.get("ConditionExpression").is_some());
    u64::from(single)
}

/// The running endpoint; it lives as long as the process.
pub struct NullDynamo {
    pub addr: SocketAddr,
    /// Requests answered so far.
    pub requests: Arc<AtomicU64>,
    /// Write request units of those requests ([`write_units`]).
    pub write_units: Arc<AtomicU64>,
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
        let counters = (requests.clone(), write_units.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counters = counters.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &counters.0, &counters.1, latency);
                });
            }
        });
        Ok(Self { addr, requests, write_units })
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
}

fn serve(
    stream: TcpStream,
    requests: &AtomicU64,
    write_units: &AtomicU64,
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
        write_units.fetch_add(crate::null_dynamo::write_units(&value), Ordering::Relaxed);
        requests.fetch_add(1, Ordering::Relaxed);
        writer.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\nx-amzn-RequestId: bench\r\nContent-Length: 2\r\n\r\n{}",
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
    fn write_units_follow_the_on_demand_rules() {
        let units = |body: &str| write_units(&serde_json::from_str(body).unwrap());
        assert_eq!(units(r#"{"TransactItems":[{"Put":{}},{"Update":{}},{"ConditionCheck":{}}]}"#), 4);
        assert_eq!(units(r#"{"TableName":"t","Item":{}}"#), 1);
        assert_eq!(units(r#"{"TableName":"t","Key":{},"UpdateExpression":"SET a = :a"}"#), 1);
        assert_eq!(units(r#"{"TableName":"t","Key":{}}"#), 0);
    }
}
