//! The batch engine against a small reference model of AWS's partial batch
//! semantics, for any batch and any assignment of per-record results.
//!
//! The model is written from the AWS documentation, independently of the
//! engine and of `shared_core::batch::settle`:
//! - SQS standard: every failed message is reported, nothing else.
//! - SQS FIFO: a failed message and every later message of its group are
//!   reported; other groups are unaffected.
//! - DynamoDB stream: only the first failed record is reported; it and every
//!   record after it will be delivered again.
//!
//! "Failed" is a transient failure (at planning or at commit) or a panicking
//! planner; a permanent failure or an unparseable record is quarantined and
//! acknowledged. Every record ends in exactly one summary counter.
//!
//! Kinesis (KPL aggregates included) and Kafka have models of their own
//! below.

use std::collections::HashSet;
use std::sync::Mutex;

use proptest::prelude::*;
use serde_json::{Value, json};
use shared::batch::{Outcome, RecordError, Summary};
use shared::engine::{CommitError, Engine, Plan};
use shared::event::{RawBatch, kafka, kinesis, sqs, stream};
use shared::quarantine::MemoryQuarantine;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Applied,
    Stale,
    Duplicate,
    Ignored,
    /// The planner says the record can never succeed.
    Permanent,
    /// The planner says: retry later.
    TransientAtPlan,
    /// The commit fails transiently.
    TransientAtCommit,
    /// The commit refuses the record for good (a reused key).
    PermanentAtCommit,
    /// The planner panics.
    Panic,
    /// The record is not valid JSON of its kind.
    Unparseable,
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        4 => Just(Behaviour::Applied),
        1 => Just(Behaviour::Stale),
        1 => Just(Behaviour::Duplicate),
        1 => Just(Behaviour::Ignored),
        1 => Just(Behaviour::Permanent),
        1 => Just(Behaviour::TransientAtPlan),
        1 => Just(Behaviour::TransientAtCommit),
        1 => Just(Behaviour::PermanentAtCommit),
        1 => Just(Behaviour::Panic),
        1 => Just(Behaviour::Unparseable),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Standard,
    Fifo,
    Stream,
}

fn is_failure(b: Behaviour) -> bool {
    matches!(b, Behaviour::TransientAtPlan | Behaviour::TransientAtCommit | Behaviour::Panic)
}

/// The reference model: the reported ids, and which records are retried.
fn model(kind: Kind, records: &[(String, Option<String>, Behaviour)]) -> (Vec<String>, Vec<bool>) {
    match kind {
        Kind::Standard => {
            let retried: Vec<bool> = records.iter().map(|(_, _, b)| is_failure(*b)).collect();
            let ids = records.iter().zip(&retried).filter(|(_, r)| **r).map(|((id, _, _), _)| id.clone()).collect();
            (ids, retried)
        }
        Kind::Fifo => {
            let mut failed_groups = HashSet::new();
            let mut retried = Vec::new();
            for (_, group, b) in records {
                let group = group.clone().expect("FIFO records have a group");
                let retry = is_failure(*b) || failed_groups.contains(&group);
                if retry {
                    failed_groups.insert(group);
                }
                retried.push(retry);
            }
            let ids = records.iter().zip(&retried).filter(|(_, r)| **r).map(|((id, _, _), _)| id.clone()).collect();
            (ids, retried)
        }
        Kind::Stream => match records.iter().position(|(_, _, b)| is_failure(*b)) {
            Some(first) => (vec![records[first].0.clone()], (0..records.len()).map(|i| i >= first).collect()),
            None => (Vec::new(), vec![false; records.len()]),
        },
    }
}

fn expected_summary(records: &[(String, Option<String>, Behaviour)], retried: &[bool]) -> Summary {
    let mut s = Summary::default();
    for ((_, _, b), retry) in records.iter().zip(retried) {
        if *retry {
            s.failed += 1;
            continue;
        }
        match b {
            Behaviour::Applied => s.applied += 1,
            Behaviour::Stale => s.stale += 1,
            Behaviour::Duplicate => s.duplicate += 1,
            Behaviour::Ignored => s.ignored += 1,
            Behaviour::Permanent | Behaviour::PermanentAtCommit | Behaviour::Unparseable => s.quarantined += 1,
            Behaviour::TransientAtPlan | Behaviour::TransientAtCommit | Behaviour::Panic => s.failed += 1,
        }
    }
    s
}

fn sqs_event(records: &[(String, Option<String>, Behaviour)], fifo: bool) -> Value {
    let arn = if fifo { "arn:aws:sqs:us-east-1:123456789012:q.fifo" } else { "arn:aws:sqs:us-east-1:123456789012:q" };
    let records: Vec<Value> = records
        .iter()
        .map(|(id, group, b)| {
            if *b == Behaviour::Unparseable {
                // A message id but no body: the SQS parser rejects it.
                return json!({"messageId": id, "attributes": group.as_ref().map(|g| json!({"MessageGroupId": g}))});
            }
            let mut attributes = json!({"ApproximateReceiveCount": "1"});
            if let Some(g) = group {
                attributes["MessageGroupId"] = json!(g);
            }
            json!({"messageId": id, "body": id, "attributes": attributes, "eventSource": "aws:sqs", "eventSourceARN": arn})
        })
        .collect();
    json!({ "Records": records })
}

fn stream_event(records: &[(String, Option<String>, Behaviour)]) -> Value {
    let records: Vec<Value> = records
        .iter()
        .map(|(id, _, b)| {
            if *b == Behaviour::Unparseable {
                return json!({"eventID": id, "dynamodb": {"SequenceNumber": id, "Keys": "not a map"}});
            }
            json!({
                "eventID": id, "eventName": "INSERT", "eventVersion": "1.1", "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "dynamodb": {
                    "ApproximateCreationDateTime": 1764331200, "Keys": {"pk": {"S": id}},
                    "SequenceNumber": id, "SizeBytes": 10, "StreamViewType": "NEW_AND_OLD_IMAGES",
                },
                "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/2026",
            })
        })
        .collect();
    json!({ "Records": records })
}

/// Mutes the planner's deliberate panics (hundreds per run); any other panic
/// is printed as usual.
fn quiet_deliberate_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let deliberate = info.payload().downcast_ref::<String>().is_some_and(|m| m.starts_with("planner bug on"));
            if !deliberate {
                default(info);
            }
        }));
    });
}

fn planned(behaviour: Behaviour, id: &str) -> Result<Plan<String>, RecordError> {
    match behaviour {
        Behaviour::Ignored => Ok(Plan::Ignore),
        Behaviour::Permanent => Err(RecordError::Permanent(format!("{id} is bad"))),
        Behaviour::TransientAtPlan => Err(RecordError::Transient(format!("{id} not now"))),
        Behaviour::Panic => panic!("planner bug on {id}"),
        _ => Ok(Plan::Effect(id.to_owned())),
    }
}

/// Runs the engine over the batch; the commit plays each effect's behaviour
/// and keeps the engine's contract: never apply an effect after an earlier
/// one of its FIFO group failed (for a stream: stop at the first failure).
fn run(kind: Kind, records: &[(String, Option<String>, Behaviour)]) -> (Vec<String>, Summary, Vec<String>) {
    let event = match kind {
        Kind::Standard => sqs_event(records, false),
        Kind::Fifo => sqs_event(records, true),
        Kind::Stream => stream_event(records),
    };
    let batch = RawBatch::from_value(&event).unwrap();
    let behaviour_of = |id: &str| records.iter().find(|(i, _, _)| i == id).map(|(_, _, b)| *b).unwrap();
    let store = MemoryQuarantine::new();
    let committed_ids = Mutex::new(Vec::new());
    let group_of = |id: &str| records.iter().find(|(i, _, _)| i == id).and_then(|(_, g, _)| g.clone());
    let commit = |effects: Vec<String>| {
        let committed_ids = &committed_ids;
        async move {
            let mut results = Vec::new();
            let mut failed_groups = HashSet::new();
            for id in effects {
                if let Some(g) = group_of(&id).filter(|g| failed_groups.contains(g)) {
                    results.push(Err(CommitError::Transient(format!("an earlier message of group {g} failed"))));
                    continue;
                }
                let result = match behaviour_of(&id) {
                    Behaviour::Applied => Ok(Outcome::Applied),
                    Behaviour::Stale => Ok(Outcome::Stale),
                    Behaviour::Duplicate => Ok(Outcome::Duplicate),
                    Behaviour::PermanentAtCommit => Ok(Outcome::KeyReused),
                    Behaviour::TransientAtCommit => Err(CommitError::Transient("throttled".into())),
                    other => unreachable!("{other:?} is never committed"),
                };
                let stop = kind == Kind::Stream && result.is_err();
                if result.is_err()
                    && let Some(g) = group_of(&id)
                {
                    failed_groups.insert(g);
                }
                if result.is_ok() {
                    committed_ids.lock().unwrap().push(id);
                }
                results.push(result);
                if stop {
                    break;
                }
            }
            results
        }
    };
    let engine = Engine::new(&store);
    let (response, summary) = futures::executor::block_on(async {
        match kind {
            Kind::Stream => {
                engine
                    .process(&batch, None, |r: &stream::Record| planned(behaviour_of(&r.event_id), &r.event_id), commit)
                    .await
            }
            _ => {
                engine
                    .process(
                        &batch,
                        None,
                        |m: &sqs::Message| planned(behaviour_of(&m.message_id), &m.message_id),
                        commit,
                    )
                    .await
            }
        }
    })
    .unwrap();
    let committed = committed_ids.into_inner().unwrap();
    (response.ids().into_iter().map(str::to_owned).collect(), summary, committed)
}

fn batch(kind: Kind) -> impl Strategy<Value = Vec<(String, Option<String>, Behaviour)>> {
    proptest::collection::vec((0u8..3, behaviour()), 0..24).prop_map(move |items| {
        items
            .into_iter()
            .enumerate()
            .map(|(i, (g, b))| {
                let group = (kind == Kind::Fifo).then(|| ["A", "B", "C"][usize::from(g)].to_owned());
                (format!("r{i:02}"), group, b)
            })
            .collect()
    })
}

fn check(kind: Kind, records: &[(String, Option<String>, Behaviour)]) -> Result<(), TestCaseError> {
    quiet_deliberate_panics();
    let (reported, summary, committed) = run(kind, records);
    let (expected, retried) = model(kind, records);
    prop_assert_eq!(&reported, &expected, "response of {:?}", records);
    prop_assert_eq!(summary, expected_summary(records, &retried), "summary of {:?}", records);
    prop_assert_eq!(summary.total(), records.len() as u64);
    // Nothing that the delivery will retry "behind" a failure took effect
    // before it: for FIFO a later message of a failed group, for a stream a
    // record after the first failure.
    if kind != Kind::Standard {
        for (i, (id, _, b)) in records.iter().enumerate() {
            let behind_a_failure = retried[i] && !is_failure(*b);
            prop_assert!(!(behind_a_failure && committed.contains(id)), "{} was committed behind a failure", id);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn standard_queue_batches_match_the_model(records in batch(Kind::Standard)) {
        check(Kind::Standard, &records)?;
    }

    #[test]
    fn fifo_queue_batches_match_the_model(records in batch(Kind::Fifo)) {
        check(Kind::Fifo, &records)?;
    }

    #[test]
    fn stream_batches_match_the_model(records in batch(Kind::Stream)) {
        check(Kind::Stream, &records)?;
    }
}

#[test]
fn all_failed_switch_fails_the_invocation_only_when_nothing_succeeded() {
    let records: Vec<(String, Option<String>, Behaviour)> =
        (0..3).map(|i| (format!("r{i}"), None, Behaviour::TransientAtCommit)).collect();
    let batch = RawBatch::from_value(&sqs_event(&records, false)).unwrap();
    let store = MemoryQuarantine::new();
    let engine = Engine::new(&store).fail_on_all_failed(true);
    let commit = |effects: Vec<String>| async move {
        effects.iter().map(|_| Err(CommitError::Transient("throttled".into()))).collect::<Vec<_>>()
    };
    let plan = |m: &sqs::Message| Ok::<_, RecordError>(Plan::Effect(m.message_id.clone()));
    let result = futures::executor::block_on(engine.process(&batch, None, plan, commit));
    assert_eq!(result.unwrap_err().to_string(), "all 3 records of the batch failed");
}

#[test]
fn nothing_is_committed_when_the_deadline_is_too_near() {
    let records: Vec<(String, Option<String>, Behaviour)> =
        (0..2).map(|i| (format!("r{i}"), None, Behaviour::Applied)).collect();
    let batch = RawBatch::from_value(&sqs_event(&records, false)).unwrap();
    let store = MemoryQuarantine::new();
    let engine = Engine::new(&store).deadline_margin(std::time::Duration::from_secs(5));
    let commit = |effects: Vec<String>| async move {
        assert!(effects.is_empty(), "commit called with {effects:?}");
        Vec::new()
    };
    let plan = |m: &sqs::Message| Ok::<_, RecordError>(Plan::Effect(m.message_id.clone()));
    let deadline = std::time::SystemTime::now() + std::time::Duration::from_secs(1);
    let (response, summary) =
        futures::executor::block_on(engine.process(&batch, Some(deadline), plan, commit)).unwrap();
    assert_eq!(response.ids(), ["r0", "r1"]);
    assert_eq!(summary, Summary { failed: 2, ..Summary::default() });
}

// Kinesis and Kafka, against models of their own written from AWS's
// documentation:
// - Kinesis (https://docs.aws.amazon.com/lambda/latest/dg/services-kinesis-batchfailurereporting.html):
//   a batch is one shard's records in order; a KPL aggregate is read as its
//   user records, which share its sequence number. The first failed user
//   record's sequence number is reported; it and everything after it (the
//   rest of its aggregate included) is delivered again. A record that cannot
//   be read (bad base64, a damaged aggregate) is quarantined whole.
// - Kafka (https://docs.aws.amazon.com/lambda/latest/dg/kafka-retry-configurations.html):
//   records grouped by partition, each partition in offset order. Per
//   partition, the first failure is reported (by partition and offset) and
//   the partition's later records are delivered again; other partitions are
//   unaffected.

/// A Kinesis batch: raw records, each plain (one user record) or a KPL
/// aggregate of several, with a behaviour per user record; a raw record with
/// an `Unparseable` behaviour cannot be read at all.
type KinesisBatch = Vec<(bool, Vec<Behaviour>)>;

fn kinesis_batch() -> impl Strategy<Value = KinesisBatch> {
    let raw = prop_oneof![
        3 => behaviour().prop_map(|b| (false, vec![b])),
        1 => proptest::collection::vec(behaviour(), 1..5).prop_map(|bs| (true, bs)),
    ];
    proptest::collection::vec(raw, 0..16)
}

const SEQ: &str = "4959000000000000000000000000000000000000000000000";

/// The flattened records as the model sees them: (reported id, record id,
/// behaviour); an unreadable raw record is one record.
fn kinesis_records(batch: &KinesisBatch) -> Vec<(String, String, Behaviour)> {
    let mut out = Vec::new();
    for (i, (aggregated, behaviours)) in batch.iter().enumerate() {
        let seq = format!("{SEQ}{i:03}");
        let id = format!("shardId-000000000001:{seq}");
        if behaviours.contains(&Behaviour::Unparseable) {
            out.push((seq, id, Behaviour::Unparseable));
        } else if *aggregated {
            out.extend(behaviours.iter().enumerate().map(|(sub, b)| (seq.clone(), format!("{id}/{sub}"), *b)));
        } else {
            out.push((seq, id, behaviours[0]));
        }
    }
    out
}

fn kinesis_event(batch: &KinesisBatch) -> Value {
    let records: Vec<Value> = batch
        .iter()
        .enumerate()
        .map(|(i, (aggregated, behaviours))| {
            let seq = format!("{SEQ}{i:03}");
            let data = if behaviours.contains(&Behaviour::Unparseable) {
                if *aggregated { "84mawgAAAA==".to_owned() } else { "not base64!".to_owned() }
            } else if *aggregated {
                let users: Vec<shared::core::kpl::UserRecord> = (0..behaviours.len())
                    .map(|sub| shared::core::kpl::UserRecord::new(format!("pk-{sub}"), b"{}".to_vec()))
                    .collect();
                aws_smithy_types::base64::encode(shared::core::kpl::aggregate(&users))
            } else {
                aws_smithy_types::base64::encode(b"{}")
            };
            json!({
                "kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": "pk", "sequenceNumber": seq, "data": data,
                    "approximateArrivalTimestamp": 1764331200.5},
                "eventSource": "aws:kinesis", "eventID": format!("shardId-000000000001:{seq}"),
                "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/s",
            })
        })
        .collect();
    json!({ "Records": records })
}

/// A Kafka batch: records of partitions 0..3 with their behaviours, in the
/// order produced; the event groups them by partition.
type KafkaBatch = Vec<(u8, Behaviour)>;

fn kafka_batch() -> impl Strategy<Value = KafkaBatch> {
    proptest::collection::vec((0u8..3, behaviour()), 0..24)
}

/// The records in the event's order (partition by partition, as the event's
/// `records` object lists them, here by name; offsets counting up per
/// partition): (id, partition, behaviour).
fn kafka_records(batch: &KafkaBatch) -> Vec<(String, String, Behaviour)> {
    let mut partitions: Vec<u8> = batch.iter().map(|(p, _)| *p).collect();
    partitions.sort_unstable();
    partitions.dedup();
    let mut out = Vec::new();
    for p in partitions {
        for (offset, (_, b)) in batch.iter().filter(|(q, _)| *q == p).enumerate() {
            out.push((format!("readings-{p}@{}", 100 + offset), format!("readings-{p}"), *b));
        }
    }
    out
}

fn kafka_event(batch: &KafkaBatch) -> Value {
    let mut groups = serde_json::Map::new();
    for (id, partition, b) in kafka_records(batch) {
        let (p, offset) = id.trim_start_matches("readings-").split_once('@').unwrap();
        let value = if b == Behaviour::Unparseable {
            "not base64!".to_owned()
        } else {
            aws_smithy_types::base64::encode(b"{}")
        };
        let record = json!({"topic": "readings", "partition": p.parse::<i64>().unwrap(), "offset": offset.parse::<i64>().unwrap(),
            "timestamp": 1764331200000i64, "timestampType": "CREATE_TIME", "value": value, "headers": []});
        groups.entry(partition).or_insert_with(|| Value::Array(Vec::new())).as_array_mut().unwrap().push(record);
    }
    json!({"eventSource": "SelfManagedKafka", "bootstrapServers": "k:9092", "records": groups})
}

/// The model of a Kinesis batch: the reported id, and which records are
/// delivered again.
fn kinesis_model(records: &[(String, String, Behaviour)]) -> (Vec<String>, Vec<bool>) {
    match records.iter().position(|(_, _, b)| is_failure(*b)) {
        Some(first) => (vec![records[first].0.clone()], (0..records.len()).map(|i| i >= first).collect()),
        None => (Vec::new(), vec![false; records.len()]),
    }
}

/// The model of a Kafka batch: each partition's first failure, and which
/// records are delivered again.
fn kafka_model(records: &[(String, String, Behaviour)]) -> (Vec<String>, Vec<bool>) {
    let mut failed: HashSet<&str> = HashSet::new();
    let mut reported = Vec::new();
    let mut retried = Vec::new();
    for (id, partition, b) in records {
        let behind = failed.contains(partition.as_str());
        if is_failure(*b) && !behind {
            reported.push(id.clone());
            failed.insert(partition);
        }
        retried.push(behind || is_failure(*b));
    }
    (reported, retried)
}

/// Runs the engine over a Kinesis or Kafka batch: `records` as the model
/// sees them (reported id, record id or partition, behaviour); the commit
/// keeps the engine's contract (a stream stops at its first failure; a
/// partition's effects after its failure are not applied).
fn run_streamed<R: shared::engine::BatchRecord>(
    event: &Value,
    records: &[(String, String, Behaviour)],
    id_of: impl Fn(&R) -> String,
    partitioned: bool,
) -> (Vec<String>, Summary, Vec<String>) {
    let batch = RawBatch::from_value(event).unwrap();
    let behaviour_of = |id: &str| {
        records
            .iter()
            .find(|(reported, record, _)| if partitioned { reported == id } else { record == id })
            .map(|(_, _, b)| *b)
            .unwrap_or_else(|| panic!("no record {id}"))
    };
    let partition_of = |id: &str| id.rsplit_once('@').map(|(p, _)| p.to_owned());
    let store = MemoryQuarantine::new();
    let committed_ids = Mutex::new(Vec::new());
    let commit = |effects: Vec<String>| {
        let committed_ids = &committed_ids;
        async move {
            let mut results = Vec::new();
            let mut failed_partitions = HashSet::new();
            for id in effects {
                let partition = partition_of(&id);
                if partitioned && partition.as_ref().is_some_and(|p| failed_partitions.contains(p)) {
                    results.push(Err(CommitError::Transient("an earlier record of its partition failed".into())));
                    continue;
                }
                let result = match behaviour_of(&id) {
                    Behaviour::Applied => Ok(Outcome::Applied),
                    Behaviour::Stale => Ok(Outcome::Stale),
                    Behaviour::Duplicate => Ok(Outcome::Duplicate),
                    Behaviour::PermanentAtCommit => Ok(Outcome::KeyReused),
                    Behaviour::TransientAtCommit => Err(CommitError::Transient("throttled".into())),
                    other => unreachable!("{other:?} is never committed"),
                };
                let failed = result.is_err();
                if result.is_ok() {
                    committed_ids.lock().unwrap().push(id);
                }
                results.push(result);
                if failed {
                    if !partitioned {
                        break;
                    }
                    failed_partitions.extend(partition);
                }
            }
            results
        }
    };
    let engine = Engine::new(&store);
    let plan = |r: &R| {
        let id = id_of(r);
        planned(behaviour_of(&id), &id)
    };
    let (response, summary) = futures::executor::block_on(engine.process(&batch, None, plan, commit)).unwrap();
    let committed = committed_ids.into_inner().unwrap();
    (response.ids().into_iter().map(str::to_owned).collect(), summary, committed)
}

fn check_streamed(
    records: &[(String, String, Behaviour)],
    (reported, summary, committed): (Vec<String>, Summary, Vec<String>),
    (expected, retried): (Vec<String>, Vec<bool>),
    partitioned: bool,
) -> Result<(), TestCaseError> {
    let as_model: Vec<(String, Option<String>, Behaviour)> =
        records.iter().map(|(id, _, b)| (id.clone(), None, *b)).collect();
    prop_assert_eq!(&reported, &expected, "response of {:?}", records);
    prop_assert_eq!(summary, expected_summary(&as_model, &retried), "summary of {:?}", records);
    prop_assert_eq!(summary.total(), records.len() as u64);
    for (i, (reported_id, record_id, b)) in records.iter().enumerate() {
        let id = if partitioned { reported_id } else { record_id };
        let behind_a_failure = retried[i] && !is_failure(*b);
        prop_assert!(!(behind_a_failure && committed.contains(id)), "{} was committed behind a failure", id);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn kinesis_batches_match_the_model(batch in kinesis_batch()) {
        quiet_deliberate_panics();
        let records = kinesis_records(&batch);
        let ran = run_streamed(&kinesis_event(&batch), &records, |r: &kinesis::Record| r.record_id(), false);
        check_streamed(&records, ran, kinesis_model(&records), false)?;
    }

    #[test]
    fn kafka_batches_match_the_model(batch in kafka_batch()) {
        quiet_deliberate_panics();
        let records = kafka_records(&batch);
        let ran = run_streamed(&kafka_event(&batch), &records, |r: &kafka::Record| r.record_id(), true);
        check_streamed(&records, ran, kafka_model(&records), true)?;
    }
}
