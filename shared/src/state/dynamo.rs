//! The DynamoDB [`StateStore`]: batched, conditional, transactional.
//!
//! Request budget: one `TransactWriteItems` per group of up to 100 distinct
//! items (orders, or markers plus customers), one `BatchGetItem` per stream
//! chunk, and nothing else on the happy path. Conflicts are resolved from the
//! transaction's cancellation reasons (`ReturnValuesOnConditionCheckFailure`
//! returns the item that failed the condition), never by re-reading.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue as SdkValue, KeysAndAttributes, Put, PutRequest, ReturnValuesOnConditionCheckFailure,
    TransactWriteItem, WriteRequest,
};
use chrono::Utc;
use serde_dynamo::{AttributeValue, Item};

use super::item::{
    ItemExt, ORDER_SK, TOTALS_SK, customer_pk, entity, n, order_pk, s, totals_from_item, totals_to_item,
};
use super::{
    Checkpoint, Counts, DeltaRecord, ErrorClass, Manifest, ManifestFn, ManifestWrite, Marker, ObjectStatus, Outcome,
    Quarantined, StateStore, StoreError, combine_orders, dedupe_markers,
};
use crate::engine::CommitError;
use crate::error::{classify_sdk, sdk_message};
use crate::exactly_once::{ExactlyOnce, FinalWriteError, UnitOfWork, Verdict, Write};
use crate::order::{CustomerTotals, OrderEvent, format_timestamp, parse_timestamp};

/// DynamoDB TransactWriteItems limit on actions per transaction.
pub const MAX_TRANSACT_ITEMS: usize = 100;
/// DynamoDB BatchWriteItem limit on requests per call.
const MAX_BATCH_WRITE: usize = 25;
/// DynamoDB BatchGetItem limit on keys per call.
const MAX_BATCH_GET: usize = 100;
use crate::exactly_once::{MARKER_TTL, MAX_ATTEMPTS};

/// The state table (and, for markers, the idempotency table) in DynamoDB.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    /// Shared by the batch's deferred order updates.
    state_table: Arc<str>,
    idempotency_table: String,
    marker_ttl: Duration,
    capacity: crate::telemetry::CapacityMeter,
    commit_concurrency: usize,
}

/// Transactions of one batch of orders committed at once by default
/// ([`DynamoStore::with_commit_concurrency`], `COMMIT_CONCURRENCY`): a
/// batch of 1,000 standard-queue events (20 transactions) commits in two
/// rounds. `cargo xtask bench --cost-only` on the latency model: 4 gave
/// 4,007 records/s (91x Powertools), 10 gave 7,611 (173x), same run.
pub const DEFAULT_COMMIT_CONCURRENCY: usize = 10;

impl DynamoStore {
    /// A commit failure as a store error of the same class.
    fn commit_error(&self, e: CommitError) -> StoreError {
        let (class, message) = match e {
            CommitError::Transient(m) => (ErrorClass::Transient, m),
            CommitError::Permanent(m) => (ErrorClass::Permanent, m),
            CommitError::Fatal(m) => (ErrorClass::Fatal, m),
        };
        StoreError::Dynamo { operation: "TransactWriteItems", table: self.state_table.to_string(), message, class }
    }

    /// A store over the state table and the idempotency table (for markers).
    pub fn new(client: Client, state_table: String, idempotency_table: String) -> Self {
        Self {
            client,
            state_table: state_table.into(),
            idempotency_table,
            marker_ttl: MARKER_TTL,
            capacity: Default::default(),
            commit_concurrency: DEFAULT_COMMIT_CONCURRENCY,
        }
    }

    /// Sums the capacity DynamoDB reports consuming into `meter`.
    pub fn with_capacity_meter(mut self, meter: crate::telemetry::CapacityMeter) -> Self {
        self.capacity = meter;
        self
    }

    fn meter(&self, consumed: &[aws_sdk_dynamodb::types::ConsumedCapacity]) {
        self.capacity.add(consumed.iter().filter_map(|c| c.capacity_units).sum());
    }

    /// Keeps idempotency markers this long (default a week).
    pub fn with_marker_ttl(mut self, ttl: Duration) -> Self {
        self.marker_ttl = ttl;
        self
    }

    fn dynamo_error<E>(
        &self,
        operation: &'static str,
        table: &str,
        err: &aws_sdk_dynamodb::error::SdkError<E, aws_smithy_runtime_api::http::Response>,
    ) -> StoreError
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        StoreError::Dynamo { operation, table: table.to_owned(), message: sdk_message(err), class: classify_sdk(err) }
    }

    /// The exactly-once committer over this store's idempotency table.
    fn exactly_once(&self) -> ExactlyOnce {
        ExactlyOnce::new(self.client.clone(), self.idempotency_table.clone())
            .with_marker_ttl(self.marker_ttl)
            .with_capacity_meter(self.capacity.clone())
            .concurrency(self.commit_concurrency)
    }

    /// Commits up to `n` transactions of a batch of orders at once (default
    /// [`DEFAULT_COMMIT_CONCURRENCY`]; see [`ExactlyOnce::concurrency`]).
    /// Safe for orders: an order's events are combined into one action per
    /// batch, so transactions share only what the plan orders (an item
    /// touched again waits for the earlier transaction), the apply rule makes
    /// the stored state independent of the order of arrival, and a FIFO batch
    /// (at most 10 messages, 2 actions each) is one transaction.
    pub fn with_commit_concurrency(mut self, n: usize) -> Self {
        self.commit_concurrency = n.max(1);
        self
    }

    /// The apply rule as a conditional update of the order; a failed
    /// condition says stale or duplicate from the stored order.
    fn order_update(&self, event: &OrderEvent) -> Write {
        // Timeline: the condition holds when no event reached this order yet, or
        // the stored event is older by (occurredAt, eventId). occurredAt is stored
        // in a fixed-width UTC form, so string order is time order.
        let key = HashMap::from([
            ("pk".to_owned(), SdkValue::S(order_pk(&event.order_id))),
            ("sk".to_owned(), SdkValue::S(ORDER_SK.to_owned())),
        ]);
        // Built when its transaction is sent, from the event (one copy, shared
        // with the condition's reading): a batch's updates are never all in
        // memory at once.
        let event = Arc::new(event.clone());
        let read = Arc::clone(&event);
        Write::deferred_update(Arc::clone(&self.state_table), key, move |update| {
            update
                .update_expression(
                    "SET entity = :entity, orderId = :orderId, customerId = :customerId, #status = :status, \
                     amount = :amount, currency = :currency, occurredAt = :occurredAt, lastEventId = :eventId, \
                     version = if_not_exists(version, :zero) + :one",
                )
                .condition_expression(
                    "attribute_not_exists(pk) OR occurredAt < :occurredAt \
                     OR (occurredAt = :occurredAt AND lastEventId < :eventId)",
                )
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":entity", SdkValue::S(entity::ORDER.into()))
                .expression_attribute_values(":orderId", SdkValue::S(event.order_id.clone()))
                .expression_attribute_values(":customerId", SdkValue::S(event.customer_id.clone()))
                .expression_attribute_values(":status", SdkValue::S(event.status.as_str().into()))
                .expression_attribute_values(":amount", SdkValue::N(event.amount.to_string()))
                .expression_attribute_values(":currency", SdkValue::S(event.currency.as_str().into()))
                .expression_attribute_values(":occurredAt", SdkValue::S(format_timestamp(&event.occurred_at)))
                .expression_attribute_values(":eventId", SdkValue::S(event.event_id.clone()))
                .expression_attribute_values(":zero", SdkValue::N("0".into()))
                .expression_attribute_values(":one", SdkValue::N("1".into()))
        })
        .on_condition_failed(move |stored| {
            match classify_existing(&read, stored.cloned().map(from_sdk).as_ref()) {
                Outcome::Duplicate => Verdict::Duplicate,
                _ => Verdict::Stale,
            }
        })
    }

    /// The manifest write, conditional on the checkpoint the writer started
    /// from.
    fn manifest_put(&self, write: &ManifestWrite) -> Result<Write, StoreError> {
        let mut put =
            Put::builder().table_name(&*self.state_table).set_item(Some(to_sdk(manifest_to_item(&write.manifest))));
        put = match write.expected {
            None => put.condition_expression("attribute_not_exists(pk)"),
            Some(cp) => put
                .condition_expression("checkpoint.#line = :line AND checkpoint.#byte = :byte")
                .expression_attribute_names("#line", "line")
                .expression_attribute_names("#byte", "byte")
                .expression_attribute_values(":line", SdkValue::N(cp.line.to_string()))
                .expression_attribute_values(":byte", SdkValue::N(cp.byte.to_string())),
        };
        Write::put(put, &["pk", "sk"]).map_err(|e| permanent("TransactWriteItems", &self.state_table, e))
    }

    /// A marker write: succeeds only if the key is new (or its marker expired).
    fn marker_put(&self, marker: &Marker, now: i64) -> Result<TransactWriteItem, StoreError> {
        crate::exactly_once::marker_put(
            &self.idempotency_table,
            &marker.key,
            marker.validation.as_deref(),
            self.marker_ttl,
            now,
        )
        .map_err(|e| permanent("TransactWriteItems", &self.idempotency_table, e))
    }

    fn totals_put(
        &self,
        customer: &str,
        totals: &CustomerTotals,
        expected_version: Option<u64>,
    ) -> Result<TransactWriteItem, StoreError> {
        let next = expected_version.map_or(1, |v| v + 1);
        let mut put = Put::builder()
            .table_name(&*self.state_table)
            .set_item(Some(to_sdk(totals_to_item(customer, totals, next))))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        put = match expected_version {
            None => put.condition_expression("attribute_not_exists(pk)"),
            Some(v) => put
                .condition_expression("version = :version")
                .expression_attribute_values(":version", SdkValue::N(v.to_string())),
        };
        let put = put.build().map_err(|e| permanent("TransactWriteItems", &self.state_table, e))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// Runs one transaction; on cancellation returns the reasons (code and the
    /// item that failed its condition, per action).
    async fn transact(&self, actions: Vec<TransactWriteItem>) -> Result<TxResult, StoreError> {
        let sent = self
            .client
            .transact_write_items()
            .set_transact_items(Some(actions))
            .return_consumed_capacity(aws_sdk_dynamodb::types::ReturnConsumedCapacity::Total)
            .send()
            .await;
        match sent {
            Ok(out) => {
                self.meter(out.consumed_capacity());
                Ok(TxResult::Committed)
            }
            Err(err) => {
                if let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) = err.as_service_error() {
                    let reasons = cancelled
                        .cancellation_reasons()
                        .iter()
                        .map(|r| (r.code().unwrap_or("None").to_owned(), r.item().cloned().map(from_sdk)))
                        .collect();
                    return Ok(TxResult::Cancelled(reasons));
                }
                Err(self.dynamo_error("TransactWriteItems", &self.state_table, &err))
            }
        }
    }

    async fn get_totals(&self, customers: &[&str]) -> Result<HashMap<String, (CustomerTotals, u64)>, StoreError> {
        let mut found = HashMap::new();
        for group in customers.chunks(MAX_BATCH_GET) {
            let mut keys = KeysAndAttributes::builder().consistent_read(true);
            for customer in group {
                keys = keys.keys(HashMap::from([
                    ("pk".to_owned(), SdkValue::S(customer_pk(customer))),
                    ("sk".to_owned(), SdkValue::S(TOTALS_SK.to_owned())),
                ]));
            }
            let mut request = Some(HashMap::from([(
                self.state_table.to_string(),
                keys.build().map_err(|e| permanent("BatchGetItem", &self.state_table, e))?,
            )]));
            let mut attempt = 0;
            while let Some(items) = request.take().filter(|r| !r.is_empty()) {
                let out = self
                    .client
                    .batch_get_item()
                    .set_request_items(Some(items))
                    .send()
                    .await
                    .map_err(|e| self.dynamo_error("BatchGetItem", &self.state_table, &e))?;
                for item in out.responses().and_then(|r| r.get(&*self.state_table)).into_iter().flatten() {
                    let item = from_sdk(item.clone());
                    let customer = item.get_s(entity::CUSTOMER_TOTALS, "customerId")?.to_owned();
                    found.insert(customer, totals_from_item(&item)?);
                }
                request = out.unprocessed_keys().cloned();
                if request.as_ref().is_some_and(|r| !r.is_empty()) {
                    attempt += 1;
                    backoff(attempt, "BatchGetItem unprocessed keys").await?;
                }
            }
        }
        Ok(found)
    }

    /// Commits one chunk of delta records (markers + combined customer puts).
    /// A record whose delta would overflow its customer's totals stops the
    /// chunk there: the records before it commit, and the overflow is the
    /// error (permanent, for that record alone).
    async fn apply_delta_chunk(&self, chunk: &[DeltaRecord]) -> (Vec<Outcome>, Option<StoreError>) {
        let customers: Vec<&str> = {
            let mut c: Vec<&str> = chunk.iter().flat_map(|r| r.deltas.keys().map(String::as_str)).collect();
            c.sort_unstable();
            c.dedup();
            c
        };
        let known = match self.get_totals(&customers).await {
            Ok(known) => known,
            Err(e) => return (Vec::new(), Some(e)),
        };
        // The first record whose delta does not fit, added in order to the
        // stored totals (each key counted once, as the transaction would).
        let mut running: HashMap<&str, CustomerTotals> =
            known.iter().map(|(c, (t, _))| (c.as_str(), t.clone())).collect();
        let mut seen = std::collections::HashSet::new();
        let mut overflow = None;
        'records: for (i, record) in chunk.iter().enumerate() {
            if !seen.insert(record.idempotency_key.as_str()) {
                continue;
            }
            for (customer, delta) in &record.deltas {
                if let Err(source) = running.entry(customer.as_str()).or_default().checked_add(delta) {
                    overflow = Some((i, StoreError::Overflow { customer: customer.clone(), source }));
                    break 'records;
                }
            }
        }
        let fits = overflow.as_ref().map_or(chunk.len(), |(i, _)| *i);
        match self.commit_delta_chunk(&chunk[..fits], known).await {
            Ok(outcomes) => (outcomes, overflow.map(|(_, e)| e)),
            Err(e) => (Vec::new(), Some(e)),
        }
    }

    /// Commits delta records whose sums fit (checked by the caller against
    /// `known`; a concurrent writer's totals are checked again here).
    async fn commit_delta_chunk(
        &self,
        chunk: &[DeltaRecord],
        mut known: HashMap<String, (CustomerTotals, u64)>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; chunk.len()];
        // A key twice in one chunk (a record delivered twice in one batch): the
        // later one is a duplicate, and one transaction may write a marker once.
        let mut seen = std::collections::HashSet::new();
        for (i, record) in chunk.iter().enumerate() {
            if !seen.insert(record.idempotency_key.as_str()) {
                outcomes[i] = Some(Outcome::Duplicate);
            }
        }
        let now = Utc::now().timestamp();
        for attempt in 1..=MAX_ATTEMPTS {
            let live: Vec<usize> = (0..chunk.len()).filter(|i| outcomes[*i].is_none()).collect();
            if live.is_empty() {
                break;
            }
            let mut combined: BTreeMap<&str, CustomerTotals> = BTreeMap::new();
            for &i in &live {
                for (customer, delta) in &chunk[i].deltas {
                    combined
                        .entry(customer)
                        .or_default()
                        .checked_add(delta)
                        .map_err(|source| StoreError::Overflow { customer: customer.clone(), source })?;
                }
            }
            combined.retain(|_, d| !d.is_zero());
            let mut actions = Vec::with_capacity(live.len() + combined.len());
            for &i in &live {
                let marker = Marker { key: chunk[i].idempotency_key.clone(), validation: None };
                actions.push(self.marker_put(&marker, now)?);
            }
            let customer_order: Vec<&str> = combined.keys().copied().collect();
            for (customer, delta) in &combined {
                let (mut totals, version) = match known.get(*customer) {
                    Some((t, v)) => (t.clone(), Some(*v)),
                    None => (CustomerTotals::default(), None),
                };
                totals
                    .checked_add(delta)
                    .map_err(|source| StoreError::Overflow { customer: (*customer).to_owned(), source })?;
                actions.push(self.totals_put(customer, &totals, version)?);
            }
            match self.transact(actions).await? {
                TxResult::Committed => {
                    for &i in &live {
                        outcomes[i] = Some(Outcome::Applied);
                    }
                    break;
                }
                TxResult::Cancelled(reasons) => {
                    let mut resolved = false;
                    for (pos, (code, item)) in reasons.into_iter().enumerate() {
                        if code != "ConditionalCheckFailed" {
                            continue;
                        }
                        resolved = true;
                        if pos < live.len() {
                            // The marker exists: this record was applied before.
                            outcomes[live[pos]] = Some(Outcome::Duplicate);
                        } else if let Some(customer) = customer_order.get(pos - live.len()) {
                            // Another writer changed the totals: take its item from the reason.
                            match item {
                                Some(item) => {
                                    known.insert((*customer).to_owned(), totals_from_item(&item)?);
                                }
                                None => {
                                    known.remove(*customer);
                                }
                            }
                        }
                    }
                    if !resolved {
                        backoff(attempt, "TransactWriteItems conflict or throttling").await?;
                    }
                }
            }
            if attempt == MAX_ATTEMPTS {
                return Err(StoreError::Contention {
                    attempts: MAX_ATTEMPTS,
                    message: "customer totals kept changing under this transaction".into(),
                });
            }
        }
        Ok(outcomes.into_iter().map(|o| o.unwrap_or(Outcome::Applied)).collect())
    }
}

enum TxResult {
    Committed,
    Cancelled(Vec<(String, Option<Item>)>),
}

impl StateStore for DynamoStore {
    async fn apply_orders(
        &self,
        events: &[OrderEvent],
        markers: Option<&[Marker]>,
        manifest: Option<&ManifestFn<'_>>,
    ) -> Result<Vec<Outcome>, StoreError> {
        // Decided here: keys repeated in the batch, then the events that lose
        // their order to a greater one of the same batch (one action per
        // item per transaction). The rest are units of work for ExactlyOnce:
        // each winner's order update (with its marker, if keyed), and each
        // keyed loser's marker alone, counted as decided.
        let mut decided = dedupe_markers(events.len(), markers);
        let candidates: Vec<usize> = (0..events.len()).filter(|i| decided[*i].is_none()).collect();
        let candidate_events: Vec<&OrderEvent> = candidates.iter().map(|i| &events[*i]).collect();
        let (winners, losers) = combine_orders(&candidate_events);
        let unit = |e: usize| match markers.map(|m| &m[e]) {
            Some(marker) => {
                let unit = UnitOfWork::new(marker.key.clone());
                match &marker.validation {
                    Some(v) => unit.fingerprint(v.clone()),
                    None => unit,
                }
            }
            None => UnitOfWork::unkeyed(),
        };
        let mut units = Vec::new();
        let mut unit_event = Vec::new();
        for w in winners {
            let e = candidates[w];
            units.push(unit(e).write(self.order_update(&events[e])));
            unit_event.push(e);
        }
        for (c, outcome) in losers.iter().enumerate() {
            if let Some(outcome) = outcome {
                let e = candidates[c];
                decided[e] = Some(*outcome);
                if markers.is_some() {
                    units.push(unit(e).counted_as(*outcome));
                    unit_event.push(e);
                }
            }
        }
        let all_outcomes = |unit_outcomes: &[Outcome]| -> Vec<Outcome> {
            let mut all = decided.clone();
            for (u, o) in unit_outcomes.iter().enumerate() {
                all[unit_event[u]] = Some(*o);
            }
            all.into_iter().map(|d| d.unwrap_or(Outcome::Applied)).collect()
        };
        let committed = match manifest {
            Some(build) => {
                // Built from the outcomes every event will have if the last
                // transaction commits; a failure to build shows as a conflict.
                let write = build(&all_outcomes(&vec![Outcome::Applied; units.len()]));
                let last = |unit_outcomes: &[Outcome]| -> Write {
                    let write = build(&all_outcomes(unit_outcomes));
                    match self.manifest_put(&write) {
                        Ok(w) => w,
                        Err(_) => unreachable!("a manifest that built once builds again"),
                    }
                };
                self.manifest_put(&write)?;
                self.exactly_once().commit_with_final(&units, &last, None).await.map_err(|e| match e {
                    FinalWriteError::Conflict => StoreError::ManifestConflict {
                        bucket: write.manifest.bucket.clone(),
                        key: write.manifest.key.clone(),
                        line: write.expected.map_or(0, |c| c.line),
                    },
                    FinalWriteError::Commit(e) => self.commit_error(e),
                })?
            }
            None => self
                .exactly_once()
                .commit_outcomes(&units, None)
                .await
                .into_iter()
                .map(|r| r.map_err(|e| self.commit_error(e)))
                .collect::<Result<Vec<Outcome>, StoreError>>()?,
        };
        Ok(all_outcomes(&committed))
    }

    async fn apply_deltas(&self, records: &[DeltaRecord]) -> (Vec<Outcome>, Option<StoreError>) {
        let mut outcomes = Vec::with_capacity(records.len());
        let mut start = 0;
        while start < records.len() {
            // Grow the chunk while markers + distinct customers fit one transaction.
            let mut customers: std::collections::BTreeSet<&str> = Default::default();
            let mut end = start;
            while end < records.len() {
                let mut with: std::collections::BTreeSet<&str> = customers.clone();
                with.extend(records[end].deltas.keys().map(String::as_str));
                if (end - start + 1) + with.len() > MAX_TRANSACT_ITEMS {
                    break;
                }
                customers = with;
                end += 1;
            }
            if end == start {
                end = start + 1; // A single record always fits: at most two customers.
            }
            let (chunk, error) = self.apply_delta_chunk(&records[start..end]).await;
            outcomes.extend(chunk);
            if let Some(e) = error {
                return (outcomes, Some(e));
            }
            start = end;
        }
        (outcomes, None)
    }

    async fn get_manifest(&self, bucket: &str, key: &str, revision: &str) -> Result<Option<Manifest>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&*self.state_table)
            .key("pk", SdkValue::S(object_pk(bucket, key)))
            .key("sk", SdkValue::S(revision.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.dynamo_error("GetItem", &self.state_table, &e))?;
        out.item.map(|item| manifest_from_item(&from_sdk(item))).transpose().map_err(Into::into)
    }

    async fn quarantine(&self, records: &[Quarantined]) -> Result<(), StoreError> {
        DynamoQuarantine::new(self.client.clone(), self.state_table.to_string()).write(records).await
    }
}

/// Quarantine items in a DynamoDB table keyed `pk` (S) + `sk` (S): the
/// state table's schema, and any table of your own with that key. An item
/// per record: `pk` = `QUARANTINE#<source>`, `sk` = the record's id, with
/// `reason` and `raw` (truncated to [`super::MAX_QUARANTINED_RAW_BYTES`]).
#[derive(Debug, Clone)]
pub struct DynamoQuarantine {
    client: Client,
    table: String,
}

impl DynamoQuarantine {
    /// Quarantine items in `table`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
    }

    /// Writes the items (`BatchWriteItem`, 25 at a time, unprocessed items
    /// retried with back-off).
    pub async fn write(&self, records: &[Quarantined]) -> Result<(), StoreError> {
        // Keys must be unique within one BatchWriteItem call.
        let mut unique: BTreeMap<(&str, &str), &Quarantined> = BTreeMap::new();
        for r in records {
            unique.insert((&r.source, &r.record_id), r);
        }
        let records: Vec<&Quarantined> = unique.into_values().collect();
        let now = Utc::now().to_rfc3339();
        for group in records.chunks(MAX_BATCH_WRITE) {
            let mut writes = Vec::with_capacity(group.len());
            for r in group {
                let put = PutRequest::builder()
                    .set_item(Some(to_sdk(quarantine_to_item(r, &now))))
                    .build()
                    .map_err(|e| permanent("BatchWriteItem", &self.table, e))?;
                writes.push(WriteRequest::builder().put_request(put).build());
            }
            let mut request = Some(HashMap::from([(self.table.clone(), writes)]));
            let mut attempt = 0;
            while let Some(items) = request.take().filter(|r| !r.is_empty()) {
                let out = self.client.batch_write_item().set_request_items(Some(items)).send().await.map_err(|e| {
                    StoreError::Dynamo {
                        operation: "BatchWriteItem",
                        table: self.table.clone(),
                        message: sdk_message(&e),
                        class: classify_sdk(&e),
                    }
                })?;
                request = out.unprocessed_items().cloned();
                if request.as_ref().is_some_and(|r| !r.is_empty()) {
                    attempt += 1;
                    backoff(attempt, "BatchWriteItem unprocessed items").await?;
                }
            }
        }
        Ok(())
    }
}

impl super::QuarantineStore for DynamoQuarantine {
    fn write_quarantine(
        &self,
        records: &[Quarantined],
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send {
        self.write(records)
    }
}

/// Decides stale or duplicate from the stored order a failed condition returned.
fn classify_existing(event: &OrderEvent, stored: Option<&Item>) -> Outcome {
    let stored_key = stored
        .and_then(|item| Some((parse_timestamp(item.opt_s("occurredAt")?)?, item.opt_s("lastEventId")?.to_owned())));
    match stored_key {
        Some((at, id)) if at == event.occurred_at && id == event.event_id => Outcome::Duplicate,
        _ => Outcome::Stale,
    }
}

/// Exponential backoff with jitter between attempts; an error after the last.
async fn backoff(attempt: u32, what: &str) -> Result<(), StoreError> {
    if attempt >= MAX_ATTEMPTS {
        return Err(StoreError::Contention { attempts: attempt, message: what.to_owned() });
    }
    let base = 20u64 << attempt.min(6);
    let jitter = u64::from(Utc::now().timestamp_subsec_nanos()) % base;
    tokio::time::sleep(Duration::from_millis(base / 2 + jitter)).await;
    Ok(())
}

fn permanent(operation: &'static str, table: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Dynamo { operation, table: table.to_owned(), message: e.to_string(), class: ErrorClass::Permanent }
}

/// Converts an item to the SDK's attribute map.
pub fn to_sdk(item: Item) -> HashMap<String, SdkValue> {
    item.into_inner().into_iter().map(|(k, v)| (k, v.into())).collect()
}

/// Converts the SDK's attribute map to an item.
pub fn from_sdk(map: HashMap<String, SdkValue>) -> Item {
    Item::from(map.into_iter().map(|(k, v)| (k, AttributeValue::from(v))).collect::<HashMap<_, _>>())
}

/// Partition key of an object manifest.
pub fn object_pk(bucket: &str, key: &str) -> String {
    format!("OBJECT#{bucket}/{key}")
}

/// Partition key of quarantined records of a source.
pub fn quarantine_pk(source: &str) -> String {
    format!("QUARANTINE#{source}")
}

fn quarantine_to_item(r: &Quarantined, at: &str) -> Item {
    Item::from(HashMap::from([
        ("pk".to_owned(), s(quarantine_pk(&r.source))),
        ("sk".to_owned(), s(&r.record_id)),
        ("entity".to_owned(), s(entity::QUARANTINE)),
        ("source".to_owned(), s(&r.source)),
        ("recordId".to_owned(), s(&r.record_id)),
        ("reason".to_owned(), s(&r.reason)),
        ("raw".to_owned(), s(&r.raw)),
        ("quarantinedAt".to_owned(), s(at)),
    ]))
}

/// The manifest item of an object revision.
pub fn manifest_to_item(m: &Manifest) -> Item {
    let Counts { lines, accepted, rejected, stale, duplicates } = m.counts;
    let mut map = HashMap::from([
        ("pk".to_owned(), s(object_pk(&m.bucket, &m.key))),
        ("sk".to_owned(), s(&m.revision)),
        ("entity".to_owned(), s(entity::OBJECT)),
        ("bucket".to_owned(), s(&m.bucket)),
        ("key".to_owned(), s(&m.key)),
        ("status".to_owned(), s(m.status.as_str())),
        ("lines".to_owned(), n(lines)),
        ("accepted".to_owned(), n(accepted)),
        ("rejected".to_owned(), n(rejected)),
        ("stale".to_owned(), n(stale)),
        ("duplicates".to_owned(), n(duplicates)),
        (
            "checkpoint".to_owned(),
            AttributeValue::M(HashMap::from([
                ("line".to_owned(), n(m.checkpoint.line)),
                ("byte".to_owned(), n(m.checkpoint.byte)),
            ])),
        ),
        ("startedAt".to_owned(), s(m.started_at.to_rfc3339())),
    ]);
    if let Some(header) = &m.csv_header {
        map.insert("csvHeader".to_owned(), s(header));
    }
    if let Some(at) = m.finished_at {
        map.insert("finishedAt".to_owned(), s(at.to_rfc3339()));
    }
    Item::from(map)
}

/// Reads a manifest item.
pub fn manifest_from_item(item: &Item) -> Result<Manifest, super::item::ItemError> {
    const E: &str = entity::OBJECT;
    let bad = |attribute, problem: &str| super::item::ItemError { entity: E, attribute, problem: problem.to_owned() };
    let status = match item.get_s(E, "status")? {
        "IN_PROGRESS" => ObjectStatus::InProgress,
        "COMPLETED" => ObjectStatus::Completed,
        "FAILED" => ObjectStatus::Failed,
        _ => return Err(bad("status", "is not IN_PROGRESS, COMPLETED or FAILED")),
    };
    let checkpoint = match item.get("checkpoint") {
        Some(AttributeValue::M(m)) => {
            let num = |k: &str| match m.get(k) {
                Some(AttributeValue::N(v)) => v.parse::<u64>().ok(),
                _ => None,
            };
            Checkpoint {
                line: num("line").ok_or_else(|| bad("checkpoint", "has no numeric line"))?,
                byte: num("byte").ok_or_else(|| bad("checkpoint", "has no numeric byte"))?,
            }
        }
        _ => return Err(bad("checkpoint", "is missing or not a map")),
    };
    let time = |attribute: &'static str| -> Result<Option<chrono::DateTime<Utc>>, super::item::ItemError> {
        item.opt_s(attribute)
            .map(|t| parse_timestamp(t).ok_or_else(|| bad(attribute, "is not an RFC 3339 timestamp")))
            .transpose()
    };
    Ok(Manifest {
        bucket: item.get_s(E, "bucket")?.to_owned(),
        key: item.get_s(E, "key")?.to_owned(),
        revision: item.get_s(E, "sk")?.to_owned(),
        status,
        counts: Counts {
            lines: item.get_n(E, "lines")?,
            accepted: item.get_n(E, "accepted")?,
            rejected: item.get_n(E, "rejected")?,
            stale: item.get_n(E, "stale")?,
            duplicates: item.get_n(E, "duplicates")?,
        },
        checkpoint,
        csv_header: item.opt_s("csvHeader").map(str::to_owned),
        started_at: time("startedAt")?.ok_or_else(|| bad("startedAt", "is missing"))?,
        finished_at: time("finishedAt")?,
    })
}
