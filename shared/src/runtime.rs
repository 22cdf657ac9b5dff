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
