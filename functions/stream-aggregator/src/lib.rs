//! `stream-aggregator`: maintains customer totals from the state table's
//! DynamoDB stream.
//!
//! For each stream record of an order, the delta `contribution(new image) -
//! contribution(old image)` is applied to the customer's totals exactly once:
//! the record's idempotency marker commits in the same transaction as the
//! totals. Records of other entities are ignored. The shard rules (stop at
//! the first record that fails transiently and report its sequence number,
//! so Lambda retries from there; quarantine of bad records) are the
//! toolkit's [`Engine`].

use std::time::SystemTime;

use orders::config::Config;
use orders::order::totals_delta;
use orders::state::item::{is_order, order_from_item};
use orders::state::{DeltaRecord, StateStore};
use serde_json::Value;
use shared::batch::{BatchResponse, InvocationError, RecordError, Summary};
use shared::engine::{Engine, Plan};
use shared::event::{RawBatch, stream};
use shared::idempotency::IdempotencyKey;

/// A stream record's plan: its totals delta, nothing (another entity), or
/// the reason it cannot be used.
fn plan(keys: &IdempotencyKey, record: &stream::Record) -> Result<Plan<DeltaRecord>, RecordError> {
    let order_image = |image: Option<&serde_dynamo::Item>| image.is_some_and(is_order);
    if !(is_order(record.keys()) || order_image(record.new_image()) || order_image(record.old_image())) {
        return Ok(Plan::Ignore);
    }
    let read = |image: Option<&serde_dynamo::Item>| image.map(order_from_item).transpose();
    let (old, new) = match (read(record.old_image()), read(record.new_image())) {
        (Ok(old), Ok(new)) => (old, new),
        (Err(e), _) | (_, Err(e)) => return Err(RecordError::Permanent(format!("order image: {e}"))),
    };
    match keys.stream(record) {
        Ok(Some(key)) => {
            let deltas = totals_delta(old.as_ref(), new.as_ref())
                .map_err(|e| RecordError::Permanent(format!("order images: the change's delta: {e}")))?;
            Ok(Plan::Effect(DeltaRecord { idempotency_key: key, deltas }))
        }
        Ok(None) | Err(_) => Err(RecordError::Permanent("no eventID to deduplicate by".into())),
    }
}

/// Handles one DynamoDB stream event given as a `Value` (tests, tools): [`handle_batch`].
pub async fn handle<S: StateStore>(
    store: &S,
    config: &Config,
    payload: &Value,
) -> Result<(BatchResponse, Summary), InvocationError> {
    let batch = RawBatch::from_value(payload).map_err(|e| InvocationError::new(e.to_string()))?;
    handle_batch(store, config, &batch, None).await
}

/// Handles one DynamoDB stream event; `deadline` is the invocation's.
pub async fn handle_batch<S: StateStore>(
    store: &S,
    config: &Config,
    batch: &RawBatch,
    deadline: Option<SystemTime>,
) -> Result<(BatchResponse, Summary), InvocationError> {
    let keys = IdempotencyKey::new(&config.idempotency_key_prefix);
    let commit = |deltas: Vec<DeltaRecord>| orders::state::commit_deltas(store, deltas);
    Engine::new(store)
        .fail_on_all_failed(config.fail_on_all_failed)
        .deadline_margin(config.deadline_margin)
        .process(batch, deadline, |record: &stream::Record| plan(&keys, record), commit)
        .await
}
