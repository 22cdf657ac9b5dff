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
//! # fn unit() -> UnitOfWork {
//! // Reserve 3 of SKU A-1, once, whatever happens to the message.
//! let reserve = Update::builder()
//!     .table_name("inventory")
//!     .key("sku", AttributeValue::S("A-1".into()))
//!     .update_expression("SET reserved = reserved + :n")
//!     .condition_expression("stock - reserved >= :n")
//!     .expression_attribute_values(":n", AttributeValue::N("3".into()));
//! UnitOfWork::new("inventory#reservation#r-1")
//!     .fingerprint("9f86d081884c7d65")
//!     .write(Write::update(reserve).on_condition_failed(|_| Verdict::Reject("not enough stock of A-1".into())))
//! # }
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::BuildError;
use aws_sdk_dynamodb::types::builders::{ConditionCheckBuilder, DeleteBuilder, PutBuilder, UpdateBuilder};
use aws_sdk_dynamodb::types::{AttributeValue, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update};
use shared_core::batch::Outcome;
use shared_core::plan::{
    MAX_TRANSACT_ITEMS, Next, Pending, Reading, UnitShape, commits, read_cancellation, repeated_keys,
};

pub use shared_core::plan::Verdict;

use crate::dynamo::{MAX_ATTEMPTS, MAX_BATCH_STATEMENTS, Transacted, backoff, execute_statements, transact};
use crate::engine::{CommitError, Committed};
use crate::error::{Classify, ErrorClass, classify_code};

/// An item as DynamoDB returns it.
pub type Item = HashMap<String, AttributeValue>;

type ReadFailure = Arc<dyn Fn(Option<&Item>) -> Verdict + Send + Sync>;
type BuildAction = Arc<dyn Fn() -> Result<TransactWriteItem, BuildError> + Send + Sync>;

/// One write action of a unit of work.
#[derive(Clone)]
pub struct Write {
    action: Action,
    item: String,
    on_condition_failed: ReadFailure,
}

/// A write's action: built, or built each time its transaction is sent.
#[derive(Clone)]
enum Action {
    /// Boxed: a `TransactWriteItem` holds all four kinds of action inline
    /// (0.9 KB).
    Built(Box<TransactWriteItem>),
    /// From what the record holds already: a batch's units then hold no
    /// action maps (1.3 KB and more per update) between planning and the
    /// transaction that sends them.
    Deferred(BuildAction),
    /// A builder that did not build (a required field missing): the unit
    /// fails as permanent when it is committed.
    Invalid(String),
    /// A guarded write: PartiQL, committed outside a transaction.
    Guarded(Box<Guarded>),
}

/// A PartiQL statement with its parameters (`?` in its text, in order).
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    text: Arc<str>,
    parameters: Vec<AttributeValue>,
}

impl Statement {
    /// A statement: `INSERT INTO "table" VALUE {...}`, `UPDATE "table" SET
    /// ... WHERE <key> AND <condition>` or `DELETE FROM ...`, with `?` for
    /// each of `parameters`.
    ///
    /// The text is shared, not copied: a batch whose statements differ only
    /// in their parameters can build the text once and pass clones of one
    /// `Arc<str>` (10,000 orders' statements hold one text instead of
    /// 10,000, about 2 KB each).
    pub fn new(text: impl Into<Arc<str>>, parameters: Vec<AttributeValue>) -> Self {
        Self { text: text.into(), parameters }
    }

    fn build(&self) -> Result<aws_sdk_dynamodb::types::BatchStatementRequest, String> {
        aws_sdk_dynamodb::types::BatchStatementRequest::builder()
            .statement(&*self.text)
            .set_parameters((!self.parameters.is_empty()).then(|| self.parameters.clone()))
            .return_values_on_condition_check_failure(ALL_OLD)
            .build()
            .map_err(|e| format!("the statement does not build: {e}"))
    }
}

/// A guarded write's statements: an update (its condition is the guard),
/// and, for an item that may not exist yet, the insert that creates it.
#[derive(Debug, Clone, PartialEq)]
struct Guarded {
    insert: Option<Statement>,
    update: Option<Statement>,
    /// Try the insert first (the caller read the item as absent).
    insert_first: bool,
}

impl Action {
    fn get(&self) -> Result<TransactWriteItem, String> {
        match self {
            Self::Built(action) => Ok(TransactWriteItem::clone(action)),
            Self::Deferred(build) => build().map_err(|e| e.to_string()),
            Self::Invalid(reason) => Err(reason.clone()),
            Self::Guarded(_) => Err("a guarded write (Write::statement) commits only in a guarded unit \
                                     (UnitOfWork::guarded), never in a transaction"
                .into()),
        }
    }

    fn built(action: Result<TransactWriteItem, BuildError>) -> Self {
        match action {
            Ok(action) => Self::Built(Box::new(action)),
            Err(e) => Self::Invalid(format!("the write does not build: {e}")),
        }
    }
}

impl std::fmt::Debug for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("Write");
        out.field("item", &self.item);
        match &self.action {
            Action::Built(action) => out.field("action", action),
            Action::Deferred(_) => out.field("action", &"deferred"),
            Action::Invalid(reason) => out.field("invalid", reason),
            Action::Guarded(guarded) => out.field("guarded", guarded),
        };
        out.finish_non_exhaustive()
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
    fn new(action: Result<TransactWriteItem, BuildError>, item: String) -> Self {
        Self::with_action(Action::built(action), item)
    }

    fn with_action(action: Action, item: String) -> Self {
        let reject = Arc::new(|_: Option<&Item>| Verdict::Reject("a condition of its write failed".into()));
        Self { action, item, on_condition_failed: reject }
    }

    /// An `UpdateItem` action on `table`'s item `key`, built by `build`
    /// each time its transaction is sent (once, unless it is retried),
    /// instead of held built from the unit's making to its commit. For
    /// large batches: an update's maps take more memory than the record
    /// they are made from. `build` gets the builder with the table and key
    /// set and adds the rest; without an update expression the transaction
    /// that carries it fails, and its records with it, as permanent.
    pub fn deferred_update(
        table: impl Into<Arc<str>>,
        key: Item,
        build: impl Fn(UpdateBuilder) -> UpdateBuilder + Send + Sync + 'static,
    ) -> Self {
        let table: Arc<str> = table.into();
        let item = identity(&table, &key);
        let action = Action::Deferred(Arc::new(move || {
            let update = build(Update::builder().table_name(&*table).set_key(Some(key.clone())))
                .return_values_on_condition_check_failure(ALL_OLD)
                .build()?;
            Ok(TransactWriteItem::builder().update(update).build())
        }));
        Self::with_action(action, item)
    }

    /// An `UpdateItem` action, from its builder (the toolkit asks for the
    /// stored item on a failed condition itself). A builder without a table
    /// or key fails its unit as permanent when it is committed.
    pub fn update(update: UpdateBuilder) -> Self {
        let item = identity(
            update.get_table_name().as_deref().unwrap_or(""),
            update.get_key().as_ref().unwrap_or(&Item::new()),
        );
        let update = update.return_values_on_condition_check_failure(ALL_OLD).build();
        Self::new(update.map(|u| TransactWriteItem::builder().update(u).build()), item)
    }

    /// A `PutItem` action, from its builder; `key` names the table's key
    /// attributes (the item holds their values).
    pub fn put(put: PutBuilder, key: &[&str]) -> Self {
        let key: Item = put
            .get_item()
            .iter()
            .flatten()
            .filter(|(k, _)| key.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let item = identity(put.get_table_name().as_deref().unwrap_or(""), &key);
        let put = put.return_values_on_condition_check_failure(ALL_OLD).build();
        Self::new(put.map(|p| TransactWriteItem::builder().put(p).build()), item)
    }

    /// A `DeleteItem` action, from its builder.
    pub fn delete(delete: DeleteBuilder) -> Self {
        let item = identity(
            delete.get_table_name().as_deref().unwrap_or(""),
            delete.get_key().as_ref().unwrap_or(&Item::new()),
        );
        let delete = delete.return_values_on_condition_check_failure(ALL_OLD).build();
        Self::new(delete.map(|d| TransactWriteItem::builder().delete(d).build()), item)
    }

    /// A `ConditionCheck`, from its builder: the unit commits only if it holds.
    pub fn condition_check(check: ConditionCheckBuilder) -> Self {
        let item =
            identity(check.get_table_name().as_deref().unwrap_or(""), check.get_key().as_ref().unwrap_or(&Item::new()));
        let check = check.return_values_on_condition_check_failure(ALL_OLD).build();
        Self::new(check.map(|c| TransactWriteItem::builder().condition_check(c).build()), item)
    }

    /// Rejects the record when this action's condition fails, with the
    /// reason `reason` gives from the stored item (absent when there is
    /// none): the common case of [`on_condition_failed`](Self::on_condition_failed).
    pub fn reject_with(self, reason: impl Fn(Option<&Item>) -> String + Send + Sync + 'static) -> Self {
        self.on_condition_failed(move |stored| Verdict::Reject(reason(stored)))
    }

    /// A guarded write on `table`'s item `key`: one PartiQL statement whose
    /// `WHERE` condition makes a second application a no-op (an update
    /// applied only if the stored state is older than the record's, say),
    /// for [`UnitOfWork::guarded`]. It commits outside a transaction, many to
    /// a `BatchExecuteStatement`: one write request unit per KB instead of a
    /// transaction's two, and no marker's. A failed condition is read by
    /// [`on_condition_failed`](Self::on_condition_failed) from the item it
    /// returns (absent when there is none).
    pub fn statement(table: &str, key: Item, statement: Statement) -> Self {
        Self::guarded(table, key, Guarded { insert: None, update: Some(statement), insert_first: false })
    }

    /// A guarded write that creates the item when it is absent (`insert`,
    /// an `INSERT`) and otherwise applies `update` (an `UPDATE` whose
    /// condition is the guard). `absent` says which to try first (from a
    /// read of yours, say); when the item turns out otherwise, the other
    /// statement is sent (PartiQL's `UPDATE` never creates an item, and its
    /// `INSERT` fails on one that exists).
    pub fn insert_or_update(table: &str, key: Item, insert: Statement, update: Statement, absent: bool) -> Self {
        Self::guarded(table, key, Guarded { insert: Some(insert), update: Some(update), insert_first: absent })
    }

    fn guarded(table: &str, key: Item, guarded: Guarded) -> Self {
        Self::with_action(Action::Guarded(Box::new(guarded)), identity(table, &key))
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
    /// `None`: no marker (the unit is made once by something else, such as
    /// an object's checkpoint committed with it), or a key still to derive.
    key: Option<String>,
    /// A key the entry point derives from the record (see [`Self::for_record`]
    /// and [`Self::keyed`]) before the unit is committed.
    derive: Option<Derive>,
    fingerprint: Option<String>,
    writes: Vec<Write>,
    outcome: Outcome,
    remember_rejection: bool,
    guarded: bool,
}

/// A key still to derive: from the record's identity, or from a kind and an
/// identity of the domain's under the function's key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Derive {
    /// The record's identity.
    Record,
    /// `{prefix}#{kind}#{identity}`.
    Named { kind: String, identity: String },
}

impl UnitOfWork {
    fn with(key: Option<String>, derive: Option<Derive>) -> Self {
        Self {
            key,
            derive,
            fingerprint: None,
            writes: Vec::new(),
            outcome: Outcome::Applied,
            remember_rejection: false,
            guarded: false,
        }
    }

    /// The record's writes, exactly once per record: its idempotency key is
    /// the record's identity (an SQS message by `IDEMPOTENCY_KEY_SOURCE`, by
    /// default its `messageId`; a stream record by its `eventID`), derived
    /// by the entry point. A redelivery of the record changes nothing.
    pub fn for_record() -> Self {
        Self::with(None, Some(Derive::Record))
    }

    /// Exactly once per `identity` of `kind` (a reservation id, a payment
    /// id): the key `{prefix}#{kind}#{identity}` under the function's key
    /// prefix, so a producer's resend in another message is caught too. The
    /// entry point fingerprints the record's body (its JSON meaning: members
    /// in any order) unless [`fingerprint`](Self::fingerprint) says
    /// otherwise, so the same identity with another payload is a reused key.
    pub fn keyed(kind: impl Into<String>, identity: impl Into<String>) -> Self {
        Self::with(None, Some(Derive::Named { kind: kind.into(), identity: identity.into() }))
    }

    /// A unit under the full idempotency key `key`, as derived by
    /// [`crate::idempotency::IdempotencyKey`] (for committers of your own).
    pub fn new(key: impl Into<String>) -> Self {
        Self::with(Some(key.into()), None)
    }

    /// A unit whose one write guards itself ([`Write::statement`] or
    /// [`Write::insert_or_update`]): its condition makes a second
    /// application a no-op and says, from the stored item, whether the
    /// record was applied before (`Verdict::Duplicate`) or is older than
    /// what is stored (`Verdict::Stale`). It needs no marker and no
    /// transaction: [`ExactlyOnce`] commits such units 25 to a
    /// `BatchExecuteStatement` (each answered on its own), at one write
    /// request unit per KB of the item, where a marker and the write in a
    /// transaction cost four. The guarantee is the condition's: the effect
    /// happens once, and a record is told a duplicate only while the item
    /// still shows it (a duplicate of a record that a later one superseded
    /// reads as stale; a reused key is caught when the item keeps the
    /// record's fingerprint). Keep units that touch several items, or whose
    /// effect cannot be told applied from the item, on a marker.
    pub fn guarded() -> Self {
        Self { guarded: true, ..Self::with(None, None) }
    }

    /// A unit without an idempotency marker: for writes that are made
    /// exactly-once by other means (the lines of an object, whose checkpoint
    /// commits in the same transaction), or whose conditions alone make them
    /// idempotent.
    pub fn unkeyed() -> Self {
        Self::with(None, None)
    }

    /// Derives the key [`for_record`](Self::for_record) or
    /// [`keyed`](Self::keyed) asked for: `record` gives the record's key (or
    /// `None` where keys may be missing), `body` the fingerprint of its
    /// payload.
    #[cfg(any(feature = "sqs", feature = "dynamodb-stream", feature = "kinesis", feature = "kafka"))]
    pub(crate) fn derive_key(
        mut self,
        keys: &shared_core::key::Keys,
        record: impl FnOnce() -> Result<Option<String>, shared_core::key::KeyError>,
        body: impl FnOnce() -> Option<String>,
    ) -> Result<Self, shared_core::key::KeyError> {
        match self.derive.take() {
            None => {}
            Some(Derive::Record) => self.key = record()?,
            Some(Derive::Named { kind, identity }) => {
                self.key = Some(keys.custom(&kind, &identity));
                if self.fingerprint.is_none() {
                    self.fingerprint = body();
                }
            }
        }
        Ok(self)
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
        // One slot at a time: most units have one write, and a Vec's first
        // growth takes four.
        self.writes.reserve_exact(1);
        self.writes.push(write);
        self
    }

    /// What a later record with this unit's key gets after this one was
    /// rejected ([`Verdict::Reject`]). By default, as in Powertools, a
    /// rejected record leaves no marker, so the later record is evaluated
    /// again: a reservation refused for want of stock goes through once
    /// stock is back. With `remember_rejection()`, the rejection is final:
    /// its marker is committed with the reason, and every later record with
    /// the key is quarantined as `rejected before: <reason>` without being
    /// evaluated (a payment refused as fraudulent stays refused). Either
    /// way, the rejected record itself is quarantined with its reason.
    pub fn remember_rejection(mut self) -> Self {
        self.remember_rejection = true;
        self
    }

    /// How the record counts when the unit commits (default
    /// [`Outcome::Applied`]); a marker-only unit of a record decided as
    /// stale beforehand counts as [`Outcome::Stale`].
    pub fn counted_as(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    /// The idempotency key, if the unit has a marker (and it is derived).
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The payload's fingerprint, if given or derived.
    pub fn fingerprint_value(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// The kind and identity a [`keyed`](Self::keyed) unit's key is
    /// derived from (`{prefix}#{kind}#{identity}` once an entry point
    /// derives it): what a planner's unit test checks.
    pub fn keyed_by(&self) -> Option<(&str, &str)> {
        match &self.derive {
            Some(Derive::Named { kind, identity }) => Some((kind, identity)),
            _ => None,
        }
    }
}

/// Commits units of work exactly once, markers in `idempotency_table`.
#[derive(Debug, Clone)]
pub struct ExactlyOnce {
    client: Client,
    idempotency_table: String,
    marker_ttl: Duration,
    markers: bool,
    capacity: crate::telemetry::CapacityMeter,
    concurrency: usize,
}

/// Builds a write that commits with the last transaction of a batch from
/// every unit's outcome if that transaction commits (an object's manifest:
/// its checkpoint and counters).
pub type FinalWrite<'a> = dyn Fn(&[Outcome]) -> Write + Send + Sync + 'a;

/// Why a batch with a final write could not be committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FinalWriteError {
    /// The final write's condition failed: another writer moved its item
    /// (for a manifest: another invocation committed the same chunk).
    #[error("the final write's condition failed: another writer changed its item")]
    Conflict,
    /// The transaction carrying it failed.
    #[error(transparent)]
    Commit(#[from] CommitError),
}

impl ExactlyOnce {
    /// Markers in `idempotency_table`, kept a week.
    pub fn new(client: Client, idempotency_table: impl Into<String>) -> Self {
        Self {
            client,
            idempotency_table: idempotency_table.into(),
            marker_ttl: crate::config::DEFAULT_IDEMPOTENCY_TTL,
            markers: true,
            capacity: Default::default(),
            concurrency: 1,
        }
    }

    /// Commits up to `n` of a batch's transactions at once (default 1: one
    /// after another, stopping at the first that fails). Above one, a
    /// transaction waits for every earlier one that touches one of its
    /// items, and fails (for retry) if one of those failed, so effects on
    /// any one item keep record order; transactions that share no item go
    /// on whatever happens to the others, and may commit in any order. The
    /// final write of [`commit_with_final`](Self::commit_with_final) rides in
    /// the last transaction, sent once all the others committed.
    ///
    /// Only for batches without an order across items: a standard queue, or
    /// FIFO batches that fit in one transaction (Lambda's FIFO batches hold
    /// at most 10 messages). With more than one transaction per FIFO group
    /// or stream shard, keep 1: the engine's contract (never apply a record
    /// after an earlier failure of its group or shard) needs it.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// A unit that only records `key` as done: a record whose effect is
    /// nothing (a change that moves no total) still counts once, a replay
    /// of it as a duplicate. Its marker is the whole effect, so it needs no
    /// transaction: one guarded `INSERT` of the marker (one write unit,
    /// batched with the other guarded units), where a marker in a
    /// transaction costs two.
    pub fn marker_unit(&self, key: &str) -> UnitOfWork {
        let expiration = chrono::Utc::now().timestamp() + self.marker_ttl.as_secs() as i64;
        let table = &self.idempotency_table;
        let insert = Statement::new(
            format!("INSERT INTO \"{table}\" VALUE {{'id': ?, 'status': ?, 'expiration': ?}}"),
            vec![
                AttributeValue::S(key.to_owned()),
                AttributeValue::S("COMPLETED".into()),
                AttributeValue::N(expiration.to_string()),
            ],
        );
        let marker = Item::from([("id".to_owned(), AttributeValue::S(key.to_owned()))]);
        UnitOfWork::guarded().write(Write::statement(table, marker, insert).on_condition_failed(|_| Verdict::Duplicate))
    }

    /// Keeps markers this long (`IDEMPOTENCY_TTL_SECONDS`).
    pub fn with_marker_ttl(mut self, ttl: Duration) -> Self {
        self.marker_ttl = ttl;
        self
    }

    /// With `disabled` (`POWERTOOLS_IDEMPOTENCY_DISABLED`, as in Powertools:
    /// for local experiments, never in production), units commit their
    /// writes without markers: nothing is deduplicated any more.
    pub fn with_idempotency_disabled(mut self, disabled: bool) -> Self {
        self.markers = !disabled;
        self
    }

    /// Sums the capacity DynamoDB reports consuming into `meter`.
    pub fn with_capacity_meter(mut self, meter: crate::telemetry::CapacityMeter) -> Self {
        self.capacity = meter;
        self
    }

    /// Commits `units` in order; one result per unit. Commits stop at the
    /// first transaction that cannot be committed: the units after it are
    /// reported for retry too (never applied ahead of an earlier failure,
    /// so FIFO groups and shards keep their order).
    pub async fn commit(&self, units: Vec<UnitOfWork>, deadline: Option<SystemTime>) -> Committed {
        let results = self.commit_outcomes(&units, deadline).await;
        results.into_iter().zip(&units).map(|(r, u)| reused_or(r, u.key.as_deref())).collect()
    }

    /// [`commit`](Self::commit) with a final write in the last transaction
    /// (which then holds one action fewer of the units'), built from every
    /// unit's outcome if it commits. A reused key is
    /// [`Outcome::KeyReused`] here. Any failure fails the whole batch: the
    /// final write must never commit without the units it covers.
    pub async fn commit_with_final(
        &self,
        units: &[UnitOfWork],
        last: &FinalWrite<'_>,
        deadline: Option<SystemTime>,
    ) -> Result<Vec<Outcome>, FinalWriteError> {
        let results = Box::pin(self.commit_all(units, Some(last), deadline)).await?;
        results.into_iter().map(|r| r.map_err(FinalWriteError::Commit)).collect()
    }

    /// [`commit`](Self::commit) with a reused key as [`Outcome::KeyReused`]
    /// (for stores that report it themselves).
    pub async fn commit_outcomes(&self, units: &[UnitOfWork], deadline: Option<SystemTime>) -> Committed {
        match Box::pin(self.commit_all(units, None, deadline)).await {
            Ok(results) => results,
            Err(_) => unreachable!("no final write, no final conflict"),
        }
    }

    async fn commit_all(
        &self,
        units: &[UnitOfWork],
        last: Option<&FinalWrite<'_>>,
        deadline: Option<SystemTime>,
    ) -> Result<Vec<Result<Outcome, CommitError>>, FinalWriteError> {
        let mut results: Vec<Decided> = vec![None; units.len()];
        if self.markers {
            let keyed: Vec<(usize, (&str, Option<&str>))> = units
                .iter()
                .enumerate()
                .filter_map(|(i, u)| u.key.as_deref().map(|k| (i, (k, u.fingerprint.as_deref()))))
                .collect();
            let keys: Vec<(&str, Option<&str>)> = keyed.iter().map(|(_, k)| *k).collect();
            for ((i, _), decided) in keyed.iter().zip(repeated_keys(&keys)) {
                if let Some(outcome) = decided {
                    results[*i] = Some(Ok(outcome));
                }
            }
        }
        let limit = MAX_TRANSACT_ITEMS - usize::from(last.is_some());
        let shape = |u: &UnitOfWork| UnitShape {
            actions: usize::from(self.has_marker(u)) + u.writes.len(),
            items: u
                .key
                .as_deref()
                .filter(|_| self.markers)
                .map(|k| format!("{}|id={k}", self.idempotency_table))
                .into_iter()
                .chain(u.writes.iter().map(|w| w.item.clone()))
                .collect(),
        };
        let mut live: Vec<usize> = Vec::new();
        for (i, unit) in units.iter().enumerate() {
            if unit.derive.is_some() {
                results[i] = Some(Err(CommitError::Permanent(
                    "the unit's idempotency key was never derived: commit it through an entry point \
                     (shared::lambda), or give it a full key (UnitOfWork::new)"
                        .into(),
                )));
            }
            if unit.guarded && results[i].is_none() {
                let one_guarded_write = unit.key.is_none()
                    && matches!(unit.writes.as_slice(), [w] if matches!(w.action, Action::Guarded(_)));
                if !one_guarded_write || last.is_some() {
                    results[i] = Some(Err(CommitError::Permanent(
                        "a guarded unit takes one guarded write (Write::statement or Write::insert_or_update), \
                         no key, and no final write"
                            .into(),
                    )));
                }
            }
            if results[i].is_some() {
                continue;
            }
            let limit = if unit.guarded { MAX_BATCH_STATEMENTS } else { limit };
            match commits(std::slice::from_ref(&shape(unit)), limit) {
                Ok(_) => live.push(i),
                Err(e) => results[i] = Some(Err(CommitError::Permanent(e.to_string()))),
            }
        }
        // Each run of guarded units, or of units with markers, in its own
        // commits: a statement batch (at most 25, one per item) or a
        // transaction. Every live unit fits on its own (checked above), so
        // planning them together cannot fail; were it to, they are reported
        // for retry.
        let mut plan: Vec<Vec<usize>> = Vec::new();
        let mut kinds: Vec<bool> = Vec::new();
        for run in live.chunk_by(|a, b| units[*a].guarded == units[*b].guarded) {
            let guarded = units[run[0]].guarded;
            let shapes: Vec<UnitShape> = run.iter().map(|i| shape(&units[*i])).collect();
            for range in commits(&shapes, if guarded { MAX_BATCH_STATEMENTS } else { limit }).unwrap_or_default() {
                plan.push(run[range].to_vec());
                kinds.push(guarded);
            }
        }
        if plan.is_empty() && last.is_some() {
            plan.push(Vec::new()); // The final write alone.
            kinds.push(false);
        }
        if self.concurrency > 1 && plan.len() > 1 {
            let final_members = if last.is_some() { plan.pop() } else { None };
            let shapes: HashMap<usize, UnitShape> = live.iter().map(|&i| (i, shape(&units[i]))).collect();
            let failed = self.commit_concurrently(units, plan, &kinds, &shapes, &mut results, deadline).await;
            if let Some(members) = final_members {
                if let Some(e) = failed {
                    // The final write must never commit without every unit.
                    return Err(FinalWriteError::Commit(e));
                }
                self.commit_one(units, &members, &mut results[..], last, deadline).await?;
            }
            return Ok(finish(results));
        }
        let commits_in_plan = plan.len();
        let mut stopped: Option<CommitError> = None;
        for (t, members) in plan.into_iter().enumerate() {
            if let Some(e) = &stopped {
                for i in members {
                    results[i] = Some(Err(match e {
                        CommitError::Fatal(m) => CommitError::Fatal(m.clone()),
                        _ => CommitError::Transient("an earlier commit of the batch failed".into()),
                    }));
                }
                continue;
            }
            let with_last = if t + 1 == commits_in_plan { last } else { None };
            if let Err(e) = self.commit_group(units, &members, kinds[t], &mut results[..], with_last, deadline).await {
                if last.is_some() {
                    return Err(e);
                }
                let e = match e {
                    FinalWriteError::Commit(e) => e,
                    FinalWriteError::Conflict => unreachable!("no final write"),
                };
                for &i in &members {
                    if results[i].is_none() {
                        results[i] = Some(Err(e.clone()));
                    }
                }
                stopped = Some(e);
            }
        }
        Ok(finish(results))
    }

    /// Commits one group of the plan: a transaction, or a batch of guarded
    /// statements.
    async fn commit_group(
        &self,
        units: &[UnitOfWork],
        members: &[usize],
        guarded: bool,
        results: &mut (impl Results + ?Sized),
        last: Option<&FinalWrite<'_>>,
        deadline: Option<SystemTime>,
    ) -> Result<(), FinalWriteError> {
        if guarded {
            self.commit_statements(units, members, results, deadline).await.map_err(FinalWriteError::Commit)
        } else {
            self.commit_one(units, members, results, last, deadline).await
        }
    }

    /// Commits guarded units in one `BatchExecuteStatement` per attempt,
    /// deciding each from its own answer: applied; a failed condition read
    /// by its write's verdict from the item it returns; an `INSERT` of an
    /// item that exists sent again as its `UPDATE`, and an `UPDATE` of one
    /// that does not as its `INSERT`; throttling and conflicts sent again
    /// after a back-off. `Err` when nothing can be sent.
    async fn commit_statements(
        &self,
        units: &[UnitOfWork],
        members: &[usize],
        results: &mut (impl Results + ?Sized),
        deadline: Option<SystemTime>,
    ) -> Result<(), CommitError> {
        let guarded = |i: usize| match &units[i].writes[0].action {
            Action::Guarded(g) => Some(g.as_ref()),
            _ => None,
        };
        // Per member: the insert goes next (else the update).
        let mut insert: Vec<bool> = members.iter().map(|&i| guarded(i).is_some_and(|g| g.insert_first)).collect();
        for attempt in 1..=MAX_ATTEMPTS {
            let mut sent: Vec<usize> = Vec::new();
            let mut requests = Vec::new();
            for (m, &i) in members.iter().enumerate() {
                if results.get(i).is_some() {
                    continue;
                }
                let Some(g) = guarded(i) else { continue };
                let statement = if insert[m] { g.insert.as_ref().or(g.update.as_ref()) } else { g.update.as_ref() };
                match statement.map(Statement::build) {
                    Some(Ok(request)) => {
                        requests.push(request);
                        sent.push(m);
                    }
                    Some(Err(reason)) => results.set(i, Err(CommitError::Permanent(reason))),
                    None => results.set(i, Err(CommitError::Permanent("a guarded write without a statement".into()))),
                }
            }
            if requests.is_empty() {
                return Ok(());
            }
            let answers =
                match execute_statements(&self.client, &self.idempotency_table, requests, &self.capacity).await {
                    Ok(answers) => answers,
                    Err(e) => match e.class() {
                        ErrorClass::Transient => {
                            backoff(attempt, deadline).await.map_err(|_| CommitError::Transient(e.to_string()))?;
                            continue;
                        }
                        ErrorClass::Permanent => return Err(CommitError::Permanent(e.to_string())),
                        ErrorClass::Fatal => return Err(CommitError::Fatal(e.to_string())),
                    },
                };
            let mut back_off = false;
            for (&m, answer) in sent.iter().zip(answers) {
                let i = members[m];
                let Some(e) = answer else {
                    results.set(i, Ok(units[i].outcome));
                    continue;
                };
                let g = guarded(i);
                let exists = e.code == "DuplicateItem";
                let absent = e.code == "ConditionalCheckFailed" && e.item.is_none();
                if exists && insert[m] && g.is_some_and(|g| g.update.is_some()) {
                    insert[m] = false; // Sent again at once, as its update.
                } else if absent && !insert[m] && g.is_some_and(|g| g.insert.is_some()) {
                    insert[m] = true; // Sent again at once, as its insert.
                } else if exists || e.code == "ConditionalCheckFailed" {
                    match (units[i].writes[0].on_condition_failed)(e.item.as_ref()) {
                        Verdict::Duplicate => results.set(i, Ok(Outcome::Duplicate)),
                        Verdict::Stale => results.set(i, Ok(Outcome::Stale)),
                        Verdict::Reject(reason) => results.set(i, Err(CommitError::Permanent(reason))),
                        Verdict::Retry => back_off = true,
                    }
                } else {
                    let message = format!("DynamoDB BatchExecuteStatement: {}: {}", e.code, e.message);
                    match classify_code(Some(&e.code), None) {
                        ErrorClass::Transient => back_off = true,
                        ErrorClass::Permanent => results.set(i, Err(CommitError::Permanent(message))),
                        ErrorClass::Fatal => return Err(CommitError::Fatal(message)),
                    }
                }
            }
            if back_off {
                backoff(attempt, deadline)
                    .await
                    .map_err(|e| CommitError::Transient(format!("guarded writes kept being refused: {e}")))?;
            }
        }
        Err(CommitError::Transient(format!("gave up after {MAX_ATTEMPTS} attempts: guarded writes kept being refused")))
    }

    /// Commits `plan`'s transactions up to [`concurrency`](Self::concurrency)
    /// at once, each after the earlier ones that share an item with it.
    /// Returns the first error, if any transaction failed.
    async fn commit_concurrently(
        &self,
        units: &[UnitOfWork],
        plan: Vec<Vec<usize>>,
        kinds: &[bool],
        shapes: &HashMap<usize, UnitShape>,
        results: &mut [Decided],
        deadline: Option<SystemTime>,
    ) -> Option<CommitError> {
        use futures::StreamExt;
        // Each transaction's earlier transactions on the same items.
        let mut last_on: HashMap<&str, usize> = HashMap::new();
        let mut after: Vec<Vec<usize>> = Vec::with_capacity(plan.len());
        for (t, members) in plan.iter().enumerate() {
            let mut deps: Vec<usize> = Vec::new();
            for item in members.iter().flat_map(|i| shapes[i].items.iter()) {
                if let Some(&d) = last_on.get(item.as_str())
                    && !deps.contains(&d)
                {
                    deps.push(d);
                }
                last_on.insert(item, t);
            }
            after.push(deps);
        }
        // None: not finished; Some(ok).
        let mut done: Vec<Option<bool>> = vec![None; plan.len()];
        let mut started = vec![false; plan.len()];
        let mut first_error: Option<CommitError> = None;
        let mut fatal = false;
        let mut running = futures::stream::FuturesUnordered::new();
        loop {
            for t in 0..plan.len() {
                if started[t] || running.len() >= self.concurrency {
                    continue;
                }
                if fatal || after[t].iter().any(|d| done[*d] == Some(false)) {
                    started[t] = true;
                    done[t] = Some(false);
                    let e = match &first_error {
                        Some(CommitError::Fatal(m)) if fatal => CommitError::Fatal(m.clone()),
                        _ => CommitError::Transient("an earlier transaction on one of its items failed".into()),
                    };
                    for &i in &plan[t] {
                        if results[i].is_none() {
                            results[i] = Some(Err(e.clone()));
                        }
                    }
                    continue;
                }
                if after[t].iter().all(|d| done[*d] == Some(true)) {
                    started[t] = true;
                    let members = &plan[t];
                    running.push(async move {
                        let mut own = Own { members, slots: vec![None; members.len()] };
                        let result = self.commit_group(units, members, kinds[t], &mut own, None, deadline).await;
                        (t, result, own.slots)
                    });
                }
            }
            let Some((t, result, slots)) = running.next().await else { break };
            for (&i, slot) in plan[t].iter().zip(slots) {
                if slot.is_some() {
                    results[i] = slot;
                }
            }
            match result {
                Ok(()) => done[t] = Some(true),
                Err(e) => {
                    done[t] = Some(false);
                    let e = match e {
                        FinalWriteError::Commit(e) => e,
                        FinalWriteError::Conflict => unreachable!("no final write"),
                    };
                    for &i in &plan[t] {
                        if results[i].is_none() {
                            results[i] = Some(Err(e.clone()));
                        }
                    }
                    fatal |= matches!(e, CommitError::Fatal(_));
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error
    }

    fn has_marker(&self, unit: &UnitOfWork) -> bool {
        self.markers && unit.key.is_some()
    }

    /// Commits one transaction's units, deciding each; `Err` when it cannot
    /// be committed (the undecided units get that error). With `last`, the
    /// final write rides along, built from every unit's tentative outcome.
    async fn commit_one(
        &self,
        units: &[UnitOfWork],
        members: &[usize],
        results: &mut (impl Results + ?Sized),
        last: Option<&FinalWrite<'_>>,
        deadline: Option<SystemTime>,
    ) -> Result<(), FinalWriteError> {
        // Per member (in `members` order): what it still sends, and how it
        // counts if that commits.
        let mut pending: Vec<Pending> = members
            .iter()
            .map(|&i| {
                let mut p = Pending::new(self.has_marker(&units[i]), units[i].outcome);
                p.remember_rejection = units[i].remember_rejection;
                if results.get(i).is_some() {
                    (p.marker, p.writes) = (false, false);
                }
                p
            })
            .collect();
        let now = chrono::Utc::now().timestamp();
        for attempt in 1..=MAX_ATTEMPTS {
            let mut actions = Vec::new();
            // Each action's member position, or `usize::MAX` for the final write.
            let mut slots: Vec<(usize, Option<usize>)> = Vec::new();
            for (m, &i) in members.iter().enumerate() {
                if pending[m].marker {
                    actions.push(self.marker_put(&units[i], pending[m].rejection.as_deref(), now)?);
                    slots.push((m, None));
                }
                if pending[m].writes {
                    for (w, write) in units[i].writes.iter().enumerate() {
                        actions.push(write.action.get().map_err(CommitError::Permanent)?);
                        slots.push((m, Some(w)));
                    }
                }
            }
            if let Some(build) = last {
                // The outcomes if this transaction commits: its members as
                // counted, every other unit as already decided (or applied,
                // in an earlier transaction of the batch).
                let tentative: Vec<Outcome> = (0..units.len())
                    .map(|i| match (results.get(i), members.iter().position(|&m| m == i)) {
                        (Some(Ok(o)), _) => *o,
                        (_, Some(m)) => pending[m].counted,
                        _ => units[i].outcome,
                    })
                    .collect();
                actions.push(build(&tentative).action.get().map_err(CommitError::Permanent)?);
                slots.push((usize::MAX, None));
            }
            if actions.is_empty() {
                return Ok(());
            }
            match transact(&self.client, &self.idempotency_table, actions, &self.capacity).await {
                Ok(Transacted::Committed) => {
                    for (m, &i) in members.iter().enumerate() {
                        if results.get(i).is_none() {
                            results.set(
                                i,
                                match pending[m].rejection.clone() {
                                    Some(reason) => Err(CommitError::Permanent(reason)),
                                    None => Ok(pending[m].counted),
                                },
                            );
                        }
                    }
                    return Ok(());
                }
                Ok(Transacted::Cancelled(reasons)) => {
                    let readings = slots.iter().zip(&reasons).filter(|(_, r)| r.condition_failed()).map(
                        |(&(m, write), reason)| {
                            let reading = match (m, write) {
                                (usize::MAX, _) => Reading::Final,
                                (m, None) => {
                                    let attribute = |name| {
                                        reason.item.as_ref().and_then(|it| it.get(name)).and_then(|v| v.as_s().ok())
                                    };
                                    let own = units[members[m]].fingerprint.as_deref();
                                    Reading::Marker {
                                        reused: matches!((attribute("validation"), own), (Some(a), Some(b)) if a != b),
                                        rejected: attribute("data").and_then(|d| rejection_of(d)),
                                    }
                                }
                                (m, Some(w)) => Reading::Write((units[members[m]].writes[w].on_condition_failed)(
                                    reason.item.as_ref(),
                                )),
                            };
                            (m, reading)
                        },
                    );
                    let next = read_cancellation(&mut pending, readings);
                    for (m, &i) in members.iter().enumerate() {
                        if results.get(i).is_none()
                            && let Some(decided) = pending[m].decided.clone()
                        {
                            results.set(i, decided.map_err(CommitError::Permanent));
                        }
                    }
                    match next {
                        Next::FinalConflict => return Err(FinalWriteError::Conflict),
                        Next::Resend => {}
                        Next::BackOff => backoff(attempt, deadline)
                            .await
                            .map_err(|e| CommitError::Transient(format!("transactions kept being cancelled: {e}")))?,
                    }
                }
                Err(e) => match e.class() {
                    ErrorClass::Transient => {
                        backoff(attempt, deadline).await.map_err(|_| CommitError::Transient(e.to_string()))?
                    }
                    ErrorClass::Permanent => return Err(CommitError::Permanent(e.to_string()).into()),
                    ErrorClass::Fatal => return Err(CommitError::Fatal(e.to_string()).into()),
                },
            }
        }
        Err(CommitError::Transient(format!("gave up after {MAX_ATTEMPTS} attempts: transactions kept being cancelled"))
            .into())
    }

    fn marker_put(
        &self,
        unit: &UnitOfWork,
        rejection: Option<&str>,
        now: i64,
    ) -> Result<TransactWriteItem, CommitError> {
        let key = unit.key.as_deref().unwrap_or_default();
        let put = marker_put(&self.idempotency_table, key, unit.fingerprint.as_deref(), self.marker_ttl, now)
            .map_err(|e| CommitError::Permanent(e.to_string()))?;
        Ok(match (rejection, put.put) {
            // The rejection's reason in `data`, as the result Powertools
            // keeps there: `{"rejected": "<reason>"}`.
            (Some(reason), Some(mut put)) => {
                let data = serde_json::json!({ "rejected": reason }).to_string();
                put.item.insert("data".into(), AttributeValue::S(data));
                TransactWriteItem::builder().put(put).build()
            }
            (_, put) => TransactWriteItem::builder().set_put(put).build(),
        })
    }
}

/// The reason a marker's `data` remembers a rejection with, if it does.
fn rejection_of(data: &str) -> Option<String> {
    let data: serde_json::Value = serde_json::from_str(data).ok()?;
    data.get("rejected")?.as_str().map(str::to_owned)
}

/// One unit's result, once decided.
type Decided = Option<Result<Outcome, CommitError>>;

/// Every unit's result: undecided ones are reported for retry.
fn finish(results: Vec<Decided>) -> Vec<Result<Outcome, CommitError>> {
    results.into_iter().map(|r| r.unwrap_or(Err(CommitError::Transient("not committed".into())))).collect()
}

/// Where a transaction records its units' results: the batch's own
/// (indexed by unit), or, for a transaction committed beside others, its
/// members' alone ([`Own`]).
trait Results {
    fn get(&self, unit: usize) -> &Decided;
    fn set(&mut self, unit: usize, result: Result<Outcome, CommitError>);
}

impl Results for [Decided] {
    fn get(&self, unit: usize) -> &Decided {
        &self[unit]
    }

    fn set(&mut self, unit: usize, result: Result<Outcome, CommitError>) {
        self[unit] = Some(result);
    }
}

/// The results of one transaction's members (in ascending unit order).
struct Own<'m> {
    members: &'m [usize],
    slots: Vec<Decided>,
}

static UNDECIDED: Decided = None;

impl Results for Own<'_> {
    fn get(&self, unit: usize) -> &Decided {
        self.members.binary_search(&unit).map_or(&UNDECIDED, |k| &self.slots[k])
    }

    fn set(&mut self, unit: usize, result: Result<Outcome, CommitError>) {
        if let Ok(k) = self.members.binary_search(&unit) {
            self.slots[k] = Some(result);
        }
    }
}

fn reused_or(result: Result<Outcome, CommitError>, key: Option<&str>) -> Result<Outcome, CommitError> {
    match result {
        Ok(Outcome::KeyReused) => Err(CommitError::Permanent(format!(
            "idempotency key {} was already used with a different payload",
            key.unwrap_or_default()
        ))),
        other => other,
    }
}

/// The marker write of a unit (an item of the idempotency table in the
/// Powertools schema, `status` = `COMPLETED`): succeeds only if the key is
/// new (or its marker expired). For stores that build their own
/// transactions around markers.
pub fn marker_put(
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
