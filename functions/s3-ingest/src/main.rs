//! Lambda entry point of `s3-ingest`: wires configuration, clients and the
//! handler once, then serves invocations.

use std::time::{Duration, UNIX_EPOCH};

use lambda_runtime::{Error, LambdaEvent, service_fn};
use s3_ingest::{Deadline, Handoff};
use serde_json::Value;
use shared::config::{Config, aws_sdk_config, dynamodb_client, s3_client, sqs_client};
use shared::object::S3Source;
use shared::state::dynamo::DynamoStore;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let config = Config::from_env()?;
    let sdk = aws_sdk_config().await;
    let store = DynamoStore::new(dynamodb_client(&sdk), config.state_table.clone(), config.idempotency_table.clone())
        .with_marker_ttl(config.idempotency_ttl);
    let objects = S3Source::new(s3_client(&sdk));
    let handoff = match &config.ingest_queue_url {
        Some(url) => Handoff::Queue { client: sqs_client(&sdk), queue_url: url.clone() },
        None => Handoff::Retry,
    };
    let (store, objects, handoff, config) = (&store, &objects, &handoff, &config);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let deadline = Deadline::At(UNIX_EPOCH + Duration::from_millis(event.context.deadline));
        let (response, summary, _) =
            s3_ingest::handle(store, objects, handoff, config, &event.payload, &deadline).await?;
        summary.log("s3-ingest");
        Ok::<_, Error>(response)
    }))
    .await
}
