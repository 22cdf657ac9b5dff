//! The orders functions' configuration: the toolkit's [`Settings`] with the
//! orders' defaults, and the tables they need.

use shared::config::{ConfigError, Defaults, Settings, required_in};

/// The orders' defaults: keys under the prefix `orders` (shared by every
/// orders function, so a change of function names keeps deduplication), and
/// SQS messages keyed by the order event's own id, so a producer's resend is
/// caught as well as SQS redelivery.
pub const DEFAULTS: Defaults = Defaults { key_prefix: "orders", key_source: "/eventId" };

/// Everything an orders function reads from its environment: the toolkit's
/// settings (reached through `Deref`: `config.deadline_margin`), and the
/// required tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The toolkit's settings, with [`DEFAULTS`].
    pub settings: Settings,
    /// `STATE_TABLE`: orders, customer totals, object manifests, quarantine.
    pub state_table: String,
    /// `IDEMPOTENCY_TABLE`: the idempotency markers.
    pub idempotency_table: String,
}

impl std::ops::Deref for Config {
    type Target = Settings;

    fn deref(&self) -> &Settings {
        &self.settings
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The orders' tables from the process environment, beside settings
    /// already read (by the entry point, with [`DEFAULTS`]).
    pub fn from_settings(settings: Settings) -> Result<Self, ConfigError> {
        let lookup = |name: &str| std::env::var(name).ok();
        Ok(Self {
            state_table: required_in(lookup, "STATE_TABLE")?,
            idempotency_table: required_in(lookup, "IDEMPOTENCY_TABLE")?,
            settings,
        })
    }

    /// Reads configuration through `lookup` (for tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Ok(Self {
            state_table: required_in(&lookup, "STATE_TABLE")?,
            idempotency_table: required_in(&lookup, "IDEMPOTENCY_TABLE")?,
            settings: Settings::from_lookup(&lookup, &DEFAULTS)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use shared::config::vars as lookup;

    #[test]
    fn missing_required_variable_is_named() {
        let err = Config::from_lookup(lookup(&[("STATE_TABLE", "s")])).unwrap_err();
        assert_eq!(err.to_string(), "environment variable IDEMPOTENCY_TABLE is required but not set");
    }

    #[test]
    fn defaults_and_invalid_values() {
        let config = Config::from_lookup(lookup(&[("STATE_TABLE", "s"), ("IDEMPOTENCY_TABLE", "i")])).unwrap();
        assert_eq!(config.idempotency_key_prefix, "orders");
        assert_eq!(config.max_line_bytes, shared::config::DEFAULT_MAX_LINE_BYTES);
        let err = Config::from_lookup(lookup(&[
            ("STATE_TABLE", "s"),
            ("IDEMPOTENCY_TABLE", "i"),
            ("MAX_LINE_BYTES", "lots"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("MAX_LINE_BYTES"), "{err}");
    }
}
