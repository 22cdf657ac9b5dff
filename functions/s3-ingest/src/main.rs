//! Lambda entry point of `s3-ingest`: wires configuration, clients and the
//! handler once, then serves invocations.

use orders::config::Config;
use orders::state::dynamo::DynamoStore;
use s3_ingest::{Deadline, Handoff};
use shared::config::{aws_sdk_config, dynamodb_client, s3_client, sqs_client};
use shared::object::S3Source;
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
    let objects = S3Source::new(s3_client(&sdk));
    let handoff = match &config.ingest_queue_url {
        Some(url) => Handoff::Queue { client: sqs_client(&sdk), queue_url: url.clone() },
        None => Handoff::Retry,
    };
    serve("s3-ingest", &telemetry, |payload: serde_json::Value, context| {
        let deadline = Deadline::At(shared::runtime::deadline(&context));
        let (store, objects, handoff, config) = (&store, &objects, &handoff, &config);
        async move {
            // Boxed: the ingest future is deep, and a boxed one keeps main's small.
            let (response, summary, _) =
                Box::pin(s3_ingest::handle(store, objects, handoff, config, &payload, &deadline)).await?;
            Ok((response, summary))
        }
    })
    .await
}
