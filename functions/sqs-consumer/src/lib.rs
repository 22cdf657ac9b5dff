//! `sqs-consumer`: applies order events from an SQS queue (standard or FIFO)
//! to the state table and returns a partial batch response.
//!
//! The batch rules (quarantine of bad messages, FIFO group blocking, the
//! deadline guard, the response) are the toolkit's [`Engine`]; this crate
//! says only how a message becomes an order event with its idempotency key
//! and fingerprint, and that the events of a batch are applied together by
//! the apply rule. Keyed by the event's own id (`IDEMPOTENCY_KEY_SOURCE`
//! `/eventId`, the orders' default), each order guards its events itself
//! (`StateStore::apply_orders_guarded`: no marker, no transaction, one write
//! request unit per applied event); keyed otherwise, each event's marker
//! commits in the same transaction as its order.

use std::time::SystemTime;

use orders::config::Config;
use orders::order::{OrderEvent, fingerprint, parse_order_event};
use orders::state::{Marker, Outcome, StateStore};
use serde_json::Value;
use shared::batch::{BatchResponse, InvocationError, RecordError, Summary};
use shared::engine::{CommitError, Engine, Plan};
use shared::event::{RawBatch, sqs};
use shared::idempotency::{IdempotencyKey, KeyError, KeySource};

/// Handles one SQS event given as a `Value` (tests, tools): [`handle_batch`].
pub async fn handle<S: StateStore>(
    store: &S,
    config: &Config,
    payload: &Value,
) -> Result<(BatchResponse, Summary), InvocationError> {
    let batch = RawBatch::from_value(payload).map_err(|e| InvocationError::new(e.to_string()))?;
    handle_batch(store, config, &batch, None).await
}

/// Handles one SQS event; `deadline` is the invocation's.
pub async fn handle_batch<S: StateStore>(
    store: &S,
    config: &Config,
    batch: &RawBatch,
    deadline: Option<SystemTime>,
) -> Result<(BatchResponse, Summary), InvocationError> {
    let keys = IdempotencyKey::new(&config.idempotency_key_prefix);
    let plan = |message: &sqs::Message| -> Result<Plan<(OrderEvent, Marker)>, RecordError> {
        let event = parse_order_event(&message.body).map_err(|e| RecordError::Permanent(e.to_string()))?;
        let key = match key_of(&keys, &config.idempotency_key_source, message, &event) {
            Ok(Some(key)) => key,
            Ok(None) => return Err(RecordError::Permanent("no idempotency key".into())),
            Err(e) => return Err(RecordError::Permanent(e.to_string())),
        };
        // The fingerprint of the validated event, not of its bytes: a resend
        // with other formatting or ignored fields is a duplicate.
        let marker = Marker { key, validation: Some(fingerprint(&event)) };
        Ok(Plan::Effect((event, marker)))
    };
    // Keyed by the event's own id (the default), each order guards its
    // events itself: no marker, no transaction. Keyed otherwise (by
    // messageId, say), the markers carry the key.
    let guarded = matches!(&config.idempotency_key_source, KeySource::BodyPointer(p) if p == "/eventId");
    let commit = |planned: Vec<(OrderEvent, Marker)>| async move {
        let (events, markers): (Vec<OrderEvent>, Vec<Marker>) = planned.into_iter().unzip();
        let applied = if guarded {
            store.apply_orders_guarded(&events, &markers).await
        } else {
            store.apply_orders(&events, Some(&markers), None).await
        };
        match applied {
            Ok(outcomes) => outcomes
                .into_iter()
                .zip(&markers)
                .map(|(outcome, marker)| match outcome {
                    Outcome::KeyReused => Err(CommitError::Permanent(format!(
                        "idempotency key {} was already used with a different payload",
                        marker.key
                    ))),
                    outcome => Ok(outcome),
                })
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "applying order events failed");
                vec![Err(CommitError::from(&e)); events.len()]
            }
        }
    };
    Engine::new(store)
        .fail_on_all_failed(config.fail_on_all_failed)
        .deadline_margin(config.deadline_margin)
        .process(batch, deadline, plan, commit)
        .await
}

/// The message's idempotency key. The default source, `/eventId`, is a field
/// the order event has already read, so the body is not parsed again.
fn key_of(
    keys: &IdempotencyKey,
    source: &KeySource,
    message: &sqs::Message,
    event: &OrderEvent,
) -> Result<Option<String>, KeyError> {
    match source {
        KeySource::BodyPointer(pointer) if pointer == "/eventId" => {
            Ok(Some(keys.sqs_body_string(pointer, &event.event_id)))
        }
        _ => keys.sqs(source, message),
    }
}
