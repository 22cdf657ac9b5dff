//! The toolkit's settings on Workers, read once per invocation from the
//! Worker's `vars` (`wrangler.jsonc`), with the Lambda functions' names
//! where they mean the same thing, each with a safe default.
//!
//! | var | default | meaning |
//! |---|---|---|
//! | `IDEMPOTENCY_KEY_PREFIX` | the consumer's name | the namespace of idempotency keys |
//! | `IDEMPOTENCY_KEY_SOURCE` | `messageId` | where `for_record()` keys come from: `messageId`, or a JSON pointer into the body such as `/eventId` |
//! | `IDEMPOTENCY_TABLE` | `idempotency` | the D1 table of markers |
//! | `QUARANTINE_TABLE` | `quarantine` | the D1 table of quarantined records |
//! | `D1_BINDING` | `DB` | the D1 binding the tables are in |
//! | `RETRY_DELAY_SECONDS` | `2` | a retried message's delay, doubled per attempt up to `MAX_RETRY_DELAY_SECONDS` (`60`) |
//! | `POWERTOOLS_SERVICE_NAME`, `POWERTOOLS_METRICS_NAMESPACE` | unset, `StreamProcessor` | the summary line's `service` and the metrics' namespace |

use shared_core::key::{KeySource, Keys};

/// Why the settings cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required var is not set.
    #[error("var {0} is required but not set")]
    Missing(String),
    /// A var is set to something it cannot mean.
    #[error("var {name}={value:?}: {why}")]
    Invalid {
        /// The var.
        name: String,
        /// Its value.
        value: String,
        /// What it should be.
        why: String,
    },
}

/// The toolkit's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Idempotency keys' namespace.
    pub idempotency_key_prefix: String,
    /// Where `for_record()` keys come from.
    pub idempotency_key_source: KeySource,
    /// The table of markers.
    pub idempotency_table: String,
    /// The table of quarantined records.
    pub quarantine_table: String,
    /// The D1 binding.
    pub d1_binding: String,
    /// The retry delay of a message's first attempt, in seconds.
    pub retry_delay_seconds: u32,
    /// The longest retry delay, in seconds.
    pub max_retry_delay_seconds: u32,
    /// The `service` field of the summary line.
    pub service: Option<String>,
    /// The metrics' namespace.
    pub metrics_namespace: String,
}

impl Settings {
    /// The settings `var` gives (a lookup of the Worker's vars), with the
    /// defaults of a consumer named `name`.
    ///
    /// ```
    /// use shared_workers::config::Settings;
    ///
    /// let vars = |name: &str| (name == "IDEMPOTENCY_KEY_SOURCE").then(|| "/reservationId".to_owned());
    /// let s = Settings::read("inventory", vars).unwrap();
    /// assert_eq!((s.idempotency_key_prefix.as_str(), s.retry_delay_seconds), ("inventory", 2));
    /// let bad = |name: &str| (name == "IDEMPOTENCY_KEY_SOURCE").then(|| "deduplicationId".to_owned());
    /// assert!(Settings::read("inventory", bad).unwrap_err().to_string().contains("no FIFO queues"));
    /// ```
    pub fn read(name: &str, var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let var = |n: &str| var(n).filter(|v| !v.trim().is_empty());
        let number = |n: &str, default: u32| match var(n) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| ConfigError::Invalid {
                name: n.into(),
                value: v,
                why: "not a whole number".into(),
            }),
        };
        let source = match var("IDEMPOTENCY_KEY_SOURCE") {
            None => KeySource::MessageId,
            Some(v) => match v.parse::<KeySource>() {
                Ok(KeySource::DeduplicationId) => {
                    return Err(ConfigError::Invalid {
                        name: "IDEMPOTENCY_KEY_SOURCE".into(),
                        value: v,
                        why: "Cloudflare Queues has no FIFO queues, so no deduplication id".into(),
                    });
                }
                Ok(source) => source,
                Err(e) => {
                    return Err(ConfigError::Invalid {
                        name: "IDEMPOTENCY_KEY_SOURCE".into(),
                        value: v,
                        why: e.to_string(),
                    });
                }
            },
        };
        Ok(Self {
            idempotency_key_prefix: var("IDEMPOTENCY_KEY_PREFIX").unwrap_or_else(|| name.to_owned()),
            idempotency_key_source: source,
            idempotency_table: var("IDEMPOTENCY_TABLE").unwrap_or_else(|| "idempotency".into()),
            quarantine_table: var("QUARANTINE_TABLE").unwrap_or_else(|| "quarantine".into()),
            d1_binding: var("D1_BINDING").unwrap_or_else(|| "DB".into()),
            retry_delay_seconds: number("RETRY_DELAY_SECONDS", 2)?,
            max_retry_delay_seconds: number("MAX_RETRY_DELAY_SECONDS", 60)?,
            service: var("POWERTOOLS_SERVICE_NAME"),
            metrics_namespace: var("POWERTOOLS_METRICS_NAMESPACE")
                .unwrap_or_else(|| shared_core::telemetry::NAMESPACE.to_owned()),
        })
    }

    /// Idempotency keys under the prefix.
    pub fn keys(&self) -> Keys {
        Keys::new(&self.idempotency_key_prefix)
    }

    /// The delay before a retried message's next attempt, given the
    /// attempts it has had (1 for its first delivery): the base delay
    /// doubled per attempt, at most the longest.
    ///
    /// ```
    /// let s = shared_workers::config::Settings::read("q", |_| None).unwrap();
    /// assert_eq!([1, 2, 3, 9, 40].map(|a| s.retry_delay(a)), [2, 4, 8, 60, 60]);
    /// ```
    pub fn retry_delay(&self, attempts: u32) -> u32 {
        let doublings = attempts.saturating_sub(1).min(31);
        self.retry_delay_seconds.saturating_mul(1u32 << doublings).min(self.max_retry_delay_seconds)
    }
}

/// A var of the Worker's, `None` when unset.
#[cfg(target_arch = "wasm32")]
pub fn var(env: &worker::Env, name: &str) -> Option<String> {
    env.var(name).ok().map(|v| v.to_string())
}

/// A var the Worker needs: an error naming it when unset or empty.
#[cfg(target_arch = "wasm32")]
pub fn required(env: &worker::Env, name: &str) -> Result<String, ConfigError> {
    var(env, name).filter(|v| !v.trim().is_empty()).ok_or_else(|| ConfigError::Missing(name.into()))
}
