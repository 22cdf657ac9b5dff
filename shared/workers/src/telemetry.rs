//! The invocation's summary line and metrics, in the Lambda functions'
//! shape: the core's counters ([`shared_core::telemetry`]) with what a
//! Worker adds (the queue, D1's statements and round trips), one JSON
//! object per line on the console (Workers Logs index JSON lines), and the
//! same EMF document.

use serde_json::{Map, Value};
use shared_core::batch::Summary;
use shared_core::telemetry::{Metrics, SUMMARY_MESSAGE, summary_fields};

/// One invocation, as its summary line and metrics report it.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation<'a> {
    /// The consumer's name (the metrics' `function` dimension).
    pub function: &'a str,
    /// The queue the batch came from.
    pub queue: &'a str,
    /// `POWERTOOLS_SERVICE_NAME`, if set.
    pub service: Option<&'a str>,
    /// The first invocation of this isolate.
    pub cold_start: bool,
    /// Messages in the batch.
    pub records: usize,
    /// What became of them (or of an object's lines).
    pub summary: Summary,
    /// D1 statements sent.
    pub d1_statements: u64,
    /// D1 round trips (batches) sent.
    pub d1_round_trips: u64,
    /// From the batch's arrival to its answer.
    pub duration_ms: f64,
    /// When it ended, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

impl Invocation<'_> {
    /// The summary line: `timestamp`, `level`, `message` (`invocation
    /// summary`), `function_name`, `cold_start`, `service`, the core's
    /// counters, and the queue and D1 figures.
    ///
    /// ```
    /// use shared_workers::telemetry::Invocation;
    ///
    /// let line = Invocation {
    ///     function: "inventory-reservations", queue: "reservations", service: None, cold_start: true,
    ///     records: 2, summary: Default::default(), d1_statements: 4, d1_round_trips: 2,
    ///     duration_ms: 3.5, timestamp_ms: 0,
    /// }
    /// .line();
    /// assert_eq!(line["message"], "invocation summary");
    /// assert_eq!((line["applied"].as_u64(), line["records"].as_u64(), line["d1_round_trips"].as_u64()), (Some(0), Some(2), Some(2)));
    /// ```
    pub fn line(&self) -> Value {
        let mut line = Map::new();
        line.insert("timestamp".into(), Value::from(iso8601(self.timestamp_ms)));
        line.insert("level".into(), Value::from("INFO"));
        line.insert("message".into(), Value::from(SUMMARY_MESSAGE));
        line.insert("function_name".into(), Value::from(self.function));
        line.insert("cold_start".into(), Value::from(self.cold_start));
        if let Some(service) = self.service {
            line.insert("service".into(), Value::from(service));
        }
        line.extend(summary_fields(&self.summary, self.records));
        line.insert("queue".into(), Value::from(self.queue));
        line.insert("d1_statements".into(), Value::from(self.d1_statements));
        line.insert("d1_round_trips".into(), Value::from(self.d1_round_trips));
        line.insert("duration_ms".into(), Value::from(self.duration_ms));
        Value::Object(line)
    }

    /// The EMF document: the Lambda functions' metrics, with D1's figures
    /// where they report DynamoDB's requests.
    pub fn metrics(&self, namespace: &str) -> Option<Value> {
        let mut m = Metrics::new(namespace, self.function);
        m.summary(&self.summary, self.records);
        m.put("InvocationDuration", "Milliseconds", self.duration_ms);
        if self.records > 0 {
            m.put("RecordDuration", "Milliseconds", self.duration_ms / self.records as f64);
        }
        m.count("D1Statements", self.d1_statements);
        m.count("D1RoundTrips", self.d1_round_trips);
        if self.cold_start {
            m.put("ColdStart", "Count", 1.0);
        }
        m.document(self.timestamp_ms)
    }
}

/// `2026-12-05T01:02:03.456Z` of milliseconds since the Unix epoch
/// (civil-from-days, Howard Hinnant's algorithm: no clock or time zone
/// crate needed on wasm32).
fn iso8601(ms: u64) -> String {
    let (secs, millis) = (ms / 1000, ms % 1000);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_764_896_523_456), "2025-12-05T01:02:03.456Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn the_metrics_are_the_lambda_functions_with_d1_for_dynamodb() {
        let invocation = Invocation {
            function: "orders",
            queue: "orders-events",
            service: Some("shop"),
            cold_start: false,
            records: 4,
            summary: Summary { applied: 3, quarantined: 1, ..Summary::default() },
            d1_statements: 9,
            d1_round_trips: 2,
            duration_ms: 8.0,
            timestamp_ms: 7,
        };
        let doc = invocation.metrics("StreamProcessor").unwrap();
        let names: Vec<&str> = doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "Applied",
                "Quarantined",
                "BatchSize",
                "InvocationDuration",
                "RecordDuration",
                "D1Statements",
                "D1RoundTrips"
            ]
        );
        assert_eq!(doc["RecordDuration"], 2.0);
        let line = invocation.line();
        assert_eq!((line["service"].as_str(), line["quarantined"].as_u64()), (Some("shop"), Some(1)));
    }
}
