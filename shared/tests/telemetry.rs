//! Captures the JSON log lines and the metrics document of an invocation and
//! checks them: every line parses, carries the invocation's and the record's
//! ids, and the EMF document has the specification's structure.

use std::io::Write;
use std::sync::Mutex;

use serde_json::Value;
use shared::batch::Summary;
use shared::telemetry::{CapacityMeter, Invocation, RequestCounter, init_with};
use tracing_subscriber::filter::LevelFilter;

static CAPTURED: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURED.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn json_lines_carry_invocation_and_record_fields_and_emf_is_well_formed() {
    init_with(true, LevelFilter::INFO, || Box::new(Capture)).unwrap();
    let (requests, capacity) = (RequestCounter::default(), CapacityMeter::default());
    let invocation =
        Invocation::start("sqs-consumer", "deployed-name", "req-1", Some("Root=1-abc"), &requests, &capacity);
    invocation.span().in_scope(|| {
        let record = tracing::info_span!("record", message_id = "m-1");
        record.in_scope(|| tracing::warn!(order_id = "o-1", reason = "amount: must be >= 0", "record quarantined"));
        tracing::debug!("below the level: not written");
    });
    let mut emf = Vec::new();
    let summary = Summary { applied: 2, quarantined: 1, ..Summary::default() };
    invocation.finish_to(&summary, 3, &requests, &capacity, &mut emf);

    let text = String::from_utf8(CAPTURED.lock().unwrap().clone()).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("every line is JSON")).collect();
    assert_eq!(lines.len(), 2, "{text}");
    let record_line = &lines[0];
    assert_eq!(record_line["level"], "WARN");
    assert_eq!(record_line["message"], "record quarantined");
    assert_eq!(record_line["function_request_id"], "req-1");
    assert_eq!(record_line["function_name"], "deployed-name");
    assert_eq!(record_line["cold_start"], true);
    assert_eq!(record_line["xray_trace_id"], "Root=1-abc");
    assert_eq!(record_line["message_id"], "m-1");
    assert_eq!(record_line["order_id"], "o-1");
    let summary_line = &lines[1];
    assert_eq!(summary_line["message"], "invocation summary");
    assert_eq!((summary_line["applied"].as_u64(), summary_line["quarantined"].as_u64()), (Some(2), Some(1)));
    assert_eq!(summary_line["dynamodb_requests"], 0);
    assert!(summary_line.get("message_id").is_none(), "record fields stay in the record's lines");

    let doc: Value = serde_json::from_slice(&emf).unwrap();
    let directive = &doc["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(directive["Namespace"], "StreamProcessor");
    assert_eq!(directive["Dimensions"], serde_json::json!([["function"]]));
    assert_eq!(doc["function"], "sqs-consumer");
    for definition in directive["Metrics"].as_array().unwrap() {
        let name = definition["Name"].as_str().unwrap();
        assert!(doc[name].is_number(), "metric {name} has a value");
        assert!(definition["Unit"].is_string());
    }
    assert_eq!(doc["Applied"], 2.0);
    assert_eq!(doc["ColdStart"], 1.0);
    assert!(doc.get("Stale").is_none(), "unused metrics are not printed");
}
