//! The one shape of an invocation's summary and metrics, on every
//! platform: the summary line's counters ([`summary_fields`]) and the
//! CloudWatch Embedded Metric Format document ([`Metrics`]), built from
//! the core's [`Summary`]. A platform adds its own fields (Lambda its
//! request id and DynamoDB requests, Workers its queue and D1 statements)
//! and writes the line its way (stdout, `console.log`).
//! <https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>

use serde_json::{Map, Value, json};

use crate::batch::Summary;

/// The EMF namespace of every metric unless configured otherwise
/// (`POWERTOOLS_METRICS_NAMESPACE`).
pub const NAMESPACE: &str = "StreamProcessor";

/// The message of the summary line.
pub const SUMMARY_MESSAGE: &str = "invocation summary";

/// The summary line's counters: `applied`, `stale`, `duplicate`,
/// `quarantined`, `ignored`, `failed` and `records` (the batch's size).
///
/// ```
/// use shared_core::batch::Summary;
///
/// let fields = shared_core::telemetry::summary_fields(&Summary { applied: 2, failed: 1, ..Summary::default() }, 3);
/// assert_eq!(serde_json::Value::Object(fields).to_string(),
///            r#"{"applied":2,"duplicate":0,"failed":1,"ignored":0,"quarantined":0,"records":3,"stale":0}"#);
/// ```
pub fn summary_fields(summary: &Summary, records: usize) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, value) in [
        ("applied", summary.applied),
        ("stale", summary.stale),
        ("duplicate", summary.duplicate),
        ("quarantined", summary.quarantined),
        ("ignored", summary.ignored),
        ("failed", summary.failed),
    ] {
        out.insert(name.into(), Value::from(value));
    }
    out.insert("records".into(), Value::from(records));
    out
}

/// An EMF document under construction: metrics with one dimension,
/// `function`.
#[derive(Debug, Clone)]
pub struct Metrics {
    namespace: String,
    function: String,
    values: Vec<(&'static str, &'static str, f64)>,
}

impl Metrics {
    /// Metrics of `function` (the dimension's value) in `namespace`.
    pub fn new(namespace: &str, function: &str) -> Self {
        Self { namespace: namespace.to_owned(), function: function.to_owned(), values: Vec::new() }
    }

    /// The outcome counters of a summary (`Applied` ... `Failed`) and the
    /// batch's size (`BatchSize`), as every platform reports them.
    pub fn summary(&mut self, summary: &Summary, records: usize) {
        self.count("Applied", summary.applied);
        self.count("Stale", summary.stale);
        self.count("Duplicate", summary.duplicate);
        self.count("Quarantined", summary.quarantined);
        self.count("Ignored", summary.ignored);
        self.count("Failed", summary.failed);
        self.put("BatchSize", "Count", records as f64);
    }

    /// Records a count; zero counts are left out (nothing is printed for an
    /// unused metric).
    pub fn count(&mut self, name: &'static str, value: u64) {
        if value > 0 {
            self.values.push((name, "Count", value as f64));
        }
    }

    /// Records a value with a unit.
    pub fn put(&mut self, name: &'static str, unit: &'static str, value: f64) {
        self.values.push((name, unit, value));
    }

    /// The EMF document stamped `timestamp_ms` (milliseconds since the Unix
    /// epoch), or `None` when no metric was recorded.
    ///
    /// ```
    /// use shared_core::telemetry::Metrics;
    ///
    /// let mut m = Metrics::new("StreamProcessor", "orders");
    /// m.count("Applied", 3);
    /// m.count("Stale", 0);
    /// let doc = m.document(1_700_000_000_123).unwrap();
    /// assert_eq!(doc["_aws"]["CloudWatchMetrics"][0]["Metrics"], serde_json::json!([{"Name": "Applied", "Unit": "Count"}]));
    /// assert_eq!((doc["function"].as_str(), doc["Applied"].as_f64()), (Some("orders"), Some(3.0)));
    /// ```
    pub fn document(&self, timestamp_ms: u64) -> Option<Value> {
        if self.values.is_empty() {
            return None;
        }
        let definitions: Vec<Value> =
            self.values.iter().map(|(name, unit, _)| json!({"Name": name, "Unit": unit})).collect();
        let mut doc = json!({
            "_aws": {
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": self.namespace,
                    "Dimensions": [["function"]],
                    "Metrics": definitions,
                }],
            },
            "function": self.function,
        });
        for (name, _, value) in &self.values {
            doc[*name] = json!(value);
        }
        Some(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_named_in_the_directive_has_a_value_at_the_root() {
        let mut m = Metrics::new(NAMESPACE, "f");
        m.summary(&Summary { applied: 1, quarantined: 2, ..Summary::default() }, 3);
        m.put("InvocationDuration", "Milliseconds", 1.5);
        let doc = m.document(5).unwrap();
        let directive = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Dimensions"], json!([["function"]]));
        let names: Vec<&str> =
            directive["Metrics"].as_array().unwrap().iter().map(|d| d["Name"].as_str().unwrap()).collect();
        assert_eq!(names, ["Applied", "Quarantined", "BatchSize", "InvocationDuration"]);
        for name in names {
            assert!(doc[name].is_number(), "{name}");
        }
        assert_eq!(Metrics::new(NAMESPACE, "f").document(5), None);
    }
}
