//! The local AWS stack: a moto server (S3, SQS) and DynamoDB Local (DynamoDB
//! and its streams; see [`crate::dynamodb_local`]), each on a free port of
//! 127.0.0.1, with every resource of `infra/stack.json` created, and
//! (optionally) [`Lambda`] serving the declared functions' binaries against
//! them, each with its own environment. With [`Engine::Moto`] moto plays
//! DynamoDB too. [`Stack`] owns all child processes and stops them when
//! dropped.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, PointInTimeRecoverySpecification, ScalarAttributeType,
    StreamSpecification, StreamViewType, TimeToLiveSpecification,
};
use aws_sdk_s3::types::{
    Event, FilterRule, FilterRuleName, NotificationConfiguration, NotificationConfigurationFilter, QueueConfiguration,
    S3KeyFilter,
};
use aws_sdk_sqs::types::QueueAttributeName;

use crate::dynamodb_local::{self, Engine};
use crate::lambda::Lambda;
use crate::process::{ChildGroup, RunDir};
use crate::spec::StackSpec;
use crate::venv::Venv;

/// Attempts at starting moto on a fresh free port: another process can take
/// the port between our probe and moto's bind.
const START_ATTEMPTS: u32 = 5;
/// Longest wait for moto to answer: it imports every service (~2-5 s on a
/// 2-core machine; more while cargo compiles beside it).
const MOTO_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Between readiness probes.
const READY_POLL: Duration = Duration::from_millis(100);
/// moto prints this once it has bound its port (werkzeug's banner).
const MOTO_READY_LINE: &str = "Running on http://127.0.0.1:";
/// Longest wait for DynamoDB Local to answer (a JVM start: 1-3 s, more on a
/// busy machine).
const DYNAMODB_LOCAL_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// DynamoDB Local prints its configuration (`Port:\t<port>`) once started.
const DYNAMODB_LOCAL_READY_LINE: &str = "Port:";
/// The DynamoDB Streams API version of `X-Amz-Target`.
const STREAMS_TARGET_PREFIX: &str = "DynamoDBStreams_20120810";
/// The Kinesis Data Streams API's `X-Amz-Target` prefix (JSON 1.1).
const KINESIS_TARGET_PREFIX: &str = "Kinesis_20131202";
/// moto's fixed account id: part of every ARN it returns (and of the ARNs the
/// driver makes up).
pub const ACCOUNT_ID: &str = "123456789012";
/// Dummy credentials: moto accepts anything, the SDK insists on some.
pub const ACCESS_KEY_ID: &str = "testing";
pub const SECRET_ACCESS_KEY: &str = "testing";
/// The SDKs' DynamoDB endpoint variable.
pub const ENDPOINT_DYNAMODB: &str = "AWS_ENDPOINT_URL_DYNAMODB";

/// The workspace root (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    crate::workspace::root()
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("probing for a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Polls `probe` until it is true, `child` exits, or `timeout` passes.
pub(crate) async fn wait_ready<F, Fut>(child: &mut ChildGroup, timeout: Duration, mut probe: F) -> Result<bool>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if child.exited() {
            return Ok(false);
        }
        if probe(child.log_text()).await {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            bail!("{} did not become ready within {timeout:?}; its log ends:\n{}", child.name(), child.log_tail(20));
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// Resolved resource names, URLs and ARNs.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    /// Queue key -> URL (including DLQs under `<key>Dlq`).
    pub queue_urls: BTreeMap<String, String>,
    /// Queue key -> ARN.
    pub queue_arns: BTreeMap<String, String>,
    /// Table key -> stream ARN, for tables with a stream.
    pub stream_arns: BTreeMap<String, String>,
    /// Kinesis stream key -> stream ARN.
    pub kinesis_arns: BTreeMap<String, String>,
}

/// The key under which a queue's dead-letter queue is recorded.
pub fn dlq_key(queue_key: &str) -> String {
    format!("{queue_key}Dlq")
}

/// The running local stack.
pub struct Stack {
    pub spec: StackSpec,
    pub root: PathBuf,
    pub venv: Venv,
    /// `http://127.0.0.1:<port>`: moto (S3, SQS; and DynamoDB with
    /// [`Engine::Moto`]).
    pub endpoint: String,
    /// Where DynamoDB and DynamoDB Streams answer: DynamoDB Local, or moto's
    /// endpoint with [`Engine::Moto`].
    pub dynamodb_endpoint: String,
    /// Which engine plays DynamoDB.
    pub engine: Engine,
    pub sdk: aws_config::SdkConfig,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub resources: Resources,
    /// Where the functions send their DynamoDB calls, when not straight to
    /// [`Stack::dynamodb_endpoint`] (a fault-injecting proxy in front of it,
    /// in tests). Their S3 and SQS calls always go to moto.
    pub function_dynamodb_endpoint: Option<String>,
    /// Processes each function may run at once (1 unless set before
    /// [`Stack::start_lambda`]), for drivers that deliver concurrently
    /// ([`crate::Driver::concurrent`]).
    pub function_concurrency: usize,
    /// Variables set per function on top of its declared environment (a
    /// test's own service URL); see [`Stack::set_function_env`].
    function_env_overrides: BTreeMap<String, BTreeMap<String, String>>,
    /// Raw JSON calls (the Streams API: see [`Stack::streams_call`]).
    http: reqwest::Client,
    lambda: Option<Lambda>,
    // Dropped after `lambda` (field order): functions stop before the
    // emulators.
    moto: ChildGroup,
    dynamodb_local: Option<ChildGroup>,
    run: Arc<RunDir>,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("endpoint", &self.endpoint)
            .field("dynamodb_endpoint", &self.dynamodb_endpoint)
            .field("run", &self.run.path())
            .finish_non_exhaustive()
    }
}

impl Stack {
    /// Ensures the tools, starts the emulators and creates every resource;
    /// the DynamoDB engine is the one `LOCAL_STACK_DYNAMODB` names
    /// (DynamoDB Local when unset).
    pub async fn start() -> Result<Self> {
        Self::start_with(Engine::from_env()?).await
    }

    /// [`Stack::start`] with the DynamoDB engine chosen by the caller (the
    /// commands' `--dynamodb` flag).
    pub async fn start_with(engine: Engine) -> Result<Self> {
        let root = workspace_root();
        let spec = StackSpec::load()?;
        let venv = Venv::at(&root);
        let install = dynamodb_local::Install::at(&root);
        tokio::task::spawn_blocking({
            let venv = venv.clone();
            let install = install.clone();
            move || {
                venv.ensure()?;
                if engine == Engine::Local {
                    install.ensure()?;
                }
                Ok::<_, anyhow::Error>(())
            }
        })
        .await
        .context("install task panicked")??;
        let run = Arc::new(RunDir::create(&root)?);
        // Both emulators start at once: each takes a few seconds.
        let (moto, dynamodb_local) = match engine {
            Engine::Local => {
                let (moto, local) =
                    tokio::join!(start_moto(&run, &venv, &root), start_dynamodb_local(&run, &install, &root));
                (moto?, Some(local?))
            }
            Engine::Moto => (start_moto(&run, &venv, &root).await?, None),
        };
        let (moto, port) = moto;
        let endpoint = format!("http://127.0.0.1:{port}");
        let (dynamodb_local, dynamodb_endpoint) = match dynamodb_local {
            Some((child, port)) => (Some(child), format!("http://127.0.0.1:{port}")),
            None => (None, endpoint.clone()),
        };
        let sdk = sdk_config(&endpoint, &spec.region).await;
        // Each client names its endpoint itself: service-specific endpoint
        // variables in our own environment (say, a shell that exported
        // another stack's) would otherwise win over the loader's.
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk).endpoint_url(&endpoint).force_path_style(true).build(),
        );
        let sqs =
            aws_sdk_sqs::Client::from_conf(aws_sdk_sqs::config::Builder::from(&sdk).endpoint_url(&endpoint).build());
        let dynamodb = aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&sdk).endpoint_url(&dynamodb_endpoint).build(),
        );
        let mut stack = Self {
            sqs,
            dynamodb,
            s3,
            sdk,
            spec,
            root,
            venv,
            endpoint,
            dynamodb_endpoint,
            engine,
            resources: Resources::default(),
            function_dynamodb_endpoint: None,
            function_concurrency: 1,
            function_env_overrides: BTreeMap::new(),
            http: reqwest::Client::new(),
            lambda: None,
            moto,
            dynamodb_local,
            run,
        };
        stack.create_resources().await?;
        Ok(stack)
    }

    /// A DynamoDB client of this stack's engine at `endpoint` (a proxy in
    /// front of it, in tests).
    pub fn dynamodb_client_at(&self, endpoint: &str) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&self.sdk).endpoint_url(endpoint).build(),
        )
    }

    /// Serves every declared function against this stack (builds their
    /// binaries first, in one `cargo build`).
    pub async fn start_lambda(&mut self) -> Result<&Lambda> {
        let all: Vec<String> = self.spec.function_names().map(str::to_owned).collect();
        self.start_lambda_with(&all).await
    }

    /// Serves only `functions` (a function's own test: it builds only that
    /// binary); the [`crate::Driver`] then runs only their mappings.
    pub async fn start_lambda_for(&mut self, functions: &[&str]) -> Result<&Lambda> {
        let functions: Vec<String> = functions.iter().map(|f| (*f).to_owned()).collect();
        self.start_lambda_with(&functions).await
    }

    async fn start_lambda_with(&mut self, functions: &[String]) -> Result<&Lambda> {
        if self.lambda.is_none() {
            let lambda = Lambda::start(self, functions).await?;
            self.lambda = Some(lambda);
        }
        Ok(self.lambda.as_ref().expect("just set"))
    }

    /// The running [`Lambda`], if started.
    pub fn lambda(&self) -> Option<&Lambda> {
        self.lambda.as_ref()
    }

    /// Kills a function's process mid-invocation (SIGKILL); see
    /// [`Lambda::kill_function`].
    pub async fn kill_function(&self, function: &str) -> Result<()> {
        self.lambda.as_ref().context("start the functions first")?.kill_function(function, None).await.map(drop)
    }

    /// Kills one of `function`'s running processes (the `pick`-th, modulo
    /// how many run: with [`Stack::function_concurrency`] above one, there
    /// may be several), as [`Stack::kill_function`] does. Returns false
    /// when none runs.
    pub async fn kill_one_function(&self, function: &str, pick: usize) -> Result<bool> {
        let lambda = self.lambda.as_ref().context("start the functions first")?;
        lambda.kill_function(function, Some(pick)).await
    }

    /// The run directory (logs).
    pub fn run_dir(&self) -> &Path {
        self.run.path()
    }

    /// Keeps the logs after the stack stops (a failed demo prints the path).
    pub fn keep_logs(&self) {
        self.run.keep();
    }

    /// The run directory, shared with the processes started in it.
    pub(crate) fn run_handle(&self) -> Arc<RunDir> {
        self.run.clone()
    }

    /// moto's log so far.
    pub fn moto_log(&self) -> String {
        self.moto.log_text()
    }

    /// The emulators' process groups, by name (`moto`, `dynamodb-local`):
    /// their guardians' pids, for reading the emulators' memory.
    pub fn emulator_pids(&self) -> Vec<(&'static str, u32)> {
        let mut pids = vec![("moto", self.moto.pid())];
        if let Some(local) = &self.dynamodb_local {
            pids.push(("dynamodb-local", local.pid()));
        }
        pids
    }

    /// The environment `function` gets: the variables it declares (a
    /// table's name, a queue's URL, a value), any set with
    /// [`Stack::set_function_env`], the emulator endpoints, region, dummy
    /// credentials, JSON logs.
    pub fn function_env(&self, function: &str) -> Result<Vec<(String, String)>> {
        let declared = self.spec.function(function)?;
        let mut env = Vec::new();
        for (name, source) in &declared.environment {
            let value = match source {
                crate::spec::EnvSource::Table { table } => self.spec.table(table)?.name.clone(),
                crate::spec::EnvSource::Queue { queue } => self.queue_url(queue)?.to_owned(),
                crate::spec::EnvSource::Value(v) => v.clone(),
            };
            let value = self.function_env_overrides.get(function).and_then(|o| o.get(name)).cloned().unwrap_or(value);
            env.push((name.clone(), value));
        }
        env.extend(self.client_env());
        if let Some(endpoint) = &self.function_dynamodb_endpoint {
            for (name, value) in &mut env {
                if name == ENDPOINT_DYNAMODB {
                    value.clone_from(endpoint);
                }
            }
        }
        env.push(("AWS_LAMBDA_LOG_FORMAT".into(), "JSON".into()));
        env.push(("AWS_LAMBDA_LOG_LEVEL".into(), "INFO".into()));
        Ok(env)
    }

    /// Sets `variable` of `function` to `value` for the processes started
    /// after this (call it before [`Stack::start_lambda`]): a test pointing
    /// a declared variable at its own service. Fails when `function` does
    /// not declare `variable`: what a function reads belongs in its
    /// declaration.
    pub fn set_function_env(&mut self, function: &str, variable: &str, value: &str) -> Result<()> {
        let declared = self.spec.function(function)?;
        if !declared.environment.contains_key(variable) {
            bail!(
                "{function} declares no variable {variable} in infra/stack.json (it declares {})",
                declared.environment.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        self.function_env_overrides
            .entry(function.to_owned())
            .or_default()
            .insert(variable.to_owned(), value.to_owned());
        Ok(())
    }

    /// Drops `variable` from `function`'s declared environment for the
    /// processes started after this: the test of a function started without
    /// a variable it requires.
    pub fn remove_function_env(&mut self, function: &str, variable: &str) -> Result<()> {
        let spec = &mut self.spec;
        let declared =
            spec.functions.get_mut(function).with_context(|| format!("no function {function:?} is declared"))?;
        declared.environment.remove(variable).with_context(|| format!("{function} declares no variable {variable}"))?;
        Ok(())
    }

    /// What an AWS client needs to talk to this stack (also printed by
    /// `cargo xtask stack` for the user's own tools): the SDKs' and the AWS
    /// CLI's service-specific endpoint variables, one per emulator, and
    /// `AWS_ENDPOINT_URL` (moto) for every other service. The global one is
    /// also what makes the functions' S3 client use path-style addressing
    /// (`shared::config::s3_client`), which an IP endpoint needs.
    pub fn client_env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("AWS_ENDPOINT_URL_S3".into(), self.endpoint.clone()),
            ("AWS_ENDPOINT_URL_SQS".into(), self.endpoint.clone()),
            (ENDPOINT_DYNAMODB.into(), self.dynamodb_endpoint.clone()),
            ("AWS_ENDPOINT_URL_DYNAMODB_STREAMS".into(), self.dynamodb_endpoint.clone()),
            ("AWS_REGION".into(), self.spec.region.clone()),
            ("AWS_DEFAULT_REGION".into(), self.spec.region.clone()),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_ACCESS_KEY.into()),
        ]
    }

    /// A queue's URL by its key in stack.json (`orders`, `ordersDlq`, ...).
    pub fn queue_url(&self, key: &str) -> Result<&str> {
        self.resources
            .queue_urls
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("no queue {key:?} in the local stack"))
    }

    /// A queue's ARN by its key.
    pub fn queue_arn(&self, key: &str) -> Result<&str> {
        self.resources
            .queue_arns
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("no queue {key:?} in the local stack"))
    }

    /// Sends one message; FIFO queues get `group` (default `"default"`).
    pub async fn send(&self, queue_key: &str, body: &str, group: Option<&str>) -> Result<String> {
        let queue = self.spec.queue(queue_key)?;
        let mut req = self.sqs.send_message().queue_url(self.queue_url(queue_key)?).message_body(body);
        if queue.fifo {
            req = req.message_group_id(group.unwrap_or("default"));
            if !queue.content_based_deduplication {
                req = req.message_deduplication_id(format!("{:x}", fnv1a(body.as_bytes())));
            }
        }
        let out = req.send().await.with_context(|| format!("sending to queue {}", queue.name))?;
        Ok(out.message_id().unwrap_or_default().to_owned())
    }

    /// Messages waiting or in flight in a queue.
    ///
    /// The attributes are asked for in-flight first, then delayed, then
    /// visible. moto computes each one over the queue's messages at its own
    /// moment, in the order asked, so a message whose visibility timeout ends
    /// between two of them is counted by neither when visible comes first.
    /// `drain` then saw an empty queue and stopped with that message left on
    /// it (a `driver_failures` run in CI). In this order a message can only
    /// move from an earlier count to a later one while nothing receives: a
    /// message whose timeout or delay ends is counted at least once (twice,
    /// at worst, which only makes `drain` look again).
    pub async fn queue_depth(&self, queue_key: &str) -> Result<u64> {
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(self.queue_url(queue_key)?)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .with_context(|| format!("reading the depth of queue {queue_key}"))?;
        Ok(out.attributes().map(|a| a.values().filter_map(|v| v.parse::<u64>().ok()).sum()).unwrap_or(0))
    }

    /// Uploads a file's bytes under `key`.
    pub async fn put_object(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        self.s3
            .put_object()
            .bucket(&self.spec.bucket.name)
            .key(key)
            .body(bytes.into())
            .send()
            .await
            .with_context(|| format!("uploading s3://{}/{key}", self.spec.bucket.name))?;
        Ok(())
    }

    /// Uploads every file of `events/data/` as `incoming/<file name>` (the
    /// notification prefix of stack.json). Returns the keys, sorted.
    pub async fn upload_sample_data(&self) -> Result<Vec<String>> {
        let dir = self.root.join("events").join("data");
        let prefix =
            &self.spec.bucket.notifications.first().context("stack.json declares no bucket notification")?.prefix;
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        let mut keys = Vec::new();
        for file in files {
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .with_context(|| format!("{} has no UTF-8 file name", file.display()))?;
            let key = format!("{prefix}{name}");
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            self.put_object(&key, bytes).await?;
            keys.push(key);
        }
        Ok(keys)
    }

    /// Every item of a table (scan, all pages).
    pub async fn scan(
        &self,
        table_key: &str,
    ) -> Result<Vec<std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>>> {
        let table = &self.spec.table(table_key)?.name;
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .dynamodb
                .scan()
                .table_name(table)
                .set_exclusive_start_key(start)
                .send()
                .await
                .with_context(|| format!("scanning table {table}"))?;
            items.extend(out.items().iter().cloned());
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(items);
            }
        }
    }

    /// One DynamoDB Streams API call as raw JSON to the DynamoDB endpoint
    /// (both engines route it by the `X-Amz-Target` prefix; moto also by the
    /// credential scope's service): records come back in the emulator's own
    /// shape, not an SDK round-trip of it.
    pub async fn streams_call(&self, operation: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let region = &self.spec.region;
        let response = self
            .http
            .post(&self.dynamodb_endpoint)
            .header("Content-Type", "application/x-amz-json-1.0")
            .header("X-Amz-Target", format!("{STREAMS_TARGET_PREFIX}.{operation}"))
            .header(
                "Authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/20260101/{region}/dynamodb/aws4_request, SignedHeaders=host, Signature=0",
                ),
            )
            .body(body.to_string())
            .send()
            .await
            .with_context(|| format!("DynamoDB Streams {operation}"))?;
        let status = response.status();
        let text = response.text().await.with_context(|| format!("reading DynamoDB Streams {operation}"))?;
        if !status.is_success() {
            bail!("DynamoDB Streams {operation}: HTTP {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("DynamoDB Streams {operation} returned non-JSON: {text}"))
    }

    /// Every record of a table's stream so far, shard by shard, each shard
    /// in order: the order in which the table's writes happened.
    pub async fn stream_records(&self, table_key: &str) -> Result<Vec<serde_json::Value>> {
        use serde_json::{Value, json};
        let arn =
            self.resources.stream_arns.get(table_key).with_context(|| format!("table {table_key} has no stream"))?;
        let description = self.streams_call("DescribeStream", json!({ "StreamArn": arn })).await?;
        let shards: Vec<String> = description
            .pointer("/StreamDescription/Shards")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| s.get("ShardId").and_then(Value::as_str).map(str::to_owned))
            .collect();
        let mut records = Vec::new();
        for shard in shards {
            let start = json!({ "StreamArn": arn, "ShardId": shard, "ShardIteratorType": "TRIM_HORIZON" });
            let mut iterator = self.streams_call("GetShardIterator", start).await?.get("ShardIterator").cloned();
            // An open shard always hands out a next iterator: its end so far
            // is the first empty page.
            while let Some(Value::String(it)) = iterator {
                let page = self.streams_call("GetRecords", json!({ "ShardIterator": it, "Limit": 1000 })).await?;
                let batch = page.get("Records").and_then(Value::as_array).cloned().unwrap_or_default();
                if batch.is_empty() {
                    break;
                }
                records.extend(batch);
                iterator = page.get("NextShardIterator").cloned();
            }
        }
        Ok(records)
    }

    async fn create_resources(&mut self) -> Result<()> {
        self.create_queues().await?;
        self.create_tables().await?;
        self.create_kinesis_streams().await?;
        self.create_bucket().await
    }

    /// Creates the declared Kinesis streams on moto, with their shards.
    async fn create_kinesis_streams(&mut self) -> Result<()> {
        use serde_json::json;
        let spec = self.spec.clone();
        for (key, stream) in &spec.streams {
            self.kinesis_call("CreateStream", json!({ "StreamName": stream.name, "ShardCount": stream.shard_count }))
                .await
                .with_context(|| format!("creating Kinesis stream {}", stream.name))?;
            // moto's streams are ACTIVE at once; Kinesis's take a while.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            let arn = loop {
                let summary = self.kinesis_call("DescribeStreamSummary", json!({ "StreamName": stream.name })).await?;
                let status = summary.pointer("/StreamDescriptionSummary/StreamStatus").and_then(|s| s.as_str());
                if status == Some("ACTIVE") {
                    break summary
                        .pointer("/StreamDescriptionSummary/StreamARN")
                        .and_then(|a| a.as_str())
                        .context("DescribeStreamSummary returned no StreamARN")?
                        .to_owned();
                }
                if std::time::Instant::now() > deadline {
                    bail!("Kinesis stream {} is {status:?}, not ACTIVE, after 30 s", stream.name);
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            };
            self.resources.kinesis_arns.insert(key.clone(), arn);
        }
        Ok(())
    }

    /// A raw JSON call to moto's Kinesis Data Streams API (the workspace
    /// builds no Kinesis SDK client for the stack alone).
    pub async fn kinesis_call(&self, operation: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let region = &self.spec.region;
        let response = self
            .http
            .post(&self.endpoint)
            .header("Content-Type", "application/x-amz-json-1.1")
            .header("X-Amz-Target", format!("{KINESIS_TARGET_PREFIX}.{operation}"))
            .header(
                "Authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/20260101/{region}/kinesis/aws4_request, SignedHeaders=host, Signature=0",
                ),
            )
            .body(body.to_string())
            .send()
            .await
            .with_context(|| format!("Kinesis {operation}"))?;
        let status = response.status();
        let text = response.text().await.with_context(|| format!("reading Kinesis {operation}"))?;
        if !status.is_success() {
            bail!("Kinesis {operation}: HTTP {status}: {text}");
        }
        if text.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("Kinesis {operation} returned non-JSON: {text}"))
    }

    /// A Kinesis stream's ARN by its key.
    pub fn kinesis_arn(&self, key: &str) -> Result<&str> {
        self.resources
            .kinesis_arns
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("no Kinesis stream {key:?} in the local stack"))
    }

    /// Puts records on a Kinesis stream (`PutRecords`, 500 at a time), each
    /// `(partition key, data)`; returns each record's `(shard, sequence
    /// number)`, in order.
    pub async fn put_kinesis_records(&self, key: &str, records: &[(String, Vec<u8>)]) -> Result<Vec<(String, String)>> {
        use serde_json::json;
        let name = &self.spec.stream(key)?.name;
        let mut out = Vec::with_capacity(records.len());
        for chunk in records.chunks(500) {
            let entries: Vec<serde_json::Value> = chunk
                .iter()
                .map(|(pk, data)| json!({ "PartitionKey": pk, "Data": aws_smithy_types::base64::encode(data) }))
                .collect();
            let answer = self.kinesis_call("PutRecords", json!({ "StreamName": name, "Records": entries })).await?;
            let results = answer.get("Records").and_then(|r| r.as_array()).context("PutRecords: no Records")?;
            for r in results {
                if let Some(code) = r.get("ErrorCode").and_then(|c| c.as_str()) {
                    bail!("PutRecords to {name}: {code}: {}", r.get("ErrorMessage").unwrap_or(&json!("")));
                }
                let field = |f: &str| r.get(f).and_then(|v| v.as_str()).map(str::to_owned);
                out.push((
                    field("ShardId").context("PutRecords: no ShardId")?,
                    field("SequenceNumber").context("PutRecords: no SequenceNumber")?,
                ));
            }
        }
        Ok(out)
    }

    async fn create_queues(&mut self) -> Result<()> {
        let spec = self.spec.clone();
        for (key, queue) in &spec.queues {
            let mut redrive = None;
            if let Some(dlq) = &queue.dead_letter_queue {
                let (url, arn) = self.create_queue(dlq, queue.fifo, false, None).await?;
                let max =
                    queue.max_receive_count.with_context(|| format!("queue {key} has a DLQ but no maxReceiveCount"))?;
                redrive = Some(serde_json::json!({ "deadLetterTargetArn": arn, "maxReceiveCount": max }).to_string());
                self.resources.queue_urls.insert(dlq_key(key), url);
                self.resources.queue_arns.insert(dlq_key(key), arn);
            }
            let (url, arn) =
                self.create_queue(&queue.name, queue.fifo, queue.content_based_deduplication, redrive).await?;
            self.resources.queue_urls.insert(key.clone(), url);
            self.resources.queue_arns.insert(key.clone(), arn);
        }
        Ok(())
    }

    async fn create_queue(
        &self,
        name: &str,
        fifo: bool,
        content_dedup: bool,
        redrive: Option<String>,
    ) -> Result<(String, String)> {
        let mut req = self.sqs.create_queue().queue_name(name).attributes(
            QueueAttributeName::VisibilityTimeout,
            // The one local deviation (stack.json `local`): retries reappear
            // within a test instead of minutes later.
            self.spec.local.visibility_timeout_seconds.to_string(),
        );
        if fifo {
            req = req.attributes(QueueAttributeName::FifoQueue, "true");
            if content_dedup {
                req = req.attributes(QueueAttributeName::ContentBasedDeduplication, "true");
            }
        }
        if let Some(policy) = redrive {
            req = req.attributes(QueueAttributeName::RedrivePolicy, policy);
        }
        let url = req
            .send()
            .await
            .with_context(|| format!("creating queue {name}"))?
            .queue_url()
            .context("CreateQueue returned no URL")?
            .to_owned();
        let arn = self
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .with_context(|| format!("reading the ARN of queue {name}"))?
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .context("GetQueueAttributes returned no QueueArn")?;
        Ok((url, arn))
    }

    async fn create_tables(&mut self) -> Result<()> {
        let spec = self.spec.clone();
        for (key, table) in &spec.tables {
            let mut req = self
                .dynamodb
                .create_table()
                .table_name(&table.name)
                .billing_mode(BillingMode::PayPerRequest)
                .key_schema(key_element(&table.hash_key, KeyType::Hash)?)
                .attribute_definitions(attribute(&table.hash_key)?);
            if let Some(range) = &table.range_key {
                req = req.key_schema(key_element(range, KeyType::Range)?).attribute_definitions(attribute(range)?);
            }
            if let Some(view) = &table.stream_view_type {
                req = req.stream_specification(
                    StreamSpecification::builder()
                        .stream_enabled(true)
                        .stream_view_type(StreamViewType::from(view.as_str()))
                        .build()
                        .context("stream specification")?,
                );
            }
            let out = req.send().await.with_context(|| format!("creating table {}", table.name))?;
            if let Some(arn) = out.table_description().and_then(|d| d.latest_stream_arn()) {
                self.resources.stream_arns.insert(key.clone(), arn.to_owned());
            }
            if let Some(ttl) = &table.ttl_attribute {
                self.dynamodb
                    .update_time_to_live()
                    .table_name(&table.name)
                    .time_to_live_specification(
                        TimeToLiveSpecification::builder()
                            .enabled(true)
                            .attribute_name(ttl)
                            .build()
                            .context("TTL specification")?,
                    )
                    .send()
                    .await
                    .with_context(|| format!("enabling TTL on table {}", table.name))?;
            }
            // DynamoDB Local has no backups API (UnknownOperationException);
            // point-in-time recovery changes nothing the stack can observe.
            if table.point_in_time_recovery && self.engine == Engine::Moto {
                self.dynamodb
                    .update_continuous_backups()
                    .table_name(&table.name)
                    .point_in_time_recovery_specification(
                        PointInTimeRecoverySpecification::builder()
                            .point_in_time_recovery_enabled(true)
                            .build()
                            .context("PITR specification")?,
                    )
                    .send()
                    .await
                    .with_context(|| format!("enabling PITR on table {}", table.name))?;
            }
        }
        Ok(())
    }

    async fn create_bucket(&self) -> Result<()> {
        let bucket = &self.spec.bucket;
        self.s3
            .create_bucket()
            .bucket(&bucket.name)
            .send()
            .await
            .with_context(|| format!("creating bucket {}", bucket.name))?;
        let mut config = NotificationConfiguration::builder();
        for n in &bucket.notifications {
            let filter = NotificationConfigurationFilter::builder()
                .key(
                    S3KeyFilter::builder()
                        .filter_rules(FilterRule::builder().name(FilterRuleName::Prefix).value(&n.prefix).build())
                        .build(),
                )
                .build();
            let mut queue = QueueConfiguration::builder().queue_arn(self.queue_arn(&n.queue)?).filter(filter);
            for e in &n.events {
                queue = queue.events(Event::from(e.as_str()));
            }
            config = config.queue_configurations(queue.build().context("queue notification")?);
        }
        self.s3
            .put_bucket_notification_configuration()
            .bucket(&bucket.name)
            .notification_configuration(config.build())
            .send()
            .await
            .with_context(|| format!("configuring notifications of bucket {}", bucket.name))?;
        Ok(())
    }
}

fn key_element(name: &str, kind: KeyType) -> Result<KeySchemaElement> {
    KeySchemaElement::builder().attribute_name(name).key_type(kind).build().context("key schema element")
}

fn attribute(name: &str) -> Result<AttributeDefinition> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .context("attribute definition")
}

/// A tiny stable hash for FIFO deduplication ids (queues without
/// content-based deduplication).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// SDK configuration for the emulator at `endpoint`.
pub async fn sdk_config(endpoint: &str, region: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        // The local stack speaks plain HTTP on loopback: no TLS stack needed.
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new(region.to_owned()))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            ACCESS_KEY_ID,
            SECRET_ACCESS_KEY,
            None,
            None,
            "local-stack",
        ))
        .load()
        .await
}

async fn start_moto(run: &RunDir, venv: &Venv, root: &Path) -> Result<(ChildGroup, u16)> {
    let http = reqwest::Client::new();
    let mut last_log = String::new();
    for attempt in 1..=START_ATTEMPTS {
        let port = free_port()?;
        let mut child = ChildGroup::spawn(
            run,
            &format!("moto-{attempt}"),
            &venv.tool("moto_server"),
            &["-H".into(), "127.0.0.1".into(), "-p".into(), port.to_string()],
            &[],
            root,
        )?;
        let url = format!("http://127.0.0.1:{port}/");
        let banner = format!("{MOTO_READY_LINE}{port}");
        // Ready = our moto printed that it bound the port (so the answer
        // cannot come from another process on it) and it answers HTTP.
        let ready = wait_ready(&mut child, MOTO_READY_TIMEOUT, |log| {
            let http = http.clone();
            let url = url.clone();
            let bound = log.contains(&banner);
            async move { bound && http.get(&url).send().await.is_ok() }
        })
        .await?;
        if ready {
            return Ok((child, port));
        }
        last_log = child.log_tail(20);
    }
    bail!("moto_server did not start after {START_ATTEMPTS} attempts; last log:\n{last_log}")
}

async fn start_dynamodb_local(
    run: &RunDir,
    install: &dynamodb_local::Install,
    root: &Path,
) -> Result<(ChildGroup, u16)> {
    let http = reqwest::Client::new();
    let mut last_log = String::new();
    for attempt in 1..=START_ATTEMPTS {
        let port = free_port()?;
        let (program, args) = install.command_line(port)?;
        let mut child = ChildGroup::spawn(run, &format!("dynamodb-local-{attempt}"), &program, &args, &[], root)?;
        let url = format!("http://127.0.0.1:{port}/");
        // Ready = ours printed its configuration (its port is bound by then:
        // a taken port ends it with a BindException) and it answers HTTP.
        let ready = wait_ready(&mut child, DYNAMODB_LOCAL_READY_TIMEOUT, |log| {
            let http = http.clone();
            let url = url.clone();
            let started = log.contains(DYNAMODB_LOCAL_READY_LINE) && log.contains(&port.to_string());
            async move { started && http.get(&url).send().await.is_ok() }
        })
        .await?;
        if ready && !child.exited() {
            return Ok((child, port));
        }
        last_log = child.log_tail(20);
    }
    bail!("DynamoDB Local did not start after {START_ATTEMPTS} attempts; last log:\n{last_log}")
}
