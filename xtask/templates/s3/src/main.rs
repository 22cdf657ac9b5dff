//! Lambda entry point: configuration and clients once, then the handler.
//!
//! Environment: `{{NAME}}_TABLE` (key `pk` + `sk`: the objects recorded), `IDEMPOTENCY_TABLE`,
//! `QUARANTINE_TABLE` (key `pk` + `sk`), and the toolkit's optional
//! settings (`shared::config::Settings`); `infra/stack.json` declares them.

use shared::config::{Settings, aws_sdk_config, dynamodb_client, required};
use shared::core::key::Keys;
use shared::engine::Engine;
use shared::event::{RawBatch, sqs};
use shared::exactly_once::ExactlyOnce;
use shared::runtime::{Telemetry, deadline, serve};
use shared::state::dynamo::DynamoQuarantine;
use {{crate}}::plan;

fn main() -> Result<(), lambda_runtime::Error> {
    shared::runtime::block_on(run())
}

async fn run() -> Result<(), lambda_runtime::Error> {
    shared::telemetry::init();
    let settings = Settings::from_env()?;
    let table = required("{{NAME}}_TABLE")?;
    let telemetry = Telemetry::default();
    let client = dynamodb_client(&aws_sdk_config().await, &telemetry.requests);
    let exactly_once = ExactlyOnce::new(client.clone(), settings.require_idempotency_table()?)
        .with_marker_ttl(settings.idempotency_ttl)
        .with_idempotency_disabled(settings.idempotency_disabled);
    let quarantine = DynamoQuarantine::new(client, required("QUARANTINE_TABLE")?);
    let keys = Keys::new(&settings.idempotency_key_prefix);
    serve("{{name}}", &telemetry, |batch: RawBatch, context| {
        let deadline = Some(deadline(&context));
        let (exactly_once, quarantine, keys, table, settings) = (&exactly_once, &quarantine, &keys, &table, &settings);
        async move {
            Engine::new(quarantine)
                .fail_on_all_failed(settings.fail_on_all_failed)
                .deadline_margin(settings.deadline_margin)
                .process(
                    &batch,
                    deadline,
                    |message: &sqs::Message| plan(keys, table, message),
                    |units| exactly_once.commit(units, deadline),
                )
                .await
        }
    })
    .await
}
