//! Lambda entry point of `sqs-consumer`: wires configuration, clients and the
//! handler once, then serves invocations.

use orders::config::Config;
use orders::state::dynamo::DynamoStore;
use shared::config::{aws_sdk_config, dynamodb_client};
use shared::event::RawBatch;
use shared::runtime::{Telemetry, serve};

fn main() -> Result<(), lambda_runtime::Error> {
    shared::runtime::block_on(run())
}

async fn run() -> Result<(), lambda_runtime::Error> {
    shared::telemetry::init();
    let config = Config::from_env()?;
    let telemetry = Telemetry::default();
    let sdk = aws_sdk_config().await;
    let store = DynamoStore::new(
        dynamodb_client(&sdk, &telemetry.requests),
        config.state_table.clone(),
        config.idempotency_table.clone(),
    )
    .with_marker_ttl(config.idempotency_ttl)
    .with_capacity_meter(telemetry.capacity.clone())
    .with_commit_concurrency(config.commit_concurrency);
    serve("sqs-consumer", &telemetry, |payload: RawBatch, context| {
        let (store, config) = (&store, &config);
        async move {
            let deadline = Some(shared::runtime::deadline(&context));
            sqs_consumer::handle_batch(store, config, &payload, deadline).await
        }
    })
    .await
}
