//! Ingest of a large NDJSON object (issue 6): the s3-ingest handler reading a
//! local file through an [`ObjectSource`], applying to a store that keeps a
//! bounded set of orders, so the peak memory measured is the function's code
//! and not the stand-in's; and the parse-and-validate stage next to plain
//! `serde_json` over the same lines.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Instant;

use orders::order::{ApplyOutcome, Order, OrderEvent, apply};
use orders::state::{DeltaError, DeltaRecord, Marker, Outcome, StateStore};
use serde_json::{Value, json};
use shared::dynamo::StoreError;
use shared::event::s3::ObjectRef;
use shared::manifest::{Manifest, ManifestFn};
use shared::object::{Format, LineContent, LineReader, ObjectBody, ObjectError, ObjectSink, ObjectSource};
use shared::quarantine::{QuarantineStore, Quarantined};
use tokio::io::{AsyncRead, ReadBuf};

use crate::data::PlainOrder;

/// Read size of both sides of the stage comparison: the function's own.
const READ_BUFFER: usize = 64 * 1024;

/// A file read with plain blocking reads from `poll_read`: page-cache reads of
/// 64 KiB take microseconds, and a blocking read keeps tokio's `fs` feature
/// (a thread hop per read) out of the measurement.
struct BlockingFile(std::fs::File);

impl AsyncRead for BlockingFile {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let n = self.0.read(buf.initialize_unfilled())?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// Every object is the one file; reports written to it are counted and dropped.
pub struct FileSource {
    pub path: PathBuf,
    pub reported_bytes: Mutex<u64>,
}

impl ObjectSource for FileSource {
    async fn open(&self, object: &ObjectRef, from_byte: u64) -> Result<ObjectBody, ObjectError> {
        let fetch = |e: std::io::Error| ObjectError::Fetch {
            uri: object.uri(),
            message: e.to_string(),
            class: shared::error::ErrorClass::Transient,
        };
        let mut file = std::fs::File::open(&self.path).map_err(fetch)?;
        file.seek(SeekFrom::Start(from_byte)).map_err(fetch)?;
        Ok(ObjectBody { reader: Box::pin(BlockingFile(file)), content_type: None, content_encoding: None })
    }
}

impl ObjectSink for FileSource {
    async fn put(&self, _: &str, _: &str, body: Vec<u8>, _: &str) -> Result<(), ObjectError> {
        *self.reported_bytes.lock().unwrap_or_else(|e| e.into_inner()) += body.len() as u64;
        Ok(())
    }
}

/// The state table played in memory with the same apply rule and manifest
/// condition as DynamoDB, holding only as many orders as the workload has
/// (the workload repeats a small set of order ids).
#[derive(Default)]
pub struct BoundedStore {
    orders: Mutex<HashMap<String, Order>>,
    manifests: Mutex<BTreeMap<(String, String, String), Manifest>>,
    quarantined: Mutex<u64>,
}

impl StateStore for BoundedStore {
    async fn apply_orders(
        &self,
        events: &[OrderEvent],
        _markers: Option<&[Marker]>,
        manifest: Option<&ManifestFn<'_>>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut orders = self.orders.lock().unwrap_or_else(|e| e.into_inner());
        let mut outcomes = Vec::with_capacity(events.len());
        for event in events {
            outcomes.push(match apply(orders.get(&event.order_id), event) {
                ApplyOutcome::Applied(order) => {
                    orders.insert(order.order_id.clone(), order);
                    Outcome::Applied
                }
                ApplyOutcome::Stale => Outcome::Stale,
                ApplyOutcome::Duplicate => Outcome::Duplicate,
            });
        }
        if let Some(build) = manifest {
            let write = build(&outcomes);
            let m = write.manifest;
            let id = (m.bucket.clone(), m.key.clone(), m.revision.clone());
            let mut manifests = self.manifests.lock().unwrap_or_else(|e| e.into_inner());
            if manifests.get(&id).map(|m| m.checkpoint) != write.expected {
                return Err(StoreError::ManifestConflict { bucket: m.bucket, key: m.key, line: 0 });
            }
            manifests.insert(id, m);
        }
        Ok(outcomes)
    }

    async fn apply_deltas(&self, records: &[DeltaRecord]) -> (Vec<Outcome>, Option<DeltaError>) {
        (vec![Outcome::Applied; records.len()], None)
    }

    async fn get_manifest(&self, bucket: &str, key: &str, revision: &str) -> Result<Option<Manifest>, StoreError> {
        let manifests = self.manifests.lock().unwrap_or_else(|e| e.into_inner());
        Ok(manifests.get(&(bucket.to_owned(), key.to_owned(), revision.to_owned())).cloned())
    }
}

impl QuarantineStore for BoundedStore {
    async fn write_quarantine(&self, records: &[Quarantined]) -> Result<(), StoreError> {
        *self.quarantined.lock().unwrap_or_else(|e| e.into_inner()) += records.len() as u64;
        Ok(())
    }
}

/// A direct S3 `ObjectCreated` event for `bucket/key`.
pub fn s3_event(bucket: &str, key: &str, size: u64) -> Value {
    json!({ "Records": [{
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2026-11-28T12:00:00.000Z",
        "eventName": "ObjectCreated:Put",
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": { "name": bucket, "arn": format!("arn:aws:s3:::{bucket}") },
            "object": { "key": key, "size": size, "eTag": "0123456789abcdef0123456789abcdef", "sequencer": "01" }
        }
    }]})
}

/// What one ingest did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct IngestRun {
    pub bytes: u64,
    pub lines: u64,
    pub accepted: u64,
    pub seconds: f64,
    /// DynamoDB requests (emulator runs).
    pub requests: u64,
    /// Peak resident set of the process that ran it (KiB), when measured.
    pub peak_rss_kib: Option<u64>,
    /// Resident set before the ingest started (KiB).
    pub start_rss_kib: Option<u64>,
    /// CPU time of the process over the ingest (all threads).
    pub cpu_seconds: f64,
}

impl IngestRun {
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.seconds
    }
    pub fn lines_per_s(&self) -> f64 {
        self.lines as f64 / self.seconds
    }
}

/// The config of an ingest: the tables only matter against the emulator.
pub fn config(state: &str, idempotency: &str) -> orders::config::Config {
    let (state, idempotency) = (state.to_owned(), idempotency.to_owned());
    orders::config::Config::from_lookup(move |name| match name {
        "STATE_TABLE" => Some(state.clone()),
        "IDEMPOTENCY_TABLE" => Some(idempotency.clone()),
        _ => None,
    })
    .unwrap_or_else(|e| panic!("bench config: {e}"))
}

/// Runs the s3-ingest handler over `path` as object `bench/big.ndjson`.
pub async fn ingest_file(path: &Path) -> anyhow::Result<IngestRun> {
    let bytes = std::fs::metadata(path)?.len();
    let source = FileSource { path: path.to_owned(), reported_bytes: Mutex::new(0) };
    let store = BoundedStore::default();
    let payload = s3_event("bench", "big.ndjson", bytes);
    let config = config("state", "idempotency");
    let start_rss_kib = crate::rss::vm("VmRSS");
    let cpu_before = crate::rss::cpu_seconds().unwrap_or(0.0);
    let started = Instant::now();
    let (_, summary, reports) = Box::pin(s3_ingest::handle(
        &store,
        &source,
        &s3_ingest::Handoff::Retry,
        &config,
        &payload,
        &s3_ingest::Deadline::None,
    ))
    .await
    .map_err(|e| anyhow::anyhow!("ingest failed: {e}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let counts = reports.first().map(|r| r.counts).unwrap_or_default();
    anyhow::ensure!(summary.failed == 0, "ingest reported failures: {summary:?}");
    Ok(IngestRun {
        bytes,
        lines: counts.lines,
        accepted: counts.accepted,
        seconds,
        requests: 0,
        peak_rss_kib: crate::rss::vm("VmHWM"),
        cpu_seconds: crate::rss::cpu_seconds().unwrap_or(0.0) - cpu_before,
        start_rss_kib,
    })
}

/// The parse-and-validate stage of s3-ingest (its line reader and record
/// parser) against plain `serde_json` of the same lines into [`PlainOrder`],
/// both reading the file in 64 KiB blocks. Returns (stage, plain) lines/s and
/// the lines parsed: the medians of [`STAGE_ROUNDS`] alternating passes of
/// each, so that a slow moment of a shared machine falls on both sides.
pub fn stage_vs_plain(path: &Path) -> anyhow::Result<(f64, f64, u64)> {
    let (mut stages, mut plains) = (Vec::new(), Vec::new());
    let mut parsed = 0;
    for _ in 0..STAGE_ROUNDS {
        let (plain, plain_lines) = plain_pass(path)?;
        let (stage, stage_lines) = stage_pass(path)?;
        anyhow::ensure!(stage_lines == plain_lines, "stage parsed {stage_lines} lines, plain {plain_lines}");
        plains.push(plain);
        stages.push(stage);
        parsed = stage_lines;
    }
    Ok((crate::report::median(&stages), crate::report::median(&plains), parsed))
}

/// Passes of each side in [`stage_vs_plain`].
const STAGE_ROUNDS: usize = 3;

/// Plain: std buffered lines, one reused String, no validation. Lines/s and lines.
fn plain_pass(path: &Path) -> anyhow::Result<(f64, u64)> {
    let started = Instant::now();
    let mut reader = std::io::BufReader::with_capacity(READ_BUFFER, std::fs::File::open(path)?);
    let mut line = String::new();
    let mut lines = 0u64;
    while reader.read_line(&mut line)? > 0 {
        if serde_json::from_str::<PlainOrder>(line.trim_end()).is_ok() {
            lines += 1;
        }
        line.clear();
    }
    Ok((lines as f64 / started.elapsed().as_secs_f64(), lines))
}

/// The function's stage: shared::object's decoder and line reader, and the
/// object ingest's records with the orders' parser (parse + validate into
/// an OrderEvent). Lines/s and lines.
fn stage_pass(path: &Path) -> anyhow::Result<(f64, u64)> {
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let started = Instant::now();
    let lines = runtime.block_on(async {
        let file: Pin<Box<dyn AsyncRead + Send>> = Box::pin(BlockingFile(std::fs::File::open(path)?));
        let mut lines =
            LineReader::new(shared::object::decoded(file, false), shared::config::DEFAULT_MAX_LINE_BYTES, 1, 0);
        let mut records = shared::ingest::Records::new(&orders::lines::OrderLines, Format::Ndjson);
        let mut ok = 0u64;
        while let Some(line) = lines.next_line().await? {
            if let LineContent::Text(text) = &line.content
                && records.line(text).is_some_and(|r| r.is_ok())
            {
                ok += 1;
            }
        }
        Ok::<_, std::io::Error>(ok)
    })?;
    Ok((lines as f64 / started.elapsed().as_secs_f64(), lines))
}

/// Writes a temporary NDJSON object of `mib` MiB; order ids repeat every 1,000
/// events, so the store stays small whatever the size.
pub fn generate(path: &Path, mib: u64) -> anyhow::Result<u64> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let lines = crate::data::write_ndjson(&mut out, mib * 1024 * 1024, 1000)?;
    std::io::Write::flush(&mut out)?;
    Ok(lines)
}
