//! Lambda entry point: configuration and clients once, then the handler.
//!
//! Environment: `INVENTORY_TABLE` (key `sku`), `IDEMPOTENCY_TABLE`,
//! `QUARANTINE_TABLE` (key `pk` + `sk`), and the toolkit's optional
//! settings (`shared::config::Settings`).

use inventory_reservations::plan;
use shared::config::{Settings, aws_sdk_config, dynamodb_client, required};
use shared::core::key::Keys;
use shared::engine::Engine;
use shared::event::{RawBatch, sqs};
use shared::exactly_once::ExactlyOnce;
use shared::quarantine::DynamoQuarantine;
use shared::runtime::{Telemetry, deadline, serve};

fn main() -> Result<(), lambda_runtime::Error> {
    shared::runtime::block_on(run())
}

async fn run() -> Result<(), lambda_runtime::Error> {
    shared::telemetry::init();
    let settings = Settings::from_env(&shared::config::Defaults::named("inventory-reservations"))?;
    let inventory = required("INVENTORY_TABLE")?;
    let telemetry = Telemetry::default();
    let client = dynamodb_client(&aws_sdk_config().await, &telemetry.requests);
    let exactly_once = ExactlyOnce::new(client.clone(), settings.require_idempotency_table()?)
        .with_marker_ttl(settings.idempotency_ttl)
        .with_idempotency_disabled(settings.idempotency_disabled);
    let quarantine = DynamoQuarantine::new(client, required("QUARANTINE_TABLE")?);
    let keys = Keys::new(&settings.idempotency_key_prefix);
    serve("inventory-reservations", &telemetry, |batch: RawBatch, context| {
        let deadline = Some(deadline(&context));
        let (exactly_once, quarantine, keys, inventory, settings) =
            (&exactly_once, &quarantine, &keys, &inventory, &settings);
        async move {
            Engine::new(quarantine)
                .fail_on_all_failed(settings.fail_on_all_failed)
                .deadline_margin(settings.deadline_margin)
                .process(
                    &batch,
                    deadline,
                    |message: &sqs::Message| plan(keys, inventory, message),
                    |units| exactly_once.commit(units, deadline),
                )
                .await
        }
    })
    .await
}
