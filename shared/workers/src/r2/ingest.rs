//! The object ingest (wasm32): an R2 notification's object read as a
//! stream from its checkpoint, its lines turned into records by the core
//! ([`Records`]: NDJSON, CSV with its header), and committed in chunks of
//! `CHUNK_LINES` lines: the domain's statements for the chunk's records
//! ([`Chunks`]), the quarantine rows of its bad lines and the manifest
//! (the checkpoint and counters) in one D1 batch. The manifest's update is
//! guarded by the version read, so two invocations on one object cannot
//! both commit a chunk. After `CHUNKS_PER_INVOCATION` chunks or
//! `INVOCATION_BUDGET_MS` the notification is sent to the ingest queue
//! again (the `INGEST` producer binding) and acknowledged: the next
//! invocation resumes at the checkpoint (a ranged read for uncompressed
//! NDJSON; CSV and gzip are read again from the start, the committed lines
//! skipped). An object that cannot be read ends with a `FAILED` or
//! `REJECTED` manifest naming why, and its notification is acknowledged.

use futures::StreamExt;
use shared_core::batch::{Disposition, Outcome, Summary};
use shared_core::lines::{Format, Layout, Line, LineParser, Records};
use shared_core::manifest::{Checkpoint, Counts, ObjectStatus};
use shared_core::quarantine::Quarantined;
use worker::{Env, Range};

use super::{ManifestRow, Notification, ObjectLines, ObjectManifest, Status};
use crate::Decided;
use crate::config::var;
use crate::d1::{self, Db, DbError, Failure, Statement};
use crate::queue::{Batch, Consumer, Message, back_off, now};

/// Attempts of one chunk's commit when a write guard fails (a concurrent
/// writer) or D1 fails, each after a random back-off; then the
/// notification is delivered again.
const CONFLICT_ATTEMPTS: u32 = 8;

/// The ingest's settings, from the Worker's vars.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestSettings {
    /// The queue of R2 notifications (`INGEST_QUEUE`, default `ingest`).
    pub ingest_queue: String,
    /// The bucket the `BUCKET` binding reads (`BUCKET_NAME`): notifications
    /// of other buckets are ignored.
    pub bucket_name: String,
    /// The table of manifests (`MANIFEST_TABLE`, default `manifests`).
    pub manifest_table: String,
    /// Longer lines are rejected, never buffered (`MAX_LINE_BYTES`, 1 MiB).
    pub max_line_bytes: usize,
    /// Lines per chunk (`CHUNK_LINES`, 50).
    pub chunk_lines: usize,
    /// Chunks per invocation before the object is handed on
    /// (`CHUNKS_PER_INVOCATION`, 200).
    pub chunks_per_invocation: usize,
    /// Hand the object on after this long in one invocation
    /// (`INVOCATION_BUDGET_MS`, 60 s).
    pub budget_ms: f64,
    /// Fault injection for tests (`INTERRUPT_AT_LINE`): stop without
    /// acknowledging once the checkpoint passes this line, unless it had
    /// passed it already.
    pub interrupt_at_line: Option<u64>,
}

impl IngestSettings {
    /// The settings in the Worker's vars.
    pub fn from_env(env: &Env) -> Self {
        let num = |name: &str, default: usize| var(env, name).and_then(|v| v.trim().parse().ok()).unwrap_or(default);
        Self {
            ingest_queue: var(env, "INGEST_QUEUE").unwrap_or_else(|| "ingest".into()),
            bucket_name: var(env, "BUCKET_NAME").unwrap_or_default(),
            manifest_table: var(env, "MANIFEST_TABLE").unwrap_or_else(|| "manifests".into()),
            max_line_bytes: num("MAX_LINE_BYTES", 1024 * 1024),
            chunk_lines: num("CHUNK_LINES", 50).max(1),
            chunks_per_invocation: num("CHUNKS_PER_INVOCATION", 200).max(1),
            budget_ms: num("INVOCATION_BUDGET_MS", 60_000) as f64,
            interrupt_at_line: var(env, "INTERRUPT_AT_LINE").and_then(|v| v.trim().parse().ok()),
        }
    }
}

/// What a chunk of an object's records does to D1.
// wasm32 is single-threaded: no `Send` bound to name on the future.
#[allow(async_fn_in_trait)]
pub trait Chunks<R> {
    /// Decides a chunk's `records` (in object order) from fresh reads: each
    /// one's outcome, or why it can never apply (it is quarantined with
    /// that reason), and the statements of their effects, each guarded by
    /// what was read. The ingest commits them with the chunk's quarantine
    /// rows and manifest in one batch; when a guard fails it reads the
    /// manifest and asks again.
    async fn plan(&self, db: &Db, records: &[&R], now: &str) -> Result<(Vec<Decided>, Vec<Statement>), DbError>;
}

/// What one notification's invocation ended with.
enum Ended {
    /// Acknowledge: the object is done (or another invocation holds it).
    Done(String),
    /// Acknowledge: it can never be read; its manifest says why.
    Unreadable(String),
    /// Acknowledge: not a notification this ingest reads.
    Ignored(String),
    /// More to do: a continuation was sent; acknowledge this one.
    HandedOn,
    /// Transient failure: deliver the notification again.
    Retry(String),
}

/// Consumes a batch of R2 notifications: each one's object ingested with
/// `parser`'s records and `chunks`' effects, then each notification
/// acknowledged or retried, and the summary logged (the lines' outcomes,
/// and the notifications quarantined, ignored or retried, as the Lambda
/// object ingest counts them).
pub async fn ingest<P: LineParser, C: Chunks<P::Record>>(
    consumer: &Consumer,
    batch: Batch,
    env: &Env,
    settings: &IngestSettings,
    parser: &P,
    chunks: &C,
) {
    let mut lines = Summary::default();
    let mut dispositions = Vec::with_capacity(batch.messages().len());
    for message in batch.messages() {
        let run = Run { consumer, env, settings, source: Consumer::source(&batch) };
        dispositions.push(run.notification(message, parser, chunks, &mut lines).await);
    }
    let notifications = consumer.answer(&batch, &dispositions);
    lines.quarantined += notifications.quarantined;
    lines.ignored += notifications.ignored;
    lines.failed += notifications.failed;
    consumer.report(&batch, lines);
}

struct Run<'a> {
    consumer: &'a Consumer,
    env: &'a Env,
    settings: &'a IngestSettings,
    source: String,
}

impl Run<'_> {
    fn db(&self) -> &Db {
        self.consumer.db()
    }

    async fn notification<P: LineParser, C: Chunks<P::Record>>(
        &self,
        message: &Message,
        parser: &P,
        chunks: &C,
        lines: &mut Summary,
    ) -> Disposition {
        let notification: Notification = match serde_json::from_str(message.body()) {
            Ok(n) => n,
            Err(e) => {
                let reason = format!("not an R2 event notification: {e}");
                let row = Quarantined::new(&self.source, message.id(), reason, message.body());
                let table = &self.consumer.settings().quarantine_table;
                return match self.db().run(&[d1::quarantine(table, &row, &now())]).await {
                    Ok(_) => Disposition::Quarantined,
                    Err(e) => Disposition::Failed(format!("quarantining failed: {e}")),
                };
            }
        };
        let (statements, round_trips) = self.db().sent();
        let ended = if !notification.is_created() {
            Ended::Ignored(format!("ignored: action {}", notification.action))
        } else if notification.bucket != self.settings.bucket_name {
            Ended::Ignored(format!("ignored: bucket {} is not {}", notification.bucket, self.settings.bucket_name))
        } else {
            self.object(&notification, parser, chunks, lines).await
        };
        // One line per invocation of an object, with the D1 work it took.
        let log = |ended: &str| {
            let (sent, trips) = self.db().sent();
            let line = serde_json::json!({
                "object": notification.object.key,
                "ended": ended,
                "d1_statements": sent - statements,
                "d1_round_trips": trips - round_trips,
            });
            worker::console_log!("{line}");
        };
        match ended {
            Ended::Done(what) => {
                log(&what);
                Disposition::Done(Outcome::Applied)
            }
            Ended::Unreadable(what) => {
                log(&what);
                Disposition::Quarantined
            }
            Ended::Ignored(what) => {
                log(&what);
                Disposition::Ignored
            }
            Ended::HandedOn => {
                log("handed on");
                Disposition::Done(Outcome::Applied)
            }
            Ended::Retry(why) => {
                worker::console_error!(
                    "object {}: {why}; the notification will be delivered again",
                    notification.object.key
                );
                log("retry");
                Disposition::Failed(why)
            }
        }
    }

    async fn read_manifest(&self, bucket: &str, key: &str, revision: &str) -> Result<Option<ObjectManifest>, String> {
        let select = ObjectManifest::select(&self.settings.manifest_table, bucket, key, revision);
        let results = self.db().run(&[select]).await.map_err(|e| e.to_string())?;
        let rows = results.first().map(|r| r.rows::<ManifestRow>()).transpose().map_err(|e| e.to_string())?;
        rows.and_then(|mut rows| rows.pop()).map(ManifestRow::into_manifest).transpose()
    }

    /// Ends an object that can never be read with a final manifest saying why.
    async fn finish(&self, mut manifest: ObjectManifest, stored: bool, status: Status, reason: String) -> Ended {
        manifest.status = status;
        manifest.reason = Some(reason.clone());
        match self.db().run(&manifest.write(&self.settings.manifest_table, stored, &now())).await {
            Ok(_) => Ended::Unreadable(format!("{}: {reason}", status.as_str())),
            Err(e) if e.is_conflict() => Ended::Done("another invocation holds this object".into()),
            Err(e) => Ended::Retry(format!("writing the manifest failed: {e}")),
        }
    }

    async fn object<P: LineParser, C: Chunks<P::Record>>(
        &self,
        n: &Notification,
        parser: &P,
        chunks: &C,
        lines: &mut Summary,
    ) -> Ended {
        const FAILED: Status = Status::Object(ObjectStatus::Failed);
        let started = js_sys::Date::now();
        let key = &n.object.key;
        let bucket = match self.env.bucket("BUCKET") {
            Ok(b) => b,
            Err(e) => return Ended::Retry(format!("no BUCKET binding: {e}")),
        };
        let head = match bucket.head(key.as_str()).await {
            Ok(h) => h,
            Err(e) => return Ended::Retry(format!("reading the object failed: {e}")),
        };
        let revision = n.object.e_tag.clone().or_else(|| head.as_ref().map(|h| h.etag())).unwrap_or_default();
        let mut read = self.read_manifest(&n.bucket, key, &revision).await;
        for attempt in 1..CONFLICT_ATTEMPTS {
            if read.is_ok() {
                break;
            }
            back_off(attempt).await;
            read = self.read_manifest(&n.bucket, key, &revision).await;
        }
        let read = match read {
            Ok(m) => m,
            Err(e) => return Ended::Retry(format!("reading the manifest failed: {e}")),
        };
        if let Some(m) = &read
            && m.is_final()
        {
            // As the Lambda ingest counts an object it skips.
            lines.duplicate += 1;
            return Ended::Done(format!("already {}", m.status.as_str()));
        }
        let stored = read.is_some();
        let mut manifest = read.unwrap_or_else(|| ObjectManifest::new(&n.bucket, key, &revision));
        let Some(head) = head else {
            return self.finish(manifest, stored, FAILED, format!("no such object: r2://{}/{key}", n.bucket)).await;
        };
        if head.etag() != revision {
            let reason = format!("revision {revision} is gone: the object is now {}", head.etag());
            return self.finish(manifest, stored, FAILED, reason).await;
        }
        let meta = head.http_metadata();
        let Some(layout) = Layout::detect(key, meta.content_type.as_deref(), meta.content_encoding.as_deref()) else {
            let reason = format!(
                "not a format we ingest: the key has no .ndjson/.jsonl/.json/.csv suffix and the content type is {:?}",
                meta.content_type
            );
            return self.finish(manifest, stored, Status::Rejected, reason).await;
        };
        // Uncompressed NDJSON resumes with a ranged read; CSV (its header)
        // and gzip are read from the start, the committed lines skipped.
        let ranged = layout.format == Format::Ndjson && !layout.gzip && manifest.checkpoint.byte > 0;
        let mut chunk = Chunk {
            run: self,
            records: if ranged {
                Records::resume(parser, layout.format, None)
            } else {
                Records::new(parser, layout.format)
            },
            stored,
            pending: Vec::new(),
            lines,
        };
        if ranged && manifest.checkpoint.byte >= head.size() {
            // Handed on after its last line: nothing left to read (a range
            // from the end is not satisfiable), only the manifest to complete.
            return match chunk.commit(chunks, &mut manifest, true).await {
                Ok(()) => Ended::Done(format!("COMPLETED: {} lines", manifest.counts.lines)),
                Err(ended) => ended,
            };
        }
        let mut get = bucket.get(key.as_str());
        if ranged {
            get = get.range(Range::OffsetToEnd { offset: manifest.checkpoint.byte });
        }
        let object = match get.execute().await {
            Ok(Some(o)) => o,
            Ok(None) => {
                let reason = "the object was deleted while being read".into();
                return self.finish(manifest, chunk.stored, FAILED, reason).await;
            }
            Err(e) => return Ended::Retry(format!("reading the object failed: {e}")),
        };
        let mut stream = match object.body().map(|b| b.stream()) {
            Some(Ok(s)) => s,
            Some(Err(e)) => return Ended::Retry(format!("reading the object failed: {e}")),
            None => return self.finish(manifest, chunk.stored, FAILED, "the object has no body".into()).await,
        };
        let max = self.settings.max_line_bytes;
        let mut splitter = if ranged {
            ObjectLines::new(layout.gzip, max, manifest.checkpoint.line + 1, manifest.checkpoint.byte)
        } else {
            ObjectLines::new(layout.gzip, max, 1, 0)
        };
        let interrupt = self.settings.interrupt_at_line.filter(|at| manifest.checkpoint.line < *at);
        let mut committed = 0;
        let mut finished = false;
        while !finished {
            let read = match stream.next().await {
                Some(Ok(bytes)) => splitter.push(&bytes),
                Some(Err(e)) => return Ended::Retry(format!("reading the object failed: {e}")),
                None => {
                    finished = true;
                    splitter.finish()
                }
            };
            let read = match read {
                Ok(l) => l,
                Err(reason) => return self.finish(manifest, chunk.stored, FAILED, reason).await,
            };
            for line in read {
                if line.number <= manifest.checkpoint.line {
                    chunk.skip(&line);
                    continue;
                }
                chunk.pending.push(line);
                if chunk.pending.len() < self.settings.chunk_lines {
                    continue;
                }
                if let Err(ended) = chunk.commit(chunks, &mut manifest, false).await {
                    return ended;
                }
                committed += 1;
                if interrupt.is_some_and(|at| manifest.checkpoint.line >= at) {
                    let next = manifest.checkpoint.line + 1;
                    return Ended::Retry(format!("interrupted at line {next} (INTERRUPT_AT_LINE)"));
                }
                if committed >= self.settings.chunks_per_invocation
                    || js_sys::Date::now() - started > self.settings.budget_ms
                {
                    return self.hand_on(n).await;
                }
            }
        }
        match chunk.commit(chunks, &mut manifest, true).await {
            Ok(()) => Ended::Done(format!("COMPLETED: {} lines", manifest.counts.lines)),
            Err(ended) => ended,
        }
    }

    /// Sends the notification again for the rest of the object (the
    /// manifest holds where it stopped).
    async fn hand_on(&self, n: &Notification) -> Ended {
        let queue = match self.env.queue("INGEST") {
            Ok(q) => q,
            Err(e) => return Ended::Retry(format!("no INGEST producer binding: {e}")),
        };
        match queue.send(n.clone()).await {
            Ok(()) => Ended::HandedOn,
            Err(e) => Ended::Retry(format!("handing the object on failed: {e}")),
        }
    }
}

/// A line's record, `None` for a line that holds none (blank, a CSV
/// header), or why the line is rejected.
type LineRecord<R> = Option<Result<R, String>>;

/// One object's read in progress.
struct Chunk<'a, 'p, P: LineParser> {
    run: &'a Run<'a>,
    /// The object's lines to records by its format (the core's, as on Lambda).
    records: Records<'p, P>,
    /// Whether the manifest exists in D1 (its version guards the next write).
    stored: bool,
    pending: Vec<Line>,
    /// The outcomes of the lines this invocation committed.
    lines: &'a mut Summary,
}

impl<P: LineParser> Chunk<'_, '_, P> {
    /// A committed line passed again on a read from the start: only a CSV
    /// header row matters.
    fn skip(&mut self, line: &Line) {
        if let Ok(text) = line.content.text(self.run.settings.max_line_bytes) {
            self.records.skip(text);
        }
    }

    /// A line's record: `None` for no record (a blank line, the CSV
    /// header), else the record or why the line is rejected.
    fn record(&mut self, line: &Line) -> LineRecord<P::Record> {
        let record = match line.content.text(self.run.settings.max_line_bytes) {
            Ok(text) => self.records.line(text)?,
            Err(e) => Err(e),
        };
        Some(record.map_err(|e| e.to_string()))
    }

    /// Commits the pending lines with the manifest (its checkpoint past
    /// them, `COMPLETED` when `last`); on a guard failure reads the
    /// manifest and decides again; a manifest changed meanwhile means
    /// another invocation holds the object.
    async fn commit<C: Chunks<P::Record>>(
        &mut self,
        chunks: &C,
        manifest: &mut ObjectManifest,
        last: bool,
    ) -> Result<(), Ended> {
        let lines = std::mem::take(&mut self.pending);
        let records: Vec<(&Line, LineRecord<P::Record>)> = lines.iter().map(|l| (l, self.record(l))).collect();
        let valid: Vec<&P::Record> =
            records.iter().filter_map(|(_, r)| r.as_ref().and_then(|r| r.as_ref().ok())).collect();
        let (db, settings) = (self.run.db(), self.run.settings);
        let quarantine_table = &self.run.consumer.settings().quarantine_table;
        let mut why = String::from("the commit kept conflicting with other writers");
        for attempt in 0..CONFLICT_ATTEMPTS {
            back_off(attempt).await;
            let now = now();
            let (decided, mut statements) = match chunks.plan(db, &valid, &now).await {
                Ok(planned) => planned,
                Err(e) if e.failure() == Failure::Schema => {
                    return Err(Ended::Retry(format!("reading D1 failed: {e}")));
                }
                Err(e) => {
                    why = format!("reading D1 failed: {e}");
                    continue;
                }
            };
            let mut decided = decided.into_iter();
            let mut next = manifest.clone();
            let mut counted = Summary::default();
            for (line, record) in &records {
                if let Some(record) = record {
                    let outcome: Decided = match record {
                        Ok(_) => decided
                            .next()
                            .unwrap_or_else(|| Err("the chunk's planner decided fewer records than given".into())),
                        Err(reason) => Err(reason.clone()),
                    };
                    next.count(&outcome);
                    match outcome {
                        Ok(outcome) => counted.count(outcome),
                        Err(reason) => {
                            counted.quarantined += 1;
                            let id = format!("line-{}", line.number);
                            let row = Quarantined::new(self.run.source_of(manifest), id, reason, &line.content.lossy());
                            statements.push(d1::quarantine(quarantine_table, &row, &now));
                        }
                    }
                }
                next.checkpoint = Checkpoint { line: line.number, byte: line.end };
            }
            if last {
                next.status = Status::Object(ObjectStatus::Completed);
            }
            statements.extend(next.write(&settings.manifest_table, self.stored, &now));
            match db.run(&statements).await {
                Ok(_) => {
                    next.version = if self.stored { next.version + 1 } else { 1 };
                    self.stored = true;
                    *manifest = next;
                    *self.lines += counted;
                    return Ok(());
                }
                Err(e) if e.failure() == Failure::Schema => {
                    return Err(Ended::Retry(format!("committing to D1 failed: {e}")));
                }
                // A conflict, or a failure that may have come after the batch
                // ran (its answer lost): the manifest says which.
                Err(e) => {
                    why = format!("committing to D1 failed: {e}");
                    let expected = self.stored.then_some(manifest.version);
                    match self.run.read_manifest(&manifest.bucket, &manifest.key, &manifest.revision).await {
                        // This very chunk is committed (by this batch, whose
                        // answer was lost, or by another invocation that read
                        // the same lines): its lines are counted, by the
                        // outcomes that commit decided.
                        Ok(Some(stored)) if stored.checkpoint == next.checkpoint => {
                            *self.lines += delta(&manifest.counts, &stored.counts);
                            self.stored = true;
                            *manifest = stored;
                            return Ok(());
                        }
                        Ok(stored) if stored.as_ref().map(|m| m.version) != expected => {
                            return Err(Ended::Done("another invocation holds this object".into()));
                        }
                        Ok(_) => continue,
                        Err(e) => why = format!("reading the manifest failed: {e}"),
                    }
                }
            }
        }
        Err(Ended::Retry(why))
    }
}

/// The outcomes of the lines counted between two manifests of one object.
fn delta(before: &Counts, after: &Counts) -> Summary {
    Summary {
        applied: after.accepted.saturating_sub(before.accepted),
        stale: after.stale.saturating_sub(before.stale),
        duplicate: after.duplicates.saturating_sub(before.duplicates),
        quarantined: after.rejected.saturating_sub(before.rejected),
        ..Summary::default()
    }
}

impl Run<'_> {
    /// The quarantine source of an object's lines: `r2/<bucket>/<key>`.
    fn source_of(&self, manifest: &ObjectManifest) -> String {
        format!("r2/{}/{}", manifest.bucket, manifest.key)
    }
}
