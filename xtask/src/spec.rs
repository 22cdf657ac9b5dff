//! The stack declaration, `infra/stack.json`: the one place functions,
//! names and settings live. Each function declares its environment, the
//! tables it reads and writes (and how: an access level of `tableAccess`),
//! the bucket prefixes it reads or writes and the queues it sends to; the
//! mappings say what feeds it. The local stack creates and serves exactly
//! this (plus the `local` overrides); `cargo xtask infra` writes the SAM
//! template from it and the CDK app reads it, so nothing here or in the
//! tests hard-codes a resource name, and a function's IAM permissions follow
//! from its declaration ([`StackSpec::permissions`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;

/// The declaration, relative to the workspace root.
pub const STACK_JSON: &str = "infra/stack.json";

/// The placeholder for the stack name in resource names.
const STACK_PLACEHOLDER: &str = "{stack}";

/// Lambda's longest function name.
const MAX_FUNCTION_NAME: usize = 64;

/// What a Lambda SQS event source mapping needs on its queue.
pub const QUEUE_CONSUME_ACTIONS: [&str; 3] = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"];
/// What a Lambda DynamoDB stream event source mapping needs on its stream.
pub const STREAM_READ_ACTIONS: [&str; 3] =
    ["dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator"];
/// What a Lambda Kinesis event source mapping needs on its stream
/// (<https://docs.aws.amazon.com/lambda/latest/dg/with-kinesis.html#events-kinesis-permissions>).
pub const KINESIS_READ_ACTIONS: [&str; 5] = [
    "kinesis:DescribeStream",
    "kinesis:DescribeStreamSummary",
    "kinesis:GetRecords",
    "kinesis:GetShardIterator",
    "kinesis:ListShards",
];
/// Reading objects: `GetObjectVersion` too, since notifications of a
/// versioned bucket name the version.
pub const OBJECT_READ_ACTIONS: [&str; 2] = ["s3:GetObject", "s3:GetObjectVersion"];
/// Writing objects.
pub const OBJECT_WRITE_ACTIONS: [&str; 1] = ["s3:PutObject"];

/// `infra/stack.json`, with `{stack}` already substituted in every name.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StackSpec {
    pub stack_name: String,
    pub region: String,
    /// Access level -> the DynamoDB item actions it allows on a table.
    pub table_access: BTreeMap<String, Vec<String>>,
    pub functions: BTreeMap<String, FunctionSpec>,
    pub bucket: BucketSpec,
    pub queues: BTreeMap<String, QueueSpec>,
    pub tables: BTreeMap<String, TableSpec>,
    /// Kinesis data streams (local only for now: see [`StackSpec::validate`]).
    #[serde(default)]
    pub streams: BTreeMap<String, KinesisStreamSpec>,
    pub mappings: Vec<MappingSpec>,
    pub local: LocalSpec,
}

/// A Kinesis data stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KinesisStreamSpec {
    pub name: String,
    /// Shards it is created with (provisioned mode).
    pub shard_count: u32,
}

/// A function: its binary is the package of the same name, at `path`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionSpec {
    pub description: String,
    /// Deployed by the SAM template and the CDK app (default); `false`
    /// runs it in the local stack only (the examples).
    #[serde(default = "yes")]
    pub deploy: bool,
    /// The crate's directory, relative to the workspace root.
    pub path: String,
    /// Its fixture events for `cargo lambda invoke`: the `.json` files whose
    /// path (from the workspace root) starts with this.
    pub fixtures: String,
    pub timeout_seconds: u64,
    pub memory_mi_b: u64,
    /// Its variables, and where each value comes from.
    #[serde(default)]
    pub environment: BTreeMap<String, EnvSource>,
    /// Table key -> access level (a key of `tableAccess`).
    #[serde(default)]
    pub tables: BTreeMap<String, String>,
    /// The uploads bucket's prefixes it reads and writes.
    #[serde(default)]
    pub bucket: BucketAccess,
    /// Queues it sends messages to.
    #[serde(default)]
    pub sends_to: Vec<String>,
}

fn yes() -> bool {
    true
}

/// Object prefixes of the uploads bucket (each ends with `/`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct BucketAccess {
    #[serde(default)]
    pub read: Vec<String>,
    #[serde(default)]
    pub write: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BucketSpec {
    pub name: String,
    pub notifications: Vec<NotificationSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationSpec {
    /// Key into [`StackSpec::queues`].
    pub queue: String,
    pub events: Vec<String>,
    pub prefix: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueSpec {
    pub name: String,
    pub fifo: bool,
    #[serde(default)]
    pub content_based_deduplication: bool,
    pub visibility_timeout_seconds: u64,
    pub dead_letter_queue: Option<String>,
    pub max_receive_count: Option<u32>,
    /// The description of its URL's stack output.
    pub description: Option<String>,
    /// The description of the alarm on its dead-letter queue (or on itself,
    /// when it is a stream mapping's failure destination).
    pub alarm_description: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableSpec {
    pub name: String,
    pub hash_key: String,
    pub range_key: Option<String>,
    pub stream_view_type: Option<String>,
    pub ttl_attribute: Option<String>,
    #[serde(default)]
    pub point_in_time_recovery: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MappingSpec {
    pub function: String,
    pub source: MappingSource,
    pub batch_size: usize,
    #[serde(default)]
    pub maximum_batching_window_seconds: u64,
    #[serde(default)]
    pub report_batch_item_failures: bool,
    pub starting_position: Option<String>,
    #[serde(default)]
    pub bisect_batch_on_function_error: bool,
    pub maximum_retry_attempts: Option<u32>,
    pub on_failure: Option<OnFailureSpec>,
    #[serde(default)]
    pub filter_patterns: Vec<String>,
    /// SQS: the most concurrent invocations the mapping makes (2-1000).
    pub maximum_concurrency: Option<u32>,
    /// Streams: concurrent batches per shard (1-10).
    pub parallelization_factor: Option<u32>,
    /// Kinesis and DynamoDB streams: records older than this are not sent
    /// to the function but to the on-failure destination (-1: no limit).
    pub maximum_record_age_in_seconds: Option<i64>,
    /// Kinesis and DynamoDB streams: tumbling windows of this many seconds
    /// (1-900), each window's state carried between its invocations.
    pub tumbling_window_in_seconds: Option<u64>,
}

/// What a mapping reads: a queue, a table's stream or a Kinesis data
/// stream (keys into the spec).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum MappingSource {
    Queue { queue: String },
    Table { table: String },
    Stream { stream: String },
}

impl MappingSource {
    /// Whether the source is a stream (a table's or Kinesis), read in shard
    /// order from a checkpoint.
    pub fn is_stream(&self) -> bool {
        !matches!(self, Self::Queue { .. })
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct OnFailureSpec {
    pub queue: String,
}

/// Where an environment variable's value comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum EnvSource {
    /// The table's name.
    Table { table: String },
    /// The queue's URL.
    Queue { queue: String },
    /// This value.
    Value(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalSpec {
    pub visibility_timeout_seconds: u64,
}

/// One IAM permission a function's role needs: `actions` on `resource`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Permission {
    /// The statement's id (`Logs`, `ConsumeQueues`, `StateTable`, ...).
    pub sid: String,
    pub actions: Vec<String>,
    pub resources: Vec<Resource>,
}

/// What a permission is on, by the declaration's keys.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    /// The function's own log group.
    LogGroup,
    Queue(String),
    Table(String),
    Stream(String),
    /// A Kinesis data stream, by its key.
    KinesisStream(String),
    /// Objects of the uploads bucket under a prefix.
    Objects(String),
    /// `*`: only for actions IAM has no resource type for.
    Any,
}

impl StackSpec {
    /// `infra/stack.json` of this workspace, read now: a declaration changed
    /// by hand or by `cargo xtask new` takes effect without rebuilding xtask.
    pub fn load() -> Result<Self> {
        Self::load_from(&crate::workspace::root())
    }

    /// `infra/stack.json` of the workspace at `root`.
    pub fn load_from(root: &Path) -> Result<Self> {
        let path = root.join(STACK_JSON);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text)
    }

    /// Parses a stack declaration, resolves `{stack}` in every name, and
    /// checks it ([`StackSpec::validate`]).
    pub fn parse(json: &str) -> Result<Self> {
        let raw: serde_json::Value = serde_json::from_str(json).context("infra/stack.json is not valid JSON")?;
        let stack = raw
            .get("stackName")
            .and_then(serde_json::Value::as_str)
            .context("infra/stack.json: stackName is missing")?
            .to_owned();
        let resolved = json.replace(STACK_PLACEHOLDER, &stack);
        let spec: Self =
            serde_json::from_str(&resolved).context("infra/stack.json does not match the expected shape")?;
        spec.validate().context("infra/stack.json")?;
        Ok(spec)
    }

    /// Every reference points at something declared, every table a
    /// function's environment names is one it declares access to, and the
    /// settings are ones Lambda accepts.
    pub fn validate(&self) -> Result<()> {
        for n in &self.bucket.notifications {
            self.queue(&n.queue)?;
            ensure!(n.prefix.ends_with('/'), "bucket notification prefix {:?} does not end with /", n.prefix);
        }
        for (key, q) in &self.queues {
            if q.dead_letter_queue.is_some() {
                ensure!(q.max_receive_count.is_some(), "queue {key} has a deadLetterQueue but no maxReceiveCount");
            }
            ensure!(
                !q.fifo || q.name.ends_with(".fifo"),
                "FIFO queue {key}: its name {:?} must end with .fifo",
                q.name
            );
        }
        for (level, actions) in &self.table_access {
            ensure!(!actions.is_empty(), "tableAccess {level} allows nothing");
            for action in actions {
                ensure!(
                    action.starts_with("dynamodb:") && !action.contains('*'),
                    "tableAccess {level}: {action:?} is not a single DynamoDB action"
                );
            }
        }
        for (name, f) in &self.functions {
            check_function_name(name, &self.stack_name)?;
            let what = format!("function {name}");
            for (table, level) in &f.tables {
                self.table(table).with_context(|| format!("{what}: tables"))?;
                ensure!(self.table_access.contains_key(level), "{what}: table {table}: no tableAccess level {level:?}");
            }
            for (variable, source) in &f.environment {
                match source {
                    EnvSource::Table { table } => {
                        self.table(table).with_context(|| format!("{what}: {variable}"))?;
                        ensure!(
                            f.tables.contains_key(table),
                            "{what} reads the name of table {table} from {variable} but declares no access to it \
                             (add \"{table}\": \"<level>\" to its \"tables\")"
                        );
                    }
                    EnvSource::Queue { queue } => {
                        self.queue(queue).with_context(|| format!("{what}: {variable}"))?;
                    }
                    EnvSource::Value(_) => {}
                }
            }
            for queue in &f.sends_to {
                self.queue(queue).with_context(|| format!("{what}: sendsTo"))?;
            }
            for prefix in f.bucket.read.iter().chain(&f.bucket.write) {
                ensure!(prefix.ends_with('/'), "{what}: bucket prefix {prefix:?} does not end with /");
            }
            ensure!(!f.fixtures.is_empty(), "{what}: fixtures is empty");
            ensure!((1..=900).contains(&f.timeout_seconds), "{what}: timeoutSeconds must be 1 to 900");
            ensure!((128..=10240).contains(&f.memory_mi_b), "{what}: memoryMiB must be 128 to 10240");
        }
        for m in &self.mappings {
            let what = format!("mapping of {}", m.function);
            let function = self.functions.get(&m.function).with_context(|| format!("{what}: no such function"))?;
            match &m.source {
                MappingSource::Queue { queue } => {
                    let q = self.queue(queue).with_context(|| what.clone())?;
                    ensure!(
                        !q.fifo || m.maximum_batching_window_seconds == 0,
                        "{what}: a batching window is not supported for FIFO queue {queue}"
                    );
                    ensure!(
                        q.visibility_timeout_seconds >= 6 * function.timeout_seconds,
                        "{what}: queue {queue}'s visibility timeout ({} s) is under six times the function's timeout \
                         ({} s), as AWS advises for Lambda event sources",
                        q.visibility_timeout_seconds,
                        function.timeout_seconds
                    );
                    // Above 10 only with a batching window, and never on FIFO.
                    let most = if q.fifo || m.maximum_batching_window_seconds == 0 { 10 } else { 10_000 };
                    ensure!((1..=most).contains(&m.batch_size), "{what}: batchSize must be 1 to {most} here");
                    ensure!(m.parallelization_factor.is_none(), "{what}: parallelizationFactor is for streams only");
                    ensure!(m.starting_position.is_none(), "{what}: startingPosition is for streams only");
                    if let Some(n) = m.maximum_concurrency {
                        ensure!((2..=1000).contains(&n), "{what}: maximumConcurrency must be 2 to 1000");
                    }
                }
                MappingSource::Table { table } => {
                    let t = self.table(table).with_context(|| what.clone())?;
                    ensure!(t.stream_view_type.is_some(), "{what}: table {table} has no stream (streamViewType)");
                    self.validate_stream_mapping(m, &what)?;
                }
                MappingSource::Stream { stream } => {
                    let s = self.stream(stream).with_context(|| what.clone())?;
                    ensure!((1..=500).contains(&s.shard_count), "stream {stream}: shardCount must be 1 to 500");
                    // The SAM template and the CDK app declare no Kinesis
                    // stream yet: a Kinesis mapping runs in the local stack.
                    ensure!(
                        !function.deploy,
                        "{what}: Kinesis mappings run in the local stack only for now (the SAM template and the \
                         CDK app declare no Kinesis stream): set \"deploy\": false on {}",
                        m.function
                    );
                    self.validate_stream_mapping(m, &what)?;
                }
            }
            if let Some(f) = &m.on_failure {
                self.queue(&f.queue).with_context(|| format!("{what}: onFailure"))?;
                ensure!(m.source.is_stream(), "{what}: onFailure is for stream mappings");
            }
            if !m.source.is_stream() {
                ensure!(m.maximum_record_age_in_seconds.is_none(), "{what}: maximumRecordAgeInSeconds is for streams");
                ensure!(m.tumbling_window_in_seconds.is_none(), "{what}: tumblingWindowInSeconds is for streams");
            }
        }
        Ok(())
    }

    /// The settings of a stream mapping (a table's or Kinesis), as Lambda's
    /// CreateEventSourceMapping accepts them.
    fn validate_stream_mapping(&self, m: &MappingSpec, what: &str) -> Result<()> {
        let position = m
            .starting_position
            .as_deref()
            .with_context(|| format!("{what}: a stream mapping needs a startingPosition"))?;
        ensure!(
            matches!(position, "TRIM_HORIZON" | "LATEST"),
            "{what}: startingPosition must be TRIM_HORIZON or LATEST (AT_TIMESTAMP is not supported here)"
        );
        ensure!((1..=10_000).contains(&m.batch_size), "{what}: batchSize must be 1 to 10000");
        ensure!(m.maximum_batching_window_seconds <= 300, "{what}: maximumBatchingWindowSeconds must be 0 to 300");
        ensure!(m.maximum_concurrency.is_none(), "{what}: maximumConcurrency is for SQS only");
        if let Some(n) = m.parallelization_factor {
            ensure!((1..=10).contains(&n), "{what}: parallelizationFactor must be 1 to 10");
        }
        if let Some(age) = m.maximum_record_age_in_seconds {
            ensure!(
                age == -1 || (60..=604_800).contains(&age),
                "{what}: maximumRecordAgeInSeconds must be -1 or 60 to 604800"
            );
        }
        if let Some(n) = m.maximum_retry_attempts {
            ensure!(n <= 10_000, "{what}: maximumRetryAttempts must be -1 to 10000");
        }
        if let Some(w) = m.tumbling_window_in_seconds {
            ensure!((1..=900).contains(&w), "{what}: tumblingWindowInSeconds must be 1 to 900");
        }
        Ok(())
    }

    /// A Kinesis stream by its key.
    pub fn stream(&self, key: &str) -> Result<&KinesisStreamSpec> {
        self.streams.get(key).with_context(|| format!("no Kinesis stream {key:?} is declared"))
    }

    /// A queue by its key (`orders`, `ordersFifo`, ...).
    pub fn queue(&self, key: &str) -> Result<&QueueSpec> {
        self.queues.get(key).with_context(|| format!("no queue {key:?} is declared"))
    }

    /// A table by its key (`state`, `idempotency`).
    pub fn table(&self, key: &str) -> Result<&TableSpec> {
        self.tables.get(key).with_context(|| format!("no table {key:?} is declared"))
    }

    /// A function by its name.
    pub fn function(&self, name: &str) -> Result<&FunctionSpec> {
        self.functions.get(name).with_context(|| {
            format!(
                "no function {name:?} is declared (declared: {})",
                self.function_names().collect::<Vec<_>>().join(", ")
            )
        })
    }

    /// The names of the function binaries (`s3-ingest`, ...).
    pub fn function_names(&self) -> impl Iterator<Item = &str> {
        self.functions.keys().map(String::as_str)
    }

    /// Queue keys that mappings consume (the queues `drain` empties).
    pub fn source_queue_keys(&self) -> Vec<&str> {
        self.mappings
            .iter()
            .filter_map(|m| match &m.source {
                MappingSource::Queue { queue } => Some(queue.as_str()),
                MappingSource::Table { .. } | MappingSource::Stream { .. } => None,
            })
            .collect()
    }

    /// The mappings that feed `function`.
    pub fn mappings_of<'a>(&'a self, function: &'a str) -> impl Iterator<Item = &'a MappingSpec> + 'a {
        self.mappings.iter().filter(move |m| m.function == function)
    }

    /// The fixture events of `function` (`.json` files under its `fixtures`
    /// prefix), relative to the workspace `root`, sorted.
    pub fn fixtures_of(&self, root: &Path, function: &str) -> Result<Vec<PathBuf>> {
        let prefix = &self.function(function)?.fixtures;
        let (dir, stem) = match prefix.rsplit_once('/') {
            Some((dir, stem)) => (dir, stem),
            None => ("", prefix.as_str()),
        };
        let mut found = Vec::new();
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            return Ok(found);
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(stem) && name.ends_with(".json") && entry.path().is_file() {
                found.push(Path::new(dir).join(name));
            }
        }
        found.sort();
        Ok(found)
    }

    /// Marks the local-only functions deployed (the offline checks write
    /// them into a template of their own, to exercise the deploy path of
    /// functions of other domains), except those fed by a Kinesis stream:
    /// neither the SAM template nor the CDK app declares Kinesis streams
    /// yet (the app's `deployedSpec(spec, true)` leaves them out too).
    pub fn deploy_local_only(&mut self) {
        let kinesis: BTreeSet<String> = self
            .mappings
            .iter()
            .filter(|m| matches!(m.source, MappingSource::Stream { .. }))
            .map(|m| m.function.clone())
            .collect();
        for (name, f) in &mut self.functions {
            f.deploy = !kinesis.contains(name);
        }
    }

    /// What `cargo xtask infra` deploys: the functions whose `deploy` is not
    /// false, their mappings, and the queues, tables and bucket
    /// notifications they reference; nothing of local-only functions.
    pub fn deployed(&self) -> Self {
        let functions: BTreeMap<String, FunctionSpec> =
            self.functions.iter().filter(|(_, f)| f.deploy).map(|(k, f)| (k.clone(), f.clone())).collect();
        let mappings: Vec<MappingSpec> =
            self.mappings.iter().filter(|m| functions.contains_key(&m.function)).cloned().collect();
        let mut queues = BTreeSet::new();
        let mut tables = BTreeSet::new();
        for f in functions.values() {
            tables.extend(f.tables.keys().cloned());
            queues.extend(f.sends_to.iter().cloned());
            for source in f.environment.values() {
                match source {
                    EnvSource::Table { table } => {
                        tables.insert(table.clone());
                    }
                    EnvSource::Queue { queue } => {
                        queues.insert(queue.clone());
                    }
                    EnvSource::Value(_) => {}
                }
            }
        }
        let mut streams = BTreeSet::new();
        for m in &mappings {
            match &m.source {
                MappingSource::Queue { queue } => queues.insert(queue.clone()),
                MappingSource::Table { table } => tables.insert(table.clone()),
                MappingSource::Stream { stream } => streams.insert(stream.clone()),
            };
            if let Some(f) = &m.on_failure {
                queues.insert(f.queue.clone());
            }
        }
        let mut spec = self.clone();
        spec.functions = functions;
        spec.mappings = mappings;
        spec.queues.retain(|k, _| queues.contains(k));
        spec.tables.retain(|k, _| tables.contains(k));
        spec.streams.retain(|k, _| streams.contains(k));
        spec.bucket.notifications.retain(|n| queues.contains(&n.queue));
        spec
    }

    /// The IAM permissions `function` needs, from its declaration: its log
    /// group; the queues and streams its mappings read (and a stream
    /// mapping's failure destination); its tables at their access levels;
    /// its bucket prefixes; the queues it sends to. Nothing else: this is
    /// the least privilege the SAM template and the CDK app grant, and what
    /// the infra tests hold both to.
    pub fn permissions(&self, function: &str) -> Result<Vec<Permission>> {
        let f = self.function(function)?;
        let permission = |sid: &str, actions: &[&str], resources: Vec<Resource>| Permission {
            sid: sid.to_owned(),
            actions: actions.iter().map(|a| (*a).to_owned()).collect(),
            resources,
        };
        let mut out =
            vec![permission("Logs", &["logs:CreateLogStream", "logs:PutLogEvents"], vec![Resource::LogGroup])];
        let consumed: Vec<Resource> = self
            .mappings_of(function)
            .filter_map(|m| match &m.source {
                MappingSource::Queue { queue } => Some(Resource::Queue(queue.clone())),
                MappingSource::Table { .. } | MappingSource::Stream { .. } => None,
            })
            .collect();
        if !consumed.is_empty() {
            out.push(permission("ConsumeQueues", &QUEUE_CONSUME_ACTIONS, consumed));
        }
        let kinesis: Vec<Resource> = self
            .mappings_of(function)
            .filter_map(|m| match &m.source {
                MappingSource::Stream { stream } => Some(Resource::KinesisStream(stream.clone())),
                _ => None,
            })
            .collect();
        if !kinesis.is_empty() {
            out.push(permission("ReadKinesisStreams", &KINESIS_READ_ACTIONS, kinesis));
        }
        let streams: Vec<&MappingSpec> =
            self.mappings_of(function).filter(|m| matches!(m.source, MappingSource::Table { .. })).collect();
        if !streams.is_empty() {
            let read = streams
                .iter()
                .filter_map(|m| match &m.source {
                    MappingSource::Table { table } => Some(Resource::Stream(table.clone())),
                    MappingSource::Queue { .. } | MappingSource::Stream { .. } => None,
                })
                .collect();
            out.push(permission("ReadStreams", &STREAM_READ_ACTIONS, read));
            // ListStreams has no resource type: IAM accepts only `*`. It
            // lists stream ARNs, no data.
            out.push(permission("ListStreams", &["dynamodb:ListStreams"], vec![Resource::Any]));
            let failures: Vec<Resource> = streams
                .iter()
                .filter_map(|m| m.on_failure.as_ref().map(|f| Resource::Queue(f.queue.clone())))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            if !failures.is_empty() {
                out.push(permission("FailureDestinations", &["sqs:SendMessage"], failures));
            }
        }
        if !f.sends_to.is_empty() {
            let queues = f.sends_to.iter().map(|q| Resource::Queue(q.clone())).collect();
            out.push(permission("SendMessages", &["sqs:SendMessage"], queues));
        }
        if !f.bucket.read.is_empty() {
            let objects = f.bucket.read.iter().map(|p| Resource::Objects(p.clone())).collect();
            out.push(permission("ReadObjects", &OBJECT_READ_ACTIONS, objects));
        }
        if !f.bucket.write.is_empty() {
            let objects = f.bucket.write.iter().map(|p| Resource::Objects(p.clone())).collect();
            out.push(permission("WriteObjects", &OBJECT_WRITE_ACTIONS, objects));
        }
        for (table, level) in &f.tables {
            let actions = self.table_access.get(level).with_context(|| format!("no tableAccess level {level:?}"))?;
            out.push(Permission {
                sid: format!("{}Table", pascal(table)),
                actions: actions.clone(),
                resources: vec![Resource::Table(table.clone())],
            });
        }
        Ok(out)
    }
}

/// Checks that `name` can be a function, a package and a resource name:
/// lower-case ASCII letters, digits and single hyphens, starting with a
/// letter; `{stack}-<name>` within Lambda's 64 characters.
pub fn check_function_name(name: &str, stack_name: &str) -> Result<()> {
    let problem = if name.is_empty() {
        Some("it is empty".to_owned())
    } else if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        Some("it must start with a lower-case letter".to_owned())
    } else if let Some(c) = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
        Some(format!("{c:?} is not allowed (lower-case letters, digits and hyphens only)"))
    } else if name.ends_with('-') || name.contains("--") {
        Some("hyphens must separate words (no trailing or double hyphen)".to_owned())
    } else if stack_name.len() + 1 + name.len() > MAX_FUNCTION_NAME {
        Some(format!("the deployed name {stack_name}-{name} is longer than Lambda's {MAX_FUNCTION_NAME} characters"))
    } else {
        None
    };
    match problem {
        Some(problem) => bail!("{name:?} is not a valid function name: {problem}"),
        None => Ok(()),
    }
}

/// `s3-ingest` -> `S3Ingest`, `ordersFifo` -> `OrdersFifo`: the stems of
/// logical IDs (the CDK app's `pascal`).
pub fn pascal(name: &str) -> String {
    name.split(['-', '_'])
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed() -> String {
        std::fs::read_to_string(crate::workspace::root().join(STACK_JSON)).unwrap()
    }

    #[test]
    fn stack_json_resolves_every_name() {
        let spec = StackSpec::load().unwrap();
        let names = spec
            .queues
            .values()
            .map(|q| q.name.clone())
            .chain(spec.tables.values().map(|t| t.name.clone()))
            .chain([spec.bucket.name.clone()]);
        for name in names {
            assert!(name.starts_with(&spec.stack_name), "{name}");
            assert!(!name.contains('{'), "{name}");
        }
        for pipeline in ["s3-ingest", "sqs-consumer", "stream-aggregator"] {
            assert!(spec.functions[pipeline].deploy, "{pipeline}");
        }
    }

    #[test]
    fn dangling_reference_is_rejected() {
        let bad = committed().replace(r#""queue": "streamFailures""#, r#""queue": "nope""#);
        let err = StackSpec::parse(&bad).unwrap_err();
        assert!(format!("{err:#}").contains("nope"), "{err:#}");
    }

    #[test]
    fn a_table_in_the_environment_needs_declared_access() {
        let bad = committed().replacen(
            r#""tables": { "state": "readWrite", "idempotency": "idempotency" }"#,
            r#""tables": { "idempotency": "idempotency" }"#,
            1,
        );
        assert_ne!(bad, committed(), "the test's edit applies");
        let err = format!("{:#}", StackSpec::parse(&bad).unwrap_err());
        assert!(err.contains("reads the name of table state from STATE_TABLE but declares no access to it"), "{err}");
    }

    #[test]
    fn function_names_must_make_valid_crates_and_resources() {
        for good in ["payments", "a1", "order-events-2"] {
            check_function_name(good, "stream-processor").unwrap();
        }
        for (bad, why) in [
            ("Payments", "lower-case letter"),
            ("9lives", "lower-case letter"),
            ("pay_ments", "'_' is not allowed"),
            ("pay--ments", "hyphens"),
            ("payments-", "hyphens"),
            ("", "empty"),
            (&"x".repeat(50), "64 characters"),
        ] {
            let err = check_function_name(bad, "stream-processor").unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn examples_are_local_only_and_deploy_nothing_of_their_own() {
        let spec = StackSpec::load().unwrap();
        let deployed = spec.deployed();
        // The pipeline (and any function added with `cargo xtask new`) is
        // deployed; the examples and what only they use are not.
        for name in ["s3-ingest", "sqs-consumer", "stream-aggregator"] {
            assert!(deployed.functions.contains_key(name), "{name}");
        }
        for name in ["inventory-reservations", "ledger-notifier"] {
            assert!(!deployed.functions.contains_key(name), "{name}");
            assert_eq!(deployed.mappings_of(name).count(), 0, "{name}");
        }
        for queue in ["ingest", "orders", "ordersFifo", "streamFailures"] {
            assert!(deployed.queues.contains_key(queue), "{queue}");
        }
        assert!(!deployed.queues.contains_key("reservations"), "the examples' queue stays local");
        for table in ["state", "idempotency"] {
            assert!(deployed.tables.contains_key(table), "{table}");
        }
        assert!(!deployed.tables.contains_key("inventory") && !deployed.tables.contains_key("ledgerPayments"));
    }

    #[test]
    fn permissions_follow_the_declaration() {
        let spec = StackSpec::load().unwrap();
        let ingest = spec.permissions("s3-ingest").unwrap();
        let sids: Vec<&str> = ingest.iter().map(|p| p.sid.as_str()).collect();
        assert_eq!(
            sids,
            ["Logs", "ConsumeQueues", "SendMessages", "ReadObjects", "WriteObjects", "IdempotencyTable", "StateTable"]
        );
        let aggregator = spec.permissions("stream-aggregator").unwrap();
        assert!(aggregator.iter().any(|p| p.sid == "ListStreams" && p.resources == [Resource::Any]));
        assert!(aggregator.iter().any(|p| p.resources == [Resource::Queue("streamFailures".into())]), "{aggregator:?}");
        // Only stream readers get `*`, and only for ListStreams.
        for name in spec.function_names() {
            for p in spec.permissions(name).unwrap() {
                if p.resources.contains(&Resource::Any) {
                    assert_eq!(p.actions, ["dynamodb:ListStreams"], "{name}");
                }
            }
        }
    }

    #[test]
    fn every_fixture_belongs_to_a_function() {
        let root = crate::workspace::root();
        let spec = StackSpec::load().unwrap();
        let mut owned = BTreeMap::new();
        for name in spec.function_names() {
            for fixture in spec.fixtures_of(&root, name).unwrap() {
                assert!(
                    owned.insert(fixture.clone(), name).is_none(),
                    "{} belongs to two functions",
                    fixture.display()
                );
            }
        }
        for entry in std::fs::read_dir(root.join("events")).unwrap() {
            let path = Path::new("events").join(entry.unwrap().file_name());
            if path.extension().is_some_and(|e| e == "json") {
                assert!(owned.contains_key(&path), "{} is no declared function's fixture", path.display());
            }
        }
        assert!(!spec.fixtures_of(&root, "inventory-reservations").unwrap().is_empty());
    }
}
