//! Environment -> typed configuration, and the AWS clients built from it once
//! at start-up.

use std::time::Duration;

/// Why the configuration could not be read. Start-up fails with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is unset or empty.
    #[error("environment variable {0} is required but not set")]
    Missing(&'static str),
    /// A variable is set to something it cannot be.
    #[error("environment variable {name} is invalid: {problem}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// What is wrong with its value.
        problem: String,
    },
}

/// Reads variables through a lookup, with the errors that name them.
struct Env<F> {
    lookup: F,
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    fn optional(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.optional(name).ok_or(ConfigError::Missing(name))
    }

    fn number(&self, name: &'static str, default: u64) -> Result<u64, ConfigError> {
        self.optional(name).map_or(Ok(default), |v| {
            v.trim().parse().map_err(|_| ConfigError::Invalid { name, problem: format!("{v:?} is not a whole number") })
        })
    }

    fn flag(&self, name: &'static str) -> Result<bool, ConfigError> {
        match self.optional(name).as_deref().map(str::trim) {
            None => Ok(false),
            Some("1" | "true" | "TRUE" | "True" | "yes") => Ok(true),
            Some("0" | "false" | "FALSE" | "False" | "no") => Ok(false),
            Some(v) => Err(ConfigError::Invalid { name, problem: format!("{v:?} is not true or false") }),
        }
    }
}

/// The defaults a function gives the settings it does not find in its
/// environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    /// The key prefix when neither `IDEMPOTENCY_KEY_PREFIX` nor
    /// `POWERTOOLS_SERVICE_NAME` is set: the entry points give the
    /// function's name.
    pub key_prefix: &'static str,
    /// Where an SQS message's key comes from when `IDEMPOTENCY_KEY_SOURCE`
    /// is unset (and the planner names none): `messageId`.
    pub key_source: &'static str,
}

impl Defaults {
    /// The toolkit's defaults for a function named `name`.
    pub const fn named(name: &'static str) -> Self {
        Self { key_prefix: name, key_source: "messageId" }
    }
}

/// What any function built on the toolkit reads from its environment,
/// whatever its domain. None of it is required; `IDEMPOTENCY_TABLE` and
/// `QUARANTINE_TABLE` are required where a function commits effects or
/// quarantines records (the entry points ask for them, naming them).
///
/// | variable | default | meaning |
/// |---|---|---|
/// | `POWERTOOLS_SERVICE_NAME` | unset | `service` field of the log lines (Powertools' name) |
/// | `POWERTOOLS_METRICS_NAMESPACE` | `StreamProcessor` | namespace of the EMF metrics (Powertools' name) |
/// | `POWERTOOLS_IDEMPOTENCY_DISABLED` | `false` | skip idempotency markers (local experiments only; Powertools' name) |
/// | `IDEMPOTENCY_TABLE` | unset | table of the idempotency markers (key `id`; Powertools' schema) |
/// | `IDEMPOTENCY_KEY_PREFIX` | the service name, else the function's name | namespace of idempotency keys |
/// | `IDEMPOTENCY_KEY_SOURCE` | `messageId` | SQS: `messageId`, `deduplicationId` (FIFO), or a JSON pointer into the body |
/// | `IDEMPOTENCY_TTL_SECONDS` | `604800` | how long markers (and locks' results) live |
/// | `QUARANTINE_TABLE` | unset | table of quarantined records (key `pk` + `sk`) |
/// | `DEADLINE_MARGIN_MS` | `5000` | start no commit this long before the deadline |
/// | `FAIL_ON_ALL_FAILED` | `false` | fail the invocation when nothing in a batch succeeded |
/// | `COMMIT_CONCURRENCY` | `10` | transactions of a standard queue's batch committed at once |
/// | `MAX_LINE_BYTES` | `1048576` | object ingest: longer lines are rejected (never buffered) |
/// | `INGEST_QUEUE_URL` | unset | object ingest: where an object unfinished at the deadline is handed on |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `POWERTOOLS_SERVICE_NAME`.
    pub service: Option<String>,
    /// `POWERTOOLS_METRICS_NAMESPACE`.
    pub metrics_namespace: String,
    /// `POWERTOOLS_IDEMPOTENCY_DISABLED`.
    pub idempotency_disabled: bool,
    /// `IDEMPOTENCY_TABLE`.
    pub idempotency_table: Option<String>,
    /// `IDEMPOTENCY_KEY_PREFIX`: namespaces idempotency keys. Independent of
    /// the deployed function's name, so renaming or redeploying keeps
    /// deduplication.
    pub idempotency_key_prefix: String,
    /// `IDEMPOTENCY_KEY_SOURCE`: where an SQS message's key comes from
    /// when its planner names none.
    pub idempotency_key_source: crate::idempotency::KeySource,
    /// `IDEMPOTENCY_TTL_SECONDS`.
    pub idempotency_ttl: Duration,
    /// `QUARANTINE_TABLE`.
    pub quarantine_table: Option<String>,
    /// `DEADLINE_MARGIN_MS`.
    pub deadline_margin: Duration,
    /// `FAIL_ON_ALL_FAILED`.
    pub fail_on_all_failed: bool,
    /// `COMMIT_CONCURRENCY` (at least 1).
    pub commit_concurrency: usize,
    /// `MAX_LINE_BYTES` (at least 1).
    pub max_line_bytes: usize,
    /// `INGEST_QUEUE_URL`.
    pub ingest_queue_url: Option<String>,
}

/// Default longest line of an object: a generous bound for one JSON record.
pub const DEFAULT_MAX_LINE_BYTES: usize = 1024 * 1024;
/// Default margin before the deadline.
pub const DEFAULT_DEADLINE_MARGIN: Duration = Duration::from_secs(5);
/// Default time markers live: a week covers every replay Lambda makes
/// (streams keep 24 hours; SQS retries end far sooner in practice) and most
/// producer resends.
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Transactions of one standard queue's batch committed at once by default:
/// a batch of 1,000 events (20 transactions) commits in two rounds.
/// `cargo xtask bench --cost-only` on the latency model: 4 gave 4,007
/// records/s (91x Powertools), 10 gave 7,611 (173x), same run.
pub const DEFAULT_COMMIT_CONCURRENCY: usize = 10;

impl Settings {
    /// Reads the process environment, with `defaults` for what it leaves unset.
    pub fn from_env(defaults: &Defaults) -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok(), defaults)
    }

    /// Reads the settings through `lookup` (for tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>, defaults: &Defaults) -> Result<Self, ConfigError> {
        let env = Env { lookup };
        let service = env.optional("POWERTOOLS_SERVICE_NAME");
        let at_least_one = |name: &'static str, default: u64| -> Result<usize, ConfigError> {
            match env.number(name, default)? {
                0 => Err(ConfigError::Invalid { name, problem: "must be at least 1".into() }),
                n => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
            }
        };
        Ok(Self {
            metrics_namespace: env
                .optional("POWERTOOLS_METRICS_NAMESPACE")
                .unwrap_or_else(|| crate::telemetry::NAMESPACE.to_owned()),
            idempotency_disabled: env.flag("POWERTOOLS_IDEMPOTENCY_DISABLED")?,
            idempotency_table: env.optional("IDEMPOTENCY_TABLE"),
            idempotency_key_prefix: env
                .optional("IDEMPOTENCY_KEY_PREFIX")
                .or_else(|| service.clone())
                .unwrap_or_else(|| defaults.key_prefix.to_owned()),
            idempotency_key_source: env
                .optional("IDEMPOTENCY_KEY_SOURCE")
                .as_deref()
                .unwrap_or(defaults.key_source)
                .parse()
                .map_err(|e: crate::idempotency::KeyError| ConfigError::Invalid {
                    name: "IDEMPOTENCY_KEY_SOURCE",
                    problem: e.to_string(),
                })?,
            idempotency_ttl: Duration::from_secs(
                env.number("IDEMPOTENCY_TTL_SECONDS", DEFAULT_IDEMPOTENCY_TTL.as_secs())?,
            ),
            quarantine_table: env.optional("QUARANTINE_TABLE"),
            deadline_margin: Duration::from_millis(
                env.number("DEADLINE_MARGIN_MS", DEFAULT_DEADLINE_MARGIN.as_millis() as u64)?,
            ),
            fail_on_all_failed: env.flag("FAIL_ON_ALL_FAILED")?,
            commit_concurrency: at_least_one("COMMIT_CONCURRENCY", DEFAULT_COMMIT_CONCURRENCY as u64)?,
            max_line_bytes: at_least_one("MAX_LINE_BYTES", DEFAULT_MAX_LINE_BYTES as u64)?,
            ingest_queue_url: env.optional("INGEST_QUEUE_URL"),
            service,
        })
    }

    /// The idempotency table, required here: the error names the variable.
    pub fn require_idempotency_table(&self) -> Result<&str, ConfigError> {
        self.idempotency_table.as_deref().ok_or(ConfigError::Missing("IDEMPOTENCY_TABLE"))
    }

    /// The quarantine table, required here: the error names the variable.
    pub fn require_quarantine_table(&self) -> Result<&str, ConfigError> {
        self.quarantine_table.as_deref().ok_or(ConfigError::Missing("QUARANTINE_TABLE"))
    }
}

/// A required variable of your own function (a table name, a URL): the
/// error names it.
pub fn required(name: &'static str) -> Result<String, ConfigError> {
    Env { lookup: |n: &str| std::env::var(n).ok() }.required(name)
}

/// A lookup over fixed variables instead of the process environment: for
/// tests of settings (`Settings::from_lookup(vars(&[("X", "1")]), ...)`).
pub fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: std::collections::HashMap<String, String> =
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    move |name| map.get(name).cloned()
}

/// A required variable read through `lookup` (for a function's own settings
/// type, tested without the process environment).
pub fn required_in(lookup: impl Fn(&str) -> Option<String>, name: &'static str) -> Result<String, ConfigError> {
    Env { lookup }.required(name)
}

/// Loads the SDK configuration from the environment (region, credentials, and
/// the standard `AWS_ENDPOINT_URL` override the local stack sets), with
/// [`https_client`] as every client's HTTP client.
///
/// Lambda puts the region and the function's credentials in the environment.
/// When they are there they are handed to the loader directly, which is what
/// the default chains would pick first anyway, so the loader does not build
/// those chains: the credentials chain alone builds an STS client (for web
/// identity) and an IMDS client, each with its endpoint rules, before the
/// first `next`. Without them (a developer's machine with a profile, say) the
/// default chains run as usual.
pub async fn aws_sdk_config() -> aws_config::SdkConfig {
    let lookup = |name: &str| std::env::var(name).ok();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(https_client());
    if let Some(region) = env_region(lookup) {
        loader = loader.region(aws_config::Region::new(region));
    }
    if has_env_credentials(lookup) {
        loader = loader.credentials_provider(aws_config::environment::EnvironmentVariableCredentialsProvider::new());
    }
    loader.load().await
}

/// The region the environment names, as aws-config's environment provider
/// reads it: `AWS_REGION`, else `AWS_DEFAULT_REGION`.
fn env_region(lookup: impl Fn(&str) -> Option<String>) -> Option<String> {
    let env = Env { lookup };
    env.optional("AWS_REGION").or_else(|| env.optional("AWS_DEFAULT_REGION"))
}

/// Whether the environment holds an access key pair, the first source of the
/// SDK's default credentials chain.
fn has_env_credentials(lookup: impl Fn(&str) -> Option<String>) -> bool {
    let env = Env { lookup };
    env.optional("AWS_ACCESS_KEY_ID").is_some() && env.optional("AWS_SECRET_ACCESS_KEY").is_some()
}

/// The HTTP client of the AWS clients: the SDK's hyper client on rustls with
/// the ring crypto provider, trusting the system's root certificates. The
/// SDK's default client is the same on aws-lc. Stripped release binaries
/// (sqs-consumer, stream-aggregator, s3-ingest): 11.1 / 11.4 / 13.7 MiB on
/// aws-lc in the 2026-11-29 bench run, 9.2 / 9.4 / 11.9 MiB on ring with the
/// profile of then (`cargo build --release`, then `ls -l target/release`,
/// 2026-12-03; the README's Performance section has the later steps).
///
/// The trust roots are loaded when the first connection is made, not when
/// the clients are built: the SDK's own client loads them while the SDK
/// configuration is validated, which puts the parsing of the whole CA bundle
/// before a function's first `next` (the init phase, billed and waited on at
/// every cold start). Here the first request pays it instead, once per
/// process.
pub fn https_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    let inner = aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https();
    aws_smithy_runtime_api::client::http::SharedHttpClient::new(DeferredRoots(inner))
}

/// An HTTP client that hands out its inner client's connectors but skips its
/// eager check at configuration time (which builds a TLS connector, and with
/// it the root store). The connectors are the inner client's, built on first
/// use and cached by it.
#[derive(Debug)]
struct DeferredRoots(aws_smithy_runtime_api::client::http::SharedHttpClient);

impl aws_smithy_runtime_api::client::http::HttpClient for DeferredRoots {
    fn http_connector(
        &self,
        settings: &aws_smithy_runtime_api::client::http::HttpConnectorSettings,
        components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
    ) -> aws_smithy_runtime_api::client::http::SharedHttpConnector {
        self.0.http_connector(settings, components)
    }

    fn connector_metadata(&self) -> Option<aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata> {
        self.0.connector_metadata()
    }
}

/// The DynamoDB client's time limits. DynamoDB answers a call in
/// milliseconds (a 100-action transaction in well under a second), so a call
/// that takes seconds is a stalled connection or endpoint: each attempt is
/// abandoned after [`DYNAMODB_ATTEMPT_TIMEOUT`] and retried by the SDK, and
/// the call as a whole fails after [`DYNAMODB_OPERATION_TIMEOUT`]. Generous
/// on purpose: an attempt abandoned after its transaction committed reads as
/// a duplicate on the retry, which is safe but miscounted. Whatever is
/// still running when the invocation must answer is cut by the engine
/// ([`crate::engine::answer_by`]).
pub const DYNAMODB_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// See [`DYNAMODB_CONNECT_TIMEOUT`].
pub const DYNAMODB_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// See [`DYNAMODB_CONNECT_TIMEOUT`].
pub const DYNAMODB_OPERATION_TIMEOUT: Duration = Duration::from_secs(12);

/// The DynamoDB client, counting its requests (retries included) into
/// `requests`, with the time limits of [`DYNAMODB_CONNECT_TIMEOUT`].
pub fn dynamodb_client(
    sdk: &aws_config::SdkConfig,
    requests: &crate::telemetry::RequestCounter,
) -> aws_sdk_dynamodb::Client {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(DYNAMODB_CONNECT_TIMEOUT)
        .operation_attempt_timeout(DYNAMODB_ATTEMPT_TIMEOUT)
        .operation_timeout(DYNAMODB_OPERATION_TIMEOUT)
        .build();
    let config = aws_sdk_dynamodb::config::Builder::from(sdk)
        .timeout_config(timeouts)
        .interceptor(requests.clone())
        .endpoint_resolver(DynamoDbEndpoints::default())
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

#[cfg(feature = "s3")]
/// The S3 client. Path-style addressing when an endpoint override is set:
/// local emulators serve buckets under the path, not as host names.
pub fn s3_client(sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(sdk.endpoint_url().is_some())
        .endpoint_resolver(S3Endpoints::default())
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

#[cfg(feature = "s3")]
/// The SQS client.
pub fn sqs_client(sdk: &aws_config::SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(sdk).endpoint_resolver(SqsEndpoints::default()).build(),
    )
}

/// An SDK's default endpoint resolver, built on its first use. Building it
/// parses the SDK's partition table (a JSON document compiled into every
/// service crate, with a regex per partition): a tenth of a millisecond or
/// more per client that the init phase need not wait for. The first request
/// of each client pays it instead, once per process.
macro_rules! deferred_endpoints {
    ($name:ident, $sdk:ident) => {
        #[derive(Debug, Default)]
        struct $name(std::sync::OnceLock<$sdk::config::endpoint::DefaultResolver>);

        impl $sdk::config::endpoint::ResolveEndpoint for $name {
            fn resolve_endpoint<'a>(
                &'a self,
                params: &'a $sdk::config::endpoint::Params,
            ) -> aws_smithy_runtime_api::client::endpoint::EndpointFuture<'a> {
                self.0.get_or_init($sdk::config::endpoint::DefaultResolver::new).resolve_endpoint(params)
            }
        }
    };
}
deferred_endpoints!(DynamoDbEndpoints, aws_sdk_dynamodb);
#[cfg(feature = "s3")]
deferred_endpoints!(S3Endpoints, aws_sdk_s3);
#[cfg(feature = "s3")]
deferred_endpoints!(SqsEndpoints, aws_sdk_sqs);

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        vars(pairs)
    }

    #[test]
    fn region_and_credentials_come_from_the_environment_when_lambda_sets_them() {
        let lambda = lookup(&[
            ("AWS_REGION", "eu-west-1"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
        ]);
        assert_eq!(env_region(&lambda).as_deref(), Some("eu-west-1"));
        assert!(has_env_credentials(&lambda));

        let fallback = lookup(&[("AWS_REGION", " "), ("AWS_DEFAULT_REGION", "us-east-2")]);
        assert_eq!(env_region(&fallback).as_deref(), Some("us-east-2"));
        // Without a key pair the default chain (profile, web identity, ...) runs.
        assert!(!has_env_credentials(&fallback));
        assert!(!has_env_credentials(lookup(&[("AWS_ACCESS_KEY_ID", "AKID")])));
        assert_eq!(env_region(lookup(&[])), None);
    }

    #[test]
    fn settings_defaults_and_invalid_values() {
        let defaults = Defaults::named("my-function");
        let settings = Settings::from_lookup(lookup(&[]), &defaults).unwrap();
        assert_eq!(settings.idempotency_key_prefix, "my-function");
        assert_eq!(settings.idempotency_key_source, crate::idempotency::KeySource::MessageId);
        assert_eq!(settings.max_line_bytes, DEFAULT_MAX_LINE_BYTES);
        assert_eq!(settings.idempotency_ttl, DEFAULT_IDEMPOTENCY_TTL);
        assert_eq!(settings.deadline_margin, DEFAULT_DEADLINE_MARGIN);
        let service = Settings::from_lookup(lookup(&[("POWERTOOLS_SERVICE_NAME", "shop")]), &defaults).unwrap();
        assert_eq!(service.idempotency_key_prefix, "shop");
        let err = Settings::from_lookup(lookup(&[("MAX_LINE_BYTES", "lots")]), &defaults).unwrap_err();
        assert!(err.to_string().contains("MAX_LINE_BYTES"), "{err}");
        let err = Settings::from_lookup(lookup(&[("COMMIT_CONCURRENCY", "0")]), &defaults).unwrap_err();
        assert_eq!(err.to_string(), "environment variable COMMIT_CONCURRENCY is invalid: must be at least 1");
        assert_eq!(
            settings.require_quarantine_table().unwrap_err().to_string(),
            "environment variable QUARANTINE_TABLE is required but not set"
        );
    }
}
