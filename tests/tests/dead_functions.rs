//! A function that cannot run is an answer, not a hang: an invocation of a
//! function whose process exits at start-up (a required variable missing)
//! fails within seconds with `Runtime.ExitError`, and the error and the
//! stack's report carry the last lines of its log, which name the variable;
//! a process that never asks for an invocation is reported, and the
//! invocation waiting for it fails once the function's time is up.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;
use xtask::lambda::{FunctionConfig, INIT_LIMIT, Lambda, RUNTIME_EXIT_ERROR, TIMEOUT_ERROR};
use xtask::process::RunDir;
use xtask::{Invocation, Stack};

/// The bound: a generous upper bound on a machine busy with other
/// tests (the answer comes in about a second).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invoke_of_a_function_missing_a_required_variable_fails_within_seconds_naming_it() -> Result<()> {
    let mut stack = Stack::start().await?;
    stack.remove_function_env("inventory-reservations", "INVENTORY_TABLE")?;
    stack.start_lambda().await?;
    let lambda = stack.lambda().context("started")?;
    let mut reports = lambda.reports();
    let event = std::fs::read(stack.root.join("examples/inventory-reservations/events/sqs-reservations.json"))?;

    // Through the Invoke API, as `cargo lambda invoke` calls it.
    let url = format!("http://127.0.0.1:{}/2015-03-31/functions/inventory-reservations/invocations", lambda.port());
    let started = Instant::now();
    let response = tokio::time::timeout(ANSWER_WITHIN, reqwest::Client::new().post(&url).body(event).send())
        .await
        .context("the invoke hung")??;
    let took = started.elapsed();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers().get("x-amz-function-error").and_then(|v| v.to_str().ok()),
        Some("Unhandled"),
        "a function error, as AWS reports it"
    );
    let body: Value = response.json().await?;
    assert_eq!(body["errorType"], RUNTIME_EXIT_ERROR, "{body}");
    let message = body["errorMessage"].as_str().unwrap_or_default();
    assert!(message.contains("INVENTORY_TABLE"), "the error names the variable: {message}");
    assert!(message.contains("before asking for an invocation"), "{message}");
    println!("answered in {took:?}: {message}");

    // The stack reported it as it happened, with the same log lines.
    let report = tokio::time::timeout(ANSWER_WITHIN, reports.recv()).await.context("no report")??;
    assert_eq!(report.function, "inventory-reservations");
    assert!(report.message.contains("INVENTORY_TABLE"), "{}", report.message);

    // Each invoke tries a fresh process and fails the same way: the
    // function is dead, not wedged.
    let again = tokio::time::timeout(ANSWER_WITHIN, lambda.invoke("inventory-reservations", &serde_json::json!({})))
        .await
        .context("the second invoke hung")??;
    assert!(
        matches!(&again, Invocation::FunctionError { error_type, message }
            if error_type == RUNTIME_EXIT_ERROR && message.contains("INVENTORY_TABLE")),
        "{again:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_never_asks_for_an_invocation_is_reported_and_its_invoke_fails() -> Result<()> {
    let root = xtask::stack::workspace_root();
    let run = Arc::new(RunDir::create(&root)?);
    // A "function" that starts and then neither polls nor exits.
    let script = run.path().join("silent");
    std::fs::write(&script, "#!/bin/sh\necho starting, never polling\nexec sleep 600\n")?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    let config = FunctionConfig {
        name: "silent".into(),
        executable: script,
        environment: Vec::new(),
        timeout: Duration::from_secs(3),
        memory_mib: 128,
    };
    let lambda = Lambda::serve(vec![config], run, &root, "us-east-1", 1).await?;
    let mut reports = lambda.reports();
    let started = Instant::now();
    let answer = tokio::time::timeout(INIT_LIMIT + ANSWER_WITHIN, lambda.invoke("silent", &serde_json::json!({})))
        .await
        .context("the invoke hung")??;
    // Lambda's init limit (10 s), then the invocation's time is up.
    assert!(started.elapsed() >= INIT_LIMIT, "failed after {:?}", started.elapsed());
    let Invocation::FunctionError { error_type, message } = answer else { panic!("{answer:?}") };
    assert_eq!(error_type, TIMEOUT_ERROR);
    assert!(message.contains("did not ask for an invocation"), "{message}");
    let report = tokio::time::timeout(ANSWER_WITHIN, reports.recv()).await.context("no report")??;
    assert!(report.message.contains("has not asked for an invocation 10 s after it started"), "{}", report.message);
    assert!(report.message.contains("starting, never polling"), "the report quotes its log: {}", report.message);
    Ok(())
}
