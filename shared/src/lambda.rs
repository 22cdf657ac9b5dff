//! The entry points: one per trigger kind, each a whole Lambda function
//! around what your records mean, in the spirit of Powertools'
//! `process_partial_response` with `@idempotent`.
//!
//! You give a typed body (your `serde` type) and what it means: the writes
//! that are its effect on DynamoDB ([`UnitOfWork`]), or a call outside
//! DynamoDB under the idempotency lock ([`Call`]). The entry point reads
//! the toolkit's settings from the environment once ([`Settings`]), builds
//! the clients once, and for every batch parses each record on its own,
//! quarantines what can never be processed with its reason, keeps the
//! deadline guard, commits each record's effect exactly once (its marker in
//! the same transaction), keeps FIFO groups' and shards' order, and answers
//! with the partial batch response:
//!
//! ```no_run
//! use serde::Deserialize;
//! use shared::dynamodb::types::{AttributeValue, Update};
//! use shared::{UnitOfWork, Write};
//!
//! #[derive(Deserialize)]
//! struct Reservation { sku: String, quantity: u32 }
//!
//! fn main() -> Result<(), shared::Error> {
//!     let table = shared::config::required("INVENTORY_TABLE")?;
//!     shared::sqs("inventory-reservations", move |r: Reservation| {
//!         UnitOfWork::for_record().write(Write::update(
//!             Update::builder()
//!                 .table_name(&table)
//!                 .key("sku", AttributeValue::S(r.sku))
//!                 .update_expression("SET reserved = reserved + :n")
//!                 .expression_attribute_values(":n", AttributeValue::N(r.quantity.to_string())),
//!         ))
//!     })
//! }
//! ```
//!
//! What the planner returns can be a [`UnitOfWork`] (or a [`Call`]), an
//! `Option` of one (`None`: nothing to do, the record is counted as
//! ignored), or a `Result` whose error is [`Invalid`] (the record is
//! quarantined with that reason) or [`RecordError`]. A body that does not
//! read as your type is quarantined as `invalid: {field}: ...` (or
//! `malformed JSON in SQS message body: ...`) without reaching your planner.
//!
//! The sources and what each entry point keeps of their delivery:
//! [`Function::sqs`] (a FIFO group's order), [`Function::dynamodb_stream`]
//! and [`Function::kinesis`] (a shard's order: after a failure the rest of
//! the shard's batch waits and the failed record's sequence number is
//! reported; a Kinesis record aggregated by the KPL is read as its user
//! records), [`Function::kafka`] (each partition's order, its first failed
//! offset reported), and the tumbling windows of Kinesis and DynamoDB
//! streams ([`Function::kinesis_window`], [`Function::dynamodb_stream_window`]):
//! records folded into a state of yours, handed back to Lambda between the
//! window's invocations, and the window's result committed exactly once.
//!
//! Functions whose commit is their own (the orders pipeline's stores) take
//! [`Function::run`]: the same settings, clients and telemetry, with a
//! handler of their own.

use std::time::SystemTime;

use serde::Serialize;
use shared_core::batch::{InvocationError, RecordError, Summary};

use crate::config::{ConfigError, Defaults, Settings};
#[cfg(all(
    feature = "lock",
    any(feature = "sqs", feature = "dynamodb-stream", feature = "kinesis", feature = "kafka")
))]
use crate::engine::CommitError;
use crate::engine::{Engine, Plan};
use crate::exactly_once::{Derive, ExactlyOnce, UnitOfWork};
use crate::idempotency::IdempotencyKey;
use crate::quarantine::{DynamoQuarantine, QuarantineStore};
use crate::runtime::{Payload, Telemetry};

/// Items of the record-based entry points: compiled with a record source.
macro_rules! with_records {
    ($($item:item)*) => { $( #[cfg(any(feature = "sqs", feature = "dynamodb-stream", feature = "kinesis", feature = "kafka"))] $item )* };
}

with_records! {
    #[cfg(not(feature = "lock"))]
    use crate::engine::CommitError;
    use shared_core::batch::Outcome;
    use serde::de::DeserializeOwned;
    use shared_core::key::{KeyError, fingerprint_json};
    use crate::engine::{BatchRecord, Ordering};
    use crate::event::RawBatch;
}

pub use shared_core::batch::Invalid;

/// Why a function could not start or run.
#[derive(thiserror::Error)]
pub enum Error {
    /// Its configuration is missing or invalid (the message names the
    /// variable).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The async runtime could not start.
    #[error("the async runtime could not start: {0}")]
    Runtime(#[from] std::io::Error),
    /// The Lambda runtime loop failed (the Runtime API went away).
    #[error("the Lambda runtime failed: {0}")]
    Lambda(lambda_runtime::Error),
}

/// Shown as its message: what `main` prints when it returns the error
/// (`Error: environment variable INVENTORY_TABLE is required but not set`).
impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// A Lambda function on the toolkit: its name (the `function` dimension of
/// its metrics, and the default key prefix) and its defaults.
#[derive(Debug, Clone, Copy)]
pub struct Function {
    name: &'static str,
    defaults: Defaults,
}

/// What a function's setup can use: the settings and the clients, built
/// once.
#[derive(Debug)]
pub struct Aws {
    settings: Settings,
    sdk: aws_config::SdkConfig,
    telemetry: Telemetry,
    dynamodb: aws_sdk_dynamodb::Client,
}

impl Aws {
    /// The toolkit's settings, read once.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The SDK configuration (region, credentials, endpoint overrides).
    pub fn sdk_config(&self) -> &aws_config::SdkConfig {
        &self.sdk
    }

    /// The DynamoDB client (its requests counted in the invocation's metrics).
    pub fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        self.dynamodb.clone()
    }

    /// The counters of the invocation's telemetry, for stores that meter
    /// their own requests.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// The S3 client.
    #[cfg(feature = "s3")]
    pub fn s3(&self) -> aws_sdk_s3::Client {
        crate::config::s3_client(&self.sdk)
    }

    /// The SQS client.
    #[cfg(feature = "s3")]
    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        crate::config::sqs_client(&self.sdk)
    }

    /// Idempotency keys under the function's prefix (`IDEMPOTENCY_KEY_PREFIX`).
    pub fn keys(&self) -> IdempotencyKey {
        IdempotencyKey::new(&self.settings.idempotency_key_prefix)
    }

    /// The exactly-once committer on `IDEMPOTENCY_TABLE` (required), with
    /// the settings' marker TTL and `POWERTOOLS_IDEMPOTENCY_DISABLED`.
    pub fn exactly_once(&self) -> Result<ExactlyOnce, ConfigError> {
        Ok(ExactlyOnce::new(self.dynamodb(), self.settings.require_idempotency_table()?)
            .with_marker_ttl(self.settings.idempotency_ttl)
            .with_idempotency_disabled(self.settings.idempotency_disabled)
            .with_capacity_meter(self.telemetry.capacity.clone()))
    }

    /// Quarantine items in `QUARANTINE_TABLE` (required; key `pk` + `sk`).
    pub fn quarantine(&self) -> Result<DynamoQuarantine, ConfigError> {
        Ok(DynamoQuarantine::new(self.dynamodb(), self.settings.require_quarantine_table()?))
    }

    /// The batch engine over `quarantine`, with the settings' deadline
    /// margin and `FAIL_ON_ALL_FAILED`.
    pub fn engine<'q, Q: QuarantineStore>(&self, quarantine: &'q Q) -> Engine<'q, Q> {
        Engine::new(quarantine)
            .deadline_margin(self.settings.deadline_margin)
            .fail_on_all_failed(self.settings.fail_on_all_failed)
    }
}

impl Function {
    /// A function named `name`, with the toolkit's defaults
    /// ([`Defaults::named`]).
    pub const fn new(name: &'static str) -> Self {
        Self { name, defaults: Defaults::named(name) }
    }

    /// Other defaults for what the environment leaves unset (a domain's key
    /// prefix shared by several functions, say).
    pub const fn defaults(mut self, defaults: Defaults) -> Self {
        self.defaults = defaults;
        self
    }

    /// Runs the function with a handler of your own: `setup` builds it once
    /// from the settings and clients; it is called with each invocation's
    /// payload and deadline and returns the response with the summary that
    /// the invocation's log line and metrics report.
    pub fn run<P, H, R>(self, setup: impl FnOnce(&Aws) -> Result<H, Error>) -> Result<(), Error>
    where
        P: Payload,
        H: AsyncFn(P, SystemTime) -> Result<(R, Summary), InvocationError>,
        R: Serialize,
    {
        crate::runtime::start(async move {
            crate::telemetry::init();
            let settings = Settings::from_env(&self.defaults)?;
            let telemetry = Telemetry::default();
            let sdk = crate::config::aws_sdk_config().await;
            let dynamodb = crate::config::dynamodb_client(&sdk, &telemetry.requests);
            let aws = Aws { settings, sdk, telemetry, dynamodb };
            let handler = setup(&aws)?;
            let handler = &handler;
            crate::runtime::serve(self.name, &aws.telemetry, move |payload: P, context| {
                handler(payload, crate::runtime::deadline(&context))
            })
            .await
            .map_err(Error::Lambda)
        })
    }

    /// Runs an SQS consumer (standard or FIFO queue): each message's body
    /// read as a `T`, planned into a [`UnitOfWork`] and committed exactly
    /// once with its idempotency marker.
    #[cfg(feature = "sqs")]
    pub fn sqs<T, F, O>(self, plan: F) -> Result<(), Error>
    where
        T: DeserializeOwned,
        F: Fn(T) -> O,
        O: IntoPlan<UnitOfWork>,
    {
        self.exactly_once::<crate::event::sqs::Message, T, F, O>(plan)
    }

    /// Runs an SQS consumer whose effect is a call outside DynamoDB: each
    /// message's body read as a `T`, planned into a [`Call`], and `effect`
    /// run with its input at most once per key under the idempotency lock.
    #[cfg(all(feature = "sqs", feature = "lock"))]
    pub fn sqs_with_lock<T, F, O, I, E, R>(self, plan: F, effect: E) -> Result<(), Error>
    where
        T: DeserializeOwned,
        F: Fn(T) -> O,
        O: IntoPlan<Call<I>>,
        I: Serialize,
        E: AsyncFn(I) -> Result<R, CommitError>,
        R: Serialize + DeserializeOwned,
    {
        self.with_lock::<crate::event::sqs::Message, T, F, O, I, E, R>(plan, effect)
    }

    /// Runs a DynamoDB stream consumer: each record's images read as a `T`
    /// ([`Change`](crate::event::stream::Change)), planned into a
    /// [`UnitOfWork`] and committed exactly once, in shard order.
    #[cfg(feature = "dynamodb-stream")]
    pub fn dynamodb_stream<T, F, O>(self, plan: F) -> Result<(), Error>
    where
        T: DeserializeOwned,
        F: Fn(crate::event::stream::Change<T>) -> O,
        O: IntoPlan<UnitOfWork>,
    {
        self.exactly_once::<crate::event::stream::Record, T, F, O>(plan)
    }

    /// Runs a DynamoDB stream consumer whose effect is a call outside
    /// DynamoDB, under the idempotency lock, in shard order: the first call
    /// that fails stops the shard there, and Lambda retries from it.
    #[cfg(all(feature = "dynamodb-stream", feature = "lock"))]
    pub fn dynamodb_stream_with_lock<T, F, O, I, E, R>(self, plan: F, effect: E) -> Result<(), Error>
    where
        T: DeserializeOwned,
        F: Fn(crate::event::stream::Change<T>) -> O,
        O: IntoPlan<Call<I>>,
        I: Serialize,
        E: AsyncFn(I) -> Result<R, CommitError>,
        R: Serialize + DeserializeOwned,
    {
        self.with_lock::<crate::event::stream::Record, T, F, O, I, E, R>(plan, effect)
    }

    /// Runs a Kinesis Data Streams consumer: each record's data read as a
    /// `T` (a KPL aggregate read as its user records, each on its own),
    /// planned into a [`UnitOfWork`] and committed exactly once, in shard
    /// order. [`UnitOfWork::for_record`] keys on the record's stream,
    /// shard, sequence and sub-sequence numbers (or on the data's field that
    /// `IDEMPOTENCY_KEY_SOURCE` points at, such as `/readingId`).
    #[cfg(feature = "kinesis")]
    pub fn kinesis<T, F, O>(self, plan: F) -> Result<(), Error>
    where
        T: DeserializeOwned,
        F: Fn(T) -> O,
        O: IntoPlan<UnitOfWork>,
    {
        self.exactly_once::<crate::event::kinesis::Record, T, F, O>(plan)
    }

    /// Runs a Kinesis consumer whose effect is a call outside DynamoDB,
    /// under the idempotency lock, in shard order: the first call that fails
    /// stops the shard there, and Lambda retries from it.
    #[cfg(all(feature = "kinesis", feature = "lock"))]
    pub fn kinesis_with_lock<T, F, O, I, E, R>(self, plan: F, effect: E) -> Result<(), Error>
    where
        T: DeserializeOwned,
        F: Fn(T) -> O,
        O: IntoPlan<Call<I>>,
        I: Serialize,
        E: AsyncFn(I) -> Result<R, CommitError>,
        R: Serialize + DeserializeOwned,
    {
        self.with_lock::<crate::event::kinesis::Record, T, F, O, I, E, R>(plan, effect)
    }

    /// Runs a Kafka consumer (Amazon MSK or a self-managed cluster): each
    /// record's value read as a `T` (a tombstone as JSON `null`), planned
    /// into a [`UnitOfWork`] and committed exactly once, in each
    /// partition's order; a failure holds back the rest of its partition
    /// and is reported by partition and offset, as Lambda's Kafka mapping
    /// reads a partial batch response. [`UnitOfWork::for_record`] keys on
    /// the topic, partition and offset.
    #[cfg(feature = "kafka")]
    pub fn kafka<T, F, O>(self, plan: F) -> Result<(), Error>
    where
        T: DeserializeOwned,
        F: Fn(T) -> O,
        O: IntoPlan<UnitOfWork>,
    {
        self.run(|aws| {
            let work = Work::new(aws)?;
            Ok(async move |batch: RawBatch, deadline: SystemTime| {
                let (response, summary) = work
                    .process(&batch, deadline, |record: &crate::event::kafka::Record| work.plan(&plan, record))
                    .await?;
                Ok((crate::event::kafka::BatchResponse::from_ids(&response)?, summary))
            })
        })
    }

    /// Runs a Kinesis consumer over tumbling windows: each record's data
    /// read as a `T` and folded into the window's state `S` by `fold`, the
    /// state handed back to Lambda with the partial batch response (so a
    /// retried invocation starts again from the same state, and a record is
    /// folded once); on the window's final invocation `finish` plans its
    /// result from the state, committed exactly once (its marker in the same
    /// transaction: a final invocation delivered again changes nothing).
    #[cfg(feature = "kinesis")]
    pub fn kinesis_window<T, S, F, G, O>(self, fold: F, finish: G) -> Result<(), Error>
    where
        T: DeserializeOwned,
        S: Serialize + DeserializeOwned + Default,
        F: Fn(&mut S, T),
        G: Fn(WindowClosed<S>) -> O,
        O: IntoPlan<UnitOfWork>,
    {
        self.windows::<crate::event::kinesis::Record, T, S, F, G, O>(fold, finish)
    }

    /// [`kinesis_window`](Self::kinesis_window) for a DynamoDB stream: each
    /// record's images read as a `T` ([`Change`](crate::event::stream::Change)).
    #[cfg(feature = "dynamodb-stream")]
    pub fn dynamodb_stream_window<T, S, F, G, O>(self, fold: F, finish: G) -> Result<(), Error>
    where
        T: DeserializeOwned,
        S: Serialize + DeserializeOwned + Default,
        F: Fn(&mut S, crate::event::stream::Change<T>),
        G: Fn(WindowClosed<S>) -> O,
        O: IntoPlan<UnitOfWork>,
    {
        self.windows::<crate::event::stream::Record, T, S, F, G, O>(fold, finish)
    }

    #[cfg(any(feature = "kinesis", feature = "dynamodb-stream"))]
    fn windows<Rec, T, S, F, G, O>(self, fold: F, finish: G) -> Result<(), Error>
    where
        Rec: Windowed,
        T: DeserializeOwned,
        S: Serialize + DeserializeOwned + Default,
        F: Fn(&mut S, Rec::Body<T>),
        G: Fn(WindowClosed<S>) -> O,
        O: IntoPlan<UnitOfWork>,
    {
        self.run(|aws| {
            let work = Work::new(aws)?;
            Ok(async move |event: crate::event::window::WindowBatch, deadline: SystemTime| {
                work.window::<Rec, T, S, F, G, O>(event, deadline, &fold, &finish).await
            })
        })
    }

    /// Records of type `Rec`, each planned into a unit of work committed
    /// exactly once.
    #[cfg(any(feature = "sqs", feature = "dynamodb-stream", feature = "kinesis"))]
    fn exactly_once<Rec, T, F, O>(self, plan: F) -> Result<(), Error>
    where
        Rec: Typed,
        T: DeserializeOwned,
        F: Fn(Rec::Body<T>) -> O,
        O: IntoPlan<UnitOfWork>,
    {
        self.run(|aws| {
            let work = Work::new(aws)?;
            Ok(async move |batch: RawBatch, deadline: SystemTime| {
                work.process(&batch, deadline, |record: &Rec| work.plan(&plan, record)).await
            })
        })
    }

    /// Records of type `Rec`, each planned into a call made under the lock.
    #[cfg(all(feature = "lock", any(feature = "sqs", feature = "dynamodb-stream", feature = "kinesis")))]
    fn with_lock<Rec, T, F, O, I, E, R>(self, plan: F, effect: E) -> Result<(), Error>
    where
        Rec: Typed,
        T: DeserializeOwned,
        F: Fn(Rec::Body<T>) -> O,
        O: IntoPlan<Call<I>>,
        I: Serialize,
        E: AsyncFn(I) -> Result<R, CommitError>,
        R: Serialize + DeserializeOwned,
    {
        self.run(|aws| {
            let calls = Calls::new(aws)?;
            Ok(async move |batch: RawBatch, deadline: SystemTime| {
                calls.process(&batch, deadline, |record: &Rec| calls.work.plan(&plan, record), &effect).await
            })
        })
    }
}

/// [`Function::sqs`] of a function named `name`: the SQS consumer in one
/// call.
#[cfg(feature = "sqs")]
pub fn sqs<T, F, O>(name: &'static str, plan: F) -> Result<(), Error>
where
    T: DeserializeOwned,
    F: Fn(T) -> O,
    O: IntoPlan<UnitOfWork>,
{
    Function::new(name).sqs(plan)
}

/// [`Function::dynamodb_stream`] of a function named `name`.
#[cfg(feature = "dynamodb-stream")]
pub fn dynamodb_stream<T, F, O>(name: &'static str, plan: F) -> Result<(), Error>
where
    T: DeserializeOwned,
    F: Fn(crate::event::stream::Change<T>) -> O,
    O: IntoPlan<UnitOfWork>,
{
    Function::new(name).dynamodb_stream(plan)
}

/// [`Function::kinesis`] of a function named `name`.
#[cfg(feature = "kinesis")]
pub fn kinesis<T, F, O>(name: &'static str, plan: F) -> Result<(), Error>
where
    T: DeserializeOwned,
    F: Fn(T) -> O,
    O: IntoPlan<UnitOfWork>,
{
    Function::new(name).kinesis(plan)
}

/// [`Function::kafka`] of a function named `name`.
#[cfg(feature = "kafka")]
pub fn kafka<T, F, O>(name: &'static str, plan: F) -> Result<(), Error>
where
    T: DeserializeOwned,
    F: Fn(T) -> O,
    O: IntoPlan<UnitOfWork>,
{
    Function::new(name).kafka(plan)
}

/// [`Function::sqs_with_lock`] of a function named `name`.
#[cfg(all(feature = "sqs", feature = "lock"))]
pub fn sqs_with_lock<T, F, O, I, E, R>(name: &'static str, plan: F, effect: E) -> Result<(), Error>
where
    T: DeserializeOwned,
    F: Fn(T) -> O,
    O: IntoPlan<Call<I>>,
    I: Serialize,
    E: AsyncFn(I) -> Result<R, CommitError>,
    R: Serialize + DeserializeOwned,
{
    Function::new(name).sqs_with_lock(plan, effect)
}

/// [`Function::dynamodb_stream_with_lock`] of a function named `name`.
#[cfg(all(feature = "dynamodb-stream", feature = "lock"))]
pub fn dynamodb_stream_with_lock<T, F, O, I, E, R>(name: &'static str, plan: F, effect: E) -> Result<(), Error>
where
    T: DeserializeOwned,
    F: Fn(crate::event::stream::Change<T>) -> O,
    O: IntoPlan<Call<I>>,
    I: Serialize,
    E: AsyncFn(I) -> Result<R, CommitError>,
    R: Serialize + DeserializeOwned,
{
    Function::new(name).dynamodb_stream_with_lock(plan, effect)
}

/// What a planner may return for one record: an effect, `Option` of one
/// (`None`: ignored), or a `Result` of either (its error quarantines the
/// record, or retries it if transient).
pub trait IntoPlan<E> {
    /// The record's plan, or why it has none.
    fn into_plan(self) -> Result<Plan<E>, RecordError>;
}

impl<E> IntoPlan<E> for Plan<E> {
    fn into_plan(self) -> Result<Plan<E>, RecordError> {
        Ok(self)
    }
}

impl IntoPlan<UnitOfWork> for UnitOfWork {
    fn into_plan(self) -> Result<Plan<UnitOfWork>, RecordError> {
        Ok(Plan::Effect(self))
    }
}

impl IntoPlan<UnitOfWork> for Option<UnitOfWork> {
    fn into_plan(self) -> Result<Plan<UnitOfWork>, RecordError> {
        Ok(self.map_or(Plan::Ignore, Plan::Effect))
    }
}

impl<I> IntoPlan<Call<I>> for Call<I> {
    fn into_plan(self) -> Result<Plan<Call<I>>, RecordError> {
        Ok(Plan::Effect(self))
    }
}

impl<I> IntoPlan<Call<I>> for Option<Call<I>> {
    fn into_plan(self) -> Result<Plan<Call<I>>, RecordError> {
        Ok(self.map_or(Plan::Ignore, Plan::Effect))
    }
}

impl<E, P: IntoPlan<E>, X: Into<RecordError>> IntoPlan<E> for Result<P, X> {
    fn into_plan(self) -> Result<Plan<E>, RecordError> {
        self.map_err(Into::into)?.into_plan()
    }
}

/// A call outside DynamoDB (an HTTP request, an email), made at most once
/// per key under the Powertools-style idempotency lock: an `INPROGRESS`
/// record that expires with the invocation's deadline, then `COMPLETED`
/// with the call's result, replayed for every later record with the key.
/// Unlike a [`UnitOfWork`], a call that succeeded but whose completion was
/// not recorded (the invocation died in between) runs again once its lock
/// expires: at-least-once, as in Powertools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call<I> {
    input: I,
    derive: Derive,
    key: Option<String>,
}

impl<I> Call<I> {
    /// A call with `input`, once per record (its key is the record's identity).
    pub fn for_record(input: I) -> Self {
        Self { input, derive: Derive::Record, key: None }
    }

    /// A call with `input`, once per `identity` of `kind` (`{prefix}#{kind}#{identity}`).
    pub fn keyed(kind: impl Into<String>, identity: impl Into<String>, input: I) -> Self {
        Self { input, derive: Derive::Named { kind: kind.into(), identity: identity.into() }, key: None }
    }

    /// The input the call is made with.
    pub fn input(&self) -> &I {
        &self.input
    }
}

with_records! {
/// What the exactly-once entry points hold: the engine's quarantine, the
/// committer and the settings.
struct Work {
    quarantine: DynamoQuarantine,
    exactly_once: ExactlyOnce,
    keys: IdempotencyKey,
    settings: Settings,
}

impl Work {
    fn new(aws: &Aws) -> Result<Self, ConfigError> {
        Ok(Self {
            quarantine: aws.quarantine()?,
            exactly_once: aws.exactly_once()?,
            keys: aws.keys(),
            settings: aws.settings.clone(),
        })
    }

    fn engine(&self) -> Engine<'_, DynamoQuarantine> {
        Engine::new(&self.quarantine)
            .deadline_margin(self.settings.deadline_margin)
            .fail_on_all_failed(self.settings.fail_on_all_failed)
    }

    /// The transactions of a standard queue's batch go `COMMIT_CONCURRENCY`
    /// at a time; a FIFO group's or a shard's one after another.
    fn concurrency(&self, ordering: &Ordering) -> usize {
        if ordering.independent() { self.settings.commit_concurrency } else { 1 }
    }

    async fn process<R: BatchRecord>(
        &self,
        batch: &RawBatch,
        deadline: SystemTime,
        plan: impl FnMut(&R) -> Result<Plan<UnitOfWork>, RecordError>,
    ) -> Result<(crate::batch::BatchResponse, Summary), InvocationError> {
        let deadline = Some(deadline);
        self.engine()
            .process_ordered(batch, deadline, plan, |units, ordering| {
                let committer = self.exactly_once.clone().concurrency(self.concurrency(&ordering));
                let partitions = self.settings.commit_concurrency;
                async move {
                    if ordering.delivery == crate::batch::Delivery::Partitioned {
                        commit_by_group(&committer, units, &ordering.groups, partitions, deadline).await
                    } else {
                        committer.commit(units, deadline).await
                    }
                }
            })
            .await
    }

    /// Reads a record's body as the planner's type, plans it, and derives
    /// its effect's key.
    fn plan<Rec, T, F, O, E>(&self, plan: &F, record: &Rec) -> Result<Plan<E>, RecordError>
    where
        Rec: Typed,
        T: DeserializeOwned,
        F: Fn(Rec::Body<T>) -> O,
        O: IntoPlan<E>,
        E: DeriveKey,
    {
        let body = record.body::<T>().map_err(|e| RecordError::Permanent(e.to_string()))?;
        match plan(body).into_plan()? {
            Plan::Ignore => Ok(Plan::Ignore),
            Plan::Effect(effect) => effect
                .derive_key(&self.keys, || record.key(&self.keys, &self.settings), || record.fingerprint())
                .map(Plan::Effect)
                .map_err(|e| RecordError::Permanent(e.to_string())),
        }
    }
}

/// Commits a Kafka batch's units partition by partition, up to `concurrency`
/// partitions at once, each in order on its own: a failure holds back only
/// the rest of its partition, not the others'.
async fn commit_by_group(
    committer: &ExactlyOnce,
    units: Vec<UnitOfWork>,
    groups: &[Option<String>],
    concurrency: usize,
    deadline: Option<SystemTime>,
) -> crate::engine::Committed {
    use futures::StreamExt;
    let count = units.len();
    let mut by_group: Vec<(Option<&str>, Vec<usize>, Vec<UnitOfWork>)> = Vec::new();
    for (i, unit) in units.into_iter().enumerate() {
        let group = groups.get(i).and_then(Option::as_deref);
        match by_group.iter_mut().find(|(g, _, _)| *g == group) {
            Some((_, positions, units)) => {
                positions.push(i);
                units.push(unit);
            }
            None => by_group.push((group, vec![i], vec![unit])),
        }
    }
    let mut results: Vec<Option<Result<Outcome, CommitError>>> = vec![None; count];
    let mut done = futures::stream::iter(by_group)
        .map(|(_, positions, units)| async move { (positions, committer.commit(units, deadline).await) })
        .buffer_unordered(concurrency.max(1));
    while let Some((positions, committed)) = done.next().await {
        for (position, result) in positions.into_iter().zip(committed) {
            results[position] = Some(result);
        }
    }
    results.into_iter().map(|r| r.unwrap_or(Err(CommitError::Transient("not committed".into())))).collect()
}

/// A record type the entry points read a typed body from.
trait Typed: BatchRecord {
    /// What the planner gets for a body type `T`.
    type Body<T>;
    /// The body read as `T`.
    fn body<T: DeserializeOwned>(&self) -> Result<Self::Body<T>, crate::event::EventError>;
    /// The record's own idempotency key ([`UnitOfWork::for_record`]).
    fn key(&self, keys: &IdempotencyKey, settings: &Settings) -> Result<Option<String>, KeyError>;
    /// The fingerprint of its payload's JSON meaning ([`UnitOfWork::keyed`]).
    fn fingerprint(&self) -> Option<String>;
}

#[cfg(feature = "sqs")]
impl Typed for crate::event::sqs::Message {
    type Body<T> = T;

    fn body<T: DeserializeOwned>(&self) -> Result<T, crate::event::EventError> {
        self.json_body()
    }

    fn key(&self, keys: &IdempotencyKey, settings: &Settings) -> Result<Option<String>, KeyError> {
        keys.sqs(&settings.idempotency_key_source, self)
    }

    fn fingerprint(&self) -> Option<String> {
        Some(fingerprint_json(&serde_json::from_str(&self.body).ok()?))
    }
}

#[cfg(feature = "dynamodb-stream")]
impl Typed for crate::event::stream::Record {
    type Body<T> = crate::event::stream::Change<T>;

    fn body<T: DeserializeOwned>(&self) -> Result<Self::Body<T>, crate::event::EventError> {
        self.typed()
    }

    fn key(&self, keys: &IdempotencyKey, _: &Settings) -> Result<Option<String>, KeyError> {
        keys.stream(self)
    }

    fn fingerprint(&self) -> Option<String> {
        Some(fingerprint_json(&serde_json::to_value(self.new_image()?).ok()?))
    }
}

#[cfg(feature = "kinesis")]
impl Typed for crate::event::kinesis::Record {
    type Body<T> = T;

    fn body<T: DeserializeOwned>(&self) -> Result<T, crate::event::EventError> {
        self.json_data()
    }

    fn key(&self, keys: &IdempotencyKey, settings: &Settings) -> Result<Option<String>, KeyError> {
        keys.kinesis(&settings.idempotency_key_source, self)
    }

    fn fingerprint(&self) -> Option<String> {
        Some(fingerprint_json(&serde_json::from_slice(&self.data).ok()?))
    }
}

#[cfg(feature = "kafka")]
impl Typed for crate::event::kafka::Record {
    type Body<T> = T;

    fn body<T: DeserializeOwned>(&self) -> Result<T, crate::event::EventError> {
        self.json_value()
    }

    fn key(&self, keys: &IdempotencyKey, settings: &Settings) -> Result<Option<String>, KeyError> {
        keys.kafka(&settings.idempotency_key_source, self)
    }

    fn fingerprint(&self) -> Option<String> {
        Some(fingerprint_json(&serde_json::from_slice(self.value.as_deref().unwrap_or(b"null")).ok()?))
    }
}

/// A stream's records as tumbling windows read them.
#[cfg(any(feature = "kinesis", feature = "dynamodb-stream"))]
trait Windowed: Typed {
    /// The quarantine source of the stream of `arn`.
    fn stream_source(arn: Option<&str>) -> String;
}

#[cfg(feature = "kinesis")]
impl Windowed for crate::event::kinesis::Record {
    fn stream_source(arn: Option<&str>) -> String {
        crate::event::kinesis::source(crate::event::kinesis::stream_name(arn))
    }
}

#[cfg(feature = "dynamodb-stream")]
impl Windowed for crate::event::stream::Record {
    fn stream_source(arn: Option<&str>) -> String {
        crate::engine::stream_source(arn)
    }
}

/// The key under which a window's state travels in Lambda's `state` object:
/// one string, the state's JSON, so that runtimes reading `state` as a map
/// of strings (Java's, .NET's, Go's, `aws_lambda_events`') read it too.
#[cfg(any(feature = "kinesis", feature = "dynamodb-stream"))]
const STATE_KEY: &str = "window";

/// Lambda's limit on a window's state: "Your state can be a maximum of 1 MB
/// per shard. If it exceeds that size, Lambda terminates the window early."
/// (<https://docs.aws.amazon.com/lambda/latest/dg/services-kinesis-windows.html>).
#[cfg(any(feature = "kinesis", feature = "dynamodb-stream"))]
pub const MAX_WINDOW_STATE_BYTES: usize = 1024 * 1024;

/// A window's state as it travels: the user's state, the first record
/// folded into it (which names the window's part in its result's key) and
/// how many records were folded.
#[cfg(any(feature = "kinesis", feature = "dynamodb-stream"))]
#[derive(Serialize, serde::Deserialize)]
struct Folded<S> {
    first: Option<String>,
    records: u64,
    state: S,
}

impl Work {
    /// One invocation of a tumbling window: fold what the delivery allows
    /// into the state; on the final invocation, commit the result.
    #[cfg(any(feature = "kinesis", feature = "dynamodb-stream"))]
    async fn window<Rec, T, S, F, G, O>(
        &self,
        event: crate::event::window::WindowBatch,
        deadline: SystemTime,
        fold: &F,
        finish: &G,
    ) -> Result<(WindowResponse, Summary), InvocationError>
    where
        Rec: Windowed,
        T: DeserializeOwned,
        S: Serialize + DeserializeOwned + Default,
        F: Fn(&mut S, Rec::Body<T>),
        G: Fn(WindowClosed<S>) -> O,
        O: IntoPlan<UnitOfWork>,
    {
        let window = event.window.clone().ok_or_else(|| {
            InvocationError::new(
                "not a tumbling-window invocation: the event has no `window` (set TumblingWindowInSeconds \
                 on the event source mapping, or use the entry point without a window)",
            )
        })?;
        let folded: Folded<S> = match event.state.get(STATE_KEY) {
            None if event.state.is_empty() => Folded { first: None, records: 0, state: S::default() },
            Some(serde_json::Value::String(json)) => serde_json::from_str(json).map_err(|e| {
                InvocationError::new(format!("the window's state does not read as this function's state: {e}"))
            })?,
            _ => {
                return Err(InvocationError::new(format!(
                    "the window's state is not this toolkit's (an object with the string `{STATE_KEY}`)"
                )));
            }
        };
        let cell = std::sync::Mutex::new(Some(folded));
        let panicked: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
        // Each record planned as its id (the window's first names its part)
        // and its body.
        type Planned<B> = Result<Plan<(String, B)>, RecordError>;
        let plan = |record: &Rec| -> Planned<Rec::Body<T>> {
            let body = record.body::<T>().map_err(|e| RecordError::Permanent(e.to_string()))?;
            Ok(Plan::Effect((record.record_id(), body)))
        };
        // The engine hands over, in order, exactly the records the
        // delivery lets take effect (none past a failure of the shard);
        // folding them is the effect.
        let commit = |effects: Vec<(String, Rec::Body<T>)>, _| {
            let (cell, panicked) = (&cell, &panicked);
            async move {
                let count = effects.len();
                let mut guard = cell.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let Some(folded) = guard.as_mut() else {
                    return vec![Err(CommitError::Transient("the window's state is gone".into())); count];
                };
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    for (id, body) in effects {
                        folded.first.get_or_insert(id);
                        folded.records = folded.records.saturating_add(1);
                        fold(&mut folded.state, body);
                    }
                }));
                match run {
                    Ok(()) => vec![Ok(Outcome::Applied); count],
                    Err(panic) => {
                        // The state may hold part of a record: drop it all.
                        *guard = None;
                        let message = crate::engine::panic_message(panic.as_ref());
                        *panicked.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(message);
                        vec![Err(CommitError::Transient("the window's fold panicked".into())); count]
                    }
                }
            }
        };
        let (response, summary) =
            self.engine().process_ordered(&event.batch, Some(deadline), plan, commit).await?;
        if let Some(message) = panicked.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) {
            return Err(InvocationError::new(format!(
                "the window's fold panicked: {message}; the invocation is retried from the window's state as it was"
            )));
        }
        let folded = cell
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .ok_or_else(|| InvocationError::new("the window's state is gone"))?;
        let failures = response.batch_item_failures;
        if !event.is_final || !failures.is_empty() {
            let json = serde_json::to_string(&folded)
                .map_err(|e| InvocationError::new(format!("the window's state does not serialize: {e}")))?;
            if json.len() > MAX_WINDOW_STATE_BYTES {
                tracing::warn!(
                    bytes = json.len(),
                    "the window's state is over Lambda's 1 MB: Lambda ends the window early, and each part has \
                     a result of its own"
                );
            }
            let state = serde_json::Map::from_iter([(STATE_KEY.to_owned(), serde_json::Value::String(json))]);
            return Ok((WindowResponse { state, batch_item_failures: failures }, summary));
        }
        let source = Rec::stream_source(event.event_source_arn.as_deref());
        let shard_id = event.shard_id.unwrap_or_default();
        let start = window.start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let key = self.keys.window(&source, &shard_id, &start, folded.first.as_deref());
        let state_json = serde_json::to_value(&folded.state)
            .map_err(|e| InvocationError::new(format!("the window's state does not serialize: {e}")))?;
        let closed = WindowClosed {
            window,
            shard_id: shard_id.clone(),
            records: folded.records,
            terminated_early: event.terminated_early,
            state: folded.state,
        };
        let planned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| finish(closed).into_plan()))
            .map_err(|panic| {
                InvocationError::new(format!(
                    "the window's result planner panicked: {}",
                    crate::engine::panic_message(panic.as_ref())
                ))
            })?;
        let unit = match planned {
            Ok(Plan::Ignore) => None,
            Ok(Plan::Effect(unit)) => Some(
                unit.derive_key(&self.keys, || Ok(Some(key.clone())), || Some(fingerprint_json(&state_json)))
                    .map_err(|e| RecordError::Permanent(e.to_string())),
            ),
            Err(e) => Some(Err(e)),
        };
        let refused = match unit {
            None => None,
            Some(Err(RecordError::Transient(reason))) => {
                return Err(InvocationError::new(format!("the window's result failed: {reason}")));
            }
            Some(Err(RecordError::Permanent(reason))) => Some(reason),
            Some(Ok(unit)) => match self.exactly_once.commit(vec![unit], Some(deadline)).await.pop() {
                Some(Ok(outcome)) => {
                    tracing::info!(%key, ?outcome, "window result committed");
                    None
                }
                Some(Err(CommitError::Permanent(reason))) => Some(reason),
                Some(Err(e)) => {
                    return Err(InvocationError::new(format!("the window's result was not committed: {e}")));
                }
                None => return Err(InvocationError::new("the window's result was not committed")),
            },
        };
        if let Some(reason) = refused {
            let id = format!("window/{shard_id}/{start}");
            tracing::warn!(record_id = %id, %reason, "window result quarantined");
            let item = crate::quarantine::Quarantined::new(source, id, reason, &state_json.to_string());
            self.quarantine
                .write_quarantine(std::slice::from_ref(&item))
                .await
                .map_err(|e| InvocationError::new(format!("the window's refused result could not be quarantined: {e}")))?;
        }
        Ok((WindowResponse { state: serde_json::Map::new(), batch_item_failures: Vec::new() }, summary))
    }
}

/// A window that is over, for its result: its span, its shard, and the
/// state its records were folded into.
#[cfg(any(feature = "kinesis", feature = "dynamodb-stream"))]
#[derive(Debug, Clone, PartialEq)]
pub struct WindowClosed<S> {
    /// When the window started and ended.
    pub window: crate::event::window::Window,
    /// The shard its records came from.
    pub shard_id: String,
    /// How many records were folded into the state.
    pub records: u64,
    /// Lambda ended the window early (its state outgrew 1 MB): this is one
    /// part of the window, and the next part has a result of its own.
    pub terminated_early: bool,
    /// The state.
    pub state: S,
}

/// What a window's invocation answers: the state for the window's next
/// invocation, and the partial batch response.
#[cfg(any(feature = "kinesis", feature = "dynamodb-stream"))]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowResponse {
    /// The state Lambda hands to the window's next invocation (empty once
    /// the window's result is committed).
    pub state: serde_json::Map<String, serde_json::Value>,
    /// The first record to retry, if any.
    pub batch_item_failures: Vec<crate::batch::ItemFailure>,
}

/// An effect whose idempotency key the entry point derives.
trait DeriveKey: Sized {
    fn derive_key(
        self,
        keys: &shared_core::key::Keys,
        record: impl FnOnce() -> Result<Option<String>, KeyError>,
        body: impl FnOnce() -> Option<String>,
    ) -> Result<Self, KeyError>;
}

impl DeriveKey for UnitOfWork {
    fn derive_key(
        self,
        keys: &shared_core::key::Keys,
        record: impl FnOnce() -> Result<Option<String>, KeyError>,
        body: impl FnOnce() -> Option<String>,
    ) -> Result<Self, KeyError> {
        UnitOfWork::derive_key(self, keys, record, body)
    }
}

/// A call's key, derived; the lock validates the call's input itself.
impl<I> DeriveKey for Call<I> {
    fn derive_key(
        mut self,
        keys: &shared_core::key::Keys,
        record: impl FnOnce() -> Result<Option<String>, KeyError>,
        _body: impl FnOnce() -> Option<String>,
    ) -> Result<Self, KeyError> {
        self.key = Some(match &self.derive {
            Derive::Named { kind, identity } => keys.custom(kind, identity),
            Derive::Record => record()?.ok_or_else(|| KeyError::Missing("a call needs an idempotency key".into()))?,
        });
        Ok(self)
    }
}
}

/// What the lock entry points hold.
#[cfg(all(feature = "lock", any(feature = "sqs", feature = "dynamodb-stream", feature = "kinesis")))]
struct Calls {
    work: Work,
    lock: crate::idempotency::Idempotency<crate::idempotency::dynamo::DynamoIdempotencyStore>,
}

#[cfg(all(feature = "lock", any(feature = "sqs", feature = "dynamodb-stream", feature = "kinesis")))]
impl Calls {
    fn new(aws: &Aws) -> Result<Self, ConfigError> {
        let store = crate::idempotency::dynamo::DynamoIdempotencyStore::new(
            aws.dynamodb(),
            aws.settings.require_idempotency_table()?,
        );
        let options =
            crate::idempotency::Options { expires_after: aws.settings.idempotency_ttl, validate_payload: true };
        Ok(Self { work: Work::new(aws)?, lock: crate::idempotency::Idempotency::new(store, options) })
    }

    async fn process<R, I, E, X>(
        &self,
        batch: &RawBatch,
        deadline: SystemTime,
        plan: impl FnMut(&R) -> Result<Plan<Call<I>>, RecordError>,
        effect: &E,
    ) -> Result<(crate::batch::BatchResponse, Summary), InvocationError>
    where
        R: BatchRecord,
        I: Serialize,
        E: AsyncFn(I) -> Result<X, CommitError>,
        X: Serialize + DeserializeOwned,
    {
        use crate::engine::{Committed, commit_in_order};
        let deadline = Some(deadline);
        self.work
            .engine()
            .process_ordered(batch, deadline, plan, |calls: Vec<Call<I>>, ordering| async move {
                let concurrency = self.work.concurrency(&ordering);
                let committed: Committed = commit_in_order(calls, &ordering, concurrency, |call| async move {
                    let key = call.key.unwrap_or_default();
                    let payload = serde_json::to_vec(&call.input)
                        .map_err(|e| CommitError::Permanent(format!("the call's input does not serialize: {e}")))?;
                    self.lock.commit_with_lock(&key, &payload, deadline, || effect(call.input)).await
                })
                .await;
                committed
            })
            .await
    }
}
