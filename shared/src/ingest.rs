//! Object ingest for any line format: an object is read as a stream (never
//! held whole; gzip decompressed on the fly), its lines parsed by a
//! [`LineParser`] of yours (NDJSON lines as they are; CSV rows, named by
//! their header row, as JSON objects), and committed in chunks by a
//! [`ChunkStore`] together with the object's manifest: its checkpoint (the
//! next line and byte) and counters. An invocation that stops (the
//! deadline, a crash) resumes exactly where the last commit left it: with a
//! ranged read for an uncompressed object, by skipping the committed lines
//! of a compressed one. Near the deadline the work is handed on
//! ([`Handoff`]).
//!
//! Every line ends applied, stale, duplicate, or rejected with its line
//! number and reason (quarantined, and listed in a report beside the
//! object), and the manifest's counters say so.

use std::time::{Duration, SystemTime};

use chrono::Utc;
use serde::Serialize;

use crate::batch::{Outcome, Summary};
use crate::dynamo::StoreError;
use crate::engine::CommitError;
use crate::error::{Classify, ErrorClass};
use crate::event::s3::ObjectRef;
use crate::manifest::{Checkpoint, Counts, Manifest, ManifestFn, ManifestWrite, ObjectStatus};
use crate::object::{Layout, LineContent, LineError, LineReader, ObjectSink, ObjectSource, decoded};

use crate::quarantine::{QuarantineStore, Quarantined};
pub use shared_core::lines::{LineParser, Records};

/// Records per chunk: 99 record writes plus the manifest fill one
/// TransactWriteItems (100 actions).
pub const CHUNK_RECORDS: usize = 99;

/// Where an object's chunks commit: one atomic write of the chunk's records
/// and the manifest that covers them.
pub trait ChunkStore<T>: QuarantineStore {
    /// Reads the manifest of an object revision.
    fn get_manifest(
        &self,
        bucket: &str,
        key: &str,
        revision: &str,
    ) -> impl std::future::Future<Output = Result<Option<Manifest>, StoreError>> + Send;

    /// Commits `records` and, in the same transaction, the manifest write
    /// `manifest` builds from the records' outcomes; returns the outcomes.
    fn commit_chunk(
        &self,
        records: &[T],
        manifest: &ManifestFn<'_>,
    ) -> impl std::future::Future<Output = Result<Vec<Outcome>, StoreError>> + Send;
}

/// Limits of one object's read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestOptions {
    /// Longer lines are rejected, never buffered (`MAX_LINE_BYTES`).
    pub max_line_bytes: usize,
    /// Stop starting chunks this long before the deadline (`DEADLINE_MARGIN_MS`).
    pub deadline_margin: Duration,
}

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReport {
    /// `s3://bucket/key`.
    pub uri: String,
    /// The version id, or the eTag when unversioned.
    pub revision: String,
    /// `COMPLETED`, `SKIPPED` (already completed), `UNFINISHED` (deadline;
    /// resumes from its checkpoint), or `REJECTED` (unsupported format).
    pub result: &'static str,
    /// The manifest's counters after this invocation.
    pub counts: Counts,
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

    /// Whether work should stop: the deadline is within `margin` (or, for
    /// [`Deadline::AfterChunks`], the chunks are used up; each call uses one).
    pub fn near(&self, margin: Duration) -> bool {
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
    Queue {
        /// The SQS client.
        client: aws_sdk_sqs::Client,
        /// The ingest queue (`INGEST_QUEUE_URL`).
        queue_url: String,
    },
    /// Collect the bodies (tests).
    Memory(std::sync::Mutex<Vec<String>>),
}

impl Handoff {
    /// Hands the body on; `false` when the message must be reported failed instead.
    pub async fn hand_on(&self, body: &str) -> bool {
        match self {
            Self::Retry => false,
            Self::Queue { client, queue_url } => {
                match client.send_message().queue_url(queue_url).message_body(body).send().await {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::warn!(error = %crate::error::sdk_message(&e), "hand-off failed; reporting the message for retry");
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

/// Why an object could not be processed now: retried (transient), or the
/// invocation fails (fatal: a missing table). An object that can never be
/// read is not a failure: it ends with a FAILED manifest.
fn store_failure(e: StoreError) -> CommitError {
    match e.class() {
        ErrorClass::Fatal => CommitError::Fatal(e.to_string()),
        _ => CommitError::Transient(e.to_string()),
    }
}

/// Longest raw line copied into the rejects report.
const MAX_REPORTED_LINE_BYTES: usize = 1024;
/// Rejects buffered before a report part is written: bounds memory whatever
/// the object's size.
const REPORT_PART_BYTES: usize = 256 * 1024;

/// A chunk read from the object, not yet committed.
struct Chunk<T> {
    records: Vec<T>,
    rejects: Vec<Quarantined>,
    /// (line number, reason, raw line) of each reject, for the report.
    report: Vec<(u64, String, String)>,
    /// Checkpoint after the chunk.
    next: Checkpoint,
    finished: bool,
    csv_header: Option<String>,
}

/// State of one object's read, carried across chunks.
struct Reader<'p, R, P> {
    records: Records<'p, P>,
    lines: LineReader<R>,
    /// Lines up to this number were done by an earlier invocation.
    skip_through: u64,
    source: String,
    max_line_bytes: usize,
    uri: String,
}

impl<R: tokio::io::AsyncBufRead + Unpin, P: LineParser> Reader<'_, R, P> {
    async fn read_chunk(&mut self) -> Result<Chunk<P::Record>, CommitError> {
        let mut chunk = Chunk {
            records: Vec::new(),
            rejects: Vec::new(),
            report: Vec::new(),
            next: Checkpoint::default(),
            finished: false,
            csv_header: None,
        };
        while chunk.records.len() + chunk.rejects.len() < CHUNK_RECORDS {
            let line = self.lines.next_line().await.map_err(|e| {
                CommitError::Transient(format!("failed to read {} at byte {}: {e}", self.uri, self.lines.offset()))
            })?;
            let Some(line) = line else {
                chunk.finished = true;
                break;
            };
            if line.number <= self.skip_through {
                continue; // Done by an earlier invocation (compressed resume).
            }
            let parsed: Result<P::Record, (String, String)> = match &line.content {
                LineContent::Text(text) => match self.records.line(text) {
                    None => continue,
                    Some(record) => record.map_err(|e| (e.to_string(), text.clone())),
                },
                LineContent::TooLong { length, prefix } => Err((
                    LineError::TooLong { length: *length, limit: self.max_line_bytes }.to_string(),
                    String::from_utf8_lossy(prefix).into_owned(),
                )),
                LineContent::InvalidUtf8(bytes) => {
                    Err((LineError::InvalidUtf8.to_string(), String::from_utf8_lossy(bytes).into_owned()))
                }
            };
            match parsed {
                Ok(record) => chunk.records.push(record),
                Err((reason, raw)) => {
                    tracing::info!(line = line.number, %reason, "line rejected");
                    chunk.rejects.push(Quarantined::new(&self.source, format!("line-{}", line.number), &reason, &raw));
                    let raw = crate::quarantine::truncate_bytes(&raw, MAX_REPORTED_LINE_BYTES).to_owned();
                    chunk.report.push((line.number, reason, raw));
                }
            }
        }
        chunk.next = Checkpoint { line: self.lines.next_number() - 1, byte: self.lines.offset() };
        chunk.csv_header = self.records.header_line().map(str::to_owned);
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

    async fn flush<K: ObjectSink>(&mut self, sink: &K, force: bool) -> Result<(), CommitError> {
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
            .map_err(|e| CommitError::Transient(e.to_string()))?;
        self.parts += 1;
        Ok(())
    }
}

/// Where rejects reports go: `rejected/` + the input's key.
pub const REJECTS_PREFIX: &str = "rejected/";

/// Reads one object from its checkpoint to the end (or the deadline), each
/// line through `parser`, each chunk committed by `store` together with the
/// object's manifest (its new checkpoint and counters); rejected lines are
/// quarantined with their line number and reason, and written to a rejects
/// report beside the object. An object whose manifest says it is done is
/// skipped; one of a format not ingested ends with a FAILED manifest and a
/// quarantine item.
///
/// Pipelined: while one chunk's transaction is in flight, the next chunk is
/// read and parsed.
pub async fn ingest_object<S, O, P>(
    store: &S,
    objects: &O,
    parser: &P,
    options: &IngestOptions,
    object: &ObjectRef,
    deadline: &Deadline,
    summary: &mut Summary,
) -> Result<ObjectReport, CommitError>
where
    P: LineParser,
    S: ChunkStore<P::Record>,
    O: ObjectSource + ObjectSink,
{
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
    // An object that cannot be ingested, ever (gone, not ours to read, not a
    // format we read): quarantined with the reason and a FAILED manifest, and
    // acknowledged, so its notification is not retried into a dead-letter
    // queue with nothing saying why.
    let revision_ref = &revision;
    let manifest_ref = &manifest;
    let reject = |reason: String| async move {
        tracing::warn!(%reason, "object rejected");
        let id = format!("{}@{revision_ref}", object.key);
        let q = Quarantined::new(format!("s3/{}", object.bucket), id, &reason, "");
        store.write_quarantine(&[q]).await.map_err(store_failure)?;
        let write = ManifestWrite {
            manifest: manifest_ref(ObjectStatus::Failed, counts, checkpoint, None, Some(Utc::now())),
            expected,
        };
        store.commit_chunk(&[], &move |_: &[Outcome]| write.clone()).await.map_err(store_failure)?;
        Ok::<_, CommitError>(())
    };
    let body = match objects.open(object, if ranged { checkpoint.byte } else { 0 }).await {
        Ok(body) => body,
        Err(e) => match e.class() {
            ErrorClass::Permanent => {
                reject(e.to_string()).await?;
                summary.quarantined += 1;
                return Ok(report("REJECTED", counts));
            }
            ErrorClass::Fatal => return Err(CommitError::Fatal(e.to_string())),
            ErrorClass::Transient => return Err(CommitError::Transient(e.to_string())),
        },
    };
    let Some(layout) =
        by_key.or_else(|| Layout::detect(&object.key, body.content_type.as_deref(), body.content_encoding.as_deref()))
    else {
        let reason = format!(
            "unsupported object format: key {:?} (content type {:?}); expected .ndjson, .jsonl, .json or .csv, optionally .gz",
            object.key, body.content_type
        );
        reject(reason).await?;
        summary.quarantined += 1;
        return Ok(report("REJECTED", counts));
    };
    let csv_header = existing.as_ref().and_then(|m| m.csv_header.clone());
    let records = if checkpoint.line == 0 {
        Records::new(parser, layout.format)
    } else {
        Records::resume(parser, layout.format, csv_header)
    };
    let mut reader = Reader {
        records,
        lines: if ranged {
            LineReader::new(
                decoded(body.reader, layout.gzip),
                options.max_line_bytes,
                checkpoint.line + 1,
                checkpoint.byte,
            )
        } else {
            LineReader::new(decoded(body.reader, layout.gzip), options.max_line_bytes, 1, 0)
        },
        skip_through: checkpoint.line,
        source: format!("s3/{}/{}", object.bucket, object.key),
        max_line_bytes: options.max_line_bytes,
        uri: object.uri(),
    };
    let mut rejects_report = Report::new(object, &revision);

    let mut current = reader.read_chunk().await?;
    loop {
        if deadline.near(options.deadline_margin) {
            // The read-ahead chunk is dropped uncommitted: the next invocation
            // reads it again from the committed checkpoint.
            rejects_report.flush(objects, true).await?;
            tracing::info!(line = expected.map_or(0, |c| c.line), "deadline near; stopping at the checkpoint");
            return Ok(report("UNFINISHED", counts));
        }
        let Chunk { records, rejects, report: report_lines, next, finished, csv_header } = current;
        let commit = async {
            if !rejects.is_empty() {
                store.write_quarantine(&rejects).await.map_err(store_failure)?;
            }
            let base = Counts {
                lines: counts.lines + (records.len() + rejects.len()) as u64,
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
            let outcomes = store.commit_chunk(&records, &build).await.map_err(store_failure)?;
            Ok::<_, CommitError>((build(&outcomes).manifest.counts, outcomes, rejects.len()))
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
