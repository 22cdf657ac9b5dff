//! `s3-ingest`: reads objects announced by S3 notifications (direct, or via the
//! ingest queue: plain, SNS-wrapped or EventBridge-shaped) and applies each
//! line's order event to the state table.
//!
//! Objects are streamed (never held whole), in chunks of at most
//! [`CHUNK_RECORDS`] records. Each chunk's order writes commit in one
//! transaction with the object manifest's new checkpoint and counters, so an
//! invocation that stops (deadline, crash) resumes exactly where the last
//! commit left it. A re-notified object that is COMPLETED is skipped.

use std::time::{Duration, SystemTime};

use chrono::Utc;
use serde::Serialize;
use serde_json::Value;
use shared::batch::{BatchResponse, InvocationError, Summary, finish};
use shared::config::Config;
use shared::event::s3::{self, Notification, ObjectRef};
use shared::event::{self, sqs};
use shared::object::{Layout, LineContent, LineError, LineReader, ObjectSource, decoded, parse_record, split_csv};
use shared::order::OrderEvent;
use shared::state::{
    Checkpoint, Counts, ErrorClass, Manifest, ManifestWrite, ObjectStatus, Outcome, Quarantined, StateStore,
};

/// Records per chunk: 99 order writes plus the manifest fill one
/// TransactWriteItems (100 actions).
pub const CHUNK_RECORDS: usize = 99;

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReport {
    pub uri: String,
    pub revision: String,
    /// `COMPLETED`, `SKIPPED` (already completed), `UNFINISHED` (deadline;
    /// resumes from its checkpoint), or `REJECTED` (unsupported format).
    pub result: &'static str,
    pub counts: Counts,
}

/// Why an object could not be processed now.
#[derive(Debug, thiserror::Error)]
pub enum ObjectFailure {
    #[error("{0}")]
    Transient(String),
    #[error("{0}")]
    Fatal(String),
}

/// When to stop starting work.
#[derive(Debug, Clone)]
pub enum Deadline {
    /// No deadline.
    None,
    /// The invocation's deadline.
    At(SystemTime),
    /// After this many chunks (tests of interrupted processing).
    AfterChunks(std::sync::Arc<std::sync::atomic::AtomicUsize>),
}

impl Deadline {
    /// A deadline that passes after `chunks` checks.
    pub fn after_chunks(chunks: usize) -> Self {
        Self::AfterChunks(std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(chunks)))
    }

    fn near(&self, margin: Duration) -> bool {
        match self {
            Self::None => false,
            Self::At(d) => SystemTime::now() + margin >= *d,
            Self::AfterChunks(left) => left
                .fetch_update(std::sync::atomic::Ordering::SeqCst, std::sync::atomic::Ordering::SeqCst, |n| {
                    n.checked_sub(1)
                })
                .is_err(),
        }
    }
}

/// The response of a direct S3 invocation (no batch to report on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectResponse {
    pub objects: Vec<ObjectReport>,
}

/// Handles an S3 event, an EventBridge event, or an SQS event of notifications.
/// Returns the JSON response and the accounting.
pub async fn handle<S: StateStore, O: ObjectSource>(
    store: &S,
    objects: &O,
    config: &Config,
    payload: &Value,
    deadline: &Deadline,
) -> Result<(Value, Summary, Vec<ObjectReport>), InvocationError> {
    let mut summary = Summary::default();
    let mut reports = Vec::new();
    let is_sqs = payload.pointer("/Records/0/eventSource").and_then(Value::as_str).is_some_and(|s| s == "aws:sqs");
    if !is_sqs {
        // Direct invocation by S3 or EventBridge: any failure retries the event.
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
        return Ok((response, summary, reports));
    }

    let records = event::records(payload).map_err(|e| InvocationError::new(e.to_string()))?;
    let mut failed = Vec::new();
    let mut quarantine = Vec::new();
    for (index, record) in records.iter().enumerate() {
        let message = match sqs::Message::parse(record) {
            Ok(m) => m,
            Err(e) => {
                let id = sqs::message_id_of(record).map_or_else(|| format!("record-{index}"), str::to_owned);
                quarantine.push(Quarantined::new("sqs/ingest", id, e.to_string(), &record.to_string()));
                continue;
            }
        };
        let _span = tracing::info_span!("message", message_id = %message.message_id).entered();
        for notification in s3::from_sqs_body(&message.body) {
            let notification = match notification {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "unusable notification quarantined");
                    quarantine.push(Quarantined::new("sqs/ingest", &message.message_id, e.to_string(), &message.body));
                    continue;
                }
            };
            if deadline.near(config.deadline_margin) {
                // Not started: hand it back to the queue rather than lose it with the timeout.
                failed.push(message.message_id.clone());
                summary.failed += 1;
                break;
            }
            match process_notification(store, objects, config, &notification, deadline, &mut summary).await {
                Ok(Some(report)) => {
                    if report.result == "UNFINISHED" {
                        failed.push(message.message_id.clone());
                    }
                    reports.push(report);
                }
                Ok(None) => {}
                Err(ObjectFailure::Fatal(e)) => return Err(InvocationError::new(e)),
                Err(ObjectFailure::Transient(e)) => {
                    tracing::error!(error = %e, "object failed; reporting the message for retry");
                    failed.push(message.message_id.clone());
                    summary.failed += 1;
                }
            }
        }
    }
    if !quarantine.is_empty() {
        match store.quarantine(&quarantine).await {
            Ok(()) => summary.quarantined += quarantine.len() as u64,
            Err(e) if e.class() == ErrorClass::Fatal => {
                return Err(InvocationError::new(e.to_string()));
            }
            Err(e) => {
                tracing::error!(error = %e, "quarantine write failed");
                failed.extend(quarantine.iter().map(|q| q.record_id.clone()));
                summary.failed += quarantine.len() as u64;
            }
        }
    }
    let response = finish(BatchResponse::failed(failed), records.len(), config.fail_on_all_failed)?;
    let response = serde_json::to_value(response).map_err(|e| InvocationError::new(e.to_string()))?;
    Ok((response, summary, reports))
}

async fn process_notification<S: StateStore, O: ObjectSource>(
    store: &S,
    objects: &O,
    config: &Config,
    notification: &Notification,
    deadline: &Deadline,
    summary: &mut Summary,
) -> Result<Option<ObjectReport>, ObjectFailure> {
    match notification {
        Notification::TestEvent | Notification::Ignored { .. } => {
            summary.ignored += 1;
            Ok(None)
        }
        Notification::ObjectCreated(object) => {
            let span = tracing::info_span!("object", bucket = %object.bucket, key = %object.key);
            let _guard = span.enter();
            ingest_object(store, objects, config, object, deadline, summary).await.map(Some)
        }
    }
}

fn store_failure(e: shared::state::StoreError) -> ObjectFailure {
    match e.class() {
        ErrorClass::Fatal => ObjectFailure::Fatal(e.to_string()),
        _ => ObjectFailure::Transient(e.to_string()),
    }
}

/// Reads one object from its checkpoint to the end (or the deadline).
pub async fn ingest_object<S: StateStore, O: ObjectSource>(
    store: &S,
    objects: &O,
    config: &Config,
    object: &ObjectRef,
    deadline: &Deadline,
    summary: &mut Summary,
) -> Result<ObjectReport, ObjectFailure> {
    let revision = object.revision().to_owned();
    let report = |result, counts| ObjectReport { uri: object.uri(), revision: revision.clone(), result, counts };
    let existing = store.get_manifest(&object.bucket, &object.key, &revision).await.map_err(store_failure)?;
    if let Some(m) = existing.as_ref().filter(|m| m.status != ObjectStatus::InProgress) {
        tracing::info!(status = m.status.as_str(), "object already processed; skipped");
        summary.duplicate += 1;
        return Ok(report("SKIPPED", m.counts));
    }
    let started_at = existing.as_ref().map_or_else(Utc::now, |m| m.started_at);
    let mut checkpoint = existing.as_ref().map(|m| m.checkpoint).unwrap_or_default();
    let mut counts = existing.as_ref().map(|m| m.counts).unwrap_or_default();
    let mut csv_header: Option<String> = existing.as_ref().and_then(|m| m.csv_header.clone());
    let mut expected = existing.as_ref().map(|m| m.checkpoint);

    let by_key = Layout::detect(&object.key, None, None);
    // Ranged reads resume uncompressed objects at the checkpoint's byte;
    // compressed ones are re-read from the start and the done lines skipped.
    let ranged = by_key.is_some_and(|l| !l.gzip) && checkpoint.byte > 0;
    let body = objects.open(object, if ranged { checkpoint.byte } else { 0 }).await.map_err(|e| match e.class() {
        ErrorClass::Transient => ObjectFailure::Transient(e.to_string()),
        // A vanished object or a denied read cannot succeed later: quarantine it below.
        _ => ObjectFailure::Transient(e.to_string()),
    })?;
    let Some(layout) =
        by_key.or_else(|| Layout::detect(&object.key, body.content_type.as_deref(), body.content_encoding.as_deref()))
    else {
        let reason = format!(
            "unsupported object format: key {:?} (content type {:?}); expected .ndjson, .jsonl, .json or .csv, optionally .gz",
            object.key, body.content_type
        );
        tracing::warn!(%reason, "object rejected");
        let q = Quarantined::new(format!("s3/{}", object.bucket), format!("{}@{revision}", object.key), &reason, "");
        store.quarantine(&[q]).await.map_err(store_failure)?;
        summary.quarantined += 1;
        let manifest = Manifest {
            bucket: object.bucket.clone(),
            key: object.key.clone(),
            revision: revision.clone(),
            status: ObjectStatus::Failed,
            counts,
            checkpoint,
            csv_header: None,
            started_at,
            finished_at: Some(Utc::now()),
        };
        let write = ManifestWrite { manifest, expected };
        store.apply_orders(&[], None, Some(&move |_: &[Outcome]| write.clone())).await.map_err(store_failure)?;
        return Ok(report("REJECTED", counts));
    };
    let reader = decoded(body.reader, layout.gzip);
    let mut lines = if ranged {
        LineReader::new(reader, config.max_line_bytes, checkpoint.line + 1, checkpoint.byte)
    } else {
        LineReader::new(reader, config.max_line_bytes, 1, 0)
    };
    let header_fields = |h: &Option<String>| h.as_deref().map(split_csv).transpose();
    let mut header: Option<Vec<String>> = header_fields(&csv_header).ok().flatten();
    let source = format!("s3/{}/{}", object.bucket, object.key);

    loop {
        if deadline.near(config.deadline_margin) {
            tracing::info!(line = checkpoint.line, "deadline near; stopping at the checkpoint");
            return Ok(report("UNFINISHED", counts));
        }
        let mut events: Vec<OrderEvent> = Vec::new();
        let mut rejects: Vec<Quarantined> = Vec::new();
        let mut finished = false;
        while events.len() + rejects.len() < CHUNK_RECORDS {
            let line = lines.next_line().await.map_err(|e| {
                ObjectFailure::Transient(format!("failed to read {} at byte {}: {e}", object.uri(), lines.offset()))
            })?;
            let Some(line) = line else {
                finished = true;
                break;
            };
            if line.number <= checkpoint.line {
                continue; // Done by an earlier invocation (compressed resume).
            }
            let parsed: Result<OrderEvent, (LineError, String)> = match &line.content {
                LineContent::Text(text) if text.trim().is_empty() => continue,
                LineContent::Text(text) if layout.format == shared::object::Format::Csv && header.is_none() => {
                    match split_csv(text) {
                        Ok(fields) => {
                            header = Some(fields.into_iter().map(|f| f.trim().to_owned()).collect());
                            csv_header = Some(text.clone());
                        }
                        Err(e) => {
                            let err = LineError::Csv(format!("header row: {e}"));
                            rejects.push(Quarantined::new(
                                &source,
                                format!("line-{}", line.number),
                                err.to_string(),
                                text,
                            ));
                        }
                    }
                    continue;
                }
                LineContent::Text(text) => {
                    parse_record(layout.format, header.as_deref(), text).map_err(|e| (e, text.clone()))
                }
                LineContent::TooLong { length, prefix } => Err((
                    LineError::TooLong { length: *length, limit: config.max_line_bytes },
                    String::from_utf8_lossy(prefix).into_owned(),
                )),
                LineContent::InvalidUtf8(bytes) => {
                    Err((LineError::InvalidUtf8, String::from_utf8_lossy(bytes).into_owned()))
                }
            };
            match parsed {
                Ok(e) => events.push(e),
                Err((err, raw)) => {
                    tracing::info!(line = line.number, reason = %err, "line rejected");
                    rejects.push(Quarantined::new(&source, format!("line-{}", line.number), err.to_string(), &raw));
                }
            }
        }
        if !rejects.is_empty() {
            store.quarantine(&rejects).await.map_err(store_failure)?;
        }
        let next = Checkpoint { line: lines.next_number() - 1, byte: lines.offset() };
        let base = Counts {
            lines: counts.lines + (events.len() + rejects.len()) as u64,
            rejected: counts.rejected + rejects.len() as u64,
            ..counts
        };
        let template = Manifest {
            bucket: object.bucket.clone(),
            key: object.key.clone(),
            revision: revision.clone(),
            status: if finished { ObjectStatus::Completed } else { ObjectStatus::InProgress },
            counts: base,
            checkpoint: next,
            csv_header: csv_header.clone(),
            started_at,
            finished_at: finished.then(Utc::now),
        };
        let build = |outcomes: &[Outcome]| {
            let mut manifest = template.clone();
            for o in outcomes {
                match o {
                    Outcome::Applied => manifest.counts.accepted += 1,
                    Outcome::Stale => manifest.counts.stale += 1,
                    // No markers here: the checkpoint committed with each chunk
                    // is what makes every line count once.
                    Outcome::Duplicate | Outcome::KeyReused => manifest.counts.duplicates += 1,
                }
            }
            ManifestWrite { manifest, expected }
        };
        let outcomes = store.apply_orders(&events, None, Some(&build)).await.map_err(store_failure)?;
        counts = build(&outcomes).manifest.counts;
        summary.quarantined += rejects.len() as u64;
        for o in outcomes {
            summary.count(o);
        }
        checkpoint = next;
        expected = Some(next);
        if finished {
            tracing::info!(?counts, "object completed");
            return Ok(report("COMPLETED", counts));
        }
    }
}
