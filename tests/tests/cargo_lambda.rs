//! The README's way to poke at a function, as written: the real `cargo
//! lambda invoke` (cargo-lambda from `.venv`) against the stack's Invoke API,
//! with the address and port `cargo xtask stack` prints.

use anyhow::{Context, Result};
use integration_tests::{s, state_item, state_items_with_prefix};
use serde_json::Value;
use xtask::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cargo_lambda_invoke_of_a_fixture_gets_the_functions_answer_and_its_effects() -> Result<()> {
    let mut stack = Stack::start().await?;
    stack.start_lambda_for(&["sqs-consumer"]).await?;
    let port = stack.lambda().context("started")?.port().to_string();
    let path = format!("{}:{}", xtask::venv::Venv::at(&stack.root).bin().display(), std::env::var("PATH")?);
    let out = std::process::Command::new("cargo")
        .args(["lambda", "invoke", "sqs-consumer", "--invoke-address", "127.0.0.1", "--invoke-port", &port])
        .args(["--data-file", "events/sqs-poison.json"])
        .current_dir(&stack.root)
        .env("PATH", path)
        .output()
        .context("running cargo lambda invoke")?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "cargo lambda invoke exited with {}: {stderr}", out.status);
    let answer: Value = serde_json::from_str(stdout.trim()).with_context(|| format!("not JSON: {stdout}"))?;
    // Poison messages are quarantined, not retried: nothing for Lambda to send again.
    assert_eq!(answer, serde_json::json!({ "batchItemFailures": [] }));
    let placed = state_item(&stack, "ORDER#o-8001", "ORDER").await?.context("order o-8001 applied")?;
    assert_eq!(s(&placed, "status")?, "PLACED");
    let quarantined = state_items_with_prefix(&stack, "QUARANTINE#").await?;
    assert!(!quarantined.is_empty(), "the fixture's poison messages are quarantined");
    for q in &quarantined {
        assert!(!s(q, "reason")?.is_empty(), "{q:?}");
    }
    Ok(())
}
