//! Exactly-once effects on DynamoDB, for any domain.
//!
//! A record's effect is a [`UnitOfWork`]: its idempotency key (with a
//! payload fingerprint) and the write actions that are its effect: puts,
//! updates, deletes and condition checks on your own tables, each saying how
//! to read its condition failing ([`Verdict`]). [`ExactlyOnce::commit`]
//! commits the units of a batch in as few `TransactWriteItems` as DynamoDB
//! allows (at most 100 actions each, one action per item, units in order;
//! see [`shared_core::plan`]), each unit's marker in the same transaction as
//! its writes, so there is no moment in which one exists without the other.
//!
//! When a transaction is cancelled, its cancellation reasons (with
//! `ReturnValuesOnConditionCheckFailure`, the item that failed its
//! condition) decide each unit without a second read: a marker that exists
//! is a duplicate (or, with another fingerprint, a reused key); a write whose
//! condition fails is what its [`Verdict`] says. Only the undecided rest is
//! sent again. Throttling and conflicts are retried within the deadline.
//!
//! The markers are items of the idempotency table in the Powertools schema
//! (`id`, `expiration`, `status` = `COMPLETED`, `validation`).
//!
//! ```no_run
//! use aws_sdk_dynamodb::types::{AttributeValue, Update};
//! use shared::exactly_once::{UnitOfWork, Verdict, Write};
//!
//! # fn unit() -> Result<UnitOfWork, aws_sdk_dynamodb::error::BuildError> {
//! // Reserve 3 of SKU A-1, once, whatever happens to the message.
//! let reserve = Update::builder()
//!     .table_name("inventory")
//!     .key("sku", AttributeValue::S("A-1".into()))
//!     .update_expression("SET reserved = reserved + :n")
//!     .condition_expression("stock - reserved >= :n")
//!     .expression_attribute_values(":n", AttributeValue::N("3".into()));
//! Ok(UnitOfWork::new("inventory#reservation#r-1")
//!     .fingerprint("9f86d081884c7d65")
//!     .write(Write::update(reserve)?.on_condition_failed(|_| Verdict::Reject("not enough stock of A-1".into()))))
//! # }
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::BuildError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::builders::{ConditionCheckBuilder, DeleteBuilder, PutBuilder, UpdateBuilder};
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, ReturnConsumedCapacity, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};
use shared_core::batch::Outcome;
use shared_core::plan::{MAX_TRANSACT_ITEMS, UnitShape, commits, repeated_keys};

use crate::engine::{CommitError, Committed};
use crate::error::{classify_sdk, sdk_message};
use crate::state::ErrorClass;

/// An item as DynamoDB returns it.
pub type Item = HashMap<String, AttributeValue>;

/// How to read a write's condition failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The effect is already there (for example, the stored version is this
    /// record's): the record is a duplicate and changes nothing.
    Duplicate,
    /// The stored state is newer than the record: counted as stale; its
    /// marker is still written, so a replay is seen as a duplicate.
    Stale,
    /// The record can never be applied: quarantined with this reason.
    Reject(String),
    /// Another writer got in the way: send the unit again (after a back-off,
    /// within the deadline).
    Retry,
}

type ReadFailure = Arc<dyn Fn(Option<&Item>) -> Verdict + Send + Sync>;

/// One write action of a unit of work.
#[derive(Clone)]
pub struct Write {
    action: TransactWriteItem,
    item: String,
    on_condition_failed: ReadFailure,
}

impl std::fmt::Debug for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Write").field("item", &self.item).field("action", &self.action).finish_non_exhaustive()
    }
}

/// A stable text form of a table and key, to tell two writes to one item.
fn identity(table: &str, key: &Item) -> String {
    let mut parts: Vec<(&String, String)> = key.iter().map(|(k, v)| (k, format!("{v:?}"))).collect();
    parts.sort();
    let mut out = table.to_owned();
    for (k, v) in parts {
        out.push('|');
        out.push_str(k);
        out.push('=');
        out.push_str(&v);
    }
    out
}

impl Write {
    fn new(action: TransactWriteItem, item: String) -> Self {
        let reject = Arc::new(|_: Option<&Item>| Verdict::Reject("a condition of its write failed".into()));
        Self { action, item, on_condition_failed: reject }
    }

    /// An `UpdateItem` action, from its builder (the toolkit asks for the
    /// stored item on a failed condition itself).
    pub fn update(update: UpdateBuilder) -> Result<Self, BuildError> {
        let item = identity(
            update.get_table_name().as_deref().unwrap_or(""),
            update.get_key().as_ref().unwrap_or(&Item::new()),
        );
        let update = update.return_values_on_condition_check_failure(ALL_OLD).build()?;
        Ok(Self::new(TransactWriteItem::builder().update(update).build(), item))
    }

    /// A `PutItem` action, from its builder; `key` names the table's key
    /// attributes (the item holds their values).
    pub fn put(put: PutBuilder, key: &[&str]) -> Result<Self, BuildError> {
        let key: Item = put
            .get_item()
            .iter()
            .flatten()
            .filter(|(k, _)| key.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let item = identity(put.get_table_name().as_deref().unwrap_or(""), &key);
        let put = put.return_values_on_condition_check_failure(ALL_OLD).build()?;
        Ok(Self::new(TransactWriteItem::builder().put(put).build(), item))
    }

    /// A `DeleteItem` action, from its builder.
    pub fn delete(delete: DeleteBuilder) -> Result<Self, BuildError> {
        let item = identity(
            delete.get_table_name().as_deref().unwrap_or(""),
            delete.get_key().as_ref().unwrap_or(&Item::new()),
        );
        let delete = delete.return_values_on_condition_check_failure(ALL_OLD).build()?;
        Ok(Self::new(TransactWriteItem::builder().delete(delete).build(), item))
    }

    /// A `ConditionCheck`, from its builder: the unit commits only if it holds.
    pub fn condition_check(check: ConditionCheckBuilder) -> Result<Self, BuildError> {
        let item =
            identity(check.get_table_name().as_deref().unwrap_or(""), check.get_key().as_ref().unwrap_or(&Item::new()));
        let check = check.return_values_on_condition_check_failure(ALL_OLD).build()?;
        Ok(Self::new(TransactWriteItem::builder().condition_check(check).build(), item))
    }

    /// How to read this action's condition failing, from the stored item
    /// (absent when there is none). Without it, a failed condition rejects
    /// the record.
    pub fn on_condition_failed(mut self, read: impl Fn(Option<&Item>) -> Verdict + Send + Sync + 'static) -> Self {
        self.on_condition_failed = Arc::new(read);
        self
    }
}

const ALL_OLD: ReturnValuesOnConditionCheckFailure = ReturnValuesOnConditionCheckFailure::AllOld;

/// One record's effect: its idempotency marker and its writes, committed
/// together or not at all.
#[derive(Debug, Clone)]
pub struct UnitOfWork {
    key: String,
    fingerprint: Option<String>,
    writes: Vec<Write>,
    outcome: Outcome,
}

impl UnitOfWork {
    /// A unit under idempotency key `key` (see [`crate::idempotency::IdempotencyKey`]).
    pub fn new(key: impl Into<String>) -> Self {
        Self { key: key.into(), fingerprint: None, writes: Vec::new(), outcome: Outcome::Applied }
    }

    /// The payload's fingerprint ([`shared_core::key::fingerprint`] of what
    /// identifies the record's content): a later record with the same key
    /// and another fingerprint is reported as a reused key, not replayed.
    pub fn fingerprint(mut self, fingerprint: impl Into<String>) -> Self {
        self.fingerprint = Some(fingerprint.into());
        self
    }

    /// Adds a write to the effect.
    pub fn write(mut self, write: Write) -> Self {
        self.writes.push(write);
        self
    }

    /// How the record counts when the unit commits (default
    /// [`Outcome::Applied`]); a marker-only unit of a record decided as
    /// stale beforehand counts as [`Outcome::Stale`].
    pub fn counted_as(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    /// The idempotency key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// Attempts at one transaction on throttling and conflicts, on top of the
/// SDK's own retries of each request.
const MAX_ATTEMPTS: u32 = 8;
/// How long markers are kept by default: a week covers every replay Lambda
/// makes (streams keep 24 hours, SQS at most 14 days of retries in practice
/// end far sooner) and most producer resends.
const MARKER_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Commits units of work exactly once, markers in `idempotency_table`.
#[derive(Debug, Clone)]
pub struct ExactlyOnce {
    client: Client,
    idempotency_table: String,
    marker_ttl: Duration,
    markers: bool,
}

/// Where a transaction's actions come from.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Marker(usize),
    Write(usize, usize),
}

impl ExactlyOnce {
    /// Markers in `idempotency_table`, kept a week.
    pub fn new(client: Client, idempotency_table: impl Into<String>) -> Self {
        Self { client, idempotency_table: idempotency_table.into(), marker_ttl: MARKER_TTL, markers: true }
    }

    /// With `disabled` (`POWERTOOLS_IDEMPOTENCY_DISABLED`, as in Powertools:
    /// for local experiments, never in production), units commit their
    /// writes without markers: nothing is deduplicated any more.
    pub fn with_idempotency_disabled(mut self, disabled: bool) -> Self {
        self.markers = !disabled;
        self
    }

    /// Keeps markers this long (`IDEMPOTENCY_TTL_SECONDS`).
    pub fn with_marker_ttl(mut self, ttl: Duration) -> Self {
        self.marker_ttl = ttl;
        self
    }

    /// Commits `units` in order; one result per unit. Commits stop at the
    /// first transaction that cannot be committed: the units after it are
    /// reported for retry too (never applied ahead of an earlier failure,
    /// so FIFO groups and shards keep their order).
    pub async fn commit(&self, units: Vec<UnitOfWork>, deadline: Option<SystemTime>) -> Committed {
        // Boxed for the same reason as the engine's future (see `Engine::process`).
        Box::pin(self.commit_units(units, deadline)).await
    }

    async fn commit_units(&self, units: Vec<UnitOfWork>, deadline: Option<SystemTime>) -> Committed {
        let mut results: Vec<Option<Result<Outcome, CommitError>>> = vec![None; units.len()];
        let keys: Vec<(&str, Option<&str>)> =
            units.iter().map(|u| (u.key.as_str(), u.fingerprint.as_deref())).collect();
        if self.markers {
            for (i, decided) in repeated_keys(&keys).into_iter().enumerate() {
                if let Some(outcome) = decided {
                    results[i] = Some(reused_or(outcome, &units[i].key));
                }
            }
        }
        let shape = |u: &UnitOfWork| UnitShape {
            actions: usize::from(self.markers) + u.writes.len(),
            items: self
                .markers
                .then(|| format!("{}|id={}", self.idempotency_table, u.key))
                .into_iter()
                .chain(u.writes.iter().map(|w| w.item.clone()))
                .collect(),
        };
        let mut live: Vec<usize> = Vec::new();
        for (i, unit) in units.iter().enumerate() {
            if results[i].is_some() {
                continue;
            }
            match commits(std::slice::from_ref(&shape(unit)), MAX_TRANSACT_ITEMS) {
                Ok(_) => live.push(i),
                Err(e) => results[i] = Some(Err(CommitError::Permanent(e.to_string()))),
            }
        }
        let shapes: Vec<UnitShape> = live.iter().map(|i| shape(&units[*i])).collect();
        // Every live unit fits on its own (checked above), so planning them
        // together cannot fail; were it to, they are reported for retry.
        let plan = commits(&shapes, MAX_TRANSACT_ITEMS).unwrap_or_default();
        let mut stopped: Option<CommitError> = None;
        for range in plan {
            let members: Vec<usize> = live[range].to_vec();
            if let Some(e) = &stopped {
                for i in members {
                    results[i] = Some(Err(match e {
                        CommitError::Fatal(m) => CommitError::Fatal(m.clone()),
                        _ => CommitError::Transient("an earlier transaction of the batch failed".into()),
                    }));
                }
                continue;
            }
            if let Err(e) = self.commit_one(&units, &members, &mut results, deadline).await {
                for &i in &members {
                    if results[i].is_none() {
                        results[i] = Some(Err(e.clone()));
                    }
                }
                stopped = Some(e);
            }
        }
        results.into_iter().map(|r| r.unwrap_or(Err(CommitError::Transient("not committed".into())))).collect()
    }

    /// Commits one transaction's units, deciding each; `Err` when it cannot
    /// be committed (the undecided units get that error).
    async fn commit_one(
        &self,
        units: &[UnitOfWork],
        members: &[usize],
        results: &mut [Option<Result<Outcome, CommitError>>],
        deadline: Option<SystemTime>,
    ) -> Result<(), CommitError> {
        // Per member: whether its marker and its writes are still to be sent.
        let mut marker: HashMap<usize, bool> = members.iter().map(|i| (*i, self.markers)).collect();
        let mut writes: HashMap<usize, bool> = members.iter().map(|i| (*i, true)).collect();
        let mut counted: HashMap<usize, Outcome> = members.iter().map(|i| (*i, units[*i].outcome)).collect();
        let now = chrono::Utc::now().timestamp();
        for attempt in 1..=MAX_ATTEMPTS {
            let mut actions = Vec::new();
            let mut slots = Vec::new();
            for &i in members {
                if results[i].is_some() {
                    continue;
                }
                if marker[&i] {
                    actions.push(self.marker_put(&units[i], now)?);
                    slots.push(Slot::Marker(i));
                }
                if writes[&i] {
                    for (w, write) in units[i].writes.iter().enumerate() {
                        actions.push(write.action.clone());
                        slots.push(Slot::Write(i, w));
                    }
                }
            }
            if actions.is_empty() {
                return Ok(());
            }
            match transact(&self.client, &self.idempotency_table, actions).await {
                Ok(None) => {
                    for &i in members {
                        if results[i].is_none() {
                            results[i] = Some(Ok(counted[&i]));
                        }
                    }
                    return Ok(());
                }
                Ok(Some(reasons)) => {
                    let mut retry_needed = true;
                    for (slot, (code, item)) in slots.iter().zip(reasons) {
                        if code != "ConditionalCheckFailed" {
                            continue;
                        }
                        match *slot {
                            Slot::Marker(i) => {
                                retry_needed = false;
                                let stored =
                                    item.as_ref().and_then(|it| it.get("validation")).and_then(|v| v.as_s().ok());
                                let reused =
                                    matches!((stored, units[i].fingerprint.as_deref()), (Some(a), Some(b)) if a != b);
                                let outcome = if reused { Outcome::KeyReused } else { Outcome::Duplicate };
                                results[i] = Some(reused_or(outcome, &units[i].key));
                            }
                            Slot::Write(i, w) => {
                                if results[i].is_some() {
                                    // Its marker failed too: the marker decides.
                                    continue;
                                }
                                match (units[i].writes[w].on_condition_failed)(item.as_ref()) {
                                    Verdict::Duplicate => {
                                        retry_needed = false;
                                        results[i] = Some(Ok(Outcome::Duplicate));
                                    }
                                    Verdict::Stale => {
                                        retry_needed = false;
                                        writes.insert(i, false);
                                        counted.insert(i, Outcome::Stale);
                                    }
                                    Verdict::Reject(reason) => {
                                        retry_needed = false;
                                        results[i] = Some(Err(CommitError::Permanent(reason)));
                                    }
                                    Verdict::Retry => {}
                                }
                            }
                        }
                    }
                    // A marker decided as duplicate is not sent again.
                    for &i in members {
                        if results[i].is_some() {
                            marker.insert(i, false);
                        }
                    }
                    if retry_needed {
                        backoff(attempt, deadline).await?;
                    }
                }
                Err((class, message)) => match class {
                    ErrorClass::Transient => {
                        backoff(attempt, deadline).await.map_err(|_| CommitError::Transient(message))?
                    }
                    ErrorClass::Permanent => return Err(CommitError::Permanent(message)),
                    ErrorClass::Fatal => return Err(CommitError::Fatal(message)),
                },
            }
        }
        Err(CommitError::Transient(format!("gave up after {MAX_ATTEMPTS} attempts: transactions kept being cancelled")))
    }

    fn marker_put(&self, unit: &UnitOfWork, now: i64) -> Result<TransactWriteItem, CommitError> {
        marker_put(&self.idempotency_table, &unit.key, unit.fingerprint.as_deref(), self.marker_ttl, now)
            .map_err(|e| CommitError::Permanent(e.to_string()))
    }
}

fn reused_or(outcome: Outcome, key: &str) -> Result<Outcome, CommitError> {
    match outcome {
        Outcome::KeyReused => {
            Err(CommitError::Permanent(format!("idempotency key {key} was already used with a different payload")))
        }
        other => Ok(other),
    }
}

/// The marker write of a unit: succeeds only if the key is new (or its
/// marker expired).
pub(crate) fn marker_put(
    table: &str,
    key: &str,
    validation: Option<&str>,
    ttl: Duration,
    now: i64,
) -> Result<TransactWriteItem, aws_sdk_dynamodb::error::BuildError> {
    let mut put = Put::builder()
        .table_name(table)
        .item("id", AttributeValue::S(key.to_owned()))
        .item("status", AttributeValue::S("COMPLETED".into()))
        .item("expiration", AttributeValue::N((now + ttl.as_secs() as i64).to_string()))
        .condition_expression("attribute_not_exists(id) OR expiration < :now")
        .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
        .return_values_on_condition_check_failure(ALL_OLD);
    if let Some(v) = validation {
        put = put.item("validation", AttributeValue::S(v.to_owned()));
    }
    Ok(TransactWriteItem::builder().put(put.build()?).build())
}

/// Sends one transaction: `Ok(None)` when it committed, `Ok(Some(reasons))`
/// when it was cancelled (each action's code and the item that failed its
/// condition), `Err` with the error's class and message otherwise.
async fn transact(
    client: &Client,
    table: &str,
    actions: Vec<TransactWriteItem>,
) -> Result<Option<Vec<(String, Option<Item>)>>, (ErrorClass, String)> {
    let sent = client
        .transact_write_items()
        .set_transact_items(Some(actions))
        .return_consumed_capacity(ReturnConsumedCapacity::Total)
        .send()
        .await;
    match sent {
        Ok(_) => Ok(None),
        Err(err) => {
            if let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) = err.as_service_error() {
                let reasons = cancelled
                    .cancellation_reasons()
                    .iter()
                    .map(|r| (r.code().unwrap_or("None").to_owned(), r.item().cloned()))
                    .collect();
                return Ok(Some(reasons));
            }
            Err((
                classify_sdk(&err),
                format!("DynamoDB TransactWriteItems (markers in {table}) failed: {}", sdk_message(&err)),
            ))
        }
    }
}

/// Exponential back-off with jitter before attempt `attempt + 1`; an error
/// after the last attempt, or when the deadline would pass first.
async fn backoff(attempt: u32, deadline: Option<SystemTime>) -> Result<(), CommitError> {
    if attempt >= MAX_ATTEMPTS {
        return Err(CommitError::Transient(format!("gave up after {attempt} attempts")));
    }
    let base = 20u64 << attempt.min(6);
    let jitter = u64::from(chrono::Utc::now().timestamp_subsec_nanos()) % base;
    let wait = Duration::from_millis(base / 2 + jitter);
    if deadline.is_some_and(|d| SystemTime::now() + wait >= d) {
        return Err(CommitError::Transient("the invocation's deadline is too near to try again".into()));
    }
    tokio::time::sleep(wait).await;
    Ok(())
}
