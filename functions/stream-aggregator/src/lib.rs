//! `stream-aggregator`: maintains customer totals from the state table's
//! DynamoDB stream.
//!
//! For each stream record of an order, the delta `contribution(new image) -
//! contribution(old image)` is applied to the customer's totals exactly once:
//! the record's idempotency marker commits in the same transaction as the
//! totals. Records of other entities are ignored. Processing keeps shard
//! order: it stops at the first record that fails transiently and reports its
//! sequence number, so Lambda retries from there.

use serde_json::Value;
use serde_json::value::RawValue;
use shared::batch::{BatchResponse, InvocationError, Summary, finish};
use shared::config::Config;
use shared::event::{RawBatch, stream};
use shared::idempotency::IdempotencyKey;
use shared::order::totals_delta;
use shared::state::item::{is_order, order_from_item};
use shared::state::{DeltaRecord, ErrorClass, Quarantined, StateStore};

enum Planned {
    Delta(DeltaRecord),
    Quarantine(Quarantined),
    Ignore,
}

fn source_of(arn: Option<&str>) -> String {
    // arn:aws:dynamodb:region:account:table/NAME/stream/LABEL
    let table = arn.and_then(|arn| arn.split('/').nth(1)).unwrap_or("unknown");
    format!("ddb-stream/{table}")
}

fn plan(keys: &IdempotencyKey, record: &RawValue, index: usize) -> (String, Planned) {
    let parsed = match stream::Record::parse_raw(record) {
        Ok(r) => r,
        Err(e) => {
            // The rare path: read what can be read for the report.
            let value: Value = serde_json::from_str(record.get()).unwrap_or(Value::Null);
            let id = stream::sequence_number_of(&value).map_or_else(|| format!("record-{index}"), str::to_owned);
            let source = source_of(value.get("eventSourceARN").and_then(Value::as_str));
            return (id.clone(), Planned::Quarantine(Quarantined::new(source, id, e.to_string(), record.get())));
        }
    };
    let source = || source_of(parsed.raw.event_source_arn.as_deref());
    // Reported on failure; records without one (DynamoDB via Kinesis) fall
    // back to their eventID.
    let seq = parsed.sequence_number.clone().unwrap_or_else(|| parsed.event_id.clone());
    let order_image = |image: Option<&serde_dynamo::Item>| image.is_some_and(is_order);
    let is_order_record = is_order(parsed.keys()) || order_image(parsed.new_image()) || order_image(parsed.old_image());
    if !is_order_record {
        return (seq, Planned::Ignore);
    }
    let read = |image: Option<&serde_dynamo::Item>| image.map(order_from_item).transpose();
    match (read(parsed.old_image()), read(parsed.new_image())) {
        (Ok(old), Ok(new)) => match keys.stream(&parsed) {
            Ok(Some(key)) => {
                let deltas = totals_delta(old.as_ref(), new.as_ref());
                (seq, Planned::Delta(DeltaRecord { idempotency_key: key, deltas }))
            }
            Ok(None) | Err(_) => {
                let q = Quarantined::new(source(), &seq, "no eventID to deduplicate by", record.get());
                (seq, Planned::Quarantine(q))
            }
        },
        (Err(e), _) | (_, Err(e)) => {
            let q = Quarantined::new(source(), &seq, format!("order image: {e}"), record.get());
            (seq, Planned::Quarantine(q))
        }
    }
}

/// Handles one DynamoDB stream event given as a `Value` (tests, tools): [`handle_batch`].
pub async fn handle<S: StateStore>(
    store: &S,
    config: &Config,
    payload: &Value,
) -> Result<(BatchResponse, Summary), InvocationError> {
    let batch = RawBatch::from_value(payload).map_err(|e| InvocationError::new(e.to_string()))?;
    handle_batch(store, config, &batch).await
}

/// Handles one DynamoDB stream event.
pub async fn handle_batch<S: StateStore>(
    store: &S,
    config: &Config,
    batch: &RawBatch,
) -> Result<(BatchResponse, Summary), InvocationError> {
    let records = batch.records().map_err(|e| InvocationError::new(e.to_string()))?;
    let mut summary = Summary::default();
    let keys = IdempotencyKey::new(&config.idempotency_key_prefix);
    let planned: Vec<(String, Planned)> = records.iter().enumerate().map(|(i, r)| plan(&keys, r, i)).collect();

    // Quarantine first: these records are acknowledged only once their
    // quarantine item is written.
    let quarantine: Vec<Quarantined> = planned
        .iter()
        .filter_map(|(_, p)| if let Planned::Quarantine(q) = p { Some(q.clone()) } else { None })
        .collect();
    let mut first_failure: Option<usize> = None;
    for q in &quarantine {
        tracing::warn!(sequence_number = %q.record_id, reason = %q.reason, "stream record quarantined");
    }
    if !quarantine.is_empty() {
        match store.quarantine(&quarantine).await {
            Ok(()) => summary.quarantined = quarantine.len() as u64,
            Err(e) if e.class() == ErrorClass::Fatal => {
                return Err(InvocationError::new(e.to_string()));
            }
            Err(e) => {
                tracing::error!(error = %e, "quarantine write failed");
                first_failure = planned.iter().position(|(_, p)| matches!(p, Planned::Quarantine(_)));
            }
        }
    }

    // Deltas in shard order; they commit in chunks, a prefix at a time.
    let delta_positions: Vec<usize> =
        planned.iter().enumerate().filter(|(_, (_, p))| matches!(p, Planned::Delta(_))).map(|(i, _)| i).collect();
    let limit = first_failure.unwrap_or(planned.len());
    let deltas: Vec<DeltaRecord> = delta_positions
        .iter()
        .take_while(|i| **i < limit)
        .map(|i| match &planned[*i].1 {
            Planned::Delta(d) => d.clone(),
            _ => unreachable!("filtered to deltas"),
        })
        .collect();
    let (outcomes, error) = store.apply_deltas(&deltas).await;
    for (i, outcome) in delta_positions.iter().zip(&outcomes) {
        // DEBUG, as in sqs-consumer: the summary line counts the outcomes.
        tracing::debug!(sequence_number = %planned[*i].0, ?outcome, "stream record");
        summary.count(*outcome);
    }
    if let Some(e) = error {
        if e.class() == ErrorClass::Fatal {
            return Err(InvocationError::new(e.to_string()));
        }
        tracing::error!(error = %e, "applying totals failed; the shard retries from the first unapplied record");
        let failed_at = delta_positions[outcomes.len()];
        first_failure = Some(first_failure.map_or(failed_at, |f| f.min(failed_at)));
    }
    summary.ignored =
        planned[..first_failure.unwrap_or(planned.len())].iter().filter(|(_, p)| matches!(p, Planned::Ignore)).count()
            as u64;
    let response = match first_failure {
        Some(i) => {
            summary.failed = (planned.len() - i) as u64;
            BatchResponse::failed([planned[i].0.clone()])
        }
        None => BatchResponse::default(),
    };
    // "Every record failed" for a stream means the first record failed.
    let all_failed = first_failure == Some(0);
    let response = finish(response, if all_failed { 1 } else { 0 }, config.fail_on_all_failed && all_failed)?;
    Ok((response, summary))
}
