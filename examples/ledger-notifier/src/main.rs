//! Lambda entry point: configuration and clients once, then the handler.
//!
//! Environment: `LEDGER_URL` (where entries are posted), `IDEMPOTENCY_TABLE`,
//! `QUARANTINE_TABLE` (key `pk` + `sk`), and the toolkit's optional settings
//! (`shared::config::Settings`).

use ledger_notifier::{Call, plan, post};
use shared::config::{Settings, aws_sdk_config, dynamodb_client, required};
use shared::core::key::Keys;
use shared::engine::Engine;
use shared::event::{RawBatch, stream};
use shared::idempotency::dynamo::DynamoIdempotencyStore;
use shared::idempotency::{Idempotency, Options};
use shared::quarantine::DynamoQuarantine;
use shared::runtime::{Telemetry, deadline, serve};

fn main() -> Result<(), lambda_runtime::Error> {
    shared::runtime::block_on(run())
}

async fn run() -> Result<(), lambda_runtime::Error> {
    shared::telemetry::init();
    let settings = Settings::from_env(&shared::config::Defaults::named("ledger-notifier"))?;
    let ledger = required("LEDGER_URL")?;
    let telemetry = Telemetry::default();
    let client = dynamodb_client(&aws_sdk_config().await, &telemetry.requests);
    let store = DynamoIdempotencyStore::new(client.clone(), settings.require_idempotency_table()?);
    let lock = Idempotency::new(store, Options::default());
    let quarantine = DynamoQuarantine::new(client, required("QUARANTINE_TABLE")?);
    let keys = Keys::new(&settings.idempotency_key_prefix);
    let http = reqwest::Client::new();
    serve("ledger-notifier", &telemetry, |batch: RawBatch, context| {
        let deadline = Some(deadline(&context));
        let (lock, quarantine, keys, http, ledger) = (&lock, &quarantine, &keys, &http, &ledger);
        // One call at a time, in shard order, stopping at the first failure.
        let commit = move |calls: Vec<Call>| async move {
            let mut results = Vec::with_capacity(calls.len());
            for call in calls {
                let payload = serde_json::to_vec(&call.entry).unwrap_or_default();
                let result =
                    lock.commit_with_lock(&call.key, &payload, deadline, || post(http, ledger, &call.entry)).await;
                let failed = result.is_err();
                results.push(result);
                if failed {
                    break;
                }
            }
            results
        };
        async move {
            Engine::new(quarantine)
                .process(&batch, deadline, |record: &stream::Record| plan(keys, record), commit)
                .await
        }
    })
    .await
}
