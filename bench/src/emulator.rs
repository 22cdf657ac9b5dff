//! Figures against the local emulators: the issue-4 cost workload (DynamoDB
//! requests per record, records per second) on DynamoDB Local, and S3 ingest
//! end to end (moto's S3, DynamoDB Local). The bench starts its own moto and
//! DynamoDB Local on free ports and creates its own tables, independent of
//! the dev stack.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, StreamSpecification,
    StreamViewType,
};
use orders::state::dynamo::DynamoStore;
use serde_json::Value;
use shared::telemetry::RequestCounter;

/// A moto server this process started; stopped on drop.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    /// Starts `.venv/bin/moto_server` of the workspace and waits until it answers.
    pub fn start(workspace: &Path) -> anyhow::Result<Self> {
        let exe = workspace.join(".venv/bin/moto_server");
        anyhow::ensure!(
            exe.exists(),
            "{} not found (python3 -m venv .venv && .venv/bin/pip install 'moto[server]')",
            exe.display()
        );
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(&exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let moto = Self { child, endpoint: format!("http://127.0.0.1:{port}") };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "moto did not start within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(moto)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// DynamoDB Local (AWS's DynamoDB engine, from the project's
/// `.dynamodb-local/`, see `xtask::dynamodb_local`) this process started, in
/// memory; stopped on drop.
pub struct DynamoDbLocal {
    child: Child,
    pub endpoint: String,
}

impl DynamoDbLocal {
    /// Starts DynamoDB Local (installed by `cargo xtask bench`, or any
    /// `cargo xtask` stack command) and waits until it answers.
    pub fn start(workspace: &Path) -> anyhow::Result<Self> {
        let install = xtask::dynamodb_local::Install::at(workspace);
        anyhow::ensure!(
            install.is_current(),
            "DynamoDB Local is not installed: run the bench with `cargo xtask bench`"
        );
        xtask::dynamodb_local::check_java()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let (program, args) = install.command_line(port)?;
        // Out of the workspace: it writes dynamodb-local-metadata.json where it runs.
        let child = Command::new(&program)
            .args(&args)
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let mut local = Self { child, endpoint: format!("http://127.0.0.1:{port}") };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(local.child.try_wait()?.is_none(), "DynamoDB Local exited at start (port {port} taken?)");
            anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "DynamoDB Local did not start within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(local)
    }

    /// The process's peak resident memory (`VmHWM`), KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status.lines().find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse().ok())
    }
}

impl Drop for DynamoDbLocal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SDK configuration for the emulator: fixed region, dummy credentials.
pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(shared::config::https_client())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("testing", "testing", None, None, "bench"))
        .load()
        .await
}

/// Creates the state table (`pk`/`sk`, stream of new and old images) and the
/// idempotency table (`id`), as DESIGN.md declares them.
pub async fn create_tables(client: &aws_sdk_dynamodb::Client, state: &str, idempotency: &str) -> anyhow::Result<()> {
    let key = |name: &str, kind| KeySchemaElement::builder().attribute_name(name).key_type(kind).build();
    let attr =
        |name: &str| AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build();
    client
        .create_table()
        .table_name(state)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key("pk", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?)
        .attribute_definitions(attr("pk")?)
        .attribute_definitions(attr("sk")?)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()?,
        )
        .send()
        .await
        .with_context(|| format!("creating table {state}"))?;
    client
        .create_table()
        .table_name(idempotency)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key("id", KeyType::Hash)?)
        .attribute_definitions(attr("id")?)
        .send()
        .await
        .with_context(|| format!("creating table {idempotency}"))?;
    Ok(())
}

/// One measured delivery of the cost workload.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub label: String,
    pub records: u64,
    pub requests: u64,
    pub seconds: f64,
    pub applied: u64,
    pub duplicates: u64,
    /// CPU time of this process over the delivery: the function's side.
    pub cpu_seconds: f64,
}

impl Delivery {
    pub fn requests_per_record(&self) -> f64 {
        self.requests as f64 / self.records as f64
    }
    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.seconds
    }
}

/// The SQS workload of issue 4: `n` order events, idempotent per event, applied
/// by `sqs_consumer::handle` with the DynamoDB store: as one batch, the same
/// batch delivered again, and as batches of `small` (the mapping's default 10).
///
/// `scenarios`: (name, batch size, deliveries of the same events, the
/// store's commit concurrency: `None` for the default, `COMMIT_CONCURRENCY`'s).
pub async fn cost(
    endpoint: &str,
    n: u64,
    scenarios: &[(&str, u64, usize, Option<usize>)],
) -> anyhow::Result<Vec<Delivery>> {
    let sdk = sdk_config(endpoint).await;
    let counter = RequestCounter::default();
    let client = shared::config::dynamodb_client(&sdk, &counter);
    let mut out = Vec::new();
    for &(scenario, batch, deliveries, concurrency) in scenarios {
        let (state, idempotency) = (format!("cost-{scenario}-state"), format!("cost-{scenario}-idempotency"));
        create_tables(&client, &state, &idempotency).await?;
        let mut store = DynamoStore::new(client.clone(), state.clone(), idempotency.clone());
        if let Some(c) = concurrency {
            store = store.with_commit_concurrency(c);
        }
        let config = crate::ingest::config(&state, &idempotency);
        let records = w1_records(scenario, n);
        let batches: Vec<Value> =
            records.chunks(batch.max(1) as usize).map(|c| serde_json::json!({ "Records": c })).collect();
        for delivery in 0..deliveries {
            let before = counter.get();
            let cpu_before = crate::rss::cpu_seconds().unwrap_or(0.0);
            let started = Instant::now();
            let mut applied = 0;
            let mut duplicates = 0;
            for payload in &batches {
                let (response, summary) = sqs_consumer::handle(&store, &config, payload)
                    .await
                    .map_err(|e| anyhow::anyhow!("sqs-consumer failed: {e}"))?;
                anyhow::ensure!(response.batch_item_failures.is_empty(), "item failures: {response:?}");
                applied += summary.applied;
                duplicates += summary.duplicate;
            }
            let mut label = match (batches.len(), delivery) {
                (1, 0) => format!("1 batch of {n}"),
                (1, _) => format!("1 batch of {n}, delivered again"),
                (b, _) => format!("{b} batches of {batch}"),
            };
            if let Some(c) = concurrency {
                label.push_str(&format!(" at COMMIT_CONCURRENCY={c}"));
            }
            out.push(Delivery {
                label,
                records: n,
                requests: counter.get() - before,
                seconds: started.elapsed().as_secs_f64(),
                applied,
                duplicates,
                cpu_seconds: crate::rss::cpu_seconds().unwrap_or(0.0) - cpu_before,
            });
        }
    }
    Ok(out)
}

/// The W1 events of `run`: `n` SQS records of order events, each on its own order.
pub fn w1_records(run: &str, n: u64) -> Vec<Value> {
    (0..n).map(|i| crate::data::sqs_record(run, i, &crate::data::order_event(run, i, u64::MAX))).collect()
}

/// What the Powertools peer (`bench/peer/powertools_w1.py`) reports of one batch.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct PeerRun {
    pub records: u64,
    pub failures: u64,
    pub applied: u64,
    pub stale: u64,
    /// HTTP requests boto3 sent to DynamoDB (botocore's `before-send`), retries included.
    pub requests: u64,
    pub seconds: f64,
    pub cpu_seconds: f64,
}

impl PeerRun {
    pub fn requests_per_record(&self) -> f64 {
        self.requests as f64 / self.records.max(1) as f64
    }
    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.seconds
    }
}

/// The peer's interpreter and script, when `cargo xtask bench` installed
/// Powertools into `.venv`.
pub fn powertools_peer(workspace: &Path) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let python = workspace.join(".venv/bin/python");
    let script = workspace.join("bench/peer/powertools_w1.py");
    anyhow::ensure!(python.exists(), "{} not found: run the bench with `cargo xtask bench`", python.display());
    let probe = Command::new(&python)
        .args(["-c", "import aws_lambda_powertools"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    anyhow::ensure!(
        probe.success(),
        "aws-lambda-powertools is not installed in .venv: run the bench with `cargo xtask bench` (bench/peer/requirements.txt)"
    );
    Ok((python, script))
}

/// Runs the Powertools peer on the event in `event_file` against `endpoint`,
/// with its own state and idempotency tables (created here).
pub async fn powertools_w1(workspace: &Path, endpoint: &str, run: &str, event_file: &Path) -> anyhow::Result<PeerRun> {
    powertools(workspace, endpoint, run, event_file, "sqs").await
}

async fn powertools(
    workspace: &Path,
    endpoint: &str,
    run: &str,
    event_file: &Path,
    mode: &str,
) -> anyhow::Result<PeerRun> {
    let (python, script) = powertools_peer(workspace)?;
    let client = aws_sdk_dynamodb::Client::new(&sdk_config(endpoint).await);
    let (state, idempotency) = (format!("peer-{run}-state"), format!("peer-{run}-idempotency"));
    create_tables(&client, &state, &idempotency).await?;
    let mut command = Command::new(&python);
    command.arg(&script).args([endpoint, &state, &idempotency]).arg(event_file).arg(mode);
    let out = tokio::task::spawn_blocking(move || command.output())
        .await?
        .with_context(|| format!("running {}", script.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "the Powertools peer failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).lines().rev().take(5).collect::<Vec<_>>().join(" / ")
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().context("the Powertools peer printed nothing")?;
    let run: PeerRun = serde_json::from_str(last).with_context(|| format!("peer output {last:?}"))?;
    anyhow::ensure!(run.failures == 0, "the Powertools peer reported {} failed records", run.failures);
    Ok(run)
}

/// Creates a bucket and uploads an NDJSON object of about `kib` KiB (order ids
/// repeat every 1,000 events); returns its size in bytes.
pub async fn upload_object(endpoint: &str, bucket: &str, key: &str, kib: u64) -> anyhow::Result<u64> {
    let sdk = sdk_config(endpoint).await;
    let s3 = shared::config::s3_client(&sdk);
    s3.create_bucket().bucket(bucket).send().await.with_context(|| format!("creating bucket {bucket}"))?;
    let mut body = Vec::new();
    crate::data::write_ndjson(&mut body, kib * 1024, 1000)?;
    let size = body.len() as u64;
    s3.put_object().bucket(bucket).key(key).body(body.into()).send().await.context("uploading the object")?;
    Ok(size)
}

/// Runs s3-ingest over `bucket/key` with the real S3 source and DynamoDB store
/// (tables created here), counting DynamoDB requests.
/// `dynamodb_endpoint` may differ from S3's (the null endpoint).
pub async fn ingest_s3(
    endpoint: &str,
    dynamodb_endpoint: &str,
    bucket: &str,
    key: &str,
    size: u64,
) -> anyhow::Result<crate::ingest::IngestRun> {
    let sdk = sdk_config(endpoint).await;
    let counter = RequestCounter::default();
    let client = shared::config::dynamodb_client(&sdk_config(dynamodb_endpoint).await, &counter);
    let (state, idempotency) = ("ingest-state", "ingest-idempotency");
    create_tables(&client, state, idempotency).await?;
    let store = DynamoStore::new(client, state.to_owned(), idempotency.to_owned());
    let objects = shared::object::S3Source::new(shared::config::s3_client(&sdk));
    let config = crate::ingest::config(state, idempotency);
    let payload = crate::ingest::s3_event(bucket, key, size);
    let start_rss_kib = crate::rss::vm("VmRSS");
    let before = counter.get();
    let cpu_before = crate::rss::cpu_seconds().unwrap_or(0.0);
    let started = Instant::now();
    let (_, summary, reports) = Box::pin(s3_ingest::handle(
        &store,
        &objects,
        &s3_ingest::Handoff::Retry,
        &config,
        &payload,
        &s3_ingest::Deadline::None,
    ))
    .await
    .map_err(|e| anyhow::anyhow!("ingest failed: {e}"))?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(summary.failed == 0, "ingest reported failures: {summary:?}");
    let counts = reports.first().map(|r| r.counts).unwrap_or_default();
    Ok(crate::ingest::IngestRun {
        bytes: size,
        lines: counts.lines,
        accepted: counts.accepted,
        seconds,
        requests: counter.get() - before,
        peak_rss_kib: crate::rss::vm("VmHWM"),
        cpu_seconds: crate::rss::cpu_seconds().unwrap_or(0.0) - cpu_before,
        start_rss_kib,
    })
}

/// W1's events as the orders they become: the stream records of the state
/// table (an INSERT of each new order, its new image as sqs-consumer writes
/// it), for the aggregation step of the pipeline's cost.
pub fn w1_stream_event(run: &str, n: u64) -> anyhow::Result<Value> {
    let records = (0..n)
        .map(|i| {
            let body = crate::data::order_event(run, i, u64::MAX);
            let event = orders::order::parse_order_event(&body).map_err(|e| anyhow::anyhow!("{body}: {e}"))?;
            let orders::order::ApplyOutcome::Applied(order) = orders::order::apply(None, &event) else {
                anyhow::bail!("a first event applies")
            };
            let image = serde_json::to_value(orders::state::item::order_to_item(&order))?;
            let keys = serde_json::json!({ "pk": image["pk"], "sk": image["sk"] });
            Ok(serde_json::json!({
                "eventID": format!("{run}-stream-{i}"),
                "eventName": "INSERT",
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "dynamodb": {
                    "ApproximateCreationDateTime": 1_795_867_200 + i,
                    "Keys": keys,
                    "NewImage": image,
                    "SequenceNumber": format!("{:021}", 100_000 + i),
                    "SizeBytes": 200,
                    "StreamViewType": "NEW_AND_OLD_IMAGES"
                },
                "eventSourceARN": format!("arn:aws:dynamodb:us-east-1:123456789012:table/{run}-state/stream/2026-12-01T00:00:00.000")
            }))
        })
        .collect::<anyhow::Result<Vec<Value>>>()?;
    Ok(serde_json::json!({ "Records": records }))
}

/// W1's events as the lines of one NDJSON object, for the ingest step.
pub fn w1_object(run: &str, n: u64) -> Vec<u8> {
    (0..n).flat_map(|i| format!("{}\n", crate::data::order_event(run, i, u64::MAX)).into_bytes()).collect()
}

/// One step of the pipeline: records through a function, and their outcomes.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub records: u64,
    pub applied: u64,
    pub seconds: f64,
}

/// stream-aggregator over `event` against `endpoint` (tables created here),
/// with the DynamoDB store.
pub async fn aggregate(endpoint: &str, run: &str, event: &Value) -> anyhow::Result<Step> {
    let client = shared::config::dynamodb_client(&sdk_config(endpoint).await, &RequestCounter::default());
    let (state, idempotency) = (format!("aggregate-{run}-state"), format!("aggregate-{run}-idempotency"));
    create_tables(&client, &state, &idempotency).await?;
    let store = DynamoStore::new(client, state.clone(), idempotency.clone());
    let config = crate::ingest::config(&state, &idempotency);
    let started = Instant::now();
    let (response, summary) = stream_aggregator::handle(&store, &config, event)
        .await
        .map_err(|e| anyhow::anyhow!("stream-aggregator failed: {e}"))?;
    anyhow::ensure!(response.batch_item_failures.is_empty(), "item failures: {response:?}");
    Ok(Step { records: summary.total(), applied: summary.applied, seconds: started.elapsed().as_secs_f64() })
}

/// s3-ingest over `object` (in memory) against the DynamoDB `endpoint`
/// (tables created here), with the DynamoDB store.
pub async fn ingest_lines(endpoint: &str, run: &str, object: Vec<u8>) -> anyhow::Result<Step> {
    let client = shared::config::dynamodb_client(&sdk_config(endpoint).await, &RequestCounter::default());
    let (state, idempotency) = (format!("lines-{run}-state"), format!("lines-{run}-idempotency"));
    create_tables(&client, &state, &idempotency).await?;
    let store = DynamoStore::new(client, state.clone(), idempotency.clone());
    let config = crate::ingest::config(&state, &idempotency);
    let size = object.len() as u64;
    let mut source = shared::object::MemorySource::new();
    source.insert("bench", "incoming/w1.ndjson", object);
    let payload = crate::ingest::s3_event("bench", "incoming/w1.ndjson", size);
    let started = Instant::now();
    let (_, summary, _) =
        s3_ingest::handle(&store, &source, &s3_ingest::Handoff::Retry, &config, &payload, &s3_ingest::Deadline::None)
            .await
            .map_err(|e| anyhow::anyhow!("s3-ingest failed: {e}"))?;
    Ok(Step { records: summary.total(), applied: summary.applied, seconds: started.elapsed().as_secs_f64() })
}

/// The Powertools peer of a step (`mode` `stream` or `lines`) on the file
/// `input`, against `endpoint`.
pub async fn powertools_step(
    workspace: &Path,
    endpoint: &str,
    run: &str,
    mode: &str,
    input: &Path,
) -> anyhow::Result<PeerRun> {
    powertools(workspace, endpoint, &format!("{run}-{mode}"), input, mode).await
}
