//! `sqs-consumer`: applies order events from an SQS queue (standard or FIFO)
//! to the state table and returns a partial batch response.
//!
//! Per batch: every message is parsed and validated on its own (a bad one is
//! quarantined with its reason and acknowledged); the valid events are applied
//! together in one conditional transaction; transient store failures report
//! the affected messages for retry; a missing table fails the invocation.

use serde_json::Value;
use shared::batch::{BatchResponse, InvocationError, Summary, finish};
use shared::config::Config;
use shared::event::{RawBatch, sqs};
use shared::idempotency::{IdempotencyKey, KeyError, KeySource, payload_hash};
use shared::order::{OrderEvent, parse_order_event};
use shared::state::{ErrorClass, Marker, Outcome, Quarantined, StateStore};

/// The quarantine source of messages of a queue: `sqs/<queue name>`.
fn source_of(arn: Option<&str>) -> String {
    let queue = arn.and_then(|a| a.rsplit(':').next()).unwrap_or("unknown");
    format!("sqs/{queue}")
}

/// Handles one SQS event given as a `Value` (tests, tools): [`handle_batch`].
pub async fn handle<S: StateStore>(
    store: &S,
    config: &Config,
    payload: &Value,
) -> Result<(BatchResponse, Summary), InvocationError> {
    let batch = RawBatch::from_value(payload).map_err(|e| InvocationError::new(e.to_string()))?;
    handle_batch(store, config, &batch).await
}

/// Handles one SQS event.
pub async fn handle_batch<S: StateStore>(
    store: &S,
    config: &Config,
    batch: &RawBatch,
) -> Result<(BatchResponse, Summary), InvocationError> {
    let records = batch.records().map_err(|e| InvocationError::new(e.to_string()))?;
    let mut summary = Summary::default();
    let mut failed: Vec<String> = Vec::new();
    let mut quarantine: Vec<(String, Quarantined)> = Vec::new();
    // The valid events, with their message ids, markers and record positions.
    let mut events: Vec<OrderEvent> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let mut markers: Vec<Marker> = Vec::new();
    let mut positions: Vec<usize> = Vec::new();
    // Every record's message id and FIFO group, in batch order.
    let mut delivered: Vec<(Option<String>, Option<String>)> = Vec::with_capacity(records.len());
    let keys = IdempotencyKey::new(&config.idempotency_key_prefix);

    for (index, record) in records.iter().enumerate() {
        let message = match sqs::Message::parse_raw(record) {
            Ok(m) => m,
            Err(e) => {
                // The rare path: read what can be read for the report.
                let value: Value = serde_json::from_str(record.get()).unwrap_or(Value::Null);
                let group = value.pointer("/attributes/MessageGroupId").and_then(Value::as_str).map(str::to_owned);
                let message_id = sqs::message_id_of(&value).map(str::to_owned);
                delivered.push((message_id.clone(), group));
                let id = message_id.unwrap_or_else(|| format!("record-{index}"));
                tracing::warn!(message_id = %id, reason = %e, "unparseable SQS record quarantined");
                let source = source_of(value.get("eventSourceARN").and_then(Value::as_str));
                quarantine.push((id.clone(), Quarantined::new(source, id, e.to_string(), record.get())));
                continue;
            }
        };
        delivered.push((Some(message.message_id.clone()), message.group_id.clone()));
        // No span per record: its fields would cost every record; the lines
        // about one record name it themselves.
        let parsed = parse_order_event(&message.body).map_err(|e| e.to_string()).and_then(|event| {
            match key_of(&keys, &config.idempotency_key_source, &message, &event) {
                Ok(Some(key)) => Ok((event, key)),
                Ok(None) => Err("no idempotency key".to_owned()),
                Err(e) => Err(e.to_string()),
            }
        });
        match parsed {
            Ok((order_event, key)) => {
                markers.push(Marker { key, validation: Some(payload_hash(message.body.as_bytes())) });
                positions.push(index);
                ids.push(message.message_id);
                events.push(order_event);
            }
            Err(e) => {
                tracing::warn!(message_id = %message.message_id, reason = %e, "invalid order event quarantined");
                let source = source_of(message.event_source_arn.as_deref());
                quarantine.push((
                    message.message_id.clone(),
                    Quarantined::new(source, &message.message_id, e, &message.body),
                ));
            }
        }
    }

    if !quarantine.is_empty() {
        let items: Vec<Quarantined> = quarantine.iter().map(|(_, q)| q.clone()).collect();
        match store.quarantine(&items).await {
            Ok(()) => summary.quarantined += quarantine.len() as u64,
            Err(e) if e.class() == ErrorClass::Fatal => {
                return Err(InvocationError::new(e.to_string()));
            }
            Err(e) => {
                tracing::error!(error = %e, "quarantine write failed; reporting the messages for retry");
                failed.extend(quarantine.iter().map(|(id, _)| id.clone()));
                summary.failed += quarantine.len() as u64;
            }
        }
    }

    // FIFO: a message after a failed one in its group must not take effect
    // before it does; it is reported failed, unprocessed (other groups go on).
    if !failed.is_empty() && !events.is_empty() {
        let blocked: std::collections::HashSet<String> =
            extend_fifo_failures(&delivered, failed.clone()).into_iter().filter(|id| !failed.contains(id)).collect();
        if !blocked.is_empty() {
            let keep: Vec<bool> = ids.iter().map(|id| !blocked.contains(id)).collect();
            retain_where(&mut events, &keep);
            retain_where(&mut markers, &keep);
            retain_where(&mut positions, &keep);
            let (kept, skipped): (Vec<String>, Vec<String>) = ids.into_iter().partition(|id| !blocked.contains(id));
            ids = kept;
            tracing::warn!(count = skipped.len(), "FIFO messages after a failed one in their group left unprocessed");
            summary.failed += skipped.len() as u64;
            failed.extend(skipped);
        }
    }

    if !events.is_empty() {
        match store.apply_orders(&events, Some(&markers), None).await {
            Ok(outcomes) => {
                let mut reused = Vec::new();
                for (i, outcome) in outcomes.into_iter().enumerate() {
                    let (message_id, e) = (&ids[i], &events[i]);
                    // DEBUG: a line per record would cost more than the record's own work
                    // (the summary line counts the outcomes; AWS_LAMBDA_LOG_LEVEL=DEBUG shows these).
                    tracing::debug!(message_id, order_id = %e.order_id, event_id = %e.event_id, ?outcome, "order event");
                    if outcome == Outcome::KeyReused {
                        let reason =
                            format!("idempotency key {} was already used with a different payload", markers[i].key);
                        // The rare path: the record parsed before, so it parses again.
                        let message = sqs::Message::parse_raw(&records[positions[i]]).ok();
                        let source = source_of(message.as_ref().and_then(|m| m.event_source_arn.as_deref()));
                        let body = message.as_ref().map_or("", |m| m.body.as_str());
                        tracing::warn!(message_id, reason, "order event quarantined");
                        reused.push((message_id.clone(), Quarantined::new(source, message_id, reason, body)));
                    } else {
                        summary.count(outcome);
                    }
                }
                if !reused.is_empty() {
                    let items: Vec<Quarantined> = reused.iter().map(|(_, q)| q.clone()).collect();
                    match store.quarantine(&items).await {
                        Ok(()) => summary.quarantined += items.len() as u64,
                        Err(e) => {
                            tracing::error!(error = %e, "quarantine write failed; reporting the messages for retry");
                            failed.extend(reused.iter().map(|(id, _)| id.clone()));
                            summary.failed += items.len() as u64;
                        }
                    }
                }
            }
            Err(e) if e.class() == ErrorClass::Fatal => {
                return Err(InvocationError::new(e.to_string()));
            }
            Err(e) => {
                tracing::error!(error = %e, "applying order events failed; reporting them for retry");
                summary.failed += ids.len() as u64;
                failed.extend(ids);
            }
        }
    }

    // FIFO: after a failure in a message group, later messages of that group
    // must not be acknowledged out of order: a failed transaction fails every
    // event it held, so the later messages of each failed group (poison ones,
    // acknowledged above) are reported too.
    let failed = extend_fifo_failures(&delivered, failed);
    summary.failed = summary.failed.max(failed.len() as u64);
    let response = finish(BatchResponse::failed(failed), records.len(), config.fail_on_all_failed)?;
    Ok((response, summary))
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

/// Keeps the items of `items` whose flag in `keep` (same positions) is set.
fn retain_where<T>(items: &mut Vec<T>, keep: &[bool]) {
    let mut flags = keep.iter();
    items.retain(|_| flags.next().copied().unwrap_or(true));
}

/// Adds, for each FIFO message group with a failed message, every later
/// message of that group. `delivered`: each record's message id and group.
fn extend_fifo_failures(delivered: &[(Option<String>, Option<String>)], failed: Vec<String>) -> Vec<String> {
    let mut failed_groups = std::collections::HashSet::new();
    let failed_ids: std::collections::HashSet<&str> = failed.iter().map(String::as_str).collect();
    let mut out = Vec::with_capacity(failed.len());
    for (id, group) in delivered {
        let Some(id) = id else {
            continue;
        };
        let is_failed = failed_ids.contains(id.as_str());
        let blocked = group.as_ref().is_some_and(|g| failed_groups.contains(g));
        if is_failed || blocked {
            out.push(id.clone());
            if let Some(g) = group {
                failed_groups.insert(g);
            }
        }
    }
    // Failures of records without an id in the event keep their synthetic ids.
    let mut reported: std::collections::HashSet<String> = out.iter().cloned().collect();
    for f in failed {
        if reported.insert(f.clone()) {
            out.push(f);
        }
    }
    out
}
