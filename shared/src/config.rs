//! Environment -> typed configuration, and the AWS clients built from it once
//! at start-up.

use std::time::Duration;

/// Why the configuration could not be read. Start-up fails with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required but not set")]
    Missing(&'static str),
    #[error("environment variable {name} is invalid: {problem}")]
    Invalid { name: &'static str, problem: String },
}

/// Everything a function reads from its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `STATE_TABLE`: the state table.
    pub state_table: String,
    /// `IDEMPOTENCY_TABLE`: the idempotency table.
    pub idempotency_table: String,
    /// `IDEMPOTENCY_KEY_PREFIX` (default `orders`): namespaces idempotency keys.
    /// Independent of function names, so renaming code keeps deduplication.
    pub idempotency_key_prefix: String,
    /// `IDEMPOTENCY_KEY_SOURCE` (sqs-consumer; default `/eventId`): where an
    /// SQS message's idempotency key comes from: `messageId`,
    /// `deduplicationId`, or a JSON pointer into the body.
    pub idempotency_key_source: crate::idempotency::KeySource,
    /// `IDEMPOTENCY_TTL_SECONDS` (default 604800, a week): how long markers live.
    pub idempotency_ttl: Duration,
    /// `INGEST_QUEUE_URL` (optional): where s3-ingest hands on unfinished objects.
    pub ingest_queue_url: Option<String>,
    /// `MAX_LINE_BYTES` (default 1 MiB): longer object lines are rejected.
    pub max_line_bytes: usize,
    /// `DEADLINE_MARGIN_MS` (default 5000): stop starting work this long before
    /// the invocation's deadline.
    pub deadline_margin: Duration,
    /// `FAIL_ON_ALL_FAILED` (default false): fail the invocation instead of
    /// returning every record as failed.
    pub fail_on_all_failed: bool,
}

/// Default source of SQS idempotency keys: the order event's own id, so a
/// producer's resend is caught as well as SQS redelivery.
pub const DEFAULT_KEY_SOURCE: &str = "/eventId";
/// Default longest line of an object: a generous bound for one JSON event.
pub const DEFAULT_MAX_LINE_BYTES: usize = 1024 * 1024;
/// Default margin before the deadline.
pub const DEFAULT_DEADLINE_MARGIN: Duration = Duration::from_secs(5);

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads configuration through `lookup` (for tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let required =
            |name: &'static str| lookup(name).filter(|v| !v.trim().is_empty()).ok_or(ConfigError::Missing(name));
        let optional = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let number = |name: &'static str, default: u64| -> Result<u64, ConfigError> {
            optional(name).map_or(Ok(default), |v| {
                v.trim()
                    .parse()
                    .map_err(|_| ConfigError::Invalid { name, problem: format!("{v:?} is not a whole number") })
            })
        };
        let flag = |name: &'static str| -> Result<bool, ConfigError> {
            match optional(name).as_deref().map(str::trim) {
                None => Ok(false),
                Some("1" | "true" | "TRUE" | "yes") => Ok(true),
                Some("0" | "false" | "FALSE" | "no") => Ok(false),
                Some(v) => Err(ConfigError::Invalid { name, problem: format!("{v:?} is not true or false") }),
            }
        };
        let max_line_bytes = number("MAX_LINE_BYTES", DEFAULT_MAX_LINE_BYTES as u64)?;
        if max_line_bytes == 0 {
            return Err(ConfigError::Invalid { name: "MAX_LINE_BYTES", problem: "must be at least 1".into() });
        }
        Ok(Self {
            state_table: required("STATE_TABLE")?,
            idempotency_table: required("IDEMPOTENCY_TABLE")?,
            idempotency_key_prefix: optional("IDEMPOTENCY_KEY_PREFIX").unwrap_or_else(|| "orders".into()),
            idempotency_key_source: optional("IDEMPOTENCY_KEY_SOURCE")
                .as_deref()
                .unwrap_or(DEFAULT_KEY_SOURCE)
                .parse()
                .map_err(|e: crate::idempotency::KeyError| ConfigError::Invalid {
                    name: "IDEMPOTENCY_KEY_SOURCE",
                    problem: e.to_string(),
                })?,
            idempotency_ttl: Duration::from_secs(number("IDEMPOTENCY_TTL_SECONDS", 7 * 24 * 3600)?),
            ingest_queue_url: optional("INGEST_QUEUE_URL"),
            max_line_bytes: usize::try_from(max_line_bytes).unwrap_or(usize::MAX),
            deadline_margin: Duration::from_millis(number(
                "DEADLINE_MARGIN_MS",
                DEFAULT_DEADLINE_MARGIN.as_millis() as u64,
            )?),
            fail_on_all_failed: flag("FAIL_ON_ALL_FAILED")?,
        })
    }
}

/// Loads the SDK configuration from the environment (region, credentials, and
/// the standard `AWS_ENDPOINT_URL` override the local stack sets).
pub async fn aws_sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await
}

/// The DynamoDB client, counting its requests (retries included) into `requests`.
pub fn dynamodb_client(
    sdk: &aws_config::SdkConfig,
    requests: &crate::telemetry::RequestCounter,
) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::config::Builder::from(sdk).interceptor(requests.clone()).build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// The S3 client. Path-style addressing when an endpoint override is set:
/// local emulators serve buckets under the path, not as host names.
pub fn s3_client(sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(sdk).force_path_style(sdk.endpoint_url().is_some()).build();
    aws_sdk_s3::Client::from_conf(config)
}

/// The SQS client.
pub fn sqs_client(sdk: &aws_config::SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(sdk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn missing_required_variable_is_named() {
        let err = Config::from_lookup(lookup(&[("STATE_TABLE", "s")])).unwrap_err();
        assert_eq!(err.to_string(), "environment variable IDEMPOTENCY_TABLE is required but not set");
    }

    #[test]
    fn defaults_and_invalid_values() {
        let config = Config::from_lookup(lookup(&[("STATE_TABLE", "s"), ("IDEMPOTENCY_TABLE", "i")])).unwrap();
        assert_eq!(config.idempotency_key_prefix, "orders");
        assert_eq!(config.max_line_bytes, DEFAULT_MAX_LINE_BYTES);
        let err = Config::from_lookup(lookup(&[
            ("STATE_TABLE", "s"),
            ("IDEMPOTENCY_TABLE", "i"),
            ("MAX_LINE_BYTES", "lots"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("MAX_LINE_BYTES"), "{err}");
    }
}
