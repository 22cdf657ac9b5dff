//! `bench`: runs the whole suite, prints one table, and writes
//! `target/bench/report.json` and `target/bench/chart.svg`.
//!
//! ```text
//! bench [--smoke] [--runs N] [--ingest-mib N] [--no-build] [--skip-emulator] [--cost-only] [--memory-only] [--out DIR] [--bin-dir DIR]
//! ```
//!
//! `--cost-only`: only issue 4's workload (W1) on DynamoDB Local and at the
//! null endpoint (a minute), into the same report files. `--memory-only`:
//! only the peak RSS rows (the largest batches against the null DynamoDB
//! endpoint, and echo), after the release build.

use anyhow::Context as _;
use bench::report::Report;
use bench::suite::{self, Options};

const USAGE: &str = "usage: bench [--smoke] [--runs N] [--ingest-mib N] [--no-build] [--skip-emulator] [--cost-only] [--memory-only] [--out DIR] [--bin-dir DIR]";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        let value = suite::run_child(&args[1..])?;
        println!("{value}");
        return Ok(());
    }
    let workspace = suite::workspace();
    // --smoke sets the sizes; the other flags then override them, in any order.
    let mut opts =
        if args.iter().any(|a| a == "--smoke") { Options::smoke(&workspace) } else { Options::full(&workspace) };
    let (mut build, mut with_emulator, mut cost_only, mut memory_only) = (true, true, false, false);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--smoke" => {}
            "--runs" => opts.runs = value()?.parse().context("--runs")?,
            "--ingest-mib" => opts.ingest_mib = value()?.parse().context("--ingest-mib")?,
            "--out" => opts.out = value()?.into(),
            "--bin-dir" => {
                opts.bin_dir = value()?.into();
                build = false;
            }
            "--no-build" => build = false,
            "--skip-emulator" => with_emulator = false,
            "--cost-only" => {
                cost_only = true;
                build = false;
            }
            "--memory-only" => memory_only = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }

    if build && with_emulator {
        // The binaries measured: release builds of the functions and the echo baseline.
        // Without `cargo run`'s variables for this package, which would
        // rebuild ring and everything above it.
        let status = xtask::lambda::cargo_command()
            .current_dir(&workspace)
            .args(["build", "--release", "-p", "sqs-consumer", "-p", "stream-aggregator", "-p", "s3-ingest"])
            .args([
                "-p",
                "bench",
                "--bin",
                "echo",
                "--bin",
                "sqs-consumer",
                "--bin",
                "stream-aggregator",
                "--bin",
                "s3-ingest",
            ])
            .status()
            .context("running cargo build")?;
        anyhow::ensure!(status.success(), "building the release binaries failed");
    }

    let mut report = Report {
        command: std::iter::once("bench".to_owned()).chain(args.iter().cloned()).collect::<Vec<_>>().join(" "),
        smoke: opts.smoke,
        started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        machine: machine(),
        ..Report::default()
    };
    let step = |name: &str| eprintln!("bench: {name}...");
    if cost_only {
        step("emulator cost (W1) only");
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        suite::emulator_cost(&opts, &mut report, &runtime);
        print!("{}", report.table());
        report.write(&opts.out)?;
        return Ok(());
    }

    if memory_only {
        step("peak memory only");
        suite::memory(&opts, &mut report)?;
        print!("{}", report.table());
        report.write(&opts.out)?;
        return Ok(());
    }

    // First, each in a fresh process: nothing has warmed the handler yet.
    step("first invocation in process");
    suite::first_invocation(&opts, &mut report, true)?;
    step("throughput, logging off");
    let off = suite::throughput(&opts, &mut report);
    suite::breakdown(&opts, &mut report);
    step(&format!("ingest of {} MiB", opts.ingest_mib));
    if let Err(e) = suite::ingest(&opts, &mut report, true) {
        report.skip(format!("ingest: {e:#}"));
    }
    if with_emulator {
        step("emulator: cost, S3 ingest, cold start, memory");
        if let Err(e) = suite::emulator(&opts, &mut report) {
            report.skip(format!("emulator: {e:#}"));
        }
    } else {
        report.skip("emulator figures (--skip-emulator)");
    }
    suite::sizes(&opts, &mut report);
    step("throughput, logging on vs off");
    suite::logging_overhead(&opts, &mut report, &off, true)?;

    print!("{}", report.table());
    report.write(&opts.out)?;
    eprintln!("bench: wrote {} and {}", opts.out.join("report.json").display(), opts.out.join("chart.svg").display());
    Ok(())
}

/// CPU model and count, for the report.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    format!("{cpu}, {cores} cores")
}
