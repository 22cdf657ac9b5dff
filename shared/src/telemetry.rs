//! Logs and metrics, at no cost on the hot path.
//!
//! Logs go through `tracing` and honour Lambda's standard controls:
//! `AWS_LAMBDA_LOG_FORMAT=JSON` writes one flat JSON object per line whose keys
//! include every field of every enclosing span (request id, function name,
//! cold start, X-Ray trace id, then the record's correlation ids), so one line
//! answers "which record, which invocation" in CloudWatch Logs Insights;
//! `AWS_LAMBDA_LOG_LEVEL` (else `RUST_LOG`, else `INFO`) sets the level.
//!
//! Metrics are one CloudWatch Embedded Metric Format document per invocation,
//! written to stdout: <https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

use crate::batch::Summary;

/// The EMF namespace of every metric.
pub use shared_core::telemetry::NAMESPACE;

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init() {
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let _ = init_with(json, level_from_env(), || Box::new(std::io::stdout()));
}

fn level_from_env() -> LevelFilter {
    std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(LevelFilter::INFO)
}

type MakeWriter = fn() -> Box<dyn Write + Send>;

pub use tracing_subscriber::util::TryInitError;

/// Installs the subscriber with an explicit format, level and writer.
/// Fails when a subscriber is installed already.
pub fn init_with(json: bool, level: LevelFilter, writer: MakeWriter) -> Result<(), TryInitError> {
    if json {
        tracing_subscriber::registry().with(level).with(FlatJson { writer }).try_init()
    } else {
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_target(false)
            .without_time()
            .with_writer(writer)
            .finish()
            .try_init()
    }
}

/// Fields of a span, kept in its extensions.
struct SpanFields(Map<String, Value>);

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().to_owned(), Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }
}

/// One flat JSON object per event: time, level, message, the event's fields,
/// and the fields of every enclosing span (innermost wins).
struct FlatJson {
    writer: MakeWriter,
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for FlatJson {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Map::new();
        attrs.record(&mut JsonVisitor(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<SpanFields>()
        {
            values.record(&mut JsonVisitor(&mut fields.0));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::from(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        );
        line.insert("level".into(), Value::from(event.metadata().level().as_str()));
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<SpanFields>() {
                    for (k, v) in &fields.0 {
                        line.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        event.record(&mut JsonVisitor(&mut line));
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        // A failed log write must not fail the invocation.
        let _ = (self.writer)().write_all(text.as_bytes());
    }
}

/// Counts the requests a client sends (each HTTP attempt, retries included).
#[derive(Debug, Clone, Default)]
pub struct RequestCounter(Arc<AtomicU64>);

impl RequestCounter {
    /// Requests counted so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "RequestCounter"
    }

    fn read_before_transmit(
        &self,
        _context: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Consumed write and read capacity reported by DynamoDB, summed.
#[derive(Debug, Clone, Default)]
pub struct CapacityMeter(Arc<Mutex<f64>>);

impl CapacityMeter {
    /// Adds `units` capacity units (read and write alike).
    pub(crate) fn add(&self, units: f64) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) += units;
    }

    /// Capacity units summed so far.
    pub(crate) fn get(&self) -> f64 {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

static COLD: AtomicBool = AtomicBool::new(true);

/// One invocation's telemetry: the span every log line of the invocation is
/// in, and the metrics document written when it finishes.
pub struct Invocation {
    function: String,
    cold_start: bool,
    started: Instant,
    requests_at_start: u64,
    capacity_at_start: f64,
    span: tracing::Span,
}

impl Invocation {
    /// Starts an invocation: `request_id` and `trace_id` come from the
    /// Lambda context (the trace id falls back to `_X_AMZN_TRACE_ID`).
    pub fn start(
        function: &str,
        function_name: &str,
        request_id: &str,
        trace_id: Option<&str>,
        requests: &RequestCounter,
        capacity: &CapacityMeter,
    ) -> Self {
        let cold_start = COLD.swap(false, Ordering::Relaxed);
        let env_trace = std::env::var("_X_AMZN_TRACE_ID").ok();
        let trace = trace_id.map(str::to_owned).or(env_trace).unwrap_or_default();
        // Field names as Powertools' Logger writes them, so existing Logs
        // Insights queries keep working.
        let function_name = if function_name.is_empty() { function } else { function_name };
        let span = tracing::info_span!(
            "invocation",
            function_request_id = request_id,
            function_name,
            cold_start,
            xray_trace_id = %trace,
            service = service_name(),
        );
        Self {
            function: function.to_owned(),
            cold_start,
            started: Instant::now(),
            requests_at_start: requests.get(),
            capacity_at_start: capacity.get(),
            span,
        }
    }

    /// The span to run the invocation in.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Logs the summary line and writes the metrics document to stdout.
    pub fn finish(self, summary: &Summary, batch_size: usize, requests: &RequestCounter, capacity: &CapacityMeter) {
        self.finish_to(summary, batch_size, requests, capacity, &mut std::io::stdout());
    }

    /// Like [`Invocation::finish`], writing the metrics document to `out`.
    pub fn finish_to(
        self,
        summary: &Summary,
        batch_size: usize,
        requests: &RequestCounter,
        capacity: &CapacityMeter,
        out: &mut impl Write,
    ) {
        let elapsed = self.started.elapsed();
        let requests_spent = requests.get() - self.requests_at_start;
        let capacity_spent = capacity.get() - self.capacity_at_start;
        self.span.in_scope(|| {
            tracing::info!(
                applied = summary.applied,
                stale = summary.stale,
                duplicate = summary.duplicate,
                quarantined = summary.quarantined,
                ignored = summary.ignored,
                failed = summary.failed,
                records = batch_size,
                dynamodb_requests = requests_spent,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                "invocation summary"
            );
        });
        let mut metrics = Metrics::new(&self.function);
        metrics.0.summary(summary, batch_size);
        metrics.put("InvocationDuration", "Milliseconds", elapsed.as_secs_f64() * 1000.0);
        if batch_size > 0 {
            metrics.put("RecordDuration", "Milliseconds", elapsed.as_secs_f64() * 1000.0 / batch_size as f64);
        }
        metrics.count("DynamoDBRequests", requests_spent);
        if capacity_spent > 0.0 {
            metrics.put("DynamoDBConsumedCapacity", "Count", capacity_spent);
        }
        if self.cold_start {
            metrics.put("ColdStart", "Count", 1.0);
        }
        metrics.flush(out);
    }
}

/// The metrics namespace: `POWERTOOLS_METRICS_NAMESPACE` (Powertools'
/// variable, so teams that run both share dashboards), else [`NAMESPACE`].
/// Read once.
pub fn namespace() -> &'static str {
    static NS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NS.get_or_init(|| {
        std::env::var("POWERTOOLS_METRICS_NAMESPACE")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| NAMESPACE.to_owned())
    })
}

/// The service name of the log lines: `POWERTOOLS_SERVICE_NAME`, as
/// Powertools' Logger writes it; `None` when unset. Read once.
pub fn service_name() -> Option<&'static str> {
    static SERVICE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    SERVICE.get_or_init(|| std::env::var("POWERTOOLS_SERVICE_NAME").ok().filter(|v| !v.trim().is_empty())).as_deref()
}

/// An EMF document under construction: metrics with one dimension,
/// `function` (the core's document, the same on every platform).
#[derive(Debug, Clone)]
pub struct Metrics(shared_core::telemetry::Metrics);

impl Metrics {
    /// Metrics of `function` (the dimension's value) in the [`namespace`].
    pub fn new(function: &str) -> Self {
        Self::with_namespace(namespace(), function)
    }

    /// Metrics of `function` in `namespace`.
    pub fn with_namespace(namespace: &str, function: &str) -> Self {
        Self(shared_core::telemetry::Metrics::new(namespace, function))
    }

    /// Records a count; zero counts are left out (nothing is printed for an
    /// unused metric).
    pub fn count(&mut self, name: &'static str, value: u64) {
        self.0.count(name, value);
    }

    /// Records a value with a unit.
    pub fn put(&mut self, name: &'static str, unit: &'static str, value: f64) {
        self.0.put(name, unit, value);
    }

    /// The EMF document, or `None` when no metric was recorded.
    pub fn document(&self, at: SystemTime) -> Option<Value> {
        self.0.document(at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
    }

    /// Writes the document as one line; writes nothing when no metric was recorded.
    pub fn flush(self, out: &mut impl Write) {
        if let Some(doc) = self.document(SystemTime::now()) {
            let _ = writeln!(out, "{doc}");
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn emf_document_matches_the_specification_structure() {
        let mut m = Metrics::new("sqs-consumer");
        m.count("Applied", 3);
        m.count("Stale", 0);
        m.put("InvocationDuration", "Milliseconds", 12.5);
        let doc = m.document(UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123)).unwrap();
        let aws = &doc["_aws"];
        assert_eq!(aws["Timestamp"], 1_700_000_000_123u64);
        let directive = &aws["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], NAMESPACE);
        assert_eq!(directive["Dimensions"], json!([["function"]]));
        let names: Vec<&str> =
            directive["Metrics"].as_array().unwrap().iter().map(|d| d["Name"].as_str().unwrap()).collect();
        assert_eq!(names, ["Applied", "InvocationDuration"], "unused metrics are left out");
        // Every dimension and metric named in the directive has a value at the root.
        assert_eq!(doc["function"], "sqs-consumer");
        for name in names {
            assert!(doc[name].is_number(), "{name}");
        }
    }

    #[test]
    fn nothing_is_written_without_metrics() {
        let mut out = Vec::new();
        Metrics::new("f").flush(&mut out);
        assert!(out.is_empty());
    }
}
