//! `s3-ingest`: reads objects announced by S3 notifications (direct, or via the
//! ingest queue: plain, SNS-wrapped or EventBridge-shaped) and applies each
//! line's order event to the state table.
//!
//! The object ingest itself (streamed reads in chunks of at most
//! [`CHUNK_RECORDS`] lines, each chunk committed with the manifest's
//! checkpoint, resume, hand-off) is the toolkit's [`shared::ingest`]; the
//! notification queue's batch rules are its engine. This crate says which
//! notifications to ingest and that their lines are order events.

use orders::config::Config;
use orders::lines::{Chunks, OrderLines};
use orders::state::{Outcome, StateStore};
use serde::Serialize;
use serde_json::Value;
use shared::batch::{InvocationError, RecordError, Summary};
use shared::engine::{CommitError, Engine, Plan, answer_by, before};
use shared::event::s3::{self, Notification};
use shared::event::{RawBatch, sqs};
pub use shared::ingest::{CHUNK_RECORDS, Deadline, Handoff, ObjectReport, REJECTS_PREFIX};
use shared::ingest::{IngestOptions, ingest_object};
use shared::object::{ObjectSink, ObjectSource};

/// The response of a direct S3 invocation (no batch to report on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectResponse {
    /// What happened to each object of the event.
    pub objects: Vec<ObjectReport>,
}

/// Handles an S3 event, an EventBridge event, or an SQS event of notifications.
/// Returns the JSON response and the accounting.
pub async fn handle<S: StateStore, O: ObjectSource + ObjectSink>(
    store: &S,
    objects: &O,
    handoff: &Handoff,
    config: &Config,
    payload: &Value,
    deadline: &Deadline,
) -> Result<(Value, Summary, Vec<ObjectReport>), InvocationError> {
    let is_sqs = payload.pointer("/Records/0/eventSource").and_then(Value::as_str).is_some_and(|s| s == "aws:sqs");
    let at = match deadline {
        Deadline::At(at) => Some(*at),
        _ => None,
    };
    if !is_sqs {
        // A direct invocation has no records to report: still running at the
        // answer time, it fails (the retry resumes from the checkpoint)
        // instead of being killed by Lambda's timeout.
        return before(answer_by(at, config.deadline_margin), handle_direct(store, objects, config, payload, deadline))
            .await
            .unwrap_or_else(|| {
                Err(InvocationError::new(
                    "not finished before the invocation's deadline (DynamoDB or S3 did not answer in time); \
                     the retry resumes from the checkpoint",
                ))
            });
    }

    // Notifications through a queue: the engine settles the messages (an
    // unparseable one or an unusable notification is quarantined; a failed
    // object reports its message for retry); the summary counts lines.
    let batch = RawBatch::from_value(payload).map_err(|e| InvocationError::new(e.to_string()))?;
    let lines = std::sync::Mutex::new((Summary::default(), Vec::new()));
    let plan = |message: &sqs::Message| -> Result<Plan<Notified>, RecordError> {
        let (good, bad): (Vec<_>, Vec<_>) = s3::from_sqs_body(&message.body).into_iter().partition(Result::is_ok);
        let good: Vec<Notification> = good.into_iter().filter_map(Result::ok).collect();
        let bad: Vec<String> = bad.into_iter().filter_map(Result::err).map(|e| e.to_string()).collect();
        if good.is_empty() && !bad.is_empty() {
            return Err(RecordError::Permanent(bad.join("; ")));
        }
        Ok(Plan::Effect(Notified { body: message.body.clone(), notifications: good, unusable: bad }))
    };
    let commit = |messages: Vec<Notified>| {
        let lines = &lines;
        async move {
            let mut results = Vec::with_capacity(messages.len());
            for Notified { body, notifications, unusable: bad } in messages {
                let result =
                    ingest_message(store, objects, handoff, config, deadline, &body, &notifications, lines).await;
                // An unusable notification beside usable ones: quarantined
                // once the others are done.
                results.push(match result {
                    Ok(()) if !bad.is_empty() => Err(CommitError::Permanent(bad.join("; "))),
                    other => other.map(|()| Outcome::Applied),
                });
            }
            results
        }
    };
    let (response, messages) = Engine::new(store)
        .fail_on_all_failed(config.fail_on_all_failed)
        .deadline_margin(config.deadline_margin)
        .process(&batch, at, plan, commit)
        .await?;
    let (mut summary, reports) = lines.into_inner().unwrap_or_else(|e| e.into_inner());
    summary.quarantined += messages.quarantined;
    summary.failed += messages.failed;
    let response = serde_json::to_value(response).map_err(|e| InvocationError::new(e.to_string()))?;
    Ok((response, summary, reports))
}

/// One message of the notification queue, planned: its body (handed on if
/// an object is unfinished), the notifications to ingest, and the reasons
/// of those that cannot be used.
/// A direct invocation by S3 or EventBridge: every object in turn, its report
/// in the response; any failure retries the event.
async fn handle_direct<S: StateStore, O: ObjectSource + ObjectSink>(
    store: &S,
    objects: &O,
    config: &Config,
    payload: &Value,
    deadline: &Deadline,
) -> Result<(Value, Summary, Vec<ObjectReport>), InvocationError> {
    let mut summary = Summary::default();
    let mut reports = Vec::new();
    let notifications = s3::from_value(payload, 0);
    for notification in notifications {
        let notification = notification.map_err(|e| InvocationError::new(e.to_string()))?;
        match process_notification(store, objects, config, &notification, deadline, &mut summary).await {
            Ok(Some(report)) if report.result == "UNFINISHED" => {
                // No queue to hand the rest to: fail, so the retry resumes
                // from the committed checkpoint.
                return Err(InvocationError::new(format!(
                    "{} unfinished at the deadline; the retry resumes from its checkpoint",
                    report.uri
                )));
            }
            Ok(Some(report)) => reports.push(report),
            Ok(None) => {}
            Err(e) => return Err(InvocationError::new(e.to_string())),
        }
    }
    let response = serde_json::to_value(DirectResponse { objects: reports.clone() })
        .map_err(|e| InvocationError::new(e.to_string()))?;
    Ok((response, summary, reports))
}

struct Notified {
    body: String,
    notifications: Vec<Notification>,
    unusable: Vec<String>,
}

/// Ingests the objects of one message's notifications, in order; counts
/// their lines into `lines`. An object unfinished at the deadline is handed
/// on (or, failing that, its message is retried).
#[allow(clippy::too_many_arguments)]
async fn ingest_message<S: StateStore, O: ObjectSource + ObjectSink>(
    store: &S,
    objects: &O,
    handoff: &Handoff,
    config: &Config,
    deadline: &Deadline,
    body: &str,
    notifications: &[Notification],
    lines: &std::sync::Mutex<(Summary, Vec<ObjectReport>)>,
) -> Result<(), CommitError> {
    for notification in notifications {
        if deadline.near(config.deadline_margin) {
            // Not started: hand it back to the queue rather than lose it with the timeout.
            return Err(CommitError::Transient("not started before the invocation's deadline".into()));
        }
        let mut summary = Summary::default();
        let processed = process_notification(store, objects, config, notification, deadline, &mut summary).await;
        let unfinished = {
            let mut guard = lines.lock().unwrap_or_else(|e| e.into_inner());
            guard.0 += summary;
            let unfinished = matches!(&processed, Ok(Some(report)) if report.result == "UNFINISHED");
            if let Ok(Some(report)) = &processed {
                guard.1.push(report.clone());
            }
            unfinished
        };
        match processed {
            Ok(Some(_)) => {
                if unfinished && !handoff.hand_on(body).await {
                    return Err(CommitError::Transient("object unfinished at the deadline".into()));
                }
            }
            Ok(None) => {}
            Err(e @ CommitError::Fatal(_)) => return Err(e),
            Err(e) => {
                tracing::error!(error = %e, "object failed; reporting the message for retry");
                return Err(e);
            }
        }
    }
    Ok(())
}

async fn process_notification<S: StateStore, O: ObjectSource + ObjectSink>(
    store: &S,
    objects: &O,
    config: &Config,
    notification: &Notification,
    deadline: &Deadline,
    summary: &mut Summary,
) -> Result<Option<ObjectReport>, CommitError> {
    match notification {
        Notification::TestEvent | Notification::Ignored { .. } => {
            summary.ignored += 1;
            Ok(None)
        }
        Notification::ObjectCreated(object) => {
            let span = tracing::info_span!("object", bucket = %object.bucket, key = %object.key);
            let _guard = span.enter();
            let options =
                IngestOptions { max_line_bytes: config.max_line_bytes, deadline_margin: config.deadline_margin };
            ingest_object(&Chunks(store), objects, &OrderLines, &options, object, deadline, summary).await.map(Some)
        }
    }
}
