//! The Workers side: the queue handler, D1, R2 (wasm32 only).

use std::collections::BTreeSet;

use futures::StreamExt;
use orders::order::{OrderEvent, parse_order_event};
use serde::{Deserialize, Serialize};
use shared_core::lines::{Format, Layout, csv_record, split_csv};
use wasm_bindgen::JsValue;
use worker::{
    D1Database, D1PreparedStatement, Env, MessageBatch, MessageExt, Range, RawMessage, console_error, console_log,
    event,
};

use crate::ledger::{
    Decision, Ledger, MANIFEST_COLUMNS, MARKER_COLUMNS, ManifestRecord, MarkerRecord, ORDER_COLUMNS, OrderRecord,
    Param, Quarantined, Statement, TOTALS_COLUMNS, TotalsRecord, marker_of, select_in,
};
use crate::lines::{Line, LineSplitter};

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
    max_line_bytes: usize,
    chunk_lines: usize,
    chunks_per_invocation: usize,
    /// Hand an object on after this long in one invocation.
    budget_ms: f64,
    /// Fault injection for tests: stop (without acknowledging) once the
    /// checkpoint passes this line, unless it had already passed it.
    interrupt_at_line: Option<i64>,
}

impl Settings {
    fn from_env(env: &Env) -> Self {
        let var = |name: &str| env.var(name).ok().map(|v| v.to_string());
        let num = |name: &str, default: usize| var(name).and_then(|v| v.parse().ok()).unwrap_or(default);
        Self {
            ingest_queue: var("INGEST_QUEUE").unwrap_or_else(|| "ingest".into()),
            bucket_name: var("BUCKET_NAME").unwrap_or_default(),
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
    if queue == settings.ingest_queue {
        for message in &messages {
            ingest(&env, &db, &settings, &queue, message).await;
            db.statements.set(0);
            db.round_trips.set(0);
        }
    } else {
        orders(&db, &queue, &messages).await;
    }
    Ok(())
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

/// Counts of one invocation, logged as its summary line.
#[derive(Debug, Default, Serialize)]
struct Summary {
    applied: u64,
    stale: u64,
    duplicate: u64,
    quarantined: u64,
    ignored: u64,
    /// Reported for retry (transient failures).
    failed: u64,
    /// D1 statements sent, and the batches (round trips) they went in.
    d1_statements: u64,
    d1_round_trips: u64,
}

impl Summary {
    fn count(&mut self, d: &Decision) {
        match d {
            Decision::Applied => self.applied += 1,
            Decision::Stale => self.stale += 1,
            Decision::Duplicate => self.duplicate += 1,
            Decision::Rejected(_) => self.quarantined += 1,
        }
    }

    fn log(mut self, queue: &str, db: &Db) {
        self.d1_statements = db.statements.get();
        self.d1_round_trips = db.round_trips.get();
        let line = serde_json::json!({ "summary": self, "queue": queue });
        console_log!("{line}");
    }
}

/// A message's event with its idempotency key and fingerprint, or why it
/// is not one.
type Parsed = Result<(OrderEvent, (String, String)), String>;

/// A batch of order events: decided together, committed in one D1 batch, then
/// acknowledged; on a transient failure every message is retried (nothing of
/// the batch was applied).
async fn orders(db: &Db, queue: &str, messages: &[RawMessage]) {
    let source = format!("queue/{queue}");
    let bodies: Vec<String> = messages.iter().map(|m| body_text(&m.body())).collect();
    let parsed: Vec<Parsed> = bodies
        .iter()
        .map(|b| {
            parse_order_event(b)
                .map(|e| {
                    let marker = marker_of(&e);
                    (e, marker)
                })
                .map_err(|e| e.to_string())
        })
        .collect();
    let events: Vec<&OrderEvent> = parsed.iter().filter_map(|p| p.as_ref().ok().map(|(e, _)| e)).collect();
    let keys: BTreeSet<String> = parsed.iter().filter_map(|p| p.as_ref().ok().map(|(_, (k, _))| k.clone())).collect();
    for attempt in 0..CONFLICT_ATTEMPTS {
        back_off(attempt).await;
        let mut ledger = Ledger::new();
        if let Err(e) = load(db, &mut ledger, &events, &keys).await {
            console_error!("reading D1 failed, the batch will be retried: {e}");
            break;
        }
        let mut summary = Summary::default();
        for ((message, parsed), body) in messages.iter().zip(&parsed).zip(&bodies) {
            let decision = match parsed {
                Ok((event, marker)) => ledger.decide(event, Some(marker.clone())),
                Err(reason) => Decision::Rejected(reason.clone()),
            };
            if let Decision::Rejected(reason) = &decision {
                ledger.quarantine(Quarantined::new(&source, &message.id(), reason, body));
            }
            summary.count(&decision);
        }
        match db.run(&ledger.statements(&now())).await {
            Ok(_) => {
                messages.iter().for_each(MessageExt::ack);
                summary.log(queue, db);
                return;
            }
            Err(e) if is_conflict(&e) => {
                console_log!("{}", serde_json::json!({ "conflict": queue, "attempt": attempt + 1 }));
                continue;
            }
            Err(e) => {
                console_error!("committing to D1 failed, the batch will be retried: {e}");
                break;
            }
        }
    }
    messages.iter().for_each(MessageExt::retry);
    Summary { failed: messages.len() as u64, ..Summary::default() }.log(queue, db);
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
    /// Acknowledge: the object is done (or never will be), the reason logged.
    Done(String),
    /// More to do: a continuation was sent; acknowledge this one.
    HandedOn,
    /// Transient failure: deliver the notification again.
    Retry(String),
}

async fn ingest(env: &Env, db: &Db, settings: &Settings, queue: &str, message: &RawMessage) {
    let body = body_text(&message.body());
    let notification: Notification = match serde_json::from_str(&body) {
        Ok(n) => n,
        Err(e) => {
            let q = Quarantined::new(
                &format!("queue/{queue}"),
                &message.id(),
                &format!("not an R2 event notification: {e}"),
                &body,
            );
            let mut ledger = Ledger::new();
            ledger.quarantine(q);
            match db.run(&ledger.statements(&now())).await {
                Ok(_) => message.ack(),
                Err(e) => {
                    console_error!("quarantining failed: {e}");
                    message.retry();
                }
            }
            return;
        }
    };
    let ended = if !matches!(notification.action.as_str(), "PutObject" | "CopyObject" | "CompleteMultipartUpload") {
        Ended::Done(format!("ignored: action {}", notification.action))
    } else if notification.bucket != settings.bucket_name {
        Ended::Done(format!("ignored: bucket {} is not {}", notification.bucket, settings.bucket_name))
    } else {
        ingest_object(env, db, settings, &notification).await
    };
    // One line per invocation of an object, with the D1 work it took.
    let log = |ended: &str| {
        let line = serde_json::json!({
            "object": notification.object.key,
            "ended": ended,
            "d1_statements": db.statements.get(),
            "d1_round_trips": db.round_trips.get(),
        });
        console_log!("{line}");
    };
    match ended {
        Ended::Done(what) => {
            log(&what);
            message.ack();
        }
        Ended::HandedOn => {
            log("handed on");
            message.ack();
        }
        Ended::Retry(why) => {
            console_error!("object {}: {why}; the notification will be delivered again", notification.object.key);
            log("retry");
            message.retry();
        }
    }
}

async fn read_manifest(db: &Db, bucket: &str, key: &str, revision: &str) -> worker::Result<Option<ManifestRecord>> {
    let s = Statement {
        sql: format!("SELECT {MANIFEST_COLUMNS} FROM manifests WHERE bucket = ? AND key = ? AND revision = ?"),
        params: vec![Param::Text(bucket.into()), Param::Text(key.into()), Param::Text(revision.into())],
    };
    let results = db.run(&[s]).await?;
    Ok(results.first().map(|r| r.results::<ManifestRecord>()).transpose()?.and_then(|mut v| v.pop()))
}

/// Ends an object that can never be read with a final manifest saying why.
async fn finish_object(db: &Db, mut manifest: ManifestRecord, read: bool, status: &str, reason: String) -> Ended {
    manifest.status = status.into();
    manifest.reason = Some(reason.clone());
    let mut ledger = Ledger::new();
    ledger.write_manifest(manifest, read);
    match db.run(&ledger.statements(&now())).await {
        Ok(_) => Ended::Done(format!("{status}: {reason}")),
        Err(e) if is_conflict(&e) => Ended::Done("another invocation holds this object".into()),
        Err(e) => Ended::Retry(format!("writing the manifest failed: {e}")),
    }
}

async fn ingest_object(env: &Env, db: &Db, settings: &Settings, n: &Notification) -> Ended {
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
        return Ended::Done(format!("already {}", m.status));
    }
    let was_read = read.is_some();
    let mut manifest = read.unwrap_or_else(|| ManifestRecord::new(&n.bucket, key, &revision));
    let Some(head) = head else {
        return finish_object(db, manifest, was_read, "FAILED", format!("no such object: r2://{}/{key}", n.bucket))
            .await;
    };
    if head.etag() != revision {
        let reason = format!("revision {revision} is gone: the object is now {}", head.etag());
        return finish_object(db, manifest, was_read, "FAILED", reason).await;
    }
    let meta = head.http_metadata();
    let Some(layout) = Layout::detect(key, meta.content_type.as_deref(), meta.content_encoding.as_deref()) else {
        let reason = format!(
            "not a format we ingest: the key has no .ndjson/.jsonl/.json/.csv suffix and the content type is {:?}",
            meta.content_type
        );
        return finish_object(db, manifest, was_read, "REJECTED", reason).await;
    };
    // Uncompressed NDJSON resumes with a ranged read; CSV (its header) and gzip
    // are read from the start, the committed lines skipped.
    let ranged = layout.format == Format::Ndjson && !layout.gzip && manifest.next_byte > 0;
    let mut object_run = ObjectRun {
        db,
        source: format!("r2/{}/{key}", n.bucket),
        layout,
        header: None,
        read: was_read,
        pending: Vec::new(),
    };
    if ranged && manifest.next_byte as u64 >= head.size() {
        // Handed on after its last line: nothing left to read (a range from the
        // end is not satisfiable), only the manifest to complete.
        return match object_run.commit(&mut manifest, true).await {
            Ok(()) => Ended::Done(format!("COMPLETED: {} lines", manifest.lines)),
            Err(ended) => ended,
        };
    }
    let mut get = bucket.get(key.as_str());
    if ranged {
        get = get.range(Range::OffsetToEnd { offset: manifest.next_byte as u64 });
    }
    let object = match get.execute().await {
        Ok(Some(o)) => o,
        Ok(None) => {
            return finish_object(db, manifest, was_read, "FAILED", "the object was deleted while being read".into())
                .await;
        }
        Err(e) => return Ended::Retry(format!("reading the object failed: {e}")),
    };
    let mut stream = match object.body().map(|b| b.stream()) {
        Some(Ok(s)) => s,
        Some(Err(e)) => return Ended::Retry(format!("reading the object failed: {e}")),
        None => return finish_object(db, manifest, was_read, "FAILED", "the object has no body".into()).await,
    };
    let mut splitter = if ranged {
        LineSplitter::new(layout.gzip, settings.max_line_bytes, manifest.next_line as u64, manifest.next_byte as u64)
    } else {
        LineSplitter::new(layout.gzip, settings.max_line_bytes, 1, 0)
    };
    let interrupt = settings.interrupt_at_line.filter(|at| manifest.next_line <= *at);
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
            Err(reason) => return finish_object(db, manifest, object_run.read, "FAILED", reason).await,
        };
        for line in lines {
            if (line.number as i64) < manifest.next_line {
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
            if interrupt.is_some_and(|at| manifest.next_line > at) {
                return Ended::Retry(format!("interrupted at line {} (INTERRUPT_AT_LINE)", manifest.next_line));
            }
            if chunks >= settings.chunks_per_invocation || js_sys::Date::now() - started > settings.budget_ms {
                return hand_on(env, n).await;
            }
        }
    }
    match object_run.commit(&mut manifest, true).await {
        Ok(()) => Ended::Done(format!("COMPLETED: {} lines", manifest.lines)),
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
    layout: Layout,
    header: Option<Result<Vec<String>, String>>,
    /// Whether the manifest exists in D1 (its version guards the next write).
    read: bool,
    pending: Vec<Line>,
}

/// What a line is, once its text is read.
enum Content {
    NotARecord,
    Event(OrderEvent),
    Bad(String),
}

impl ObjectRun<'_> {
    /// A committed line passed again on a read from the start: only the CSV
    /// header matters.
    fn skip(&mut self, line: &Line) {
        if self.layout.format == Format::Csv && line.number == 1 {
            self.header = Some(line.text.clone().and_then(|t| split_csv(&t)));
        }
    }

    fn content(&mut self, line: &Line) -> Content {
        let text = match &line.text {
            Ok(t) => t,
            Err(reason) => return Content::Bad(reason.clone()),
        };
        if self.layout.format == Format::Csv && line.number == 1 {
            self.header = Some(split_csv(text));
            return Content::NotARecord;
        }
        if text.trim().is_empty() {
            return Content::NotARecord;
        }
        let json = match (self.layout.format, &self.header) {
            (Format::Ndjson, _) => text.clone(),
            (Format::Csv, Some(Ok(header))) => match csv_record(header, text) {
                Ok(j) => j,
                Err(reason) => return Content::Bad(reason),
            },
            (Format::Csv, Some(Err(reason))) => return Content::Bad(format!("the CSV header is unreadable: {reason}")),
            (Format::Csv, None) => return Content::Bad("no CSV header".into()),
        };
        match parse_order_event(&json) {
            Ok(e) => Content::Event(e),
            Err(e) => Content::Bad(e.to_string()),
        }
    }

    /// Commits the pending lines with the manifest (its checkpoint past them,
    /// `COMPLETED` when `last`); on a guard failure reads again and decides
    /// again; a manifest changed meanwhile means another invocation holds the
    /// object.
    async fn commit(&mut self, manifest: &mut ManifestRecord, last: bool) -> Result<(), Ended> {
        let lines = std::mem::take(&mut self.pending);
        let contents: Vec<(&Line, Content)> = lines.iter().map(|l| (l, self.content(l))).collect();
        let events: Vec<&OrderEvent> = contents
            .iter()
            .filter_map(|(_, c)| match c {
                Content::Event(e) => Some(e),
                _ => None,
            })
            .collect();
        for attempt in 0..CONFLICT_ATTEMPTS {
            back_off(attempt).await;
            let mut ledger = Ledger::new();
            if let Err(e) = load(self.db, &mut ledger, &events, &BTreeSet::new()).await {
                return Err(Ended::Retry(format!("reading D1 failed: {e}")));
            }
            let mut next = manifest.clone();
            for (line, content) in &contents {
                let decision = match content {
                    Content::NotARecord => None,
                    Content::Event(e) => Some(ledger.decide(e, None)),
                    Content::Bad(reason) => Some(Decision::Rejected(reason.clone())),
                };
                if let Some(d) = &decision {
                    next.lines += 1;
                    match d {
                        Decision::Applied => next.accepted += 1,
                        Decision::Stale => next.stale += 1,
                        Decision::Duplicate => next.duplicates += 1,
                        Decision::Rejected(reason) => {
                            next.rejected += 1;
                            let raw = line.text.as_deref().unwrap_or("");
                            ledger.quarantine(Quarantined::new(
                                &self.source,
                                &format!("line-{}", line.number),
                                reason,
                                raw,
                            ));
                        }
                    }
                }
                next.next_line = line.number as i64 + 1;
                next.next_byte = line.end as i64;
            }
            if last {
                next.status = "COMPLETED".into();
            }
            ledger.write_manifest(next.clone(), self.read);
            match self.db.run(&ledger.statements(&now())).await {
                Ok(_) => {
                    next.version = if self.read { next.version + 1 } else { 1 };
                    self.read = true;
                    *manifest = next;
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
