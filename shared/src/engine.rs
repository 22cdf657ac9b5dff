//! The batch engine: one implementation of partial batch processing for every
//! function and every user of the toolkit.
//!
//! A handler says three things about its records: how to plan one (parse,
//! validate, key: an effect, nothing to do, or a permanent error with its
//! reason), and how to commit the planned effects (for DynamoDB,
//! [`crate::exactly_once::ExactlyOnce`] commits each with its idempotency
//! marker in one transaction). The engine does the rest, in this order:
//!
//! 1. splits the event into records and parses each on its own (an
//!    unparseable record is quarantined, never the batch);
//! 2. plans each record, isolating a panicking planner to its record;
//! 3. writes every permanently bad record to quarantine with its reason;
//! 4. holds back what the delivery forbids: after a failure, the later
//!    messages of its FIFO group, or the rest of a stream shard's batch;
//!    and everything, when the invocation's deadline is too near to start;
//! 5. commits the effects and maps the results back to the records. A
//!    quarantine write or a commit still running at the answer time (half
//!    the margin before the deadline) is cut short and its records are
//!    reported for retry, so the function answers before Lambda's timeout
//!    even when DynamoDB stalls; what it committed before the cut reads as
//!    duplicates when the records come back;
//! 6. settles the batch by the delivery's rules ([`shared_core::batch::settle`]):
//!    the partial batch response, and the summary that puts every record in
//!    exactly one counter. With `FAIL_ON_ALL_FAILED`, a batch in which
//!    nothing succeeded fails the invocation instead.
//!
//! ```no_run
//! use shared::engine::{CommitError, Engine, Plan};
//! use shared::event::{RawBatch, sqs};
//! use shared::batch::{Outcome, RecordError};
//! use shared::quarantine::MemoryQuarantine;
//!
//! # async fn example(batch: RawBatch) -> Result<(), shared::batch::InvocationError> {
//! let quarantine = MemoryQuarantine::new();
//! let engine = Engine::new(&quarantine);
//! let (response, summary) = engine
//!     .process(
//!         &batch,
//!         None,
//!         |message: &sqs::Message| -> Result<Plan<String>, RecordError> {
//!             if message.body.is_empty() {
//!                 return Err(RecordError::Permanent("empty body".into()));
//!             }
//!             Ok(Plan::Effect(message.body.clone()))
//!         },
//!         |bodies: Vec<String>| async move {
//!             bodies.iter().map(|_| Ok::<_, CommitError>(Outcome::Applied)).collect()
//!         },
//!     )
//!     .await?;
//! # let _ = (response, summary);
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, SystemTime};

use futures::FutureExt;
#[cfg(any(feature = "sqs", feature = "dynamodb-stream", feature = "kinesis", feature = "kafka"))]
use serde_json::Value;
use serde_json::value::RawValue;
use shared_core::batch::{
    BatchResponse, Delivery, Disposition, InvocationError, Outcome, RecordError, RecordRef, Summary,
    blocked_by_earlier_failures, settle,
};

use crate::error::{Classify, ErrorClass};
#[cfg(feature = "kafka")]
use crate::event::kafka;
#[cfg(feature = "kinesis")]
use crate::event::kinesis;
#[cfg(feature = "sqs")]
use crate::event::sqs;
#[cfg(feature = "dynamodb-stream")]
use crate::event::stream;
use crate::event::{EventError, RawBatch};
use crate::quarantine::{QuarantineStore, Quarantined};

/// What the planner decided for one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan<E> {
    /// An effect to commit.
    Effect(E),
    /// Nothing for this function to do (another entity, a test event):
    /// acknowledged and counted as ignored.
    Ignore,
}

/// Why committing one record's effect failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// Retry later: the record is reported as a batch item failure.
    #[error("{0}")]
    Transient(String),
    /// The record can never be committed (for example, its idempotency key
    /// was used before with a different payload): quarantined with this reason.
    #[error("{0}")]
    Permanent(String),
    /// Nothing can be committed (a missing table, no permission): the
    /// invocation fails and the whole batch is retried.
    #[error("{0}")]
    Fatal(String),
}

impl CommitError {
    /// The commit error of a failure of class `class`.
    pub fn classified(class: ErrorClass, message: impl Into<String>) -> Self {
        match class {
            ErrorClass::Transient => Self::Transient(message.into()),
            ErrorClass::Permanent => Self::Permanent(message.into()),
            ErrorClass::Fatal => Self::Fatal(message.into()),
        }
    }
}

impl Classify for CommitError {
    fn class(&self) -> ErrorClass {
        match self {
            Self::Transient(_) => ErrorClass::Transient,
            Self::Permanent(_) => ErrorClass::Permanent,
            Self::Fatal(_) => ErrorClass::Fatal,
        }
    }
}

/// Any classified failure (a store's, the lock's, an object read's) as the
/// commit error of its class, with its message.
impl<E: Classify + std::fmt::Display> From<&E> for CommitError {
    fn from(e: &E) -> Self {
        Self::classified(e.class(), e.to_string())
    }
}

/// The results of a commit, one per effect, in the order given. A shorter
/// list means the effects past its end were not attempted (a stream stops
/// at its first failure); they are reported for retry.
pub type Committed = Vec<Result<Outcome, CommitError>>;

/// How the effects handed to a commit relate, by the delivery's rules: what
/// a commit must keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ordering {
    /// The batch's delivery.
    pub delivery: Delivery,
    /// Each effect's FIFO message group or Kafka partition (`None`
    /// elsewhere), in the order given.
    pub groups: Vec<Option<String>>,
}

impl Ordering {
    /// Whether the effects may commit concurrently, in any order: the
    /// messages of a standard queue are independent; a FIFO group's and a
    /// shard's are not.
    pub fn independent(&self) -> bool {
        self.delivery == Delivery::Standard
    }
}

/// Commits `effects` one by one with `commit`, keeping the delivery's order:
/// a standard queue's up to `concurrency` at once; a FIFO queue's (and a
/// Kafka batch's) in order, an effect whose group (partition) already failed
/// (transiently) not attempted but reported for retry; a stream's in order,
/// stopping at the first transient failure (the shard is retried from it). A permanent failure (quarantined)
/// does not stop a group or a shard; a fatal one stops everything.
///
/// The order-keeping commit for effects that are not DynamoDB writes (the
/// lock path's calls); [`ExactlyOnce`](crate::exactly_once::ExactlyOnce)
/// keeps the order of its transactions itself.
pub async fn commit_in_order<E, F, Fut>(
    effects: Vec<E>,
    ordering: &Ordering,
    concurrency: usize,
    commit: F,
) -> Committed
where
    F: Fn(E) -> Fut,
    Fut: Future<Output = Result<Outcome, CommitError>>,
{
    use futures::StreamExt;
    if ordering.independent() {
        let mut results: Vec<Option<Result<Outcome, CommitError>>> = vec![None; effects.len()];
        let commit = &commit;
        let mut done = futures::stream::iter(effects.into_iter().enumerate())
            .map(|(i, effect)| async move { (i, commit(effect).await) })
            .buffer_unordered(concurrency.max(1));
        while let Some((i, result)) = done.next().await {
            results[i] = Some(result);
        }
        return results.into_iter().map(|r| r.unwrap_or(Err(CommitError::Transient("not committed".into())))).collect();
    }
    let mut results = Vec::with_capacity(effects.len());
    let mut failed_groups: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for (i, effect) in effects.into_iter().enumerate() {
        let group = ordering.groups.get(i).and_then(Option::as_deref);
        if group.is_some_and(|g| failed_groups.contains(g)) {
            results.push(Err(CommitError::Transient("an earlier message of its group failed".into())));
            continue;
        }
        let result = commit(effect).await;
        let stop = matches!(result, Err(CommitError::Transient(_) | CommitError::Fatal(_)));
        let fatal = matches!(result, Err(CommitError::Fatal(_)));
        results.push(result);
        if stop {
            match (ordering.delivery, group) {
                (Delivery::Fifo | Delivery::Partitioned, Some(g)) if !fatal => {
                    failed_groups.insert(g);
                }
                _ => break,
            }
        }
    }
    results
}

/// A record type the engine reads from a batch: SQS messages, DynamoDB
/// stream records, Kinesis records and Kafka records.
pub trait BatchRecord: Sized {
    /// Parses one raw record.
    fn parse(raw: &RawValue) -> Result<Self, EventError>;
    /// Parses one raw record into the records it holds, appended to `out`:
    /// one ([`parse`](Self::parse)), except for a Kinesis record that
    /// aggregates user records (KPL), which holds each of them.
    fn parse_into(raw: &RawValue, out: &mut Vec<Self>) -> Result<(), EventError> {
        out.push(Self::parse(raw)?);
        Ok(())
    }
    /// The record's id in quarantine and logs: by default the id reported
    /// on failure; a user record of a Kinesis aggregate adds its
    /// sub-sequence number.
    fn record_id(&self) -> String {
        self.reference().id
    }
    /// The id reported on failure and the FIFO group.
    fn reference(&self) -> RecordRef;
    /// [`reference`](Self::reference), taking the record's own strings (the
    /// engine's path for every record once it is planned).
    fn into_reference(self) -> RecordRef {
        self.reference()
    }
    /// The quarantine source: `sqs/<queue>`, `ddb-stream/<table>`,
    /// `kinesis/<stream>`, `kafka/<topic>`.
    fn source(&self) -> String;
    /// What a quarantine item keeps of the record: the message body, or the
    /// whole stream record.
    fn kept<'a>(&'a self, raw: &'a str) -> &'a str;
    /// The delivery semantics of a batch of these records.
    fn delivery(records: &[RecordRef]) -> Delivery;
    /// Id and source of a record that could not be parsed, read from what
    /// can be read of it (`index` names it when it has no id).
    fn unparsed(raw: &RawValue, index: usize) -> (RecordRef, String);
    /// The quarantine id of a record that could not be parsed: by default
    /// the id [`unparsed`](Self::unparsed) reports (a Kinesis record's adds
    /// its shard, as [`record_id`](Self::record_id) does).
    fn unparsed_record_id(raw: &RawValue, index: usize) -> String {
        Self::unparsed(raw, index).0.id
    }
}

#[cfg(feature = "sqs")]
impl BatchRecord for sqs::Message {
    fn parse(raw: &RawValue) -> Result<Self, EventError> {
        sqs::Message::parse_raw(raw)
    }

    fn reference(&self) -> RecordRef {
        RecordRef { id: self.message_id.clone(), group: self.group_id.clone() }
    }

    fn into_reference(self) -> RecordRef {
        RecordRef { id: self.message_id, group: self.group_id }
    }

    fn source(&self) -> String {
        sqs_source(self.event_source_arn.as_deref())
    }

    fn kept<'a>(&'a self, _raw: &'a str) -> &'a str {
        &self.body
    }

    fn delivery(records: &[RecordRef]) -> Delivery {
        if records.iter().any(|r| r.group.is_some()) { Delivery::Fifo } else { Delivery::Standard }
    }

    fn unparsed(raw: &RawValue, index: usize) -> (RecordRef, String) {
        // The rare path: read what can be read for the report.
        let value: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
        let group = value.pointer("/attributes/MessageGroupId").and_then(Value::as_str).map(str::to_owned);
        let id = sqs::message_id_of(&value).map_or_else(|| format!("record-{index}"), str::to_owned);
        (RecordRef { id, group }, sqs_source(value.get("eventSourceARN").and_then(Value::as_str)))
    }
}

#[cfg(feature = "dynamodb-stream")]
impl BatchRecord for stream::Record {
    fn parse(raw: &RawValue) -> Result<Self, EventError> {
        stream::Record::parse_raw(raw)
    }

    fn reference(&self) -> RecordRef {
        // Records without a sequence number (DynamoDB via Kinesis) are
        // reported by their eventID.
        RecordRef { id: self.sequence_number.clone().unwrap_or_else(|| self.event_id.clone()), group: None }
    }

    fn into_reference(self) -> RecordRef {
        RecordRef { id: self.sequence_number.unwrap_or(self.event_id), group: None }
    }

    fn source(&self) -> String {
        stream_source(self.raw.event_source_arn.as_deref())
    }

    fn kept<'a>(&'a self, raw: &'a str) -> &'a str {
        raw
    }

    fn delivery(_: &[RecordRef]) -> Delivery {
        Delivery::Stream
    }

    fn unparsed(raw: &RawValue, index: usize) -> (RecordRef, String) {
        let value: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
        let id = stream::sequence_number_of(&value).map_or_else(|| format!("record-{index}"), str::to_owned);
        (RecordRef { id, group: None }, stream_source(value.get("eventSourceARN").and_then(Value::as_str)))
    }
}

#[cfg(feature = "kinesis")]
impl BatchRecord for kinesis::Record {
    /// The first record a raw record holds (for a KPL aggregate, the engine
    /// reads every one through [`parse_into`](BatchRecord::parse_into)).
    fn parse(raw: &RawValue) -> Result<Self, EventError> {
        let mut out = Vec::with_capacity(1);
        kinesis::Record::parse_into(raw, &mut out)?;
        out.into_iter()
            .next()
            .ok_or(EventError::Shape { what: "Kinesis record", message: "a KPL aggregate without user records".into() })
    }

    fn parse_into(raw: &RawValue, out: &mut Vec<Self>) -> Result<(), EventError> {
        kinesis::Record::parse_into(raw, out)
    }

    fn record_id(&self) -> String {
        kinesis::Record::record_id(self)
    }

    /// The sequence number: Lambda resumes the shard from it (every user
    /// record of an aggregate reports its Kinesis record's).
    fn reference(&self) -> RecordRef {
        RecordRef { id: self.sequence_number.clone(), group: None }
    }

    fn into_reference(self) -> RecordRef {
        RecordRef { id: self.sequence_number, group: None }
    }

    fn source(&self) -> String {
        kinesis::source(&self.stream)
    }

    /// The record's data when it is text (a user record's own), else the
    /// whole raw record.
    fn kept<'a>(&'a self, raw: &'a str) -> &'a str {
        std::str::from_utf8(&self.data).unwrap_or(raw)
    }

    fn delivery(_: &[RecordRef]) -> Delivery {
        Delivery::Stream
    }

    fn unparsed(raw: &RawValue, index: usize) -> (RecordRef, String) {
        let value: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
        let id = kinesis::sequence_number_of(&value).map_or_else(|| format!("record-{index}"), str::to_owned);
        let stream = kinesis::stream_name(value.get("eventSourceARN").and_then(Value::as_str));
        (RecordRef { id, group: None }, kinesis::source(stream))
    }

    /// The record's `eventID` (shard and sequence number), as
    /// [`kinesis::Record::record_id`] names a record that parsed.
    fn unparsed_record_id(raw: &RawValue, index: usize) -> String {
        let value: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
        match value.get("eventID").and_then(Value::as_str).filter(|id| id.starts_with("shardId-")) {
            Some(id) => id.to_owned(),
            None => Self::unparsed(raw, index).0.id,
        }
    }
}

/// Kafka records by partition: each record's group is its `<topic>-<partition>`,
/// its id `<topic>-<partition>@<offset>` (the Kafka entry point writes the
/// response's items from it).
#[cfg(feature = "kafka")]
impl BatchRecord for kafka::Record {
    fn parse(raw: &RawValue) -> Result<Self, EventError> {
        kafka::Record::parse_raw(raw)
    }

    fn reference(&self) -> RecordRef {
        RecordRef { id: self.record_id(), group: Some(self.topic_partition()) }
    }

    fn source(&self) -> String {
        kafka::source(&self.topic)
    }

    /// The value when it is text, else the whole raw record.
    fn kept<'a>(&'a self, raw: &'a str) -> &'a str {
        self.value.as_deref().and_then(|v| std::str::from_utf8(v).ok()).unwrap_or(raw)
    }

    fn delivery(_: &[RecordRef]) -> Delivery {
        Delivery::Partitioned
    }

    fn unparsed(raw: &RawValue, index: usize) -> (RecordRef, String) {
        let value: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
        let id = kafka::record_id_of(&value).unwrap_or_else(|| format!("record-{index}"));
        let group = id.rsplit_once('@').map(|(partition, _)| partition.to_owned());
        let topic = value.get("topic").and_then(Value::as_str).unwrap_or("unknown");
        (RecordRef { id, group }, kafka::source(topic))
    }
}

/// The quarantine source of messages of a queue: `sqs/<queue name>`, from
/// the queue's ARN.
#[cfg(feature = "sqs")]
pub fn sqs_source(arn: Option<&str>) -> String {
    let queue = arn.and_then(|a| a.rsplit(':').next()).filter(|q| !q.is_empty()).unwrap_or("unknown");
    format!("sqs/{queue}")
}

/// The quarantine source of a table's stream records: `ddb-stream/<table>`,
/// from the stream's ARN (`arn:aws:dynamodb:region:account:table/NAME/stream/LABEL`).
#[cfg(feature = "dynamodb-stream")]
pub fn stream_source(arn: Option<&str>) -> String {
    let table = arn.and_then(|arn| arn.split('/').nth(1)).unwrap_or("unknown");
    format!("ddb-stream/{table}")
}

/// The batch engine over a quarantine store.
#[derive(Debug)]
pub struct Engine<'q, Q> {
    quarantine: &'q Q,
    fail_on_all_failed: bool,
    margin: Duration,
}

impl<'q, Q: QuarantineStore> Engine<'q, Q> {
    /// An engine writing permanently bad records to `quarantine`, with the
    /// deadline guard on at the default margin
    /// ([`DEFAULT_DEADLINE_MARGIN`](crate::config::DEFAULT_DEADLINE_MARGIN)).
    pub fn new(quarantine: &'q Q) -> Self {
        Self { quarantine, fail_on_all_failed: false, margin: crate::config::DEFAULT_DEADLINE_MARGIN }
    }

    /// Fails the invocation when nothing in a batch succeeded
    /// (`FAIL_ON_ALL_FAILED`), instead of reporting every record.
    pub fn fail_on_all_failed(mut self, yes: bool) -> Self {
        self.fail_on_all_failed = yes;
        self
    }

    /// Starts no commit this long before the invocation's deadline
    /// (`DEADLINE_MARGIN_MS`): what is not started is reported for retry
    /// instead of being lost with a timeout. Work still running at half the
    /// margin before the deadline is cut short (see [`answer_by`]).
    pub fn deadline_margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// Processes one batch: see the [module docs](self). `deadline` is the
    /// invocation's ([`crate::runtime::deadline`]); `plan` decides each
    /// parsed record; `commit` commits the planned effects, given in batch
    /// order, and returns one result per effect.
    ///
    /// The commit's one duty towards ordering: never apply an effect after
    /// an earlier effect of the same FIFO group (or of the same shard) failed
    /// transiently; report it failed too, or stop and return the results so
    /// far. [`ExactlyOnce::commit`](crate::exactly_once::ExactlyOnce::commit)
    /// does so (a transaction fails whole, and commits stop at the first one
    /// that fails), as do the orders and totals stores.
    pub async fn process<R, E, P, C, Fut>(
        &self,
        batch: &RawBatch,
        deadline: Option<SystemTime>,
        plan: P,
        commit: C,
    ) -> Result<(BatchResponse, Summary), InvocationError>
    where
        R: BatchRecord,
        P: FnMut(&R) -> Result<Plan<E>, RecordError>,
        C: FnOnce(Vec<E>) -> Fut,
        Fut: Future<Output = Committed>,
    {
        self.process_ordered(batch, deadline, plan, |effects, _| commit(effects)).await
    }

    /// [`process`](Self::process) with the commit told how its effects
    /// relate ([`Ordering`]), so that it can keep the delivery's order
    /// itself: [`commit_in_order`], or
    /// [`ExactlyOnce`](crate::exactly_once::ExactlyOnce) with
    /// concurrency only where [`Ordering::independent`] says so.
    pub async fn process_ordered<R, E, P, C, Fut>(
        &self,
        batch: &RawBatch,
        deadline: Option<SystemTime>,
        plan: P,
        commit: C,
    ) -> Result<(BatchResponse, Summary), InvocationError>
    where
        R: BatchRecord,
        P: FnMut(&R) -> Result<Plan<E>, RecordError>,
        C: FnOnce(Vec<E>, Ordering) -> Fut,
        Fut: Future<Output = Committed>,
    {
        // Boxed: the engine's future is deep, and a caller's handler future
        // (inside lambda_runtime's) would otherwise exceed the compiler's
        // layout depth limit, asking every user for `#![recursion_limit]`.
        Box::pin(self.process_batch(batch, deadline, plan, commit)).await
    }

    async fn process_batch<R, E, P, C, Fut>(
        &self,
        batch: &RawBatch,
        deadline: Option<SystemTime>,
        mut plan: P,
        commit: C,
    ) -> Result<(BatchResponse, Summary), InvocationError>
    where
        R: BatchRecord,
        P: FnMut(&R) -> Result<Plan<E>, RecordError>,
        C: FnOnce(Vec<E>, Ordering) -> Fut,
        Fut: Future<Output = Committed>,
    {
        let raws = batch.records().map_err(|e| InvocationError::new(e.to_string()))?;
        let mut refs: Vec<RecordRef> = Vec::with_capacity(raws.len());
        let mut ended: Vec<Option<Disposition>> = Vec::with_capacity(raws.len());
        let mut quarantine: Vec<(usize, Quarantined)> = Vec::new();
        // Each planned effect and its record's position.
        let mut effects: Vec<(usize, E)> = Vec::new();
        // Each record's raw record and its place among the records that raw
        // record holds (a KPL aggregate holds many).
        let mut origins: Vec<(usize, usize)> = Vec::with_capacity(raws.len());
        let mut parsed: Vec<R> = Vec::with_capacity(1);

        for (raw_index, raw) in raws.iter().enumerate() {
            parsed.clear();
            if let Err(e) = R::parse_into(raw, &mut parsed) {
                let index = refs.len();
                let (reference, source) = R::unparsed(raw, raw_index);
                let id = R::unparsed_record_id(raw, raw_index);
                tracing::warn!(record_id = %id, reason = %e, "unparseable record quarantined");
                quarantine.push((index, Quarantined::new(source, &id, e.to_string(), raw.get())));
                refs.push(reference);
                ended.push(None);
                origins.push((raw_index, 0));
                continue;
            }
            for (sub, record) in parsed.drain(..).enumerate() {
                let index = refs.len();
                origins.push((raw_index, sub));
                // No span per record: its fields would cost every record; the
                // lines about one record name it themselves.
                let planned = std::panic::catch_unwind(AssertUnwindSafe(|| plan(&record)));
                // The record's id and group move into its reference, except for
                // a quarantined record, whose item still reads the record.
                let reference = match planned {
                    Ok(Ok(Plan::Effect(effect))) => {
                        effects.push((index, effect));
                        ended.push(None);
                        record.into_reference()
                    }
                    Ok(Ok(Plan::Ignore)) => {
                        ended.push(Some(Disposition::Ignored));
                        record.into_reference()
                    }
                    Ok(Err(RecordError::Permanent(reason))) => {
                        let reference = record.reference();
                        let id = record.record_id();
                        tracing::warn!(record_id = %id, %reason, "record quarantined");
                        let item = Quarantined::new(record.source(), &id, reason, record.kept(raw.get()));
                        quarantine.push((index, item));
                        ended.push(None);
                        reference
                    }
                    Ok(Err(RecordError::Transient(reason))) => {
                        let reference = record.into_reference();
                        tracing::warn!(record_id = %reference.id, %reason, "record failed; reported for retry");
                        ended.push(Some(Disposition::Failed(reason)));
                        reference
                    }
                    Err(panic) => {
                        let reference = record.into_reference();
                        let message = panic_message(panic.as_ref());
                        tracing::error!(record_id = %reference.id, %message, "record planner panicked");
                        ended.push(Some(Disposition::Failed(format!("planner panicked: {message}"))));
                        reference
                    }
                };
                refs.push(reference);
            }
        }

        let answer_by = answer_by(deadline, self.margin);
        self.write_quarantine(quarantine, &mut ended, answer_by).await?;

        // Hold back what must wait for an earlier failure of its group or shard.
        let delivery = R::delivery(&refs);
        let failed: Vec<bool> = ended.iter().map(|d| d.as_ref().is_some_and(Disposition::is_failure)).collect();
        let blocked = blocked_by_earlier_failures(delivery, &refs, &failed);
        let why = match delivery {
            Delivery::Stream => "an earlier record of its shard failed",
            Delivery::Partitioned => "an earlier record of its partition failed",
            Delivery::Standard | Delivery::Fifo => "an earlier message of its group failed",
        };
        let out_of_time = deadline.is_some_and(|d| SystemTime::now() + self.margin >= d);
        let mut to_commit: Vec<E> = Vec::with_capacity(effects.len());
        let mut positions: Vec<usize> = Vec::with_capacity(effects.len());
        for (index, effect) in effects {
            if out_of_time {
                ended[index] = Some(Disposition::Unprocessed("the invocation was about to time out"));
            } else if blocked[index] {
                ended[index] = Some(Disposition::Unprocessed(why));
            } else {
                to_commit.push(effect);
                positions.push(index);
            }
        }
        if !positions.is_empty() {
            let ordering = Ordering { delivery, groups: positions.iter().map(|&i| refs[i].group.clone()).collect() };
            let committed = match before(answer_by, AssertUnwindSafe(commit(to_commit, ordering)).catch_unwind()).await
            {
                Some(Ok(committed)) => committed,
                None => {
                    tracing::error!(
                        "commit still running at the invocation's answer time; reporting its records for retry"
                    );
                    vec![Err(CommitError::Transient(CUT_SHORT.into())); positions.len()]
                }
                Some(Err(panic)) => {
                    let message = panic_message(panic.as_ref());
                    tracing::error!(%message, "commit panicked; reporting its records for retry");
                    vec![Err(CommitError::Transient(format!("commit panicked: {message}"))); positions.len()]
                }
            };
            let mut rejected: Vec<(usize, Quarantined)> = Vec::new();
            let mut results = committed.into_iter();
            for &index in &positions {
                ended[index] = Some(match results.next() {
                    Some(Ok(Outcome::KeyReused)) => {
                        rejected.push((index, self.rejected::<R>(&refs[index], raws, origins[index], None)));
                        continue;
                    }
                    Some(Ok(outcome)) => Disposition::Done(outcome),
                    Some(Err(CommitError::Permanent(reason))) => {
                        let item = self.rejected::<R>(&refs[index], raws, origins[index], Some(reason));
                        rejected.push((index, item));
                        continue;
                    }
                    Some(Err(CommitError::Transient(reason))) => {
                        tracing::error!(record_id = %refs[index].id, %reason, "commit failed; reported for retry");
                        Disposition::Failed(reason)
                    }
                    Some(Err(CommitError::Fatal(reason))) => return Err(InvocationError::new(reason)),
                    None => Disposition::Unprocessed(why),
                });
            }
            self.write_quarantine(rejected, &mut ended, answer_by).await?;
        }

        let ended: Vec<Disposition> =
            ended.into_iter().map(|d| d.unwrap_or(Disposition::Unprocessed("not reached"))).collect();
        settle(delivery, &refs, &ended, self.fail_on_all_failed)
    }

    /// The quarantine item of a record whose commit was refused. The rare
    /// path: the record parsed before, so it parses again (keeping every
    /// parsed record to the end would cost every record).
    fn rejected<R: BatchRecord>(
        &self,
        reference: &RecordRef,
        raws: &[Box<RawValue>],
        (raw_index, sub): (usize, usize),
        reason: Option<String>,
    ) -> Quarantined {
        let reason = reason.unwrap_or_else(|| "idempotency key was already used with a different payload".into());
        let raw = &raws[raw_index];
        let mut parsed = Vec::new();
        match R::parse_into(raw, &mut parsed).map(|()| parsed.into_iter().nth(sub)) {
            Ok(Some(r)) => {
                let id = r.record_id();
                tracing::warn!(record_id = %id, %reason, "record quarantined");
                Quarantined::new(r.source(), &id, reason, r.kept(raw.get()))
            }
            _ => {
                tracing::warn!(record_id = %reference.id, %reason, "record quarantined");
                Quarantined::new("unknown", &reference.id, reason, raw.get())
            }
        }
    }

    /// Writes quarantine items; their records end quarantined, or failed
    /// (to be retried) when the write fails transiently.
    async fn write_quarantine(
        &self,
        items: Vec<(usize, Quarantined)>,
        ended: &mut [Option<Disposition>],
        answer_by: Option<SystemTime>,
    ) -> Result<(), InvocationError> {
        if items.is_empty() {
            return Ok(());
        }
        let records: Vec<Quarantined> = items.iter().map(|(_, q)| q.clone()).collect();
        let written = before(answer_by, self.quarantine.write_quarantine(&records)).await;
        match written {
            None => {
                tracing::error!(
                    "quarantine write still running at the invocation's answer time; reporting the records for retry"
                );
                for (index, _) in &items {
                    ended[*index] = Some(Disposition::Failed(CUT_SHORT.into()));
                }
                Ok(())
            }
            Some(Ok(())) => {
                for (index, _) in &items {
                    ended[*index] = Some(Disposition::Quarantined);
                }
                Ok(())
            }
            Some(Err(e)) if e.class() == ErrorClass::Fatal => Err(InvocationError::new(e.to_string())),
            Some(Err(e)) => {
                tracing::error!(error = %e, "quarantine write failed; reporting the records for retry");
                for (index, _) in &items {
                    ended[*index] = Some(Disposition::Failed(format!("quarantine write failed: {e}")));
                }
                Ok(())
            }
        }
    }
}

/// Why a record whose work was cut short at the answer time is retried.
const CUT_SHORT: &str = "not finished before the invocation's deadline (DynamoDB did not answer in time)";

/// When a function must stop waiting and answer: half the deadline margin
/// before the deadline (`None`: no deadline). The other half is for the
/// records that were never started, which the engine holds back at the full
/// margin; what is left covers writing the response, so Lambda reads an
/// answer instead of `Task timed out`.
pub fn answer_by(deadline: Option<SystemTime>, margin: Duration) -> Option<SystemTime> {
    deadline.map(|d| d.checked_sub(margin / 2).unwrap_or(d))
}

/// Runs `work` until `answer_by` (see [`answer_by`]): `None` when it was cut
/// short, which drops it (an HTTP request in flight is abandoned; a
/// transaction it sent may have committed, which an exactly-once commit
/// reads as a duplicate when the record comes back).
pub async fn before<T>(answer_by: Option<SystemTime>, work: impl Future<Output = T>) -> Option<T> {
    let Some(at) = answer_by else {
        return Some(work.await);
    };
    let left = at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
    tokio::time::timeout(left, work).await.ok()
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}
