//! Logging: Lambda's standard log controls (`AWS_LAMBDA_LOG_FORMAT=JSON` for one
//! JSON object per line, `AWS_LAMBDA_LOG_LEVEL`), through `tracing`.

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init() {
    lambda_runtime::tracing::init_default_subscriber();
}
