//! `cargo xtask stack`: the local stack with every function `infra/stack.json`
//! declares, for poking at them with `cargo lambda invoke`, until Ctrl-C.
//! What happens to the functions' processes (one exiting at start-up for a
//! missing variable, one timing out) is printed as it happens.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::broadcast::error::RecvError;

use super::header;
use crate::driver::Driver;
use crate::spec::{EnvSource, MappingSource};
use crate::stack::Stack;

/// How long the background driver rests between rounds with nothing to do.
const IDLE: Duration = Duration::from_millis(500);

/// Runs until the future is dropped (Ctrl-C in `main`).
pub async fn run(with_driver: bool, engine: crate::dynamodb_local::Engine) -> Result<()> {
    header("building the functions");
    super::build_stack_functions().await?;
    header("starting the local stack");
    let mut stack = Stack::start_with(engine).await?;
    stack.start_lambda().await?;
    let stack = &stack;
    let lambda = stack.lambda().context("lambda just started")?;
    let keys = stack.upload_sample_data().await?;

    header("stack");
    println!("  moto (S3, SQS): {}", stack.endpoint);
    println!("  {} (DynamoDB, DynamoDB Streams): {}", engine.name(), stack.dynamodb_endpoint);
    println!("  functions (Lambda Invoke API): http://127.0.0.1:{}", lambda.port());
    println!(
        "  sample data: {} object(s) under s3://{}/{}",
        keys.len(),
        stack.spec.bucket.name,
        stack.spec.bucket.notifications.first().map(|n| n.prefix.as_str()).unwrap_or("")
    );
    println!("  logs: {}", stack.run_dir().display());
    header("functions (infra/stack.json), each with its own environment");
    for (name, f) in &stack.spec.functions {
        let sources: Vec<String> = stack
            .spec
            .mappings_of(name)
            .map(|m| match &m.source {
                MappingSource::Queue { queue } => {
                    stack.spec.queue(queue).map(|q| format!("queue {}", q.name)).unwrap_or_default()
                }
                MappingSource::Table { table } => {
                    stack.spec.table(table).map(|t| format!("stream of {}", t.name)).unwrap_or_default()
                }
                MappingSource::Stream { stream } => {
                    stack.spec.stream(stream).map(|s| format!("Kinesis stream {}", s.name)).unwrap_or_default()
                }
            })
            .collect();
        let variables: Vec<String> = f
            .environment
            .iter()
            .map(|(k, v)| match v {
                EnvSource::Table { table } => format!("{k}=<table {table}>"),
                EnvSource::Queue { queue } => format!("{k}=<queue {queue}>"),
                EnvSource::Value(value) => format!("{k}={value}"),
            })
            .collect();
        println!("  {name} <- {}", if sources.is_empty() { "(invoke only)".to_owned() } else { sources.join(", ") });
        println!("      {}", variables.join(" "));
    }
    header("environment for AWS clients (aws cli, your own scripts)");
    for (k, v) in stack.client_env() {
        println!("  export {k}={v}");
    }
    header("invoke a fixture (in another terminal, from the repository root)");
    println!("  export PATH=\"$PWD/.venv/bin:$PATH\"");
    for name in stack.spec.function_names() {
        for fixture in stack.spec.fixtures_of(&stack.root, name)? {
            println!(
                "  cargo lambda invoke {name} --invoke-address 127.0.0.1 --invoke-port {} --data-file {}",
                lambda.port(),
                fixture.display()
            );
        }
    }
    let mut reports = lambda.reports();
    let report_problems = async move {
        loop {
            match reports.recv().await {
                Ok(report) => eprintln!("\n!! {}\n", report.message.replace('\n', "\n   ")),
                Err(RecvError::Lagged(n)) => eprintln!("!! {n} function reports were dropped"),
                Err(RecvError::Closed) => return,
            }
        }
    };
    let serve = async {
        if with_driver {
            header(
                "the event source mappings are running: uploads, messages to the queues and table writes are \
                 processed (Ctrl-C to stop)",
            );
            let mut driver = Driver::new(stack, lambda)?;
            let mut progress = |r: &crate::driver::InvocationReport| {
                println!("  {}", super::demo::describe(r));
            };
            loop {
                if !driver.poll_once(&mut progress).await? {
                    tokio::time::sleep(IDLE).await;
                }
            }
        } else {
            header("running without the event source mappings (Ctrl-C to stop)");
            std::future::pending::<Result<()>>().await
        }
    };
    tokio::select! {
        result = serve => result,
        () = report_problems => Ok(()),
    }
}
