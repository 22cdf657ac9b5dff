//! Deadlines kept when DynamoDB stalls, for each function: the real binary
//! on a stand-in Lambda Runtime API that sends a real deadline
//! (`Lambda-Runtime-Deadline-Ms`, epoch milliseconds, as Lambda does), its
//! DynamoDB calls through the fault proxy, which forwards every request and
//! then holds the answer back for longer than the invocation lasts. The
//! function must answer before the deadline (Lambda would otherwise kill it
//! with `Task timed out` and retry the whole batch), reporting what it could
//! not finish for retry.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bench::coldstart::lambda_env;
use bench::runtime_api::{Hit, RuntimeApi};
use integration_tests::fault_proxy::{Fault, FaultProxy, Plan, Target};
use serde_json::Value;
use xtask::Stack;

/// The invocation's time: from the event being served to its deadline.
const LEFT: Duration = Duration::from_secs(8);
/// The functions' `DEADLINE_MARGIN_MS`: they must answer by half of it
/// before the deadline (here 2 s), which leaves room on a loaded machine.
const MARGIN_MS: u64 = 4000;
/// Far longer than the invocation: the stalled answers never come in time.
const STALL: Duration = Duration::from_secs(120);
/// A process start on a loaded machine, before its first `next`.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The function process; killed when dropped.
struct Function(Child);

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one invocation answered, and when relative to its deadline.
struct Answer {
    ok: bool,
    body: Value,
    /// Time from the answer to the deadline.
    before_deadline: Duration,
}

/// Runs `function` on `event` (a file of `events/`) with every DynamoDB
/// answer stalled, and returns its answer.
async fn invoke_with_dynamodb_stalled(function: &str, event: &str) -> Result<Answer> {
    invoke_stalled(function, &format!("events/{event}"), &[], Some(MARGIN_MS)).await
}

/// [`invoke_with_dynamodb_stalled`] of any event file (relative to the
/// workspace root), with variables of the function's own, and its
/// `DEADLINE_MARGIN_MS` (`None`: the default, unset).
async fn invoke_stalled(
    function: &str,
    event: &str,
    own_env: &[(&str, &str)],
    margin_ms: Option<u64>,
) -> Result<Answer> {
    let mut stack = Stack::start().await?;
    let proxy = FaultProxy::start(
        &stack.dynamodb_endpoint,
        Target::DynamoDb,
        Plan::Rate { rate: 1.0, faults: vec![Fault::Slow(STALL)], seed: 1 },
    )
    .await?;
    stack.function_dynamodb_endpoint = Some(proxy.endpoint());
    // The binary as the local stack builds it, where cargo says it put it.
    let exe: PathBuf = xtask::lambda::build_declared_functions(&stack.root)
        .await?
        .remove(function)
        .with_context(|| format!("no binary built for {function}"))?;

    let api = RuntimeApi::start()?;
    api.set_deadline(LEFT);
    let event = std::fs::read(stack.root.join(event)).with_context(|| format!("reading {event}"))?;
    api.arm(vec![event]);
    let mut env = lambda_env(&api, function, None, None);
    env.extend(stack.function_env(function)?);
    env.extend(margin_ms.map(|ms| ("DEADLINE_MARGIN_MS".to_owned(), ms.to_string())));
    env.extend(own_env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let log = std::fs::File::create(stack.run_dir().join(format!("{function}-deadline.log")))?;
    let _process = Function(
        Command::new(&exe)
            .env_clear()
            .envs(env)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?,
    );

    let answer = tokio::task::spawn_blocking(move || -> Result<Answer> {
        let mut served = None;
        let wait_until = Instant::now() + START_TIMEOUT + LEFT + STALL;
        while Instant::now() < wait_until {
            match api.hit(Duration::from_secs(1)) {
                Some(Hit::Next { served: Some(at), .. }) => served = Some(at),
                Some(Hit::Result { at, ok, body }) => {
                    let served = served.context("an answer before any event was served")?;
                    let deadline = served + LEFT;
                    ensure!(at < deadline, "answered {:?} after the deadline", at - deadline);
                    let body = serde_json::from_slice(&body).context("the answer is JSON")?;
                    return Ok(Answer { ok, body, before_deadline: deadline - at });
                }
                Some(Hit::InitError { body }) => bail!("init error: {}", String::from_utf8_lossy(&body)),
                Some(Hit::Next { served: None, .. }) | None => {}
            }
        }
        bail!("no answer at all")
    })
    .await??;
    ensure!(proxy.stats().slowed >= 1, "no DynamoDB request was held back: {:?}", proxy.stats());
    println!("{function}: answered {:?} before the deadline: {}", answer.before_deadline, answer.body);
    Ok(answer)
}

/// The message ids a partial batch response reports failed.
fn failed_ids(body: &Value) -> Vec<&str> {
    body["batchItemFailures"].as_array().into_iter().flatten().filter_map(|f| f["itemIdentifier"].as_str()).collect()
}

/// The ids of the records of a fixture event.
fn fixture_ids(event: &str, field: &str) -> Result<Vec<String>> {
    fixture_ids_at(&format!("events/{event}"), field)
}

/// [`fixture_ids`] of any event file (relative to the workspace root).
fn fixture_ids_at(event: &str, field: &str) -> Result<Vec<String>> {
    let root = xtask::stack::workspace_root();
    let event: Value = serde_json::from_slice(&std::fs::read(root.join(event))?)?;
    let ids = event["Records"].as_array().context("Records")?.iter();
    Ok(ids.filter_map(|r| r.pointer(field).and_then(Value::as_str).map(str::to_owned)).collect())
}

#[tokio::test]
async fn sqs_consumer_answers_before_its_deadline_when_dynamodb_stalls() -> Result<()> {
    let answer = invoke_with_dynamodb_stalled("sqs-consumer", "sqs-standard.json").await?;
    assert!(answer.ok, "a partial batch response, not an error: {}", answer.body);
    // Nothing could be committed or quarantined: every message is retried.
    assert_eq!(failed_ids(&answer.body), fixture_ids("sqs-standard.json", "/messageId")?);
    Ok(())
}

#[tokio::test]
async fn stream_aggregator_answers_before_its_deadline_when_dynamodb_stalls() -> Result<()> {
    let answer = invoke_with_dynamodb_stalled("stream-aggregator", "stream-orders.json").await?;
    assert!(answer.ok, "a partial batch response, not an error: {}", answer.body);
    // A shard resumes at its first unfinished record.
    let first = fixture_ids("stream-orders.json", "/dynamodb/SequenceNumber")?;
    assert_eq!(failed_ids(&answer.body), [first[0].as_str()]);
    Ok(())
}

#[tokio::test]
async fn s3_ingest_answers_before_its_deadline_when_dynamodb_stalls() -> Result<()> {
    let answer = invoke_with_dynamodb_stalled("s3-ingest", "s3-via-sqs.json").await?;
    assert!(answer.ok, "a partial batch response, not an error: {}", answer.body);
    assert_eq!(failed_ids(&answer.body), fixture_ids("s3-via-sqs.json", "/messageId")?);
    Ok(())
}

#[tokio::test]
async fn s3_ingest_invoked_directly_fails_before_its_deadline_when_dynamodb_stalls() -> Result<()> {
    let answer = invoke_with_dynamodb_stalled("s3-ingest", "s3-direct.json").await?;
    assert!(!answer.ok, "an error, so the asynchronous retry resumes the object: {}", answer.body);
    let message = answer.body["errorMessage"].as_str().unwrap_or_default();
    assert!(message.contains("deadline"), "{message}");
    Ok(())
}

/// The function the README shows (`examples/inventory-reservations`, whose
/// `main.rs` and `lib.rs` are the README's blocks, checked by
/// `tests/tests/docs.rs`), written with nothing but the toolkit's entry
/// point: its deadline guard is on by default, so it answers before the
/// deadline with every message reported for retry when DynamoDB stalls.
#[tokio::test]
async fn the_readme_function_answers_before_its_deadline_when_dynamodb_stalls() -> Result<()> {
    const EVENT: &str = "examples/inventory-reservations/events/sqs-reservations.json";
    let state = xtask::spec::StackSpec::load()?.table("state")?.name.clone();
    let own = [("INVENTORY_TABLE", "inventory"), ("QUARANTINE_TABLE", state.as_str())];
    // No DEADLINE_MARGIN_MS: the default margin (5 s) of an 8 s invocation.
    let answer = invoke_stalled("inventory-reservations", EVENT, &own, None).await?;
    assert!(answer.ok, "a partial batch response, not an error: {}", answer.body);
    // Neither a reservation nor a quarantine item could be written.
    assert_eq!(failed_ids(&answer.body), fixture_ids_at(EVENT, "/messageId")?);
    Ok(())
}
