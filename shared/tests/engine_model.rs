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

use std::collections::HashSet;
use std::sync::Mutex;

use proptest::prelude::*;
use serde_json::{Value, json};
use shared::batch::{Outcome, RecordError, Summary};
use shared::engine::{CommitError, Engine, Plan};
use shared::event::{RawBatch, sqs, stream};
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
