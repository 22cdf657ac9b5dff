//! `cargo xtask <command>`: the project's dev commands. See `usage()`.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use xtask::commands;
use xtask::dynamodb_local::Engine;

fn usage() -> &'static str {
    "usage: cargo xtask <command>

commands:
  bench [FLAGS]        release benchmarks: one table, target/bench/report.json and chart.svg
                       (FLAGS: --smoke, --runs N, --skip-emulator, ...; see bench/README.md)
  demo [--cloudflare]  run the whole pipeline locally and check the invariant (--cloudflare:
                       the Worker under workerd: Queues, R2, D1; no account needed)
  build-worker         build the Cloudflare Worker into target/cf-worker/ (wrangler.jsonc's main)
  stack [--no-driver]  start the local stack for `cargo lambda invoke`, until Ctrl-C
  test                 formatting, lints, builds, all tests, infra checks (what CI runs)
  soak [--minutes N] [--concurrency N] [--seed S]
                       the pipeline under producer duplicates and reordering, poison records,
                       DynamoDB faults and SIGKILLed functions, with concurrent deliveries
                       (default 2 minutes, concurrency 4, a seed from the clock); then the
                       invariant and every record's accounting, and a report
                       (--cloudflare: the orders Worker under workerd, with D1 faults)
  volume [--lines N] [--messages N] [--cloudflare]
                       one object of N lines (default 100000) and N queue messages (default
                       10000) through the local stack: time and the emulators' peak memory
                       (--cloudflare: through the Worker under workerd: rates, D1 statements)

demo, stack, soak and volume take --dynamodb local|moto: the DynamoDB engine (default: DynamoDB
Local, which needs Java 17; moto needs no Java but has moto's limits, see the README).
The tests read LOCAL_STACK_DYNAMODB=local|moto instead."
}

/// Runs `work`, or stops at Ctrl-C. Dropping `work` drops its stack, which
/// stops every child process (they run in their own process groups, which
/// the terminal's Ctrl-C does not reach).
/// `until_ctrl_c`: Ctrl-C is the normal end (`stack`), not a failure.
async fn interruptible(work: impl std::future::Future<Output = Result<()>>, until_ctrl_c: bool) -> Result<()> {
    tokio::select! {
        result = work => result,
        signal = tokio::signal::ctrl_c() => {
            signal?;
            eprintln!("\ninterrupted: stopping the local stack");
            if until_ctrl_c { Ok(()) } else { bail!("interrupted") }
        }
    }
}

/// The flags of the stack commands.
struct Flags {
    engine: Engine,
    no_driver: bool,
    lines: u64,
    messages: u64,
    minutes: f64,
    concurrency: usize,
    seed: Option<u64>,
    cloudflare: bool,
}

fn flags(args: &[&str], allowed: &[&str]) -> Result<Flags> {
    let mut flags = Flags {
        engine: Engine::from_env()?,
        no_driver: false,
        lines: commands::volume::DEFAULT_LINES,
        messages: commands::volume::DEFAULT_MESSAGES,
        minutes: 2.0,
        concurrency: 4,
        seed: None,
        cloudflare: false,
    };
    let mut it = args.iter();
    while let Some(&arg) = it.next() {
        if !allowed.contains(&arg) {
            bail!("unknown argument {arg:?}\n{}", usage());
        }
        let mut value = || it.next().copied().with_context(|| format!("{arg} needs a value"));
        match arg {
            "--dynamodb" => flags.engine = Engine::parse(value()?)?,
            "--no-driver" => flags.no_driver = true,
            "--cloudflare" => flags.cloudflare = true,
            "--lines" => flags.lines = value()?.parse().context("--lines")?,
            "--messages" => flags.messages = value()?.parse().context("--messages")?,
            "--minutes" => {
                flags.minutes = value()?.parse().context("--minutes")?;
                if !(flags.minutes.is_finite() && flags.minutes > 0.0) {
                    bail!("--minutes must be a positive number");
                }
            }
            "--concurrency" => {
                flags.concurrency = value()?.parse().context("--concurrency")?;
                if !(1..=10).contains(&flags.concurrency) {
                    bail!("--concurrency must be 1 to 10");
                }
            }
            "--seed" => flags.seed = Some(value()?.parse().context("--seed")?),
            _ => unreachable!("allowed flags are handled"),
        }
    }
    Ok(flags)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["test"] => commands::test::run(),
        ["bench", rest @ ..] => commands::bench::run(rest),
        ["demo", rest @ ..] => flags(rest, commands::flags_of("demo")).and_then(|f| {
            if f.cloudflare {
                commands::demo::run_cloudflare()
            } else {
                runtime()?.block_on(interruptible(commands::demo::run(f.engine), false))
            }
        }),
        ["build-worker"] => xtask::cloudflare::Tools::ensure(&xtask::stack::workspace_root())
            .and_then(|tools| tools.build())
            .map(|size| println!("{}/pkg/index_bg.wasm: {size} bytes", xtask::cloudflare::OUT_DIR)),
        ["stack", rest @ ..] => flags(rest, commands::flags_of("stack"))
            .and_then(|f| runtime()?.block_on(interruptible(commands::stack::run(!f.no_driver, f.engine), true))),
        ["soak", rest @ ..] => flags(rest, commands::flags_of("soak")).and_then(|f| {
            let seed = f.seed.unwrap_or_else(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs())
            });
            let options = commands::soak::Options {
                duration: std::time::Duration::from_secs_f64(f.minutes * 60.0),
                concurrency: f.concurrency,
                seed,
                engine: f.engine,
            };
            if f.cloudflare {
                return commands::soak_cloudflare::run(options); // issue 29: the Workers soak
            }
            runtime()?.block_on(interruptible(commands::soak::run(options), false))
        }),
        ["volume", rest @ ..] => flags(rest, commands::flags_of("volume")).and_then(|f| {
            if f.cloudflare {
                commands::volume::run_cloudflare(f.lines, f.messages)
            } else {
                runtime()?.block_on(interruptible(commands::volume::run(f.engine, f.lines, f.messages), false))
            }
        }),
        ["help" | "--help" | "-h"] => {
            println!("{}", usage());
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{}", usage());
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}
