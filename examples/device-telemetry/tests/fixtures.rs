//! The fixture events of the new sources (`events/kinesis-*.json`,
//! `events/kafka/*.json`), written from AWS's documented shapes, read
//! through the toolkit's engine as the entry points read them: every record
//! applied, ignored or quarantined alone with its reason, and the partial
//! batch response in the source's own shape.

use shared::batch::{Outcome, RecordError, Summary};
use shared::engine::{CommitError, Engine, Plan};
use shared::event::window::WindowBatch;
use shared::event::{RawBatch, kafka, kinesis};
use shared::idempotency::{IdempotencyKey, KeySource};
use shared::quarantine::MemoryQuarantine;

use device_telemetry::Reading;

fn batch(json: &str) -> RawBatch {
    RawBatch::from_json(json).expect("the fixture is an event")
}

/// Runs the engine over `batch` with `plan`, committing every effect as
/// applied except those `fail` names (failed transiently).
fn run<R, E, P>(batch: &RawBatch, plan: P, fail: impl Fn(&E) -> bool) -> (Vec<String>, Summary, MemoryQuarantine)
where
    R: shared::engine::BatchRecord,
    P: FnMut(&R) -> Result<Plan<E>, RecordError>,
{
    let quarantine = MemoryQuarantine::new();
    let engine = Engine::new(&quarantine);
    let commit = |effects: Vec<E>| async move {
        effects
            .iter()
            .map(|e| if fail(e) { Err(CommitError::Transient("throttled".into())) } else { Ok(Outcome::Applied) })
            .collect::<Vec<_>>()
    };
    let (response, summary) = futures::executor::block_on(engine.process(batch, None, plan, commit)).unwrap();
    (response.ids().into_iter().map(str::to_owned).collect(), summary, quarantine)
}

fn reading_of(record: &kinesis::Record) -> Result<Plan<String>, RecordError> {
    let _: Reading = record.json_data().map_err(|e| RecordError::Permanent(e.to_string()))?;
    Ok(Plan::Effect(record.record_id()))
}

#[test]
fn kinesis_records_apply_and_an_invalid_body_is_quarantined_alone() {
    let batch = batch(include_str!("../../../events/kinesis-telemetry.json"));
    let (failed, summary, quarantine) = run(&batch, reading_of, |_| false);
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(summary, Summary { applied: 2, quarantined: 1, ..Summary::default() });
    let [item] = &quarantine.quarantined()[..] else { panic!("one record quarantined") };
    assert_eq!(item.source, "kinesis/device-telemetry");
    assert_eq!(item.record_id, "shardId-000000000000:49590338271490256608559692538361571095921575989136588002");
    assert!(item.reason.starts_with(r#"invalid: wh: invalid type: string "lots", expected u32"#), "{}", item.reason);
    assert!(item.raw.contains(r#""wh": "lots""#), "the record's data is kept: {}", item.raw);
}

#[test]
fn a_kpl_aggregate_is_applied_record_by_record_and_a_damaged_one_quarantined_with_its_reason() {
    let batch = batch(include_str!("../../../events/kinesis-kpl-aggregated.json"));
    let (failed, summary, quarantine) = run(&batch, reading_of, |_| false);
    assert!(failed.is_empty(), "{failed:?}");
    // The aggregate's four user records: three readings and one without a
    // device; the damaged aggregate; a plain record.
    assert_eq!(summary, Summary { applied: 4, quarantined: 2, ..Summary::default() });
    let mut items = quarantine.quarantined();
    items.sort_by(|a, b| a.record_id.cmp(&b.record_id));
    let reasons: Vec<(&str, &str)> = items.iter().map(|q| (q.record_id.as_str(), q.reason.as_str())).collect();
    let seq = "4959033827149025660855969253836157109592157598913658";
    assert_eq!(
        reasons,
        [
            (
                format!("shardId-000000000000:{seq}8101/2").as_str(),
                "invalid: deviceId: must not be empty at line 1 column 37"
            ),
            (
                format!("shardId-000000000000:{seq}8102").as_str(),
                "KPL aggregated record: MD5 checksum mismatch (the aggregate is truncated or corrupt)"
            ),
        ]
    );

    // Each user record has a key of its own: stream, shard, sequence and
    // sub-sequence number.
    let keys = IdempotencyKey::new("device-telemetry");
    let mut users = Vec::new();
    kinesis::Record::parse_into(&batch.records().unwrap()[0], &mut users).unwrap();
    let ids: Vec<String> = users.iter().map(|r| keys.kinesis(&KeySource::MessageId, r).unwrap().unwrap()).collect();
    assert_eq!(
        ids,
        (0..4)
            .map(|sub| format!("device-telemetry#kinesis#device-telemetry/shardId-000000000000/{seq}8101/{sub}"))
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_failure_holds_back_the_rest_of_the_shard_and_reports_its_sequence_number() {
    let batch = batch(include_str!("../../../events/kinesis-kpl-aggregated.json"));
    let seq = "4959033827149025660855969253836157109592157598913658";
    // The second user record of the aggregate fails: Lambda resends the
    // aggregate (its first user record then reads as a duplicate).
    let (failed, summary, _) = run(&batch, reading_of, |id: &String| id.ends_with("8101/1"));
    assert_eq!(failed, [format!("{seq}8101")]);
    assert_eq!(summary, Summary { applied: 1, failed: 5, ..Summary::default() });
}

fn kafka_reading(record: &kafka::Record) -> Result<Plan<String>, RecordError> {
    let reading: Option<Reading> = record.json_value().map_err(|e| RecordError::Permanent(e.to_string()))?;
    Ok(reading.map_or(Plan::Ignore, |_| Plan::Effect(record.record_id())))
}

#[test]
fn msk_records_report_each_partition_s_first_failure_by_partition_and_offset() {
    let batch = batch(include_str!("../../../events/kafka/msk.json"));
    let (failed, summary, quarantine) = run(&batch, kafka_reading, |_| false);
    assert!(failed.is_empty());
    assert_eq!(summary, Summary { applied: 2, quarantined: 1, ..Summary::default() });
    let [item] = &quarantine.quarantined()[..] else { panic!("one record quarantined") };
    assert_eq!((item.source.as_str(), item.record_id.as_str()), ("kafka/readings", "readings-0@16"));
    assert!(item.reason.starts_with("invalid: wh: invalid value: integer `-4`, expected u32"), "{}", item.reason);

    // Offset 15 fails: its partition waits (16 is not attempted), the other
    // partition goes on; the response names partition and offset.
    let (failed, summary, _) = run(&batch, kafka_reading, |id: &String| id == "readings-0@15");
    assert_eq!(failed, ["readings-0@15"]);
    assert_eq!(summary, Summary { applied: 1, failed: 2, ..Summary::default() });
    let response = kafka::BatchResponse::from_ids(&shared::batch::BatchResponse::failed(failed)).unwrap();
    assert_eq!(
        serde_json::to_value(response).unwrap(),
        serde_json::json!({"batchItemFailures": [{"itemIdentifier": {"partition": "readings-0", "offset": 15}}]})
    );
}

#[test]
fn self_managed_kafka_records_parse_and_a_tombstone_is_ignored() {
    let batch = batch(include_str!("../../../events/kafka/self-managed.json"));
    let (failed, summary, _) = run(&batch, kafka_reading, |_| false);
    assert!(failed.is_empty());
    assert_eq!(summary, Summary { applied: 1, ignored: 1, ..Summary::default() });
    let first = kafka::Record::parse_raw(&batch.records().unwrap()[0]).unwrap();
    assert_eq!((first.key.as_deref(), first.header("source")), (Some(&b"d-5"[..]), Some(&b"meter-gw-7"[..])));
}

#[test]
fn a_window_invocation_parses_with_its_window_and_its_records() {
    let event = WindowBatch::from_json(include_str!("../../../events/window-kinesis.json")).unwrap();
    let window = event.window.as_ref().unwrap();
    assert_eq!(
        (window.start.to_rfc3339(), window.end.to_rfc3339()),
        ("2026-11-28T10:02:00+00:00".into(), "2026-11-28T10:03:00+00:00".into())
    );
    assert_eq!((event.is_final, event.shard_id.as_deref()), (false, Some("shardId-000000000000")));
    let (failed, summary, quarantine) = run(&event.batch, reading_of, |_| false);
    assert!(failed.is_empty());
    assert_eq!(summary, Summary { applied: 2, quarantined: 1, ..Summary::default() });
    assert!(quarantine.quarantined()[0].reason.starts_with("malformed JSON in Kinesis record data"));
}
