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
use shared::batch::{InvocationError, RecordError, Summary};
use shared::config::Config;
use shared::engine::{CommitError, Engine, Plan};
use shared::event::s3::{self, Notification, ObjectRef};
use shared::event::{RawBatch, sqs};
use shared::object::{
    Format, Layout, LineContent, LineError, LineReader, ObjectSink, ObjectSource, decoded, parse_record, split_csv,
};
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

/// What to do with a message whose object is unfinished at the deadline.
#[derive(Debug)]
pub enum Handoff {
    /// Report it as a batch item failure: SQS redelivers it after the
    /// visibility timeout and the next invocation resumes from the checkpoint.
    Retry,
    /// Send its notification to the ingest queue again and acknowledge it: the
    /// next invocation resumes at once, and the message's receive count (and so
    /// the dead-letter redrive) is not spent on an object that is progressing.
    Queue { client: aws_sdk_sqs::Client, queue_url: String },
    /// Collect the bodies (tests).
    Memory(std::sync::Mutex<Vec<String>>),
}

impl Handoff {
    /// Hands the body on; `false` when the message must be reported failed instead.
    async fn hand_on(&self, body: &str) -> bool {
        match self {
            Self::Retry => false,
            Self::Queue { client, queue_url } => {
                match client.send_message().queue_url(queue_url).message_body(body).send().await {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::warn!(error = %shared::error::sdk_message(&e), "hand-off failed; reporting the message for retry");
                        false
                    }
                }
            }
            Self::Memory(bodies) => {
                bodies.lock().unwrap_or_else(|e| e.into_inner()).push(body.to_owned());
                true
            }
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
pub async fn handle<S: StateStore, O: ObjectSource + ObjectSink>(
    store: &S,
    objects: &O,
    handoff: &Handoff,
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

    // Notifications through a queue: the engine settles the messages (an
    // unparseable one or an unusable notification is quarantined; a failed
    // object reports its message for retry); the summary counts lines.
    let batch = RawBatch::from_value(payload).map_err(|e| InvocationError::new(e.to_string()))?;
    let lines = std::sync::Mutex::new((Summary::default(), Vec::new()));
    let plan = |message: &sqs::Message| -> Result<Plan<(String, Vec<Notification>, Vec<String>)>, RecordError> {
        let (good, bad): (Vec<_>, Vec<_>) = s3::from_sqs_body(&message.body).into_iter().partition(Result::is_ok);
        let good: Vec<Notification> = good.into_iter().filter_map(Result::ok).collect();
        let bad: Vec<String> = bad.into_iter().filter_map(Result::err).map(|e| e.to_string()).collect();
        if good.is_empty() && !bad.is_empty() {
            return Err(RecordError::Permanent(bad.join("; ")));
        }
        Ok(Plan::Effect((message.body.clone(), good, bad)))
    };
    let commit = |messages: Vec<(String, Vec<Notification>, Vec<String>)>| {
        let lines = &lines;
        async move {
            let mut results = Vec::with_capacity(messages.len());
            for (body, notifications, bad) in messages {
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
    let at = match deadline {
        Deadline::At(at) => Some(*at),
        _ => None,
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
        let mut guard = lines.lock().unwrap_or_else(|e| e.into_inner());
        add(&mut guard.0, &summary);
        match processed {
            Ok(Some(report)) => {
                let unfinished = report.result == "UNFINISHED";
                guard.1.push(report);
                drop(guard);
                if unfinished && !handoff.hand_on(body).await {
                    return Err(CommitError::Transient("object unfinished at the deadline".into()));
                }
            }
            Ok(None) => {}
            Err(ObjectFailure::Fatal(e)) => return Err(CommitError::Fatal(e)),
            Err(ObjectFailure::Transient(e)) => {
                tracing::error!(error = %e, "object failed; reporting the message for retry");
                return Err(CommitError::Transient(e));
            }
        }
    }
    Ok(())
}

/// Adds `more`'s counters to `into`.
fn add(into: &mut Summary, more: &Summary) {
    into.applied += more.applied;
    into.stale += more.stale;
    into.duplicate += more.duplicate;
    into.quarantined += more.quarantined;
    into.ignored += more.ignored;
    into.failed += more.failed;
}

async fn process_notification<S: StateStore, O: ObjectSource + ObjectSink>(
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

/// Longest raw line copied into the rejects report.
const MAX_REPORTED_LINE_BYTES: usize = 1024;
/// Rejects buffered before a report part is written: bounds memory whatever
/// the object's size.
const REPORT_PART_BYTES: usize = 256 * 1024;

/// A chunk read from the object, not yet committed.
struct Chunk {
    events: Vec<OrderEvent>,
    rejects: Vec<Quarantined>,
    /// (line number, reason, raw line) of each reject, for the report.
    report: Vec<(u64, String, String)>,
    /// Checkpoint after the chunk.
    next: Checkpoint,
    finished: bool,
    csv_header: Option<String>,
}

/// State of one object's read, carried across chunks.
struct Reader<R> {
    lines: LineReader<R>,
    layout: Layout,
    header: Option<Vec<String>>,
    csv_header: Option<String>,
    /// Lines up to this number were done by an earlier invocation.
    skip_through: u64,
    source: String,
    max_line_bytes: usize,
    uri: String,
}

impl<R: tokio::io::AsyncBufRead + Unpin> Reader<R> {
    async fn read_chunk(&mut self) -> Result<Chunk, ObjectFailure> {
        let mut chunk = Chunk {
            events: Vec::new(),
            rejects: Vec::new(),
            report: Vec::new(),
            next: Checkpoint::default(),
            finished: false,
            csv_header: None,
        };
        while chunk.events.len() + chunk.rejects.len() < CHUNK_RECORDS {
            let line = self.lines.next_line().await.map_err(|e| {
                ObjectFailure::Transient(format!("failed to read {} at byte {}: {e}", self.uri, self.lines.offset()))
            })?;
            let Some(line) = line else {
                chunk.finished = true;
                break;
            };
            if line.number <= self.skip_through {
                continue; // Done by an earlier invocation (compressed resume).
            }
            let parsed: Result<OrderEvent, (LineError, String)> = match &line.content {
                LineContent::Text(text) if text.trim().is_empty() => continue,
                LineContent::Text(text) if self.layout.format == Format::Csv && self.header.is_none() => {
                    match split_csv(text) {
                        Ok(fields) => {
                            self.header = Some(fields.into_iter().map(|f| f.trim().to_owned()).collect());
                            self.csv_header = Some(text.clone());
                            continue;
                        }
                        Err(e) => Err((LineError::Csv(format!("header row: {e}")), text.clone())),
                    }
                }
                LineContent::Text(text) => {
                    parse_record(self.layout.format, self.header.as_deref(), text).map_err(|e| (e, text.clone()))
                }
                LineContent::TooLong { length, prefix } => Err((
                    LineError::TooLong { length: *length, limit: self.max_line_bytes },
                    String::from_utf8_lossy(prefix).into_owned(),
                )),
                LineContent::InvalidUtf8(bytes) => {
                    Err((LineError::InvalidUtf8, String::from_utf8_lossy(bytes).into_owned()))
                }
            };
            match parsed {
                Ok(e) => chunk.events.push(e),
                Err((err, raw)) => {
                    tracing::info!(line = line.number, reason = %err, "line rejected");
                    let reason = err.to_string();
                    chunk.rejects.push(Quarantined::new(&self.source, format!("line-{}", line.number), &reason, &raw));
                    let raw = shared::state::truncate_bytes(&raw, MAX_REPORTED_LINE_BYTES).to_owned();
                    chunk.report.push((line.number, reason, raw));
                }
            }
        }
        chunk.next = Checkpoint { line: self.lines.next_number() - 1, byte: self.lines.offset() };
        chunk.csv_header = self.csv_header.clone();
        Ok(chunk)
    }
}

/// The rejects report: JSON lines `{"line", "reason", "raw"}` written beside the
/// input under `rejected/`, in parts named by their line range, so a part
/// rewritten after a retry replaces itself. The quarantine items in the state
/// table are the durable record; the report is the copy people read.
struct Report {
    bucket: String,
    base: String,
    lines: Vec<(u64, String, String)>,
    bytes: usize,
    parts: u32,
}

impl Report {
    fn new(object: &ObjectRef, revision: &str) -> Self {
        Self {
            bucket: object.bucket.clone(),
            base: format!("{REJECTS_PREFIX}{}.{revision}", object.key),
            lines: Vec::new(),
            bytes: 0,
            parts: 0,
        }
    }

    fn add(&mut self, rejects: Vec<(u64, String, String)>) {
        for r in rejects {
            self.bytes += r.1.len() + r.2.len() + 48;
            self.lines.push(r);
        }
    }

    async fn flush<K: ObjectSink>(&mut self, sink: &K, force: bool) -> Result<(), ObjectFailure> {
        if self.lines.is_empty() || (!force && self.bytes < REPORT_PART_BYTES) {
            return Ok(());
        }
        let first = self.lines.first().map_or(0, |l| l.0);
        let last = self.lines.last().map_or(0, |l| l.0);
        let mut body = Vec::with_capacity(self.bytes);
        for (line, reason, raw) in self.lines.drain(..) {
            let entry = serde_json::json!({ "line": line, "reason": reason, "raw": raw });
            body.extend_from_slice(entry.to_string().as_bytes());
            body.push(b'\n');
        }
        self.bytes = 0;
        let key = format!("{}.lines-{first}-{last}.ndjson", self.base);
        sink.put(&self.bucket, &key, body, "application/x-ndjson")
            .await
            .map_err(|e| ObjectFailure::Transient(e.to_string()))?;
        self.parts += 1;
        Ok(())
    }
}

/// Where rejects reports go: `rejected/` + the input's key.
pub const REJECTS_PREFIX: &str = "rejected/";

/// Reads one object from its checkpoint to the end (or the deadline).
///
/// Pipelined: while one chunk's transaction is in flight, the next chunk is
/// read and parsed.
pub async fn ingest_object<S: StateStore, O: ObjectSource + ObjectSink>(
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
    let checkpoint = existing.as_ref().map(|m| m.checkpoint).unwrap_or_default();
    let mut counts = existing.as_ref().map(|m| m.counts).unwrap_or_default();
    let mut expected = existing.as_ref().map(|m| m.checkpoint);
    let manifest = |status, counts, checkpoint, csv_header, finished| Manifest {
        bucket: object.bucket.clone(),
        key: object.key.clone(),
        revision: revision.clone(),
        status,
        counts,
        checkpoint,
        csv_header,
        started_at,
        finished_at: finished,
    };

    let by_key = Layout::detect(&object.key, None, None);
    // Ranged reads resume uncompressed objects at the checkpoint's byte;
    // compressed ones are re-read from the start and the done lines skipped.
    let ranged = by_key.is_some_and(|l| !l.gzip) && checkpoint.byte > 0;
    let body = objects
        .open(object, if ranged { checkpoint.byte } else { 0 })
        .await
        .map_err(|e| ObjectFailure::Transient(e.to_string()))?;
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
        let write = ManifestWrite {
            manifest: manifest(ObjectStatus::Failed, counts, checkpoint, None, Some(Utc::now())),
            expected,
        };
        store.apply_orders(&[], None, Some(&move |_: &[Outcome]| write.clone())).await.map_err(store_failure)?;
        return Ok(report("REJECTED", counts));
    };
    let csv_header = existing.as_ref().and_then(|m| m.csv_header.clone());
    let mut reader = Reader {
        lines: if ranged {
            LineReader::new(
                decoded(body.reader, layout.gzip),
                config.max_line_bytes,
                checkpoint.line + 1,
                checkpoint.byte,
            )
        } else {
            LineReader::new(decoded(body.reader, layout.gzip), config.max_line_bytes, 1, 0)
        },
        layout,
        header: csv_header.as_deref().and_then(|h| split_csv(h).ok()),
        csv_header,
        skip_through: checkpoint.line,
        source: format!("s3/{}/{}", object.bucket, object.key),
        max_line_bytes: config.max_line_bytes,
        uri: object.uri(),
    };
    let mut rejects_report = Report::new(object, &revision);

    let mut current = reader.read_chunk().await?;
    loop {
        if deadline.near(config.deadline_margin) {
            // The read-ahead chunk is dropped uncommitted: the next invocation
            // reads it again from the committed checkpoint.
            rejects_report.flush(objects, true).await?;
            tracing::info!(line = expected.map_or(0, |c| c.line), "deadline near; stopping at the checkpoint");
            return Ok(report("UNFINISHED", counts));
        }
        let Chunk { events, rejects, report: report_lines, next, finished, csv_header } = current;
        let commit = async {
            if !rejects.is_empty() {
                store.quarantine(&rejects).await.map_err(store_failure)?;
            }
            let base = Counts {
                lines: counts.lines + (events.len() + rejects.len()) as u64,
                rejected: counts.rejected + rejects.len() as u64,
                ..counts
            };
            let status = if finished { ObjectStatus::Completed } else { ObjectStatus::InProgress };
            let template = manifest(status, base, next, csv_header, finished.then(Utc::now));
            let build = |outcomes: &[Outcome]| {
                let mut m = template.clone();
                for o in outcomes {
                    match o {
                        Outcome::Applied => m.counts.accepted += 1,
                        Outcome::Stale => m.counts.stale += 1,
                        // No per-line markers: the checkpoint committed with each
                        // chunk is what makes every line count once.
                        Outcome::Duplicate | Outcome::KeyReused => m.counts.duplicates += 1,
                    }
                }
                ManifestWrite { manifest: m, expected }
            };
            let outcomes = store.apply_orders(&events, None, Some(&build)).await.map_err(store_failure)?;
            Ok::<_, ObjectFailure>((build(&outcomes).manifest.counts, outcomes, rejects.len()))
        };
        let (committed, read_ahead) = if finished {
            (commit.await, None)
        } else {
            let (c, r) = tokio::join!(commit, reader.read_chunk());
            (c, Some(r))
        };
        let (new_counts, outcomes, rejected) = committed?;
        counts = new_counts;
        expected = Some(next);
        summary.quarantined += rejected as u64;
        for o in outcomes {
            summary.count(o);
        }
        rejects_report.add(report_lines);
        match read_ahead {
            None => {
                rejects_report.flush(objects, true).await?;
                tracing::info!(?counts, report_parts = rejects_report.parts, "object completed");
                return Ok(report("COMPLETED", counts));
            }
            Some(next_chunk) => {
                rejects_report.flush(objects, false).await?;
                current = next_chunk?;
            }
        }
    }
}
