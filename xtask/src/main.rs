//! `cargo xtask <command>`: the project's dev commands (`cargo xtask --help`;
//! the command line is [`xtask::cli`]).

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Parser;
use xtask::cli::{Cli, Command};
use xtask::commands;

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Test(args) => commands::test::run(&args.steps),
        Command::Bench(args) => commands::bench::run(&args.to_args()),
        Command::Demo(args) => {
            if args.cloudflare {
                commands::demo::run_cloudflare()
            } else {
                args.engine
                    .engine()
                    .and_then(|engine| runtime()?.block_on(interruptible(commands::demo::run(engine), false)))
            }
        }
        Command::BuildWorker(_) => commands::build_worker(),
        Command::Stack(args) => args
            .engine
            .engine()
            .and_then(|engine| runtime()?.block_on(interruptible(commands::stack::run(!args.no_driver, engine), true))),
        Command::Soak(args) => args.engine.engine().and_then(|engine| {
            let seed = args.seed.unwrap_or_else(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs())
            });
            let options = commands::soak::Options {
                duration: std::time::Duration::from_secs_f64(args.minutes * 60.0),
                concurrency: usize::from(args.concurrency),
                seed,
                engine,
            };
            runtime()?.block_on(interruptible(commands::soak::run(options), false))
        }),
        Command::Volume(args) => {
            if args.cloudflare {
                commands::volume::run_cloudflare(args.lines, args.messages)
            } else {
                args.engine.engine().and_then(|engine| {
                    runtime()?.block_on(interruptible(commands::volume::run(engine, args.lines, args.messages), false))
                })
            }
        }
        Command::Infra(args) => commands::infra::run(args.check),
        Command::New(args) => commands::new::run(&args.name, args.trigger),
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
