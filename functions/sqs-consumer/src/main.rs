//! Lambda entry point of `sqs-consumer`: wires configuration, clients and the
//! handler once, then serves invocations.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;
use shared::config::{Config, aws_sdk_config, dynamodb_client};
use shared::state::dynamo::DynamoStore;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let config = Config::from_env()?;
    let sdk = aws_sdk_config().await;
    let store = DynamoStore::new(dynamodb_client(&sdk), config.state_table.clone(), config.idempotency_table.clone())
        .with_marker_ttl(config.idempotency_ttl);
    let (store, config) = (&store, &config);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let (response, summary) = sqs_consumer::handle(store, config, &event.payload).await?;
        summary.log("sqs-consumer");
        Ok::<_, Error>(response)
    }))
    .await
}
