//! The Queues consumer (wasm32): a delivered batch, each message's
//! attempts, its ack or retry as the core's rules decide, and the
//! summary line.
//!
//! Cloudflare Queues acknowledge and retry each message on its own, as an
//! SQS standard queue's mapping does: the core's [`settle`] with
//! [`Delivery::Standard`] decides which are retried. A retried message
//! waits `RETRY_DELAY_SECONDS` doubled per attempt (`retry({delaySeconds})`);
//! its attempts are the runtime's `Message.attempts`, which workers-rs
//! 0.8.7 does not expose (cloudflare/workers-rs#1057) and the toolkit reads
//! from the JavaScript object itself, or, where a runtime lacks it, counts
//! per isolate (a lower bound: another isolate may have had the message).
//! The number of attempts is bounded by the queue's `max_retries`
//! (`wrangler.jsonc`), after which the message goes to its dead-letter
//! queue: a transient failure is never quarantined, as on Lambda, where
//! SQS's redrive policy takes it.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::de::DeserializeOwned;
use shared_core::batch::{Delivery, Disposition, RecordError, RecordRef, Summary, settle};
use shared_core::key::{KeyError, KeySource, fingerprint_json};
use shared_core::quarantine::Quarantined;
use wasm_bindgen::{JsCast, JsValue};
use worker::worker_sys;

use crate::commit::{CommitFailure, Database, Tables, Unit, commit};
use crate::config::{ConfigError, Settings};
use crate::d1::{Db, DbError, Row, Statement};
use crate::telemetry::Invocation;
use crate::unit::{Derive, IntoPlan, UnitOfWork};

/// Why a consumer could not run at all (the runtime then retries the
/// whole batch).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A var is missing or invalid (the message names it).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A binding is missing (the message names it).
    #[error("binding: {0}")]
    Binding(String),
}

/// A batch of messages as the runtime delivered it.
#[derive(Debug)]
pub struct Batch {
    queue: String,
    messages: Vec<Message>,
    arrived_ms: f64,
}

/// One message of a batch.
#[derive(Debug)]
pub struct Message {
    inner: worker_sys::Message,
    id: String,
    attempts: u32,
    body: String,
}

thread_local! {
    /// Deliveries seen per message id, where the runtime does not say.
    static COUNTED: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
}

/// Message ids counted per isolate at most (then the count starts over).
const MAX_COUNTED: usize = 10_000;

impl Batch {
    /// The batch the runtime passed to the queue handler.
    #[doc(hidden)]
    pub fn from_sys(inner: worker_sys::MessageBatch) -> Self {
        let queue = inner.queue().map(String::from).unwrap_or_default();
        let messages = inner
            .messages()
            .map(|array| array.iter().map(|m| Message::new(m.unchecked_into())).collect())
            .unwrap_or_default();
        Self { queue, messages, arrived_ms: js_sys::Date::now() }
    }

    /// The queue's name.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The messages, in the order delivered.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }
}

impl Message {
    fn new(inner: worker_sys::Message) -> Self {
        let id = inner.id().map(String::from).unwrap_or_default();
        let body = inner.body().map(|b| body_text(&b)).unwrap_or_default();
        let given = js_sys::Reflect::get(&inner, &JsValue::from_str("attempts")).ok().and_then(|a| a.as_f64());
        let attempts = match given {
            Some(n) if n >= 1.0 => n as u32,
            _ => COUNTED.with(|counted| {
                let mut counted = counted.borrow_mut();
                if counted.len() >= MAX_COUNTED {
                    counted.clear();
                }
                let n = counted.entry(id.clone()).or_insert(0);
                *n += 1;
                *n
            }),
        };
        Self { inner, id, attempts, body }
    }

    /// The message's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Deliveries of this message so far, this one included (1 on its
    /// first).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The body as JSON text: a text body as it is, a structured one
    /// (`contentType: "json"`) serialized.
    pub fn body(&self) -> &str {
        &self.body
    }

    fn ack(&self) {
        let _ = self.inner.ack();
    }

    fn retry(&self, delay_seconds: u32) {
        let options = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&options, &"delaySeconds".into(), &JsValue::from(delay_seconds));
        let _ = self.inner.retry(options.into());
    }
}

fn body_text(body: &JsValue) -> String {
    body.as_string().unwrap_or_else(|| {
        js_sys::JSON::stringify(body).map(String::from).unwrap_or_else(|_| "<unserializable body>".into())
    })
}

/// The current time, RFC 3339 (JavaScript's clock: on Workers it moves
/// with I/O).
pub fn now() -> String {
    String::from(js_sys::Date::new_0().to_iso_string())
}

static COLD: AtomicBool = AtomicBool::new(true);

/// A consumer on the toolkit: its name (the metrics' `function`, the
/// default key prefix), its settings and its D1 binding. For the common
/// case, [`queue`] does everything; a consumer whose commit is its own
/// (the orders Worker's) decides each message itself and hands the
/// dispositions to [`answer`](Self::answer).
#[derive(Debug)]
pub struct Consumer {
    name: &'static str,
    settings: Settings,
    db: Db,
}

impl Database for Db {
    async fn batch(&self, statements: &[Statement]) -> Result<Vec<Vec<Row>>, DbError> {
        self.run(statements).await?.iter().map(|r| r.maps()).collect()
    }

    async fn pause(&self, attempt: u32) {
        back_off(attempt).await;
    }
}

/// Waits a random time of up to 10, 20, 40 ... 640 ms before attempt
/// `attempt` (1, 2, ...): invocations that collided once do not collide
/// again in step.
pub async fn back_off(attempt: u32) {
    if attempt > 0 {
        let most = 10.0 * f64::from(1u32 << (attempt - 1).min(6));
        let ms = (js_sys::Math::random() * most) as u64;
        worker::Delay::from(std::time::Duration::from_millis(ms)).await;
    }
}

impl Consumer {
    /// A consumer named `name`, its settings from the Worker's vars.
    pub fn new(name: &'static str, env: &worker::Env) -> Result<Self, Error> {
        let settings = Settings::read(name, |n| crate::config::var(env, n))?;
        let db =
            env.d1(&settings.d1_binding).map_err(|e| Error::Binding(format!("D1 {}: {e}", settings.d1_binding)))?;
        Ok(Self { name, settings, db: Db::new(db) })
    }

    /// Its settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Its D1 binding (its statements counted in the summary line).
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The quarantine source of a queue's messages: `queue/<name>`.
    pub fn source(batch: &Batch) -> String {
        format!("queue/{}", batch.queue())
    }

    /// Acknowledges or retries each message as the core's rules for a
    /// standard queue say, from what became of it (`dispositions`, one per
    /// message, in order); a retried message waits its delay. Returns the
    /// accounting.
    pub fn answer(&self, batch: &Batch, dispositions: &[Disposition]) -> Summary {
        let records: Vec<RecordRef> =
            batch.messages.iter().map(|m| RecordRef { id: m.id.clone(), group: None }).collect();
        // Only a batch failed as a whole is an error, and that is never
        // asked for (`fail_on_all_failed` off): every message is its own.
        let (retried, summary) = match settle(Delivery::Standard, &records, dispositions, false) {
            Ok((response, summary)) => {
                (response.ids().into_iter().map(str::to_owned).collect::<HashSet<String>>(), summary)
            }
            Err(_) => (
                records.iter().map(|r| r.id.clone()).collect(),
                Summary { failed: records.len() as u64, ..Summary::default() },
            ),
        };
        for message in &batch.messages {
            if retried.contains(&message.id) {
                message.retry(self.settings.retry_delay(message.attempts));
            } else {
                message.ack();
            }
        }
        summary
    }

    /// Logs the invocation's summary line and metrics document.
    pub fn report(&self, batch: &Batch, summary: Summary) {
        let (d1_statements, d1_round_trips) = self.db.sent();
        let now = js_sys::Date::now();
        let invocation = Invocation {
            function: self.name,
            queue: &batch.queue,
            service: self.settings.service.as_deref(),
            cold_start: COLD.swap(false, Ordering::Relaxed),
            records: batch.messages.len(),
            summary,
            d1_statements,
            d1_round_trips,
            duration_ms: now - batch.arrived_ms,
            timestamp_ms: now as u64,
        };
        worker::console_log!("{}", invocation.line());
        if let Some(metrics) = invocation.metrics(&self.settings.metrics_namespace) {
            worker::console_log!("{metrics}");
        }
    }

    /// Consumes `batch`: each message's body read as a `T` and planned into
    /// a [`UnitOfWork`], every unit committed exactly once with its marker
    /// in one D1 batch, refusals quarantined with their reason, then each
    /// message acknowledged or retried, and the summary logged.
    pub async fn queue<T, F, O>(&self, batch: Batch, plan: F)
    where
        T: DeserializeOwned,
        F: Fn(T) -> O,
        O: IntoPlan,
    {
        let dispositions = self.decide(&batch, plan).await;
        let summary = self.answer(&batch, &dispositions);
        self.report(&batch, summary);
    }

    async fn decide<T, F, O>(&self, batch: &Batch, plan: F) -> Vec<Disposition>
    where
        T: DeserializeOwned,
        F: Fn(T) -> O,
        O: IntoPlan,
    {
        let source = Self::source(batch);
        let keys = self.settings.keys();
        let mut dispositions: Vec<Disposition> = Vec::with_capacity(batch.messages.len());
        let mut planned: Vec<(usize, UnitOfWork, Option<String>, Option<String>)> = Vec::new();
        let mut refused: Vec<Quarantined> = Vec::new();
        for (i, message) in batch.messages.iter().enumerate() {
            let refuse = |reason: String| Quarantined::new(&source, &message.id, reason, &message.body);
            let planned_one = read::<T>(&message.body).and_then(|(value, body)| {
                let unit = plan(body).into_plan()?;
                let Some(unit) = unit else { return Ok(None) };
                let (key, fingerprint) =
                    self.key_of(&keys, message, &value, &unit).map_err(|e| RecordError::Permanent(e.to_string()))?;
                Ok(Some((unit, key, fingerprint)))
            });
            match planned_one {
                Ok(Some((unit, key, fingerprint))) => {
                    planned.push((i, unit, key, fingerprint));
                    dispositions.push(Disposition::Unprocessed("not committed"));
                }
                Ok(None) => dispositions.push(Disposition::Ignored),
                Err(RecordError::Permanent(reason)) => {
                    refused.push(refuse(reason));
                    dispositions.push(Disposition::Quarantined);
                }
                Err(RecordError::Transient(reason)) => dispositions.push(Disposition::Failed(reason)),
            }
        }
        let units: Vec<Unit<'_>> = planned
            .iter()
            .map(|(i, work, key, fingerprint)| Unit {
                record_id: &batch.messages[*i].id,
                raw: &batch.messages[*i].body,
                key: key.clone(),
                fingerprint: fingerprint.clone(),
                work,
            })
            .collect();
        let tables = Tables {
            idempotency: &self.settings.idempotency_table,
            quarantine: &self.settings.quarantine_table,
            source: &source,
        };
        match commit(&self.db, tables, &units, &refused, &now()).await {
            Ok(decided) => {
                for ((i, ..), decided) in planned.iter().zip(decided) {
                    dispositions[*i] = match decided {
                        Ok(outcome) => Disposition::Done(outcome),
                        Err(_) => Disposition::Quarantined,
                    };
                }
            }
            Err(failure) => {
                if let CommitFailure::Fatal(why) = &failure {
                    worker::console_error!(
                        "{}: {why}: nothing can be committed until the schema is migrated",
                        self.name
                    );
                }
                // Nothing applied, no quarantine row either: every message
                // that needed D1 goes back to the queue.
                let why = failure.to_string();
                for d in dispositions.iter_mut().filter(|d| !matches!(d, Disposition::Ignored | Disposition::Failed(_)))
                {
                    *d = Disposition::Failed(why.clone());
                }
            }
        }
        dispositions
    }

    /// The key and fingerprint of a unit planned from `message`.
    fn key_of(
        &self,
        keys: &shared_core::key::Keys,
        message: &Message,
        body: &serde_json::Value,
        unit: &UnitOfWork,
    ) -> Result<(Option<String>, Option<String>), KeyError> {
        Ok(match &unit.derive {
            Derive::None => (None, unit.fingerprint.clone()),
            Derive::Record => {
                let key = match &self.settings.idempotency_key_source {
                    KeySource::BodyPointer(pointer) => keys.body_pointer(pointer, body).ok_or_else(|| {
                        KeyError::Missing(format!(
                            "message {} has no string or number at {pointer} in its body",
                            message.id
                        ))
                    })?,
                    // `DeduplicationId` is refused by the settings.
                    _ => keys.custom("queue", &message.id),
                };
                (Some(key), unit.fingerprint.clone())
            }
            Derive::Named { kind, identity } => {
                (Some(keys.custom(kind, identity)), unit.fingerprint.clone().or_else(|| Some(fingerprint_json(body))))
            }
        })
    }
}

/// A body read as JSON, then as a `T`: `malformed JSON in message body:
/// ...`, or `invalid: {field}: ...` naming the field.
fn read<T: DeserializeOwned>(body: &str) -> Result<(serde_json::Value, T), RecordError> {
    let value: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| RecordError::Permanent(format!("malformed JSON in message body: {e}")))?;
    let typed = serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { format!("{path}: ") };
        RecordError::Permanent(format!("invalid: {path}{}", e.inner()))
    })?;
    Ok((value, typed))
}

/// [`Consumer::queue`] of a consumer named `name`: the whole queue
/// handler in one call, as `shared::sqs` is on Lambda.
pub async fn queue<T, F, O>(name: &'static str, batch: Batch, env: &worker::Env, plan: F) -> Result<(), Error>
where
    T: DeserializeOwned,
    F: Fn(T) -> O,
    O: IntoPlan,
{
    Consumer::new(name, env)?.queue(batch, plan).await;
    Ok(())
}

/// What the exported queue handler runs (see [`crate::export_queue`]).
#[doc(hidden)]
pub async fn run<F, Fut>(handler: F, batch: worker_sys::MessageBatch, env: worker::Env) -> Result<JsValue, JsValue>
where
    F: FnOnce(Batch, worker::Env) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    match handler(Batch::from_sys(batch), env).await {
        Ok(()) => Ok(JsValue::UNDEFINED),
        Err(e) => {
            worker::console_error!("the queue handler failed, the whole batch will be retried: {e}");
            Err(JsValue::from_str(&e.to_string()))
        }
    }
}
