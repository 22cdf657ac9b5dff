//! The Workers side: the queue handler, D1, R2 (wasm32 only).
//!
//! Each message of a batch ends in one of the core's dispositions, and the
//! core's [`settle`] decides which are acknowledged and which retried:
//! Cloudflare Queues acknowledge and retry each message on its own, as an
//! SQS standard queue's mapping does ([`Delivery::Standard`]).

use std::collections::{BTreeSet, HashSet};

use futures::StreamExt;
use orders::order::{OrderEvent, ValidationError, parse_order_event};
use serde::{Deserialize, Serialize};
use shared_core::batch::{Delivery, Disposition, Outcome, RecordRef, Summary, settle};
use shared_core::key::Keys;
use shared_core::lines::{Format, Layout, Line, Records};
use shared_core::manifest::{Checkpoint, ObjectStatus};
use shared_core::quarantine::Quarantined;
use wasm_bindgen::JsValue;
use worker::{
    D1Database, D1PreparedStatement, Env, MessageBatch, MessageExt, Range, RawMessage, console_error, console_log,
    event,
};

use crate::ledger::{
    Decided, Ledger, MANIFEST_COLUMNS, MARKER_COLUMNS, ManifestRow, MarkerRecord, ORDER_COLUMNS, ObjectManifest,
    OrderRecord, Param, Statement, Status, TOTALS_COLUMNS, TotalsRecord, marker_of, select_in,
};
use crate::lines::ObjectLines;

/// The orders' line parser: an NDJSON line, or a CSV row as the JSON object
/// of its fields, to an order event (a function is a line parser).
type Parser = fn(&str) -> Result<OrderEvent, ValidationError>;
const PARSER: Parser = parse_order_event;

/// Attempts of one batch's commit when a guard fails (a concurrent writer),
/// each after a random pause of up to 10, 20, 40, ... 640 ms (about 1.3 s
/// in all at worst): invocations that collided once do not collide again in
/// step. After the last, the messages go back to the queue.
const CONFLICT_ATTEMPTS: u32 = 8;

/// Waits before attempt `attempt` (0: no wait).
async fn back_off(attempt: u32) {
    if attempt > 0 {
        let most = 10.0 * f64::from(1u32 << (attempt - 1).min(6));
        let ms = (js_sys::Math::random() * most) as u64;
        worker::Delay::from(std::time::Duration::from_millis(ms)).await;
    }
}

/// The Worker's settings, from `vars` (infra/cloudflare/wrangler.jsonc).
struct Settings {
    /// The queue of R2 notifications; every other queue carries order events.
    ingest_queue: String,
    /// The bucket the `BUCKET` binding reads.
    bucket_name: String,
    /// Idempotency keys of order events, under `IDEMPOTENCY_KEY_PREFIX`
    /// (default `orders`, the Lambda functions' default: the markers either
    /// platform stores keep matching).
    keys: Keys,
    max_line_bytes: usize,
    chunk_lines: usize,
    chunks_per_invocation: usize,
    /// Hand an object on after this long in one invocation.
    budget_ms: f64,
    /// Fault injection for tests: stop (without acknowledging) once the
    /// checkpoint passes this line, unless it had already passed it.
    interrupt_at_line: Option<u64>,
}

impl Settings {
    fn from_env(env: &Env) -> Self {
        let var = |name: &str| env.var(name).ok().map(|v| v.to_string());
        let num = |name: &str, default: usize| var(name).and_then(|v| v.parse().ok()).unwrap_or(default);
        Self {
            ingest_queue: var("INGEST_QUEUE").unwrap_or_else(|| "ingest".into()),
            bucket_name: var("BUCKET_NAME").unwrap_or_default(),
            keys: Keys::new(
                var("IDEMPOTENCY_KEY_PREFIX").filter(|p| !p.trim().is_empty()).unwrap_or_else(|| "orders".into()),
            ),
            max_line_bytes: num("MAX_LINE_BYTES", 1024 * 1024),
            chunk_lines: num("CHUNK_LINES", 50).max(1),
            chunks_per_invocation: num("CHUNKS_PER_INVOCATION", 200).max(1),
            budget_ms: num("INVOCATION_BUDGET_MS", 60_000) as f64,
            interrupt_at_line: var("INTERRUPT_AT_LINE").and_then(|v| v.parse().ok()),
        }
    }
}

#[event(queue)]
async fn consume(batch: MessageBatch<JsValue>, env: Env, _ctx: worker::Context) -> worker::Result<()> {
    let settings = Settings::from_env(&env);
    let db = Db::new(env.d1("DB")?);
    let queue = batch.queue();
    let messages: Vec<RawMessage> = batch.raw_iter().collect();
    let summary = if queue == settings.ingest_queue {
        let mut lines = Summary::default();
        let mut dispositions = Vec::with_capacity(messages.len());
        for message in &messages {
            dispositions.push(ingest(&env, &db, &settings, &queue, message, &mut lines).await);
        }
        // Counted as s3-ingest counts: the lines' outcomes, and the
        // notifications that were quarantined, ignored or retried.
        let notifications = answer(&messages, &dispositions);
        lines.quarantined += notifications.quarantined;
        lines.ignored += notifications.ignored;
        lines.failed += notifications.failed;
        lines
    } else {
        let dispositions = orders(&db, &settings.keys, &queue, &messages).await;
        answer(&messages, &dispositions)
    };
    log_summary(&queue, &db, summary);
    Ok(())
}

/// Acknowledges or retries each message as the core's rules for a standard
/// queue say, from what became of it (`dispositions`, one per message);
/// returns the accounting.
fn answer(messages: &[RawMessage], dispositions: &[Disposition]) -> Summary {
    let records: Vec<RecordRef> = messages.iter().map(|m| RecordRef { id: m.id(), group: None }).collect();
    // Only a batch failed as a whole is an error, and the Worker never asks
    // for that (`fail_on_all_failed` off): every message is its own.
    let Ok((response, summary)) = settle(Delivery::Standard, &records, dispositions, false) else {
        messages.iter().for_each(MessageExt::retry);
        return Summary { failed: messages.len() as u64, ..Summary::default() };
    };
    let retried: HashSet<&str> = response.ids().into_iter().collect();
    for (message, record) in messages.iter().zip(&records) {
        if retried.contains(record.id.as_str()) {
            message.retry();
        } else {
            message.ack();
        }
    }
    summary
}

fn now() -> String {
    String::from(js_sys::Date::new_0().to_iso_string())
}

/// A message body as JSON text: text bodies as they are, structured ones
/// (`contentType: "json"`) serialized.
fn body_text(body: &JsValue) -> String {
    body.as_string().unwrap_or_else(|| {
        js_sys::JSON::stringify(body).map(String::from).unwrap_or_else(|_| "<unserializable body>".into())
    })
}

fn prepare(db: &D1Database, s: &Statement) -> worker::Result<D1PreparedStatement> {
    let params: Vec<JsValue> = s
        .params
        .iter()
        .map(|p| match p {
            Param::Text(t) => JsValue::from_str(t),
            // D1 numbers are JavaScript numbers: exact to 2^53, far above any count here.
            Param::Int(i) => JsValue::from_f64(*i as f64),
            Param::Null => JsValue::NULL,
        })
        .collect();
    db.prepare(&s.sql).bind(&params)
}

/// The D1 binding of one invocation, counting what it sends.
struct Db {
    db: D1Database,
    statements: std::cell::Cell<u64>,
    round_trips: std::cell::Cell<u64>,
}

impl Db {
    fn new(db: D1Database) -> Self {
        Self { db, statements: Default::default(), round_trips: Default::default() }
    }

    /// Statements and round trips sent so far.
    fn sent(&self) -> (u64, u64) {
        (self.statements.get(), self.round_trips.get())
    }

    /// Runs statements as one D1 batch (one transaction); the results of each.
    async fn run(&self, statements: &[Statement]) -> worker::Result<Vec<worker::D1Result>> {
        if statements.is_empty() {
            return Ok(Vec::new());
        }
        let prepared = statements.iter().map(|s| prepare(&self.db, s)).collect::<worker::Result<Vec<_>>>()?;
        self.statements.set(self.statements.get() + statements.len() as u64);
        self.round_trips.set(self.round_trips.get() + 1);
        self.db.batch(prepared).await
    }
}

/// A failed guard or a key taken meanwhile: read again and decide again.
fn is_conflict(e: &worker::Error) -> bool {
    e.to_string().contains("constraint failed")
}

/// Loads the rows the events touch: their orders, markers and customers'
/// totals in one round trip, and the totals of customers their stored orders
/// belong to (an order moving between customers) in a second when needed.
async fn load(db: &Db, ledger: &mut Ledger, events: &[&OrderEvent], keys: &BTreeSet<String>) -> worker::Result<()> {
    let order_ids: BTreeSet<String> = events.iter().map(|e| e.order_id.clone()).collect();
    let customers: BTreeSet<String> = events.iter().map(|e| e.customer_id.clone()).collect();
    let orders = select_in(ORDER_COLUMNS, "orders", "order_id", &order_ids);
    let totals = select_in(TOTALS_COLUMNS, "customer_totals", "customer_id", &customers);
    let markers = select_in(MARKER_COLUMNS, "idempotency", "key", keys);
    let (n_orders, n_totals) = (orders.len(), totals.len());
    let statements: Vec<Statement> = orders.into_iter().chain(totals).chain(markers).collect();
    let results = db.run(&statements).await?;
    let mut order_rows = Vec::new();
    let mut totals_rows = Vec::new();
    let mut marker_rows = Vec::new();
    for (i, r) in results.iter().enumerate() {
        if i < n_orders {
            order_rows.extend(r.results::<OrderRecord>()?);
        } else if i < n_orders + n_totals {
            totals_rows.extend(r.results::<TotalsRecord>()?);
        } else {
            marker_rows.extend(r.results::<MarkerRecord>()?);
        }
    }
    ledger.load_orders(&order_ids, order_rows);
    ledger.load_totals(&customers, totals_rows);
    ledger.load_markers(marker_rows);
    let more = ledger.customers_to_load(&customers);
    if !more.is_empty() {
        let mut rows = Vec::new();
        for r in db.run(&select_in(TOTALS_COLUMNS, "customer_totals", "customer_id", &more)).await? {
            rows.extend(r.results::<TotalsRecord>()?);
        }
        ledger.load_totals(&more, rows);
    }
    Ok(())
}

/// Logs an invocation's summary line: the core's accounting of its
/// messages (of an object's lines, on the ingest queue) and the D1
/// statements and round trips it took.
fn log_summary(queue: &str, db: &Db, summary: Summary) {
    #[derive(Serialize)]
    struct Logged {
        #[serde(flatten)]
        summary: Summary,
        d1_statements: u64,
        d1_round_trips: u64,
    }
    let (d1_statements, d1_round_trips) = db.sent();
    let line = serde_json::json!({ "summary": Logged { summary, d1_statements, d1_round_trips }, "queue": queue });
    console_log!("{line}");
}

/// A message's event with its idempotency key and fingerprint, or why it
/// is not one.
type Parsed = Result<(OrderEvent, (String, String)), String>;

/// A batch of order events, decided together and committed in one D1 batch:
/// each message's outcome, or quarantined with its reason; every message
/// failed (to be retried) when the batch cannot commit, since then nothing
/// of it was applied.
async fn orders(db: &Db, keys: &Keys, queue: &str, messages: &[RawMessage]) -> Vec<Disposition> {
    let source = format!("queue/{queue}");
    let bodies: Vec<String> = messages.iter().map(|m| body_text(&m.body())).collect();
    let parsed: Vec<Parsed> = bodies
        .iter()
        .map(|b| {
            parse_order_event(b)
                .map(|e| {
                    let marker = marker_of(keys, &e);
                    (e, marker)
                })
                .map_err(|e| e.to_string())
        })
        .collect();
    let events: Vec<&OrderEvent> = parsed.iter().filter_map(|p| p.as_ref().ok().map(|(e, _)| e)).collect();
    let keys: BTreeSet<String> = parsed.iter().filter_map(|p| p.as_ref().ok().map(|(_, (k, _))| k.clone())).collect();
    let mut why = "the commit kept conflicting with other writers".to_owned();
    for attempt in 0..CONFLICT_ATTEMPTS {
        back_off(attempt).await;
        let mut ledger = Ledger::new();
        if let Err(e) = load(db, &mut ledger, &events, &keys).await {
            why = format!("reading D1 failed: {e}");
            break;
        }
        let mut dispositions = Vec::with_capacity(messages.len());
        for ((message, parsed), body) in messages.iter().zip(&parsed).zip(&bodies) {
            let decided = match parsed {
                Ok((event, marker)) => ledger.decide(event, Some(marker.clone())),
                Err(reason) => Err(reason.clone()),
            };
            dispositions.push(match decided {
                Ok(outcome) => Disposition::Done(outcome),
                Err(reason) => {
                    ledger.quarantine(Quarantined::new(&source, message.id(), reason, body));
                    Disposition::Quarantined
                }
            });
        }
        match db.run(&ledger.statements(&now())).await {
            Ok(_) => return dispositions,
            Err(e) if is_conflict(&e) => {
                console_log!("{}", serde_json::json!({ "conflict": queue, "attempt": attempt + 1 }));
            }
            Err(e) => {
                why = format!("committing to D1 failed: {e}");
                break;
            }
        }
    }
    console_error!("{why}; the batch will be retried");
    messages.iter().map(|_| Disposition::Failed(why.clone())).collect()
}

/// An R2 event notification, as R2 sends it to a queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Notification {
    #[serde(default)]
    account: String,
    action: String,
    bucket: String,
    object: NotifiedObject,
    #[serde(rename = "eventTime", default)]
    event_time: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NotifiedObject {
    key: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(rename = "eTag", default)]
    e_tag: Option<String>,
}

/// What one notification's invocation ended with.
enum Ended {
    /// Acknowledge: the object is done (or another invocation holds it).
    Done(String),
    /// Acknowledge: it can never be read; its manifest says why.
    Unreadable(String),
    /// Acknowledge: not a notification this Worker ingests.
    Ignored(String),
    /// More to do: a continuation was sent; acknowledge this one.
    HandedOn,
    /// Transient failure: deliver the notification again.
    Retry(String),
}

/// One notification: its object read from its checkpoint, the outcomes of
/// its lines added to `lines`.
async fn ingest(
    env: &Env,
    db: &Db,
    settings: &Settings,
    queue: &str,
    message: &RawMessage,
    lines: &mut Summary,
) -> Disposition {
    let body = body_text(&message.body());
    let notification: Notification = match serde_json::from_str(&body) {
        Ok(n) => n,
        Err(e) => {
            let reason = format!("not an R2 event notification: {e}");
            let mut ledger = Ledger::new();
            ledger.quarantine(Quarantined::new(format!("queue/{queue}"), message.id(), reason, &body));
            return match db.run(&ledger.statements(&now())).await {
                Ok(_) => Disposition::Quarantined,
                Err(e) => {
                    console_error!("quarantining failed: {e}");
                    Disposition::Failed(format!("quarantining failed: {e}"))
                }
            };
        }
    };
    let (statements, round_trips) = db.sent();
    let ended = if !matches!(notification.action.as_str(), "PutObject" | "CopyObject" | "CompleteMultipartUpload") {
        Ended::Ignored(format!("ignored: action {}", notification.action))
    } else if notification.bucket != settings.bucket_name {
        Ended::Ignored(format!("ignored: bucket {} is not {}", notification.bucket, settings.bucket_name))
    } else {
        ingest_object(env, db, settings, &notification, lines).await
    };
    // One line per invocation of an object, with the D1 work it took.
    let log = |ended: &str| {
        let (sent, trips) = db.sent();
        let line = serde_json::json!({
            "object": notification.object.key,
            "ended": ended,
            "d1_statements": sent - statements,
            "d1_round_trips": trips - round_trips,
        });
        console_log!("{line}");
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
            console_error!("object {}: {why}; the notification will be delivered again", notification.object.key);
            log("retry");
            Disposition::Failed(why)
        }
    }
}

async fn read_manifest(db: &Db, bucket: &str, key: &str, revision: &str) -> Result<Option<ObjectManifest>, String> {
    let s = Statement {
        sql: format!("SELECT {MANIFEST_COLUMNS} FROM manifests WHERE bucket = ? AND key = ? AND revision = ?"),
        params: vec![Param::Text(bucket.into()), Param::Text(key.into()), Param::Text(revision.into())],
    };
    let results = db.run(&[s]).await.map_err(|e| e.to_string())?;
    let rows = results.first().map(|r| r.results::<ManifestRow>()).transpose().map_err(|e| e.to_string())?;
    rows.and_then(|mut rows| rows.pop()).map(ManifestRow::into_manifest).transpose()
}

/// Ends an object that can never be read with a final manifest saying why.
async fn finish_object(db: &Db, mut manifest: ObjectManifest, read: bool, status: Status, reason: String) -> Ended {
    manifest.status = status;
    manifest.reason = Some(reason.clone());
    let mut ledger = Ledger::new();
    ledger.write_manifest(manifest, read);
    match db.run(&ledger.statements(&now())).await {
        Ok(_) => Ended::Unreadable(format!("{}: {reason}", status.as_str())),
        Err(e) if is_conflict(&e) => Ended::Done("another invocation holds this object".into()),
        Err(e) => Ended::Retry(format!("writing the manifest failed: {e}")),
    }
}

const FAILED: Status = Status::Object(ObjectStatus::Failed);

async fn ingest_object(env: &Env, db: &Db, settings: &Settings, n: &Notification, lines: &mut Summary) -> Ended {
    let started = js_sys::Date::now();
    let key = &n.object.key;
    let bucket = match env.bucket("BUCKET") {
        Ok(b) => b,
        Err(e) => return Ended::Retry(format!("no BUCKET binding: {e}")),
    };
    let head = match bucket.head(key.as_str()).await {
        Ok(h) => h,
        Err(e) => return Ended::Retry(format!("reading the object failed: {e}")),
    };
    let revision = n.object.e_tag.clone().or_else(|| head.as_ref().map(|h| h.etag())).unwrap_or_default();
    let read = match read_manifest(db, &n.bucket, key, &revision).await {
        Ok(m) => m,
        Err(e) => return Ended::Retry(format!("reading the manifest failed: {e}")),
    };
    if let Some(m) = &read
        && m.is_final()
    {
        // As s3-ingest counts an object it skips.
        lines.duplicate += 1;
        return Ended::Done(format!("already {}", m.status.as_str()));
    }
    let was_read = read.is_some();
    let mut manifest = read.unwrap_or_else(|| ObjectManifest::new(&n.bucket, key, &revision));
    let Some(head) = head else {
        return finish_object(db, manifest, was_read, FAILED, format!("no such object: r2://{}/{key}", n.bucket)).await;
    };
    if head.etag() != revision {
        let reason = format!("revision {revision} is gone: the object is now {}", head.etag());
        return finish_object(db, manifest, was_read, FAILED, reason).await;
    }
    let meta = head.http_metadata();
    let Some(layout) = Layout::detect(key, meta.content_type.as_deref(), meta.content_encoding.as_deref()) else {
        let reason = format!(
            "not a format we ingest: the key has no .ndjson/.jsonl/.json/.csv suffix and the content type is {:?}",
            meta.content_type
        );
        return finish_object(db, manifest, was_read, Status::Rejected, reason).await;
    };
    // Uncompressed NDJSON resumes with a ranged read; CSV (its header) and gzip
    // are read from the start, the committed lines skipped.
    let ranged = layout.format == Format::Ndjson && !layout.gzip && manifest.checkpoint.byte > 0;
    let mut object_run = ObjectRun {
        db,
        source: format!("r2/{}/{key}", n.bucket),
        records: if ranged {
            Records::resume(&PARSER, layout.format, None)
        } else {
            Records::new(&PARSER, layout.format)
        },
        max_line_bytes: settings.max_line_bytes,
        read: was_read,
        pending: Vec::new(),
        lines,
    };
    if ranged && manifest.checkpoint.byte >= head.size() {
        // Handed on after its last line: nothing left to read (a range from the
        // end is not satisfiable), only the manifest to complete.
        return match object_run.commit(&mut manifest, true).await {
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
            return finish_object(db, manifest, was_read, FAILED, reason).await;
        }
        Err(e) => return Ended::Retry(format!("reading the object failed: {e}")),
    };
    let mut stream = match object.body().map(|b| b.stream()) {
        Some(Ok(s)) => s,
        Some(Err(e)) => return Ended::Retry(format!("reading the object failed: {e}")),
        None => return finish_object(db, manifest, was_read, FAILED, "the object has no body".into()).await,
    };
    let mut splitter = if ranged {
        ObjectLines::new(layout.gzip, settings.max_line_bytes, manifest.checkpoint.line + 1, manifest.checkpoint.byte)
    } else {
        ObjectLines::new(layout.gzip, settings.max_line_bytes, 1, 0)
    };
    let interrupt = settings.interrupt_at_line.filter(|at| manifest.checkpoint.line < *at);
    let mut chunks = 0;
    let mut finished = false;
    while !finished {
        let lines = match stream.next().await {
            Some(Ok(bytes)) => splitter.push(&bytes),
            Some(Err(e)) => return Ended::Retry(format!("reading the object failed: {e}")),
            None => {
                finished = true;
                splitter.finish()
            }
        };
        let lines = match lines {
            Ok(l) => l,
            Err(reason) => return finish_object(db, manifest, object_run.read, FAILED, reason).await,
        };
        for line in lines {
            if line.number <= manifest.checkpoint.line {
                object_run.skip(&line);
                continue;
            }
            object_run.pending.push(line);
            if object_run.pending.len() < settings.chunk_lines {
                continue;
            }
            if let Err(ended) = object_run.commit(&mut manifest, false).await {
                return ended;
            }
            chunks += 1;
            if interrupt.is_some_and(|at| manifest.checkpoint.line >= at) {
                let next = manifest.checkpoint.line + 1;
                return Ended::Retry(format!("interrupted at line {next} (INTERRUPT_AT_LINE)"));
            }
            if chunks >= settings.chunks_per_invocation || js_sys::Date::now() - started > settings.budget_ms {
                return hand_on(env, n).await;
            }
        }
    }
    match object_run.commit(&mut manifest, true).await {
        Ok(()) => Ended::Done(format!("COMPLETED: {} lines", manifest.counts.lines)),
        Err(ended) => ended,
    }
}

/// Sends the notification again for the rest of the object (the manifest
/// holds where it stopped).
async fn hand_on(env: &Env, n: &Notification) -> Ended {
    let queue = match env.queue("INGEST") {
        Ok(q) => q,
        Err(e) => return Ended::Retry(format!("no INGEST producer binding: {e}")),
    };
    match queue.send(n.clone()).await {
        Ok(()) => Ended::HandedOn,
        Err(e) => Ended::Retry(format!("handing the object on failed: {e}")),
    }
}

/// One object's read in progress.
struct ObjectRun<'a> {
    db: &'a Db,
    source: String,
    /// The object's lines to records by its format (the core's, as on Lambda).
    records: Records<'static, Parser>,
    max_line_bytes: usize,
    /// Whether the manifest exists in D1 (its version guards the next write).
    read: bool,
    pending: Vec<Line>,
    /// The outcomes of the lines this invocation committed.
    lines: &'a mut Summary,
}

impl ObjectRun<'_> {
    /// A committed line passed again on a read from the start: only a CSV
    /// header row matters.
    fn skip(&mut self, line: &Line) {
        if let Ok(text) = line.content.text(self.max_line_bytes) {
            self.records.skip(text);
        }
    }

    /// A line's record: `None` for no record (a blank line, the CSV
    /// header), else the event or why the line is rejected.
    fn record(&mut self, line: &Line) -> Option<Result<OrderEvent, String>> {
        let record = match line.content.text(self.max_line_bytes) {
            Ok(text) => self.records.line(text)?,
            Err(e) => Err(e),
        };
        Some(record.map_err(|e| e.to_string()))
    }

    /// Commits the pending lines with the manifest (its checkpoint past them,
    /// `COMPLETED` when `last`); on a guard failure reads again and decides
    /// again; a manifest changed meanwhile means another invocation holds the
    /// object.
    async fn commit(&mut self, manifest: &mut ObjectManifest, last: bool) -> Result<(), Ended> {
        let lines = std::mem::take(&mut self.pending);
        let records: Vec<(&Line, Option<Result<OrderEvent, String>>)> =
            lines.iter().map(|l| (l, self.record(l))).collect();
        let events: Vec<&OrderEvent> =
            records.iter().filter_map(|(_, r)| r.as_ref().and_then(|r| r.as_ref().ok())).collect();
        for attempt in 0..CONFLICT_ATTEMPTS {
            back_off(attempt).await;
            let mut ledger = Ledger::new();
            if let Err(e) = load(self.db, &mut ledger, &events, &BTreeSet::new()).await {
                return Err(Ended::Retry(format!("reading D1 failed: {e}")));
            }
            let mut next = manifest.clone();
            let mut counted = Summary::default();
            for (line, record) in &records {
                if let Some(record) = record {
                    let decided: Decided = match record {
                        Ok(event) => ledger.decide(event, None),
                        Err(reason) => Err(reason.clone()),
                    };
                    next.count(&decided);
                    match decided {
                        Ok(outcome) => counted.count(outcome),
                        Err(reason) => {
                            counted.quarantined += 1;
                            let id = format!("line-{}", line.number);
                            ledger.quarantine(Quarantined::new(&self.source, id, reason, &line.content.lossy()));
                        }
                    }
                }
                next.checkpoint = Checkpoint { line: line.number, byte: line.end };
            }
            if last {
                next.status = Status::Object(ObjectStatus::Completed);
            }
            ledger.write_manifest(next.clone(), self.read);
            match self.db.run(&ledger.statements(&now())).await {
                Ok(_) => {
                    next.version = if self.read { next.version + 1 } else { 1 };
                    self.read = true;
                    *manifest = next;
                    *self.lines += counted;
                    return Ok(());
                }
                Err(e) if is_conflict(&e) => {
                    match read_manifest(self.db, &manifest.bucket, &manifest.key, &manifest.revision).await {
                        Ok(stored) if stored.as_ref().map(|m| m.version) != (self.read.then_some(manifest.version)) => {
                            return Err(Ended::Done("another invocation holds this object".into()));
                        }
                        Ok(_) => continue,
                        Err(e) => return Err(Ended::Retry(format!("reading the manifest failed: {e}"))),
                    }
                }
                Err(e) => return Err(Ended::Retry(format!("committing to D1 failed: {e}"))),
            }
        }
        Err(Ended::Retry("the commit kept conflicting with other writers".into()))
    }
}
