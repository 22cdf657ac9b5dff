//! The Lambda loop every function shares: one telemetry span per invocation,
//! the summary line and the metrics document when it ends.

use std::future::Future;

use lambda_runtime::{Context, LambdaEvent, service_fn};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::Instrument;

use crate::batch::{InvocationError, Summary};
use crate::event::RawBatch;
use crate::telemetry::{CapacityMeter, Invocation, RequestCounter};

/// Counters the AWS clients feed during an invocation.
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    /// DynamoDB requests sent (each HTTP attempt): pass it to
    /// [`dynamodb_client`](crate::config::dynamodb_client).
    pub requests: RequestCounter,
    /// DynamoDB capacity units consumed: pass it to the store's
    /// [`with_capacity_meter`](crate::exactly_once::ExactlyOnce::with_capacity_meter).
    pub capacity: CapacityMeter,
}

/// Runs a function's async `main` on a multi-threaded Tokio runtime. Before
/// the runtime starts any thread, it points `SSL_CERT_FILE` at the system's
/// CA bundle file when neither `SSL_CERT_FILE` nor `SSL_CERT_DIR` is set: the
/// SDK's HTTPS client then loads the root certificates from that one file
/// instead of also parsing every file of the certificate directory (which on
/// Debian holds the same roots again as ~150 files). They are loaded on the
/// first connection ([`https_client`](crate::config::https_client)), which
/// this keeps short. A variable the user set is left as it is.
pub fn block_on<F>(main: F) -> Result<(), lambda_runtime::Error>
where
    F: Future<Output = Result<(), lambda_runtime::Error>>,
{
    start(main)
}

/// [`block_on`] for a `main` with an error type of its own.
pub(crate) fn start<F, E>(main: F) -> Result<(), E>
where
    F: Future<Output = Result<(), E>>,
    E: From<std::io::Error>,
{
    let user_set = ["SSL_CERT_FILE", "SSL_CERT_DIR"].iter().any(|v| std::env::var_os(v).is_some());
    if !user_set && let Some(file) = openssl_probe::probe().cert_file {
        // SAFETY: no other thread exists yet (the runtime starts below), so
        // nothing reads the environment while it changes.
        unsafe { std::env::set_var("SSL_CERT_FILE", file) };
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(main)
}

/// An event payload a function takes: a `Value`, or a [`RawBatch`] whose
/// records stay JSON text until each is parsed into its typed form.
pub trait Payload: DeserializeOwned + Send {
    /// The records in the event, for the summary and the metrics (1 for an
    /// event that is not a batch).
    fn batch_size(&self) -> usize;
}

impl Payload for Value {
    fn batch_size(&self) -> usize {
        self.get("Records").and_then(Value::as_array).map_or(1, Vec::len)
    }
}

impl Payload for RawBatch {
    fn batch_size(&self) -> usize {
        self.records().map_or(1, <[_]>::len)
    }
}

/// Serves invocations with `handler` until the runtime stops. `function` is
/// the logical function name, the `function` dimension of its metrics.
pub async fn serve<P, F, Fut, R>(
    function: &'static str,
    telemetry: &Telemetry,
    handler: F,
) -> Result<(), lambda_runtime::Error>
where
    P: Payload,
    F: Fn(P, Context) -> Fut,
    Fut: Future<Output = Result<(R, Summary), InvocationError>>,
    R: Serialize,
{
    let handler = &handler;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<P>| async move {
        let batch_size = event.payload.batch_size();
        let invocation = Invocation::start(
            function,
            &event.context.env_config.function_name,
            &event.context.request_id,
            event.context.xray_trace_id.as_deref(),
            &telemetry.requests,
            &telemetry.capacity,
        );
        let span = invocation.span().clone();
        match handler(event.payload, event.context).instrument(span.clone()).await {
            Ok((response, summary)) => {
                invocation.finish(&summary, batch_size, &telemetry.requests, &telemetry.capacity);
                Ok(response)
            }
            Err(e) => {
                span.in_scope(|| tracing::error!(error = %e, "invocation failed; the whole batch will be retried"));
                let summary = Summary { failed: batch_size as u64, ..Summary::default() };
                invocation.finish(&summary, batch_size, &telemetry.requests, &telemetry.capacity);
                Err(diagnostic(e))
            }
        }
    }))
    .await
}

/// The invocation's deadline from `Lambda-Runtime-Deadline-Ms`: epoch
/// milliseconds on AWS. `cargo lambda watch` 1.9 sends a duration (600000)
/// instead; a value too small to be a date since 2001 is taken as relative,
/// so the local stack gets a real deadline rather than one in 1970.
pub fn deadline(context: &Context) -> std::time::SystemTime {
    deadline_from_header(context.deadline)
}

fn deadline_from_header(header_ms: u64) -> std::time::SystemTime {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    const EPOCH_MS_2001: u64 = 1_000_000_000_000;
    if header_ms < EPOCH_MS_2001 {
        SystemTime::now() + Duration::from_millis(header_ms)
    } else {
        UNIX_EPOCH + Duration::from_millis(header_ms)
    }
}

/// Lambda reports the error type in the invocation result and in the
/// function's logs; a stable name makes failed invocations easy to find.
pub fn diagnostic(e: InvocationError) -> lambda_runtime::Diagnostic {
    lambda_runtime::Diagnostic { error_type: InvocationError::ERROR_TYPE.into(), error_message: e.message }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Lambda runtime reads events through `serde_path_to_error`; a raw
    /// batch must come through it with its records intact.
    #[test]
    fn a_raw_batch_deserializes_as_the_lambda_runtime_reads_events() {
        let body = br#"{"Records": [{"messageId": "m-1"}, {"messageId": "m-2", "body": "{}"}]}"#;
        let batch: RawBatch =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(body)).expect("deserializes");
        let records: Vec<&str> = batch.records().unwrap().iter().map(|r| r.get()).collect();
        assert_eq!(records, [r#"{"messageId": "m-1"}"#, r#"{"messageId": "m-2", "body": "{}"}"#]);
        assert_eq!(batch.batch_size(), 2);
    }

    #[test]
    fn an_event_without_records_is_an_error_naming_them() {
        let missing: RawBatch = serde_json::from_str(r#"{"detail": {}}"#).unwrap();
        assert_eq!(missing.records().unwrap_err().to_string(), "event: missing field `Records`");
        assert_eq!(missing.batch_size(), 1);
        let not_array: RawBatch = serde_json::from_str(r#"{"Records": {}}"#).unwrap();
        assert_eq!(not_array.records().unwrap_err().to_string(), "event: `Records` is not an array");
    }
}
