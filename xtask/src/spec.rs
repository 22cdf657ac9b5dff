//! The stack definition, `infra/stack.json`: the one place names and settings
//! live. The local stack creates exactly what it declares (plus the `local`
//! overrides), so nothing here or in the tests hard-codes a resource name.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// The file, compiled in: the definition and the tooling can never disagree.
const STACK_JSON: &str = include_str!("../../infra/stack.json");

/// The placeholder for the stack name in resource names.
const STACK_PLACEHOLDER: &str = "{stack}";

/// `infra/stack.json`, with `{stack}` already substituted in every name.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StackSpec {
    pub stack_name: String,
    pub region: String,
    pub functions: BTreeMap<String, FunctionSpec>,
    pub bucket: BucketSpec,
    pub queues: BTreeMap<String, QueueSpec>,
    pub tables: BTreeMap<String, TableSpec>,
    pub mappings: Vec<MappingSpec>,
    pub environment: BTreeMap<String, EnvSource>,
    pub local: LocalSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionSpec {
    pub timeout_seconds: u64,
    pub memory_mi_b: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BucketSpec {
    pub name: String,
    pub notifications: Vec<NotificationSpec>,
    pub rejects_prefix: String,
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
}

/// What a mapping reads: a queue or a table's stream (keys into the spec).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MappingSource {
    Queue { queue: String },
    Table { table: String },
}

#[derive(Debug, Clone, Deserialize)]
pub struct OnFailureSpec {
    pub queue: String,
}

/// Where an environment variable's value comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum EnvSource {
    Table { table: String },
    Queue { queue: String },
    Value(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalSpec {
    pub visibility_timeout_seconds: u64,
}

impl StackSpec {
    /// The compiled-in `infra/stack.json`.
    pub fn load() -> Result<Self> {
        Self::parse(STACK_JSON)
    }

    /// Parses a stack definition and resolves `{stack}` in every name.
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
        spec.validate()?;
        Ok(spec)
    }

    /// Every reference between sections points at something declared.
    fn validate(&self) -> Result<()> {
        for n in &self.bucket.notifications {
            self.queue(&n.queue)?;
        }
        for m in &self.mappings {
            if !self.functions.contains_key(&m.function) {
                bail!("mapping names unknown function {:?}", m.function);
            }
            match &m.source {
                MappingSource::Queue { queue } => {
                    self.queue(queue)?;
                }
                MappingSource::Table { table } => {
                    self.table(table)?;
                }
            }
            if let Some(f) = &m.on_failure {
                self.queue(&f.queue)?;
            }
        }
        for source in self.environment.values() {
            match source {
                EnvSource::Table { table } => {
                    self.table(table)?;
                }
                EnvSource::Queue { queue } => {
                    self.queue(queue)?;
                }
                EnvSource::Value(_) => {}
            }
        }
        Ok(())
    }

    /// A queue by its key (`orders`, `ordersFifo`, ...).
    pub fn queue(&self, key: &str) -> Result<&QueueSpec> {
        self.queues.get(key).with_context(|| format!("infra/stack.json declares no queue {key:?}"))
    }

    /// A table by its key (`state`, `idempotency`).
    pub fn table(&self, key: &str) -> Result<&TableSpec> {
        self.tables.get(key).with_context(|| format!("infra/stack.json declares no table {key:?}"))
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
                MappingSource::Table { .. } => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_json_resolves_every_name() {
        let spec = StackSpec::load().unwrap();
        assert!(!STACK_JSON.is_empty());
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
        assert_eq!(spec.source_queue_keys().len(), 3);
    }

    #[test]
    fn dangling_reference_is_rejected() {
        let bad = STACK_JSON.replace(r#""queue": "streamFailures""#, r#""queue": "nope""#);
        let err = StackSpec::parse(&bad).unwrap_err();
        assert!(format!("{err:#}").contains("nope"), "{err:#}");
    }
}
