//! The Lambda loop every function shares: one telemetry span per invocation,
//! the summary line and the metrics document when it ends.

use std::future::Future;

use lambda_runtime::{Context, LambdaEvent, service_fn};
use serde::Serialize;
use serde_json::Value;
use tracing::Instrument;

use crate::batch::{InvocationError, Summary};
use crate::telemetry::{CapacityMeter, Invocation, RequestCounter};

/// Counters the AWS clients feed during an invocation.
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    pub requests: RequestCounter,
    pub capacity: CapacityMeter,
}

/// Runs a function's async `main` on a multi-threaded Tokio runtime. Before
/// the runtime starts any thread, it points `SSL_CERT_FILE` at the system's
/// CA bundle file when neither `SSL_CERT_FILE` nor `SSL_CERT_DIR` is set: the
/// SDK's HTTPS client then loads the root certificates from that one file
/// instead of also parsing every file of the certificate directory (which on
/// Debian holds the same roots again as ~150 files). That is most of a
/// function's start-up time beyond the runtime's own (see the README's
/// performance section). A variable the user set is left as it is.
pub fn block_on<F>(main: F) -> Result<(), lambda_runtime::Error>
where
    F: Future<Output = Result<(), lambda_runtime::Error>>,
{
    let user_set = ["SSL_CERT_FILE", "SSL_CERT_DIR"].iter().any(|v| std::env::var_os(v).is_some());
    if !user_set && let Some(file) = openssl_probe::probe().cert_file {
        // SAFETY: no other thread exists yet (the runtime starts below), so
        // nothing reads the environment while it changes.
        unsafe { std::env::set_var("SSL_CERT_FILE", file) };
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(main)
}

/// Serves invocations with `handler` until the runtime stops. `function` is
/// the logical function name, the `function` dimension of its metrics.
pub async fn serve<F, Fut, R>(
    function: &'static str,
    telemetry: &Telemetry,
    handler: F,
) -> Result<(), lambda_runtime::Error>
where
    F: Fn(Value, Context) -> Fut,
    Fut: Future<Output = Result<(R, Summary), InvocationError>>,
    R: Serialize,
{
    let handler = &handler;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let batch_size = event.payload.get("Records").and_then(Value::as_array).map_or(1, Vec::len);
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
                Err(e)
            }
        }
    }))
    .await
}
