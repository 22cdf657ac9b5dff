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
use aws_sdk_dynamodb::types::{
    AttributeValue as SdkValue, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};
use chrono::Utc;
use serde_dynamo::Item;
use shared::batch::Outcome;
use shared::config::{DEFAULT_COMMIT_CONCURRENCY, DEFAULT_IDEMPOTENCY_TTL};
use shared::dynamo::{
    ItemExt, MAX_ATTEMPTS, MAX_TRANSACT_ITEMS, StoreError, Transacted, backoff, batch_get, from_sdk, to_sdk, transact,
};
use shared::engine::CommitError;
use shared::error::ErrorClass;
use shared::exactly_once::{ExactlyOnce, FinalWriteError, Statement, UnitOfWork, Verdict, Write};
use shared::manifest::{Manifest, ManifestFn, get_manifest, manifest_put};
use shared::quarantine::{DynamoQuarantine, QuarantineStore, Quarantined};
use shared::telemetry::CapacityMeter;

use super::item::{
    ORDER_SK, TOTALS_SK, customer_pk, entity, order_from_item, order_pk, totals_from_item, totals_to_item,
};
use super::{DeltaError, DeltaRecord, Marker, StateStore, combine_orders, dedupe_markers};
use crate::order::{ApplyOutcome, CustomerTotals, Order, OrderEvent, apply, format_timestamp, parse_timestamp};

/// The state table (and, for markers, the idempotency table) in DynamoDB.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    /// Shared by the batch's deferred order updates.
    state_table: Arc<str>,
    idempotency_table: String,
    marker_ttl: Duration,
    capacity: CapacityMeter,
    commit_concurrency: usize,
    /// The guarded order statements' texts, built once per store (they
    /// differ only in their parameters): by the attribute the order keeps
    /// (its event's fingerprint, its object chunk).
    order_texts: Arc<[OrderTexts; 2]>,
}

/// The texts of a guarded order write's `INSERT` and `UPDATE`.
#[derive(Debug)]
struct OrderTexts {
    insert: Arc<str>,
    update: Arc<str>,
}

/// The attributes an order write sets, in the order of its parameters; the
/// last is the one its mark goes to.
const ORDER_ATTRIBUTES: [&str; 8] =
    ["entity", "orderId", "customerId", "status", "amount", "currency", "occurredAt", "lastEventId"];

impl OrderTexts {
    /// `marked` is the attribute the order keeps its mark in, `unmarked`
    /// the other one (removed).
    fn new(table: &str, marked: &str, unmarked: &str) -> Self {
        let names = || ORDER_ATTRIBUTES.iter().chain([&marked]);
        // INSERT INTO "t" VALUE {'pk': ?, 'sk': ?, 'entity': ?, ..., 'version': ?}
        let fields: Vec<String> =
            ["pk", "sk"].iter().chain(names()).chain(["version"].iter()).map(|n| format!("'{n}': ?")).collect();
        let insert = format!("INSERT INTO \"{table}\" VALUE {{{}}}", fields.join(", "));
        // UPDATE "t" SET "entity" = ? ... SET "version" = "version" + ? REMOVE "other"
        // WHERE pk and the apply rule.
        let sets: String = names().map(|n| format!(" SET \"{n}\" = ?")).collect();
        let update = format!(
            "UPDATE \"{table}\"{sets} SET \"version\" = \"version\" + ? REMOVE \"{unmarked}\" WHERE \"pk\" = ? \
             AND \"sk\" = ? AND (\"occurredAt\" < ? OR (\"occurredAt\" = ? AND \"lastEventId\" < ?))"
        );
        Self { insert: insert.into(), update: update.into() }
    }
}

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
            idempotency_table,
            marker_ttl: DEFAULT_IDEMPOTENCY_TTL,
            capacity: Default::default(),
            commit_concurrency: DEFAULT_COMMIT_CONCURRENCY,
            order_texts: Arc::new([
                OrderTexts::new(&state_table, LAST_FINGERPRINT, LAST_CHUNK),
                OrderTexts::new(&state_table, LAST_CHUNK, LAST_FINGERPRINT),
            ]),
            state_table: state_table.into(),
        }
    }

    /// The store of an orders function: its tables and settings from
    /// `config`, its client and capacity meter from the entry point.
    pub fn from_aws(aws: &shared::Aws, config: &crate::config::Config) -> Self {
        Self::new(aws.dynamodb(), config.state_table.clone(), config.idempotency_table.clone())
            .with_marker_ttl(config.idempotency_ttl)
            .with_capacity_meter(aws.telemetry().capacity.clone())
            .with_commit_concurrency(config.commit_concurrency)
    }

    /// Sums the capacity DynamoDB reports consuming into `meter`.
    pub fn with_capacity_meter(mut self, meter: CapacityMeter) -> Self {
        self.capacity = meter;
        self
    }

    /// Keeps idempotency markers this long (default a week).
    pub fn with_marker_ttl(mut self, ttl: Duration) -> Self {
        self.marker_ttl = ttl;
        self
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
                     version = if_not_exists(version, :zero) + :one REMOVE lastFingerprint, lastChunk",
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

    /// The guarded paths' first step: of the events not yet `decided`, those
    /// that lose their order to a greater one of the batch are decided
    /// (stale or duplicate); the winners' orders are read, strongly
    /// consistent. Returns the winners and the stored orders by id.
    async fn read_winners(
        &self,
        events: &[OrderEvent],
        decided: &mut [Option<Outcome>],
    ) -> Result<(Vec<usize>, HashMap<String, Item>), StoreError> {
        let winners = super::decide_losers(events, decided);
        let keys = winners.iter().map(|&e| key(order_pk(&events[e].order_id), ORDER_SK)).collect();
        let mut stored: HashMap<String, Item> = HashMap::new();
        for item in batch_get(&self.client, &self.state_table, keys, &self.capacity).await? {
            let item = from_sdk(item);
            stored.insert(item.get_s(entity::ORDER, "orderId")?.to_owned(), item);
        }
        Ok((winners, stored))
    }

    /// An applied event as a guarded write of its order: an `INSERT` of the
    /// order when it was read as absent, else an `UPDATE` whose condition is
    /// the apply rule (each sent instead of the other when the order turns
    /// out otherwise). The order keeps what the event came with (`mark`):
    /// its fingerprint, so a failed condition tells a duplicate from a
    /// reused key; or the object chunk that wrote it, so the chunk read
    /// again knows its own write. The other attribute is removed: each
    /// describes the last event only.
    fn guarded_order(&self, order: &Order, mark: Mark<'_>, absent: bool) -> Write {
        let table = &*self.state_table;
        let occurred = format_timestamp(&order.occurred_at);
        let s = |v: &str| SdkValue::S(v.to_owned());
        let (texts, mark_value) = match &mark {
            Mark::Fingerprint { value, .. } => (&self.order_texts[0], *value),
            Mark::Chunk(chunk) => (&self.order_texts[1], *chunk),
        };
        // In ORDER_ATTRIBUTES' order, then the mark.
        let values = [
            s(entity::ORDER),
            s(&order.order_id),
            s(&order.customer_id),
            s(order.status.as_str()),
            SdkValue::N(order.amount.to_string()),
            s(order.currency.as_str()),
            s(&occurred),
            s(&order.last_event_id),
            s(mark_value),
        ];
        let (pk, sk) = (s(&order_pk(&order.order_id)), s(ORDER_SK));
        let mut params: Vec<SdkValue> = Vec::with_capacity(values.len() + 3);
        params.extend([pk.clone(), sk.clone()]);
        params.extend(values.iter().cloned());
        params.push(SdkValue::N("1".into()));
        let insert = Statement::new(texts.insert.clone(), params);
        let mut params: Vec<SdkValue> = Vec::with_capacity(values.len() + 6);
        params.extend(values);
        params.extend([SdkValue::N("1".into()), pk, sk, s(&occurred), s(&occurred), s(&order.last_event_id)]);
        let update = Statement::new(texts.update.clone(), params);
        let (at, id) = (order.occurred_at, order.last_event_id.clone());
        let reused = match mark {
            Mark::Fingerprint { value, reused } => Some((value.to_owned(), reused)),
            Mark::Chunk(_) => None,
        };
        Write::insert_or_update(table, key(order_pk(&order.order_id), ORDER_SK), insert, update, absent)
            .on_condition_failed(move |stored| {
                let stored = stored.cloned().map(from_sdk);
                guarded_verdict(stored.as_ref(), &at, &id, reused.as_ref().map(|(f, r)| (f.as_str(), r.as_str())))
            })
    }

    /// A marker write: succeeds only if the key is new (or its marker expired).
    fn marker_put(&self, marker: &Marker, now: i64) -> Result<TransactWriteItem, StoreError> {
        shared::exactly_once::marker_put(
            &self.idempotency_table,
            &marker.key,
            marker.validation.as_deref(),
            self.marker_ttl,
            now,
        )
        .map_err(|e| StoreError::unbuildable("TransactWriteItems", &self.idempotency_table, e))
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
        let put = put.build().map_err(|e| StoreError::unbuildable("TransactWriteItems", &self.state_table, e))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    async fn get_totals(&self, customers: &[&str]) -> Result<HashMap<String, (CustomerTotals, u64)>, StoreError> {
        let keys = customers.iter().map(|c| key(customer_pk(c), TOTALS_SK)).collect();
        let mut found = HashMap::new();
        for item in batch_get(&self.client, &self.state_table, keys, &self.capacity).await? {
            let item = from_sdk(item);
            let customer = item.get_s(entity::CUSTOMER_TOTALS, "customerId")?.to_owned();
            found.insert(customer, totals_from_item(&item)?);
        }
        Ok(found)
    }

    /// Commits one chunk of delta records (markers + combined customer puts).
    /// A record whose delta would overflow its customer's totals stops the
    /// chunk there: the records before it commit, and the overflow is the
    /// error (permanent, for that record alone).
    async fn apply_delta_chunk(&self, chunk: &[DeltaRecord]) -> (Vec<Outcome>, Option<DeltaError>) {
        let customers: Vec<&str> = {
            let mut c: Vec<&str> = chunk.iter().flat_map(|r| r.deltas.keys().map(String::as_str)).collect();
            c.sort_unstable();
            c.dedup();
            c
        };
        let known = match self.get_totals(&customers).await {
            Ok(known) => known,
            Err(e) => return (Vec::new(), Some(e.into())),
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
                    overflow = Some((i, DeltaError::Overflow { customer: customer.clone(), source }));
                    break 'records;
                }
            }
        }
        let fits = overflow.as_ref().map_or(chunk.len(), |(i, _)| *i);
        // Records that move a total commit their markers with the totals in
        // one transaction; records that move none have no effect to pair a
        // marker with, so theirs go alone, guarded, at a write unit each.
        let (effects, none): (Vec<usize>, Vec<usize>) = (0..fits).partition(|&i| !chunk[i].deltas.is_empty());
        let with_effects: Vec<&DeltaRecord> = effects.iter().map(|&i| &chunk[i]).collect();
        let mut outcomes: Vec<Option<Result<Outcome, DeltaError>>> = (0..fits).map(|_| None).collect();
        match self.commit_delta_chunk(&with_effects, known).await {
            Ok(committed) => effects.iter().zip(committed).for_each(|(&i, o)| outcomes[i] = Some(Ok(o))),
            Err(e) => return (Vec::new(), Some(e)),
        }
        let exactly_once = self.exactly_once();
        let markers: Vec<UnitOfWork> =
            none.iter().map(|&i| exactly_once.marker_unit(&chunk[i].idempotency_key)).collect();
        for (&i, result) in none.iter().zip(exactly_once.commit_outcomes(&markers, None).await) {
            outcomes[i] = Some(result.map_err(|e| DeltaError::Store(self.commit_error(e))));
        }
        // The records committed, up to the first that was not: the shard
        // retries from there (the later ones read as duplicates then).
        let mut done = Vec::with_capacity(fits);
        for outcome in outcomes.into_iter().flatten() {
            match outcome {
                Ok(o) => done.push(o),
                Err(e) => return (done, Some(e)),
            }
        }
        (done, overflow.map(|(_, e)| e))
    }

    /// Commits delta records whose sums fit (checked by the caller against
    /// `known`; a concurrent writer's totals are checked again here).
    async fn commit_delta_chunk(
        &self,
        chunk: &[&DeltaRecord],
        mut known: HashMap<String, (CustomerTotals, u64)>,
    ) -> Result<Vec<Outcome>, DeltaError> {
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
                        .map_err(|source| DeltaError::Overflow { customer: customer.clone(), source })?;
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
                    .map_err(|source| DeltaError::Overflow { customer: (*customer).to_owned(), source })?;
                actions.push(self.totals_put(customer, &totals, version)?);
            }
            match transact(&self.client, &self.state_table, actions, &self.capacity).await? {
                Transacted::Committed => {
                    for &i in &live {
                        outcomes[i] = Some(Outcome::Applied);
                    }
                    break;
                }
                Transacted::Cancelled(reasons) => {
                    let mut resolved = false;
                    for (pos, reason) in reasons.into_iter().enumerate() {
                        if !reason.condition_failed() {
                            continue;
                        }
                        resolved = true;
                        if pos < live.len() {
                            // The marker exists: this record was applied before.
                            outcomes[live[pos]] = Some(Outcome::Duplicate);
                        } else if let Some(customer) = customer_order.get(pos - live.len()) {
                            // Another writer changed the totals: take its item from the reason.
                            match reason.item {
                                Some(item) => {
                                    let item = from_sdk(item);
                                    known.insert(
                                        (*customer).to_owned(),
                                        totals_from_item(&item).map_err(StoreError::from)?,
                                    );
                                }
                                None => {
                                    known.remove(*customer);
                                }
                            }
                        }
                    }
                    if !resolved {
                        backoff(attempt, None).await.map_err(|e| StoreError::Contention {
                            attempts: attempt,
                            message: format!("TransactWriteItems conflict or throttling: {e}"),
                        })?;
                    }
                }
            }
            if attempt == MAX_ATTEMPTS {
                return Err(StoreError::Contention {
                    attempts: MAX_ATTEMPTS,
                    message: "customer totals kept changing under this transaction".into(),
                }
                .into());
            }
        }
        Ok(outcomes.into_iter().map(|o| o.unwrap_or(Outcome::Applied)).collect())
    }
}

/// The attribute of an order item that keeps its last event's fingerprint
/// (on the guarded path, where no marker does).
const LAST_FINGERPRINT: &str = "lastFingerprint";

/// The attribute of an order item that names the object chunk that wrote
/// it (the guarded path of object lines).
const LAST_CHUNK: &str = "lastChunk";

/// What a guarded order write leaves on the order besides the event.
#[derive(Debug, Clone)]
enum Mark<'a> {
    /// The event's fingerprint, and the rejection naming its key as reused
    /// when the order holds the event with another fingerprint.
    Fingerprint { value: &'a str, reused: String },
    /// The object chunk that wrote it (its revision and starting checkpoint).
    Chunk(&'a str),
}

/// How a guarded order write's failed condition reads, from the stored
/// order: the event is the one stored (a duplicate, or a reused key when
/// `fingerprint` gives ours and the rejection, and the stored one differs),
/// or older (stale).
fn guarded_verdict(
    stored: Option<&Item>,
    occurred_at: &chrono::DateTime<Utc>,
    event_id: &str,
    fingerprint: Option<(&str, &str)>,
) -> Verdict {
    let stored_event = stored
        .and_then(|item| Some((parse_timestamp(item.opt_s("occurredAt")?)?, item.opt_s("lastEventId")?.to_owned())));
    match stored_event {
        Some((at, id)) if at == *occurred_at && id == event_id => {
            match (stored.and_then(|item| item.opt_s(LAST_FINGERPRINT)), fingerprint) {
                (Some(stored), Some((ours, reused))) if stored != ours => Verdict::Reject(reused.to_owned()),
                _ => Verdict::Duplicate,
            }
        }
        // Another writer got in between the read and the write with an
        // older event: the rule decides again on the next attempt.
        Some((at, id)) if (at, id.as_str()) < (*occurred_at, event_id) => Verdict::Retry,
        _ => Verdict::Stale,
    }
}

impl StateStore for DynamoStore {
    async fn apply_orders_guarded(
        &self,
        events: &[OrderEvent],
        markers: &[Marker],
    ) -> Result<Vec<Outcome>, StoreError> {
        // Keys repeated in the batch, then the events that lose their order
        // to a greater one of the same batch: decided here, as on the marker
        // path. The winners' orders are read (one strongly consistent read
        // each, 100 to a request) and each winner decided by the apply rule;
        // only the applied ones are written.
        let mut decided = dedupe_markers(events.len(), Some(markers));
        let (winners, stored) = self.read_winners(events, &mut decided).await?;
        let mut units = Vec::new();
        let mut unit_event = Vec::new();
        for e in winners {
            let (event, marker) = (&events[e], &markers[e]);
            let item = stored.get(&event.order_id);
            let current = item.map(order_from_item).transpose()?;
            let fingerprint = marker.validation.as_deref().unwrap_or_default();
            let reused = format!("{REUSED_PREFIX}{}", marker.key);
            let same_event = current.as_ref().is_some_and(|o| o.last_event_id == event.event_id);
            let stored_fingerprint = item.and_then(|i| i.opt_s(LAST_FINGERPRINT));
            if same_event && stored_fingerprint.is_some_and(|f| f != fingerprint) {
                decided[e] = Some(Outcome::KeyReused);
                continue;
            }
            match apply(current.as_ref(), event) {
                ApplyOutcome::Applied(order) => {
                    let mark = Mark::Fingerprint { value: fingerprint, reused };
                    units.push(UnitOfWork::guarded().write(self.guarded_order(&order, mark, item.is_none())));
                    unit_event.push(e);
                }
                ApplyOutcome::Stale => decided[e] = Some(Outcome::Stale),
                ApplyOutcome::Duplicate => decided[e] = Some(Outcome::Duplicate),
            }
        }
        let committed = self.exactly_once().commit_outcomes(&units, None).await;
        for (u, result) in committed.into_iter().enumerate() {
            decided[unit_event[u]] = Some(match result {
                Ok(outcome) => outcome,
                Err(CommitError::Permanent(reason)) if reason.starts_with(REUSED_PREFIX) => Outcome::KeyReused,
                Err(e) => return Err(self.commit_error(e)),
            });
        }
        Ok(decided.into_iter().map(|d| d.unwrap_or(Outcome::Applied)).collect())
    }

    async fn apply_chunk_guarded(
        &self,
        events: &[OrderEvent],
        manifest: &ManifestFn<'_>,
    ) -> Result<Vec<Outcome>, StoreError> {
        // The chunk's identity: the same object revision read again from the
        // same checkpoint gives the same chunk.
        let probe = manifest(&vec![Outcome::Applied; events.len()]);
        let chunk = format!(
            "{}/{}@{}:{}",
            probe.manifest.bucket,
            probe.manifest.key,
            probe.manifest.revision,
            probe.expected.map_or(0, |c| c.line)
        );
        // Events that lose their order to a greater one of the chunk are
        // decided here; the winners' orders are read (strongly consistent),
        // a winner this chunk already wrote counts as applied, and the rest
        // are decided by the apply rule; only the applied ones are written.
        let mut decided: Vec<Option<Outcome>> = vec![None; events.len()];
        let (winners, stored) = self.read_winners(events, &mut decided).await?;
        let mut units = Vec::new();
        let mut unit_event = Vec::new();
        for e in winners {
            let event = &events[e];
            let item = stored.get(&event.order_id);
            let current = item.map(order_from_item).transpose()?;
            let ours = current.as_ref().is_some_and(|o| o.last_event_id == event.event_id)
                && item.and_then(|i| i.opt_s(LAST_CHUNK)) == Some(chunk.as_str());
            if ours {
                decided[e] = Some(Outcome::Applied);
                continue;
            }
            match apply(current.as_ref(), event) {
                ApplyOutcome::Applied(order) => {
                    let mark = Mark::Chunk(&chunk);
                    units.push(UnitOfWork::guarded().write(self.guarded_order(&order, mark, item.is_none())));
                    unit_event.push(e);
                }
                ApplyOutcome::Stale => decided[e] = Some(Outcome::Stale),
                ApplyOutcome::Duplicate => decided[e] = Some(Outcome::Duplicate),
            }
        }
        for (u, result) in self.exactly_once().commit_outcomes(&units, None).await.into_iter().enumerate() {
            decided[unit_event[u]] = Some(result.map_err(|e| self.commit_error(e))?);
        }
        // Every order is in: the checkpoint, alone.
        let outcomes: Vec<Outcome> = decided.into_iter().map(|d| d.unwrap_or(Outcome::Applied)).collect();
        let write = manifest(&outcomes);
        let last = |_: &[Outcome]| -> Write { manifest_put(&self.state_table, &write) };
        self.exactly_once().commit_with_final(&[], &last, None).await.map_err(|e| match e {
            FinalWriteError::Conflict => StoreError::ManifestConflict {
                bucket: write.manifest.bucket.clone(),
                key: write.manifest.key.clone(),
                line: write.expected.map_or(0, |c| c.line),
            },
            FinalWriteError::Commit(e) => self.commit_error(e),
        })?;
        Ok(outcomes)
    }

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
                    manifest_put(&self.state_table, &build(&all_outcomes(unit_outcomes)))
                };
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

    async fn apply_deltas(&self, records: &[DeltaRecord]) -> (Vec<Outcome>, Option<DeltaError>) {
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
        get_manifest(&self.client, &self.state_table, bucket, key, revision).await
    }
}

/// Quarantine items go to the state table (its key schema is the one
/// quarantine items need).
impl QuarantineStore for DynamoStore {
    async fn write_quarantine(&self, records: &[Quarantined]) -> Result<(), StoreError> {
        DynamoQuarantine::new(self.client.clone(), self.state_table.to_string()).write(records).await
    }
}

/// How a guarded write's reason for a reused key starts (the key follows),
/// read back as [`Outcome::KeyReused`].
const REUSED_PREFIX: &str = "reused idempotency key ";

/// A state table key.
fn key(pk: String, sk: &str) -> HashMap<String, SdkValue> {
    HashMap::from([("pk".to_owned(), SdkValue::S(pk)), ("sk".to_owned(), SdkValue::S(sk.to_owned()))])
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
