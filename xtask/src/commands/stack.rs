//! `cargo xtask stack`: the local stack for poking at single functions with
//! `cargo lambda invoke`, until Ctrl-C.

use std::time::Duration;

use anyhow::{Context, Result};

use super::header;
use crate::driver::Driver;
use crate::stack::Stack;

/// How long the background driver rests between rounds with nothing to do.
const IDLE: Duration = Duration::from_millis(500);

/// The function a fixture of `events/` is for, by its file name prefix.
pub fn function_for_fixture(file_name: &str) -> Option<&'static str> {
    if file_name.starts_with("s3-") {
        Some("s3-ingest")
    } else if file_name.starts_with("sqs-") {
        Some("sqs-consumer")
    } else if file_name.starts_with("stream-") {
        Some("stream-aggregator")
    } else {
        None
    }
}

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
    println!("  functions (cargo lambda watch): http://127.0.0.1:{}", lambda.port());
    println!(
        "  sample data: {} object(s) under s3://{}/{}",
        keys.len(),
        stack.spec.bucket.name,
        stack.spec.bucket.notifications.first().map(|n| n.prefix.as_str()).unwrap_or("")
    );
    println!("  logs: {}", stack.run_dir().display());
    header("environment for AWS clients (aws cli, your own scripts)");
    for (k, v) in stack.client_env() {
        println!("  export {k}={v}");
    }
    header("invoke a fixture (in another terminal, from the repository root)");
    println!("  export PATH=\"$PWD/.venv/bin:$PATH\"");
    let mut fixtures: Vec<String> = std::fs::read_dir(stack.root.join("events"))
        .context("reading events/")?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.ends_with(".json"))
        .collect();
    fixtures.sort();
    for f in fixtures {
        if let Some(function) = function_for_fixture(&f) {
            println!(
                "  cargo lambda invoke {function} --invoke-address 127.0.0.1 --invoke-port {} --data-file events/{f}",
                lambda.port()
            );
        }
    }
    if with_driver {
        header(
            "the event source mappings are running: uploads under incoming/ and messages to the queues are processed (Ctrl-C to stop)",
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
        std::future::pending::<()>().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fixture_maps_to_a_function() {
        let root = crate::stack::workspace_root().join("events");
        for entry in std::fs::read_dir(root).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.ends_with(".json") {
                assert!(function_for_fixture(&name).is_some(), "{name}");
            }
        }
    }
}
