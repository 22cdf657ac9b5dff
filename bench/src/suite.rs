//! The suite: which figures, at which sizes, in which order, each turned into
//! report rows. Order matters: in-process figures with logging off run before
//! the global log subscriber is installed for the logging-on pass.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

use crate::coldstart::{Start, lambda_env, release_dir, run_once};
use crate::inproc::Function;
use crate::report::{Better, Report, Row, median};
use crate::runtime_api::RuntimeApi;

/// Sizes and repetitions.
#[derive(Debug, Clone)]
pub struct Options {
    pub smoke: bool,
    /// Starts per binary (cold start) and fresh processes (first invocation).
    pub runs: usize,
    pub batch_sizes: Vec<u64>,
    pub rounds: usize,
    pub round: Duration,
    /// The large-object ingest (issue 6), MiB.
    pub ingest_mib: u64,
    /// The object ingested through the emulator, KiB; and the one ingested
    /// from the emulator's S3 with the null DynamoDB endpoint.
    pub s3_kib: u64,
    pub s3_null_kib: u64,
    /// The cost workload (issue 4): events, and the small batch size.
    pub cost_events: u64,
    pub cost_small_batch: u64,
    /// Largest batches for peak memory: SQS records, stream records.
    pub memory_sqs: u64,
    pub memory_stream: u64,
    /// Where the report, the logs and temporary files go.
    pub out: PathBuf,
    pub workspace: PathBuf,
    /// Where the measured binaries are (default `target/release`).
    pub bin_dir: PathBuf,
}

impl Options {
    pub fn full(workspace: &Path) -> Self {
        Self {
            smoke: false,
            runs: 9,
            batch_sizes: vec![10, 100, 1_000, 10_000],
            rounds: 3,
            round: Duration::from_millis(400),
            ingest_mib: 1024,
            s3_kib: 64,
            s3_null_kib: 64 * 1024,
            cost_events: 1_000,
            cost_small_batch: 10,
            memory_sqs: 10_000,
            memory_stream: 1_000,
            out: target_dir(workspace).join("bench"),
            workspace: workspace.to_owned(),
            bin_dir: release_dir(workspace),
        }
    }

    /// Tiny sizes: seconds, for tests.
    pub fn smoke(workspace: &Path) -> Self {
        Self {
            smoke: true,
            runs: 1,
            batch_sizes: vec![10, 100],
            rounds: 1,
            round: Duration::from_millis(20),
            ingest_mib: 1,
            s3_kib: 16,
            s3_null_kib: 256,
            cost_events: 20,
            cost_small_batch: 10,
            memory_sqs: 100,
            memory_stream: 20,
            ..Self::full(workspace)
        }
    }
}

/// The workspace's target directory, as `cargo metadata` reports it.
pub fn target_dir(workspace: &Path) -> PathBuf {
    xtask::workspace::target_dir(workspace).unwrap_or_else(|e| panic!("the target directory: {e:#}"))
}

/// The workspace root: the parent of this crate.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_owned)
}

const MIB: f64 = 1024.0 * 1024.0;

/// First invocation in a fresh process, in-process handler, 10 records.
pub fn first_invocation(opts: &Options, report: &mut Report, in_children: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(opts.out.join("tmp"))?;
    for function in [Function::SqsConsumer, Function::StreamAggregator] {
        let bytes = function.event("first", 10);
        let samples: Vec<f64> = if in_children {
            let file = opts.out.join("tmp").join(format!("first-{}.json", function.name()));
            std::fs::write(&file, &bytes)?;
            let mut samples = Vec::new();
            for _ in 0..opts.runs {
                let v = child(&["first-invocation", function.name(), &file.to_string_lossy()])?;
                samples.push(v["ms"].as_f64().context("child gave no ms")?);
            }
            samples
        } else {
            vec![crate::inproc::first_invocation_ms(function, &bytes)]
        };
        report.push(
            Row::new(
                "first invocation",
                format!("{} in process, 10 records", function.name()),
                median(&samples),
                "ms",
                Better::Lower,
            )
            .target(5.0, "< 5 ms")
            .note(format!("median of {} fresh processes; parse + handler, in-memory store", samples.len())),
        );
    }
    Ok(())
}

/// Handler vs plain `serde_json` throughput, logging off.
pub fn throughput(opts: &Options, report: &mut Report) -> Vec<(Function, u64, f64)> {
    let mut handler_rates = Vec::new();
    for function in [Function::SqsConsumer, Function::StreamAggregator] {
        for &n in &opts.batch_sizes {
            let t = crate::inproc::throughput(function, n, opts.rounds, opts.round);
            handler_rates.push((function, n, t.handler));
            report.push(
                Row::new("throughput", format!("{} batch {n}", function.name()), t.handler, "rec/s", Better::Higher)
                    .baseline(t.plain, "serde_json limit")
                    .target(t.plain / 2.0, ">= 1/2 limit")
                    .note(format!("{:.0}% of the limit; one core, logging off", 100.0 * t.handler / t.plain)),
            );
        }
    }
    handler_rates
}

/// Where the handlers' time goes, stage by stage, on a batch of 1,000.
pub fn breakdown(opts: &Options, report: &mut Report) {
    let n = if opts.smoke { 10 } else { 1_000 };
    for function in [Function::SqsConsumer, Function::StreamAggregator] {
        for (stage, us) in crate::inproc::breakdown(function, n, opts.rounds, opts.round) {
            report.push(
                Row::new("breakdown", format!("{}: {stage}", function.name()), us, "us/rec", Better::Lower)
                    .note(format!("batch of {n}, one core, logging off")),
            );
        }
    }
}

/// Logging on (JSON to a sink, INFO, the functions' own layer) vs off. The
/// log subscriber is global and for good, so with `in_children` each round
/// runs in a fresh process, rounds of the two settings alternating (the same
/// machine conditions for both); without, the logging-on pass runs here after
/// the logging-off figures `off` (the smoke test).
pub fn logging_overhead(
    opts: &Options,
    report: &mut Report,
    off: &[(Function, u64, f64)],
    in_children: bool,
) -> anyhow::Result<()> {
    let mut points: Vec<(Function, u64, f64, f64)> = Vec::new();
    if in_children {
        let round_ms = opts.round.as_millis().to_string();
        for &(function, n, _) in off {
            let (mut on, mut off) = (Vec::new(), Vec::new());
            for _ in 0..opts.rounds.max(3) {
                for (logs, out) in [("off", &mut off), ("on", &mut on)] {
                    let v = child(&["rate", function.name(), &n.to_string(), &round_ms, logs])?;
                    out.push(v["rate"].as_f64().context("child gave no rate")?);
                }
            }
            points.push((function, n, median(&off), median(&on)));
        }
    } else {
        crate::inproc::enable_json_logs().map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))?;
        for &(function, n, off_rate) in off {
            points.push((function, n, off_rate, crate::inproc::handler_rate(function, n, opts.rounds, opts.round)));
        }
    }
    for (function, n, off_rate, on_rate) in points {
        let overhead = 100.0 * (off_rate / on_rate - 1.0);
        report.push(
            Row::new("logging", format!("{} batch {n}: JSON logs on", function.name()), overhead, "%", Better::Lower)
                .target(5.0, "< 5% overhead")
                .note(format!("{on_rate:.0} rec/s on vs {off_rate:.0} rec/s off")),
        );
    }
    Ok(())
}

/// The large-object ingest: stage vs plain in this process, the handler in a
/// child (`in_child`) for its peak memory.
pub fn ingest(opts: &Options, report: &mut Report, in_child: bool) -> anyhow::Result<()> {
    let dir = opts.out.join("tmp");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("ingest.ndjson");
    let lines = crate::ingest::generate(&path, opts.ingest_mib)?;
    let result = (|| {
        let (stage, plain, parsed) = crate::ingest::stage_vs_plain(&path)?;
        anyhow::ensure!(parsed == lines, "parsed {parsed} of {lines} lines");
        let run: crate::ingest::IngestRun = if in_child {
            serde_json::from_value(child(&["ingest-file", &path.to_string_lossy()])?)?
        } else {
            crate::inproc::runtime().block_on(crate::ingest::ingest_file(&path))?
        };
        anyhow::ensure!(run.accepted == lines, "ingest accepted {} of {lines} lines", run.accepted);
        let size = format!("{} MiB NDJSON", opts.ingest_mib);
        report.push(
            Row::new("ingest", format!("parse+validate stage, {size}"), stage, "lines/s", Better::Higher)
                .baseline(plain, "serde_json limit")
                .target(0.6 * plain, ">= 60% of limit")
                .note(format!("{:.0}% of the limit; {lines} lines; one core", 100.0 * stage / plain)),
        );
        report.push(
            Row::new("ingest", format!("s3-ingest end to end, {size}"), run.mib_per_s(), "MiB/s", Better::Higher).note(
                format!(
                    "{:.0} lines/s, {:.1} s wall, {:.1} s CPU; file source, in-memory store holding 1,000 orders",
                    run.lines_per_s(),
                    run.seconds,
                    run.cpu_seconds
                ),
            ),
        );
        if let Some(peak) = run.peak_rss_kib {
            report.push(
                Row::new("ingest", format!("s3-ingest peak RSS, {size}"), peak as f64 / 1024.0, "MiB", Better::Lower)
                    .target(64.0, "< 64 MiB")
                    .note(format!(
                        "process RSS before the ingest: {:.1} MiB",
                        run.start_rss_kib.unwrap_or(0) as f64 / 1024.0
                    )),
            );
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// Figures against the emulator: the cost workload, S3 ingest, cold starts and
/// peak memory of the release binaries.
pub fn emulator(opts: &Options, report: &mut Report) -> anyhow::Result<()> {
    // Fresh emulators for each part, so no part's data touches another's.
    let fresh_moto = || crate::emulator::Moto::start(&opts.workspace);
    let fresh_dynamodb = || crate::emulator::DynamoDbLocal::start(&opts.workspace);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;

    emulator_cost(opts, report, &runtime);

    // S3 ingest through the emulators: the real S3 source (moto) and
    // DynamoDB store (DynamoDB Local); and a larger object from moto's S3
    // with the null DynamoDB endpoint.
    for (kib, dynamodb) in [(opts.s3_kib, "local"), (opts.s3_null_kib, "null")] {
        let s3 = (|| {
            let moto = fresh_moto()?;
            let engine = if dynamodb == "null" { None } else { Some(fresh_dynamodb()?) };
            let dynamodb_endpoint = engine.as_ref().map_or_else(|| "null".to_owned(), |e| e.endpoint.clone());
            let (bucket, key) = (format!("bench-ingest-{dynamodb}"), "incoming/bench.ndjson");
            let size = runtime.block_on(crate::emulator::upload_object(&moto.endpoint, &bucket, key, kib))?;
            let args = ["ingest-s3", &moto.endpoint, &bucket, key, &size.to_string(), &dynamodb_endpoint];
            let run: crate::ingest::IngestRun = serde_json::from_value(child(&args)?)?;
            let against = if dynamodb == "null" { "moto S3 + null DynamoDB" } else { "moto S3 + DynamoDB Local" };
            let label = format!("{:.0} KiB object, {against}", size as f64 / 1024.0);
            report.push(
                Row::new("emulator ingest", format!("s3-ingest {label}"), run.mib_per_s(), "MiB/s", Better::Higher)
                    .note(format!(
                        "{:.0} lines/s, {} lines, {} DynamoDB requests ({:.3}/line); {:.1} s wall, {:.2} s CPU in the function's process",
                        run.lines_per_s(),
                        run.lines,
                        run.requests,
                        run.requests as f64 / run.lines.max(1) as f64,
                        run.seconds,
                        run.cpu_seconds
                    )),
            );
            if let Some(peak) = run.peak_rss_kib {
                report.push(
                    Row::new(
                        "emulator ingest",
                        format!("s3-ingest peak RSS, {label}"),
                        peak as f64 / 1024.0,
                        "MiB",
                        Better::Lower,
                    )
                    .target(64.0, "< 64 MiB"),
                );
            }
            Ok::<_, anyhow::Error>(())
        })();
        if let Err(e) = s3 {
            report.skip(format!("emulator S3 ingest ({dynamodb} DynamoDB): {e:#}"));
        }
    }

    if let Err(e) = binaries(opts, report, &runtime) {
        report.skip(format!("cold start and memory of the release binaries: {e:#}"));
    }
    Ok(())
}

/// List prices used by the cost table (us-east-1, on-demand, x86_64), as
/// AWS's pricing pages state them (aws.amazon.com/lambda/pricing,
/// aws.amazon.com/dynamodb/pricing/on-demand), read 2026-12-02.
pub mod prices {
    /// Lambda duration, USD per GB-second (x86_64, first pricing tier).
    pub const LAMBDA_GB_SECOND: f64 = 0.000_016_666_7;
    /// Lambda requests, USD per invocation ($0.20 per million).
    pub const LAMBDA_REQUEST: f64 = 0.20 / 1e6;
    /// DynamoDB on-demand, USD per write request unit ($0.625 per million).
    pub const DYNAMODB_WRU: f64 = 0.625 / 1e6;
    /// DynamoDB on-demand, USD per read request unit ($0.125 per million;
    /// one strongly consistent read of up to 4 KB, or two eventually
    /// consistent).
    pub const DYNAMODB_RRU: f64 = 0.125 / 1e6;
    /// The functions' configured memory (`MemorySize` in infra/template.yaml), GB.
    pub const MEMORY_GB: f64 = 256.0 / 1024.0;
}

/// The commit window W1 also runs with on the latency model beside the
/// default (`shared::config::DEFAULT_COMMIT_CONCURRENCY`): one
/// transaction after another, what the window buys.
const SERIAL_COMMIT_CONCURRENCY: usize = 1;

/// The DynamoDB endpoints W1 runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Against {
    /// DynamoDB Local: AWS's engine on this machine.
    Local,
    /// The latency model at the null endpoint.
    Model,
    /// The null endpoint, answering at once.
    Null,
}

impl Against {
    fn label(self) -> &'static str {
        match self {
            Self::Local => "DynamoDB Local",
            Self::Model => "DynamoDB latency model",
            Self::Null => "null DynamoDB",
        }
    }
    fn run(self) -> &'static str {
        match self {
            Self::Local => "one",
            Self::Model => "model",
            Self::Null => "null",
        }
    }
}

/// What a step cost one program on the latency model: for the cost tables.
#[derive(Debug, Clone, Copy)]
struct W1Cost {
    seconds: f64,
    write_units: u64,
    read_units: f64,
    records: u64,
}

impl W1Cost {
    /// USD per million events: (Lambda duration, Lambda requests, DynamoDB
    /// writes, DynamoDB reads).
    fn per_million(&self) -> (f64, f64, f64, f64) {
        let batches = 1e6 / self.records as f64;
        let gb_seconds = batches * self.seconds * prices::MEMORY_GB;
        let per = |units: f64| 1e6 * units / self.records as f64;
        (
            gb_seconds * prices::LAMBDA_GB_SECOND,
            batches * prices::LAMBDA_REQUEST,
            per(self.write_units as f64) * prices::DYNAMODB_WRU,
            per(self.read_units) * prices::DYNAMODB_RRU,
        )
    }

    /// USD per million events, all of it.
    fn total(&self) -> f64 {
        let (l, r, w, d) = self.per_million();
        l + r + w + d
    }

    /// Two steps of one record's way: their units and times added.
    fn then(&self, next: &W1Cost) -> W1Cost {
        let scale = self.records as f64 / next.records.max(1) as f64;
        W1Cost {
            seconds: self.seconds + next.seconds * scale,
            write_units: self.write_units + (next.write_units as f64 * scale).round() as u64,
            read_units: self.read_units + next.read_units * scale,
            records: self.records,
        }
    }
}

/// The capacity counted at a null endpoint so far: (write units, read units).
fn counted(endpoint: &crate::null_dynamo::NullDynamo) -> (u64, f64) {
    (endpoint.write_units(), endpoint.read_units())
}

/// Issue 4's workload (W1): 1,000 SQS events through `sqs_consumer::handle`
/// with the DynamoDB store and, in the same run against the same endpoint,
/// through the Powertools peer (`bench/peer/powertools_w1.py`): on DynamoDB
/// Local (one batch, the same batch again, and batches of 10 for ours), on
/// the DynamoDB latency model ([`crate::null_dynamo::Latency`]) and at the
/// null endpoint; then the cost table from the latency model's run.
pub fn emulator_cost(opts: &Options, report: &mut Report, runtime: &tokio::runtime::Runtime) {
    let latency = crate::null_dynamo::Latency::default();
    let endpoints = crate::null_dynamo::NullDynamo::with_latency(latency)
        .and_then(|model| Ok((model, crate::null_dynamo::NullDynamo::start()?)));
    let (model, null) = match endpoints {
        Ok(e) => e,
        Err(e) => return report.skip(format!("cost workload: null endpoints: {e:#}")),
    };
    let tmp = opts.out.join("tmp");
    if let Err(e) = std::fs::create_dir_all(&tmp) {
        return report.skip(format!("cost workload: {}: {e}", tmp.display()));
    }
    let n = opts.cost_events;
    let mut costs: Option<(W1Cost, Option<W1Cost>, Option<Steps>)> = None;
    for against in [Against::Local, Against::Model, Against::Null] {
        let engine = match against {
            Against::Local => match crate::emulator::DynamoDbLocal::start(&opts.workspace) {
                Ok(e) => Some(e),
                Err(e) => {
                    report.skip(format!("cost workload against {}: {e:#}", against.label()));
                    continue;
                }
            },
            _ => None,
        };
        let counting = match against {
            Against::Model => Some(&model),
            Against::Null => Some(&null),
            Against::Local => None,
        };
        let endpoint =
            engine.as_ref().map_or_else(|| counting.map(|c| c.endpoint()).unwrap_or_default(), |e| e.endpoint.clone());
        let run = against.run();
        // On the latency model, also transactions one after another: what the
        // default commit window buys, beside the same peer.
        let scenarios: Vec<(&str, u64, usize, Option<usize>)> = match against {
            Against::Local => vec![(run, n, 2, None), ("small", opts.cost_small_batch, 1, None)],
            Against::Model => vec![(run, n, 1, None), ("model-serial", n, 1, Some(SERIAL_COMMIT_CONCURRENCY))],
            Against::Null => vec![(run, n, 1, None)],
        };
        // Scenario by scenario: the cost table takes the first one's write units.
        let mut deliveries = Vec::new();
        let mut our_units: Option<(u64, f64)> = None;
        let mut failed = None;
        for (i, scenario) in scenarios.iter().enumerate() {
            let units_before = counting.map(counted);
            match runtime.block_on(crate::emulator::cost(&endpoint, n, std::slice::from_ref(scenario))) {
                Ok(d) => deliveries.extend(d),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
            if i == 0 {
                our_units = counting
                    .zip(units_before)
                    .map(|(c, before)| (c.write_units() - before.0, c.read_units() - before.1));
            }
        }
        if let Some(e) = failed {
            report.skip(format!("cost workload against {}: {e:#}", against.label()));
            continue;
        }
        let peak = engine.as_ref().and_then(crate::emulator::DynamoDbLocal::peak_rss_kib);

        // The peer: the same events, the same endpoint, right after ours.
        let peer_units_before = counting.map(counted);
        let event_file = tmp.join(format!("w1-{run}.json"));
        let event = serde_json::json!({ "Records": crate::emulator::w1_records(run, n) });
        let peer = std::fs::write(&event_file, event.to_string()).map_err(anyhow::Error::from).and_then(|()| {
            runtime.block_on(crate::emulator::powertools_w1(&opts.workspace, &endpoint, run, &event_file))
        });
        let peer = match peer {
            Ok(p) => Some(p),
            Err(e) => {
                report.skip(format!("Powertools peer against {}: {e:#}", against.label()));
                None
            }
        };
        let peer_units =
            counting.zip(peer_units_before).map(|(c, before)| (c.write_units() - before.0, c.read_units() - before.1));
        if let Some(p) = &peer {
            report.push(
                Row::new(
                    "emulator cost",
                    format!("Powertools, 1 batch of {n}, {}: DynamoDB requests/record", against.label()),
                    p.requests_per_record(),
                    "req/rec",
                    Better::Lower,
                )
                .note(format!(
                    "the peer: process_partial_response + @idempotent_function (DynamoDBPersistenceLayer), \
                     {} requests counted by botocore's before-send hook; applied {}, stale {}",
                    p.requests, p.applied, p.stale
                )),
            );
            report.push(
                Row::new(
                    "emulator cost",
                    format!("Powertools, 1 batch of {n}, {}: records/s", against.label()),
                    p.records_per_s(),
                    "rec/s",
                    Better::Higher,
                )
                .note(format!(
                    "{:.2} s wall, of which {:.2} s CPU in the peer's Python process ({:.0} us/record)",
                    p.seconds,
                    p.cpu_seconds,
                    1e6 * p.cpu_seconds / p.records.max(1) as f64
                )),
            );
        }
        for (i, d) in deliveries.iter().enumerate() {
            let label = format!("{}, {}", d.label, against.label());
            // The peer ran one batch of n: compared with the first delivery, and
            // on the latency model with the wider window's too.
            let peer = peer.as_ref().filter(|_| i == 0 || d.label.contains("COMMIT_CONCURRENCY"));
            let mut requests = Row::new(
                "emulator cost",
                format!("{label}: DynamoDB requests/record"),
                d.requests_per_record(),
                "req/rec",
                Better::Lower,
            )
            .target(0.1, "<= 0.1")
            .note(format!("{} requests; applied {}, duplicates {}", d.requests, d.applied, d.duplicates));
            if let Some(p) = peer {
                requests = requests.baseline(p.requests_per_record(), "Powertools, same run");
            }
            report.push(requests);
            let mut rate =
                Row::new("emulator cost", format!("{label}: records/s"), d.records_per_s(), "rec/s", Better::Higher);
            let ratio = peer
                .map_or_else(String::new, |p| format!("; {:.1}x Powertools", d.records_per_s() / p.records_per_s()));
            if let Some(p) = peer {
                rate = rate.baseline(p.records_per_s(), "Powertools, same run");
                // The target is the default's; the serial row shows what it buys.
                if against == Against::Model && i == 0 {
                    rate = rate.target(100.0 * p.records_per_s(), ">= 100x Powertools");
                }
            }
            report.push(rate.note(format!(
                "{:.3} s wall, of which {:.3} s CPU in the function's process ({:.0} us/record){ratio}{}{}",
                d.seconds,
                d.cpu_seconds,
                1e6 * d.cpu_seconds / d.records as f64,
                if against == Against::Model { format!("; model: {}", latency.describe()) } else { String::new() },
                peak.map_or_else(String::new, |kib| format!(
                    "; DynamoDB Local peak RSS {:.0} MiB after the scenario",
                    kib as f64 / 1024.0
                ))
            )));
        }
        if let (Against::Model, Some(d), Some(units)) = (against, deliveries.first(), our_units) {
            let ours = W1Cost { seconds: d.seconds, write_units: units.0, read_units: units.1, records: d.records };
            let theirs = peer.as_ref().zip(peer_units).map(|(p, units)| W1Cost {
                seconds: p.seconds,
                write_units: units.0,
                read_units: units.1,
                records: p.records,
            });
            let steps = pipeline_steps(opts, runtime, &model, &endpoint, n, &tmp);
            if let Err(e) = &steps {
                report.skip(format!("pipeline cost ({}): {e:#}", against.label()));
            }
            costs = Some((ours, theirs, steps.ok()));
        }
    }
    if let Some((ours, theirs, steps)) = costs {
        cost_table(report, &ours, theirs.as_ref());
        if let (Some(steps), Some(theirs)) = (steps, theirs) {
            pipeline_table(report, &ours, &theirs, &steps);
        }
    }
}

/// The pipeline's other steps on the latency model, ours and the peer's,
/// each counted at the endpoint: stream-aggregator over the stream records
/// of W1's orders, and s3-ingest over an object of W1's events; then the
/// peer doing the same with Powertools.
struct Steps {
    aggregate: W1Cost,
    lines: W1Cost,
    peer_aggregate: W1Cost,
    peer_lines: W1Cost,
}

fn pipeline_steps(
    opts: &Options,
    runtime: &tokio::runtime::Runtime,
    model: &crate::null_dynamo::NullDynamo,
    endpoint: &str,
    n: u64,
    tmp: &std::path::Path,
) -> anyhow::Result<Steps> {
    let run = "pipeline";
    let measure = |work: &dyn Fn() -> anyhow::Result<(u64, f64)>| -> anyhow::Result<W1Cost> {
        let before = counted(model);
        let (records, seconds) = work()?;
        let after = counted(model);
        Ok(W1Cost { seconds, write_units: after.0 - before.0, read_units: after.1 - before.1, records })
    };
    let stream = crate::emulator::w1_stream_event(run, n)?;
    let object = crate::emulator::w1_object(run, n);
    let aggregate = measure(&|| {
        let s = runtime.block_on(crate::emulator::aggregate(endpoint, run, &stream))?;
        anyhow::ensure!(s.records == n, "stream-aggregator counted {} of {n} records", s.records);
        Ok((s.records, s.seconds))
    })?;
    let lines = measure(&|| {
        let s = runtime.block_on(crate::emulator::ingest_lines(endpoint, run, object.clone()))?;
        anyhow::ensure!(s.applied == n, "s3-ingest applied {} of {n} lines", s.applied);
        Ok((s.records, s.seconds))
    })?;
    let stream_file = tmp.join("pipeline-stream.json");
    std::fs::write(&stream_file, stream.to_string())?;
    let object_file = tmp.join("pipeline-object.ndjson");
    std::fs::write(&object_file, &object)?;
    let peer = |mode: &str, file: &std::path::Path| -> anyhow::Result<W1Cost> {
        measure(&|| {
            let p = runtime.block_on(crate::emulator::powertools_step(&opts.workspace, endpoint, run, mode, file))?;
            Ok((p.records, p.seconds))
        })
    };
    Ok(Steps {
        aggregate,
        lines,
        peer_aggregate: peer("stream", &stream_file)?,
        peer_lines: peer("lines", &object_file)?,
    })
}

/// The full pipeline's cost per million events, ours beside the peer's in
/// the same run: an order event from the queue to its customer's totals
/// (sqs-consumer, then stream-aggregator on the change it made), and an
/// object line from S3 to the totals (s3-ingest, then stream-aggregator).
fn pipeline_table(report: &mut Report, w1: &W1Cost, peer_w1: &W1Cost, steps: &Steps) {
    let ways = [
        (
            "order event from the queue to the customer's totals",
            w1.then(&steps.aggregate),
            peer_w1.then(&steps.peer_aggregate),
        ),
        (
            "object line from S3 to the customer's totals",
            steps.lines.then(&steps.aggregate),
            steps.peer_lines.then(&steps.peer_aggregate),
        ),
    ];
    for (way, ours, theirs) in ways {
        let per = |c: &W1Cost| (c.write_units as f64 / c.records as f64, c.read_units / c.records as f64);
        let ((w, r), (pw, pr)) = (per(&ours), per(&theirs));
        report.push(
            Row::new("cost", format!("pipeline per million events, {way}: total"), ours.total(), "USD", Better::Lower)
                .baseline(theirs.total(), "Powertools, same run")
                .note(format!(
                    "{:.2}x Powertools; ours {w:.2} WRU + {r:.2} RRU per event, Powertools {pw:.2} WRU + {pr:.2} RRU \
                     (units counted at the latency model's endpoint by AWS's item-size rules)",
                    ours.total() / theirs.total()
                )),
        );
    }
}

/// The cost of W1 per million events on the latency model: Lambda duration
/// (the measured wall time of a batch of 1,000, billed at the configured
/// memory), Lambda requests (one invocation per batch) and DynamoDB write
/// request units (counted at the endpoint from the requests made).
fn cost_table(report: &mut Report, ours: &W1Cost, theirs: Option<&W1Cost>) {
    let (l, r, d, reads) = ours.per_million();
    let peer = theirs.map(W1Cost::per_million);
    let how = |c: &W1Cost| {
        format!(
            "{:.1} GB-s, {:.0} WRU and {:.0} RRU per million events ({:.3} s per batch of {} at {} MB; {:.2} WRU and {:.2} RRU/record)",
            1e6 / c.records as f64 * c.seconds * prices::MEMORY_GB,
            1e6 * c.write_units as f64 / c.records as f64,
            1e6 * c.read_units / c.records as f64,
            c.seconds,
            c.records,
            prices::MEMORY_GB * 1024.0,
            c.write_units as f64 / c.records as f64,
            c.read_units / c.records as f64
        )
    };
    let price_note = format!(
        "list prices us-east-1 as AWS's pricing pages state them (read 2026-12-02): Lambda x86 ${:.7}/GB-s, $0.20/M requests; DynamoDB on-demand $0.625/M WRU (a transactional write takes 2 WRU per item), $0.125/M RRU; units counted at the endpoint by AWS's item-size rules",
        prices::LAMBDA_GB_SECOND
    );
    let rows = [
        ("Lambda duration", l, peer.map(|p| p.0)),
        ("Lambda requests", r, peer.map(|p| p.1)),
        ("DynamoDB writes", d, peer.map(|p| p.2)),
        ("DynamoDB reads", reads, peer.map(|p| p.3)),
        ("total", l + r + d + reads, peer.map(|p| p.0 + p.1 + p.2 + p.3)),
    ];
    for (what, value, baseline) in rows {
        let mut row =
            Row::new("cost", format!("W1 per million events, sqs-consumer: {what}"), value, "USD", Better::Lower);
        if let Some(b) = baseline {
            row = row.baseline(b, "Powertools, same run");
            if what == "total" {
                row = row.target(0.5 * b, "<= 0.5x Powertools");
            }
        }
        let note = match (what, theirs) {
            ("total", Some(t)) => format!("ours: {}; Powertools: {}; {price_note}", how(ours), how(t)),
            ("total", None) => format!("ours: {}; {price_note}", how(ours)),
            _ => String::new(),
        };
        report.push(row.note(note));
    }
}

/// The release binaries: cold start (spawn to first `next`), first invocation
/// against the emulator, peak memory on the largest batches.
fn binaries(opts: &Options, report: &mut Report, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let release = &opts.bin_dir;
    let logs = opts.out.join("logs");
    std::fs::create_dir_all(&logs)?;
    let api = RuntimeApi::start()?;
    let fixture = |name: &str| std::fs::read(opts.workspace.join("events").join(name));
    let functions: [(&str, Vec<u8>); 4] = [
        ("echo", fixture("sqs-standard.json")?),
        ("sqs-consumer", fixture("sqs-standard.json")?),
        ("stream-aggregator", fixture("stream-orders.json")?),
        ("s3-ingest", fixture("s3-direct.json")?),
    ];
    // Diagnostics of what bounds the start: sqs-consumer again with the root
    // certificates read from one bundle file instead of the certificate
    // directory, and with none at all (SSL_CERT_FILE is read by
    // rustls-native-certs). shared::config::https_client loads the roots on the
    // first connection, so all three should start alike; a gap here means the
    // roots moved back into the init phase.
    let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
    let diagnostics: Vec<(&str, &str)> =
        [("one CA bundle file", bundle.to_str().unwrap_or("")), ("no CA certificates", "/dev/null")]
            .into_iter()
            .filter(|(_, file)| Path::new(file).exists())
            .collect();
    let mut diagnostic_starts: Vec<Vec<Start>> = vec![Vec::new(); diagnostics.len()];
    let object = std::fs::read(opts.workspace.join("events/data/orders.ndjson"))?;
    let mut starts: Vec<(&str, Vec<Start>)> = functions.iter().map(|(n, _)| (*n, Vec::new())).collect();
    for run in 0..opts.runs {
        // Each run on a fresh emulator with the tables, and the s3-ingest
        // fixture's object, its first invocation needs.
        let moto = crate::emulator::Moto::start(&opts.workspace)?;
        let local = crate::emulator::DynamoDbLocal::start(&opts.workspace)?;
        let env_for = |name: &str, tables: Option<(&str, &str)>| {
            let mut env = lambda_env(&api, name, Some(&moto.endpoint), tables);
            env.push(("AWS_ENDPOINT_URL_DYNAMODB".into(), local.endpoint.clone()));
            env
        };
        runtime.block_on(async {
            let sdk = crate::emulator::sdk_config(&moto.endpoint).await;
            let dynamodb = aws_sdk_dynamodb::Client::new(&crate::emulator::sdk_config(&local.endpoint).await);
            for (name, _) in &functions[1..] {
                crate::emulator::create_tables(&dynamodb, &format!("{name}-state"), &format!("{name}-idempotency"))
                    .await?;
            }
            // The diagnostics' own tables: each start applies the fixture
            // afresh, whichever runs first.
            for d in 0..diagnostics.len() {
                crate::emulator::create_tables(
                    &dynamodb,
                    &format!("diagnostic-{d}-state"),
                    &format!("diagnostic-{d}-idempotency"),
                )
                .await?;
            }
            let s3 = shared::config::s3_client(&sdk);
            s3.create_bucket().bucket("stream-processor-uploads").send().await?;
            s3.put_object()
                .bucket("stream-processor-uploads")
                .key("incoming/orders.ndjson")
                .body(object.clone().into())
                .send()
                .await?;
            Ok::<_, anyhow::Error>(())
        })?;
        // Interleaved, so drift on a shared machine hits every binary alike,
        // and in an order that turns by one each run: whatever starts right
        // after a first invocation shares the machine with the emulators
        // still finishing that invocation's work (stream-aggregator, always
        // after sqs-consumer, measured 1.55-1.8x echo that way; alone it
        // starts as sqs-consumer does).
        let slots = functions.len() + diagnostics.len();
        for k in 0..slots {
            let slot = (k + run) % slots;
            if let Some((name, event)) = functions.get(slot) {
                let tables = (format!("{name}-state"), format!("{name}-idempotency"));
                let tables = (*name != "echo").then_some((tables.0.as_str(), tables.1.as_str()));
                let env = env_for(name, tables);
                let log = logs.join(format!("{name}-{run}.log"));
                let start = run_once(&api, &release.join(name), &env, event.clone(), &log)?;
                starts[slot].1.push(start);
                continue;
            }
            let d = slot - functions.len();
            let (label, file) = diagnostics[d];
            let tables = (format!("diagnostic-{d}-state"), format!("diagnostic-{d}-idempotency"));
            let mut env = env_for("sqs-consumer", Some((&tables.0, &tables.1)));
            env.push(("SSL_CERT_FILE".into(), file.to_owned()));
            let log = logs.join(format!("sqs-consumer-{}-{run}.log", label.replace(' ', "-")));
            diagnostic_starts[d].push(run_once(
                &api,
                &release.join("sqs-consumer"),
                &env,
                functions[1].1.clone(),
                &log,
            )?);
        }
    }
    let med = |s: &[Start], f: fn(&Start) -> f64| median(&s.iter().map(f).collect::<Vec<_>>());
    let echo_next = med(&starts[0].1, |s| s.to_first_next_ms);
    let echo_first = med(&starts[0].1, |s| s.first_invocation_ms);
    for (name, s) in &starts[1..] {
        report.push(
            Row::new(
                "cold start",
                format!("{name}: spawn to first next"),
                med(s, |s| s.to_first_next_ms),
                "ms",
                Better::Lower,
            )
            .baseline(echo_next, "echo")
            .target(1.5 * echo_next, "<= 1.5x echo")
            .note(format!("median of {} runs", s.len())),
        );
    }
    for ((label, file), s) in diagnostics.iter().zip(&diagnostic_starts) {
        report.push(
            Row::new(
                "cold start",
                format!("sqs-consumer, {label}"),
                med(s, |s| s.to_first_next_ms),
                "ms",
                Better::Lower,
            )
            .baseline(echo_next, "echo")
            .note(format!("diagnostic: SSL_CERT_FILE={file}; median of {} runs", s.len())),
        );
    }
    report.push(
        Row::new("cold start", "echo: spawn to first next", echo_next, "ms", Better::Lower)
            .note(format!("the baseline; median of {} runs", starts[0].1.len())),
    );
    for (name, s) in &starts[1..] {
        report.push(
            Row::new(
                "first invocation",
                format!("{name}: fixture via runtime API + emulators"),
                med(s, |s| s.first_invocation_ms),
                "ms",
                Better::Lower,
            )
            .baseline(echo_first, "echo")
            .note("includes the SDK's first connections and the emulators' calls (moto S3, DynamoDB Local)"),
        );
    }

    let echo_rss = starts[0].1.iter().filter_map(|s| s.peak_rss_kib).max().unwrap_or(0) as f64 / 1024.0;
    memory_rows(opts, report, &api, &logs, echo_rss)
}

/// Peak memory on the largest batches alone (`bench --memory-only`), beside
/// echo's after one invocation of the SQS fixture.
pub fn memory(opts: &Options, report: &mut Report) -> anyhow::Result<()> {
    let logs = opts.out.join("logs");
    std::fs::create_dir_all(&logs)?;
    let api = RuntimeApi::start()?;
    let event = std::fs::read(opts.workspace.join("events").join("sqs-standard.json"))?;
    let env = lambda_env(&api, "echo", None, None);
    let echo = run_once(&api, &opts.bin_dir.join("echo"), &env, event, &logs.join("echo-memory.log"))?;
    memory_rows(opts, report, &api, &logs, echo.peak_rss_kib.unwrap_or(0) as f64 / 1024.0)
}

/// Peak memory on the largest batches, against the null DynamoDB endpoint:
/// the function's own memory, with nothing of an engine's speed in it.
fn memory_rows(
    opts: &Options,
    report: &mut Report,
    api: &RuntimeApi,
    logs: &Path,
    echo_rss: f64,
) -> anyhow::Result<()> {
    let release = &opts.bin_dir;
    let null = crate::null_dynamo::NullDynamo::start()?;
    let null_endpoint = null.endpoint();
    for (function, n) in [(Function::SqsConsumer, opts.memory_sqs), (Function::StreamAggregator, opts.memory_stream)] {
        let env = lambda_env(api, function.name(), Some(&null_endpoint), Some(("state", "idempotency")));
        let event = function.event("mem", n);
        let event_mib = event.len() as f64 / MIB;
        let log = logs.join(format!("{}-memory.log", function.name()));
        let start = run_once(api, &release.join(function.name()), &env, event, &log)?;
        report.push(
            Row::new(
                "memory",
                format!("{} peak RSS, {n} records", function.name()),
                start.peak_rss_kib.unwrap_or(0) as f64 / 1024.0,
                "MiB",
                Better::Lower,
            )
            .baseline(echo_rss, "echo idle")
            .target(64.0, "< 64 MiB")
            .note(format!(
                "event {event_mib:.1} MiB; invocation {:.0} ms against the null DynamoDB endpoint",
                start.first_invocation_ms
            )),
        );
    }
    Ok(())
}

/// Stripped release binary sizes (cargo-lambda's output when present).
pub fn sizes(opts: &Options, report: &mut Report) {
    let release = &opts.bin_dir;
    let target = target_dir(&opts.workspace);
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len() as f64 / MIB).ok();
    let echo = size(&release.join("echo"));
    for name in ["sqs-consumer", "stream-aggregator", "s3-ingest"] {
        let lambda = target.join("lambda").join(name).join("bootstrap");
        let (path, how) = if lambda.exists() {
            (lambda, "cargo lambda build --release (bootstrap)")
        } else {
            (release.join(name), "target/release, profile strips")
        };
        match size(&path) {
            Some(mib) => {
                let mut row =
                    Row::new("binary size", name, mib, "MiB", Better::Lower).target(8.0, "<= 8 MiB").note(how);
                if let Some(echo) = echo {
                    row = row.baseline(echo, "echo");
                }
                report.push(row);
            }
            None => report.skip(format!("binary size of {name}: {} not built", path.display())),
        }
    }
}

/// Runs this executable as a child (`--child ...`) and parses the JSON it prints.
pub fn child(args: &[&str]) -> anyhow::Result<Value> {
    let exe = std::env::current_exe()?;
    let out =
        Command::new(&exe).arg("--child").args(args).output().with_context(|| format!("running {}", exe.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "child {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).lines().rev().take(5).collect::<Vec<_>>().join(" / ")
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().context("child printed nothing")?;
    serde_json::from_str(last).with_context(|| format!("child output {last:?}"))
}

/// The child side of [`child`].
pub fn run_child(args: &[String]) -> anyhow::Result<Value> {
    match args.first().map(String::as_str) {
        Some("first-invocation") => {
            let function = function_named(args.get(1).map(String::as_str))?;
            let bytes = std::fs::read(args.get(2).context("no event file")?)?;
            Ok(serde_json::json!({ "ms": crate::inproc::first_invocation_ms(function, &bytes) }))
        }
        Some("rate") => {
            let function = function_named(args.get(1).map(String::as_str))?;
            let n: u64 = args.get(2).context("no batch size")?.parse()?;
            let round = Duration::from_millis(args.get(3).context("no round")?.parse()?);
            if args.get(4).map(String::as_str) == Some("on") {
                crate::inproc::enable_json_logs().map_err(|e| anyhow::anyhow!("log subscriber: {e}"))?;
            }
            Ok(serde_json::json!({ "rate": crate::inproc::handler_rate(function, n, 1, round) }))
        }
        // `bench --child throughput sqs-consumer 1000 [rounds]`: one
        // throughput row and the breakdown, for work on the hot path.
        Some("throughput") => {
            let function = function_named(args.get(1).map(String::as_str))?;
            let n: u64 = args.get(2).context("no batch size")?.parse()?;
            let rounds: usize = args.get(3).map_or(Ok(5), |r| r.parse())?;
            let round = Duration::from_millis(300);
            let t = crate::inproc::throughput(function, n, rounds, round);
            let stages: serde_json::Map<String, Value> = crate::inproc::breakdown(function, n, rounds, round)
                .into_iter()
                .map(|(stage, us)| (stage.to_owned(), serde_json::json!(us)))
                .collect();
            Ok(serde_json::json!({
                "handler": t.handler, "limit": t.plain, "share": t.handler / t.plain, "us_per_record": stages
            }))
        }
        Some("ingest-file") => {
            let path = PathBuf::from(args.get(1).context("no file")?);
            // The functions' runtime: tokio's multi-threaded scheduler.
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            Ok(serde_json::to_value(runtime.block_on(crate::ingest::ingest_file(&path))?)?)
        }
        Some("ingest-s3") => {
            let [endpoint, bucket, key, size, dynamodb] =
                [1, 2, 3, 4, 5].map(|i| args.get(i).cloned().unwrap_or_default());
            // The null endpoint's server lives as long as this child.
            let null = (dynamodb == "null").then(crate::null_dynamo::NullDynamo::start).transpose()?;
            let dynamodb = null.as_ref().map_or(dynamodb, |n| n.endpoint());
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let run =
                runtime.block_on(crate::emulator::ingest_s3(&endpoint, &dynamodb, &bucket, &key, size.parse()?))?;
            Ok(serde_json::to_value(run)?)
        }
        other => anyhow::bail!("unknown child {other:?}"),
    }
}

fn function_named(name: Option<&str>) -> anyhow::Result<Function> {
    match name {
        Some("sqs-consumer") => Ok(Function::SqsConsumer),
        Some("stream-aggregator") => Ok(Function::StreamAggregator),
        other => anyhow::bail!("unknown function {other:?}"),
    }
}
