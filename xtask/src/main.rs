//! `cargo xtask <command>`: the project's dev commands. See `usage()`.

use std::process::ExitCode;

use xtask::commands;

fn usage() -> &'static str {
    "usage: cargo xtask <command>

commands:
  bench [FLAGS]        release benchmarks: one table, target/bench/report.json and chart.svg
                       (FLAGS: --smoke, --runs N, --skip-emulator, ...; see bench/README.md)
  demo                 run the whole pipeline locally and check the invariant
  stack [--no-driver]  start the local stack for `cargo lambda invoke`, until Ctrl-C
  test                 formatting, lints, builds, all tests, infra checks (what CI runs)"
}

/// Runs `work`, or stops at Ctrl-C. Dropping `work` drops its stack, which
/// stops every child process (they run in their own process groups, which
/// the terminal's Ctrl-C does not reach).
/// `until_ctrl_c`: Ctrl-C is the normal end (`stack`), not a failure.
async fn interruptible(
    work: impl std::future::Future<Output = anyhow::Result<()>>,
    until_ctrl_c: bool,
) -> anyhow::Result<()> {
    tokio::select! {
        result = work => result,
        signal = tokio::signal::ctrl_c() => {
            signal?;
            eprintln!("\ninterrupted: stopping the local stack");
            if until_ctrl_c { Ok(()) } else { anyhow::bail!("interrupted") }
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["test"] => commands::test::run(),
        ["bench", rest @ ..] => commands::bench::run(rest),
        ["demo"] => runtime().and_then(|rt| rt.block_on(interruptible(commands::demo::run(), false))),
        ["stack"] => runtime().and_then(|rt| rt.block_on(interruptible(commands::stack::run(true), true))),
        ["stack", "--no-driver"] => {
            runtime().and_then(|rt| rt.block_on(interruptible(commands::stack::run(false), true)))
        }
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}
