//! `cargo xtask soak [--minutes N] [--concurrency N] [--seed S]`: the whole
//! pipeline through the local stack under faults, for a while, then an exact
//! check of the result.
//!
//! - A seeded producer sends order events to the standard and FIFO queues:
//!   new orders, updates, exact resends, resends that differ only in JSON
//!   formatting (duplicates by the canonical fingerprint), older events sent
//!   after newer ones (stale), and poison messages (not JSON, a bad status,
//!   an amount out of range, a missing field); now and then it uploads an
//!   NDJSON object (valid lines and bad ones) under the bucket's notified
//!   prefix; and it puts device readings on the Kinesis stream
//!   (`device-telemetry`'s source): plain ones, KPL aggregates of several,
//!   and readings that are not readings.
//! - Every DynamoDB call of the functions goes through the fault proxy,
//!   which throttles, answers 500, drops the connection, delays the answer
//!   a little, or stalls it for seconds, at a seeded rate.
//! - At seeded random moments a running process of a random function is
//!   killed with SIGKILL (Lambda's `Runtime.ExitError`; a fresh process takes
//!   the next invocations).
//! - The mappings deliver concurrently ([`crate::Driver::concurrent`]):
//!   `--concurrency` SQS batches per queue at once and a stream
//!   parallelization factor of the same number, with that many instances of
//!   each function.
//!
//! At the end (producer stopped, pipeline drained) it checks DESIGN's
//! invariant, that every order's stored state is the one the apply rule
//! gives for every valid event sent for it (whatever the order and number
//! of deliveries), that every poison message is quarantined with a reason,
//! that every object is COMPLETED with every line accounted for, that no
//! message is left in a dead-letter queue, and the functions' own
//! accounting (see [`Checks::accounting`]); and the Kinesis source's
//! invariant: each device's counters are the sum of the readings put for
//! it (each exactly once, whatever the retries, kills and replays), every
//! bad reading is quarantined, and nothing went to the stream's failure
//! queue. The seed fixes the workload, the
//! fault draws and the kill schedule; which request a draw lands on depends
//! on timing, so a failing seed reproduces the same inputs and faults, not
//! the same interleaving.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::{elapsed, header};
use crate::driver::{Driver, InvocationReport, MappingStats};
use crate::dynamodb_local::Engine;
use crate::fault_proxy::{Fault, FaultProxy, Plan, Stats, Target};
use crate::lambda::RUNTIME_EXIT_ERROR;
use crate::report::{Accounting, table};
use crate::scenario::{self, FIFO_QUEUE, STANDARD_QUEUE};
use crate::stack::Stack;

/// What `cargo xtask soak` runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How long the producer sends (the drain comes after).
    pub duration: Duration,
    /// Concurrent deliveries per mapping and instances per function.
    pub concurrency: usize,
    pub seed: u64,
    pub engine: Engine,
}

/// Order events sent per producer tick, and the tick.
pub(crate) const EVENTS_PER_TICK: usize = 4;
pub(crate) const TICK: Duration = Duration::from_millis(500);
/// An object every this many ticks, of this many lines (two of them bad).
pub(crate) const OBJECT_EVERY_TICKS: u64 = 30;
pub(crate) const OBJECT_LINES: usize = 24;
/// Share of the functions' DynamoDB requests that get a fault.
pub(crate) const FAULT_RATE: f64 = 0.1;
/// Time between kills: uniformly drawn in this range.
const KILL_EVERY: (Duration, Duration) = (Duration::from_secs(4), Duration::from_secs(12));
/// The drain after the producer stops: a backlog, retries after the 2 s
/// visibility timeout, and stalled calls.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(900);
/// Pause of the driving loop when no mapping found anything.
const IDLE: Duration = Duration::from_millis(100);
/// Customers whose orders go through the FIFO queue (grouped by customer).
const FIFO_CUSTOMERS: &[&str] = &["c-fifo-1", "c-fifo-2", "c-fifo-3"];
const CUSTOMERS: &[&str] = &["c-ann", "c-ben", "c-cat", "c-dan", "c-eve", "c-fay"];
const CURRENCIES: &[&str] = &["USD", "EUR", "GBP"];
/// The Kinesis stream the soak puts readings on (infra/stack.json), and
/// the devices it reads.
const TELEMETRY_STREAM: &str = "telemetry";
const TELEMETRY_FAILURES: &str = "telemetryFailures";
const DEVICES: &[&str] = &["s-1", "s-2", "s-3", "s-4", "s-5", "s-6", "s-7"];

/// xorshift64*: small, seeded, reproducible.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// One valid event, as the model keeps it.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub(crate) event_id: String,
    order_id: String,
    customer_id: String,
    pub(crate) status: &'static str,
    /// Cents.
    cents: u64,
    pub(crate) currency: &'static str,
    occurred_at: String,
}

impl Event {
    fn json(&self) -> String {
        json!({
            "eventId": self.event_id, "orderId": self.order_id, "customerId": self.customer_id,
            "status": self.status, "amount": format!("{}.{:02}", self.cents / 100, self.cents % 100),
            "currency": self.currency, "occurredAt": self.occurred_at,
        })
        .to_string()
    }

    pub(crate) fn amount(&self) -> Decimal {
        Decimal::new(i64::try_from(self.cents).unwrap_or(i64::MAX), 2)
    }
}

/// An order the producer knows: its identity and the events sent for it.
#[derive(Debug, Clone)]
struct OrderModel {
    order_id: String,
    customer_id: String,
    currency: &'static str,
    /// The time of the newest event sent, in producer seconds.
    newest: u64,
}

/// What the producer sent, by kind.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sent {
    pub(crate) new_orders: u64,
    pub(crate) updates: u64,
    pub(crate) exact_resends: u64,
    pub(crate) reformatted_resends: u64,
    pub(crate) older_events: u64,
    pub(crate) poison: u64,
    pub(crate) fifo: u64,
    pub(crate) objects: u64,
    pub(crate) object_lines: u64,
    pub(crate) bad_object_lines: u64,
    /// Every SQS message sent to the orders queues.
    pub(crate) messages: u64,
    /// Kinesis records put (an aggregate counts once) and readings in them.
    pub(crate) kinesis_records: u64,
    pub(crate) readings: u64,
    pub(crate) aggregated_readings: u64,
    pub(crate) bad_readings: u64,
}

impl Sent {
    /// The report's rows of what was sent: `messages` names the messages,
    /// `fifo` the FIFO share.
    pub(crate) fn rows(&self, messages: &str, fifo: &str) -> Vec<Vec<String>> {
        let n = |v: u64| v.to_string();
        vec![
            vec![messages.into(), n(self.messages)],
            vec!["  new orders".into(), n(self.new_orders)],
            vec!["  updates".into(), n(self.updates)],
            vec![fifo.into(), n(self.fifo)],
            vec!["  exact resends".into(), n(self.exact_resends)],
            vec!["  resends differing only in formatting".into(), n(self.reformatted_resends)],
            vec!["  older than their order's newest".into(), n(self.older_events)],
            vec!["  poison".into(), n(self.poison)],
            vec!["objects uploaded".into(), n(self.objects)],
            vec!["  lines (bad)".into(), format!("{} ({})", self.object_lines, self.bad_object_lines)],
        ]
    }
}

/// The seeded producer and the model of what it sent.
pub(crate) struct Producer {
    rng: Rng,
    orders: Vec<OrderModel>,
    /// Every valid event sent (queues and objects), by order.
    events: BTreeMap<String, Vec<Event>>,
    /// Lines sent to the standard queue, for resends.
    standard_lines: Vec<String>,
    /// SQS message ids of the poison messages.
    poison_ids: BTreeSet<String>,
    /// Producer clock: seconds after the base time, two per event, so
    /// every event has its own second and an older event fits between.
    clock: u64,
    next_event: u64,
    objects: Vec<String>,
    pub(crate) sent: Sent,
    /// Per device: readings and watt-hours put on the stream.
    devices: BTreeMap<&'static str, (u64, u64)>,
}

impl Producer {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            rng: Rng::new(seed),
            orders: Vec::new(),
            events: BTreeMap::new(),
            standard_lines: Vec::new(),
            poison_ids: BTreeSet::new(),
            clock: 0,
            next_event: 0,
            objects: Vec::new(),
            sent: Sent::default(),
            devices: BTreeMap::new(),
        }
    }

    /// This tick's Kinesis records `(partition key, data)`: a few readings,
    /// now and then a KPL aggregate of several, now and then a bad one.
    fn tick_readings(&mut self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for _ in 0..2 {
            let device = *self.rng.pick(DEVICES);
            match self.rng.below(10) {
                0 => {
                    self.sent.bad_readings += 1;
                    out.push((device.to_owned(), format!(r#"{{"deviceId": "{device}", "wh": "n/a"}}"#).into_bytes()));
                }
                1 | 2 => {
                    let users: Vec<shared_core::kpl::UserRecord> = (0..2 + self.rng.below(3))
                        .map(|_| {
                            let device = *self.rng.pick(DEVICES);
                            shared_core::kpl::UserRecord::new(device, self.reading(device))
                        })
                        .collect();
                    self.sent.aggregated_readings += users.len() as u64;
                    out.push((device.to_owned(), shared_core::kpl::aggregate(&users)));
                }
                _ => {
                    let data = self.reading(device);
                    out.push((device.to_owned(), data));
                }
            }
        }
        self.sent.kinesis_records += out.len() as u64;
        out
    }

    /// One valid reading of `device`, counted in the model.
    fn reading(&mut self, device: &'static str) -> Vec<u8> {
        let wh = 1 + self.rng.below(500) as u64;
        let counters = self.devices.entry(device).or_default();
        (counters.0, counters.1) = (counters.0 + 1, counters.1 + wh);
        self.sent.readings += 1;
        json!({ "deviceId": device, "wh": wh }).to_string().into_bytes()
    }

    fn timestamp(seconds: u64) -> String {
        let base = chrono::DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z").expect("a valid constant");
        let at = base + chrono::Duration::seconds(i64::try_from(seconds).unwrap_or(i64::MAX));
        at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    }

    fn event_id(&mut self) -> String {
        self.next_event += 1;
        format!("soak-e-{}", self.next_event)
    }

    /// A new order, or an update of a known one (`fifo`: of a FIFO customer).
    fn valid_event(&mut self, fifo: bool, older: bool) -> Event {
        let customers = if fifo { FIFO_CUSTOMERS } else { CUSTOMERS };
        let known: Vec<usize> = (0..self.orders.len())
            .filter(|&i| FIFO_CUSTOMERS.contains(&self.orders[i].customer_id.as_str()) == fifo)
            .collect();
        self.clock += 2;
        let event_id = self.event_id();
        let cents = 100 + self.rng.next() % 500_000;
        if older && !known.is_empty() {
            // Older than the newest event of its order: stale once that is in.
            let order = &self.orders[known[self.rng.below(known.len())]];
            let at = order.newest.saturating_sub(1);
            return Event {
                event_id,
                order_id: order.order_id.clone(),
                customer_id: order.customer_id.clone(),
                status: "PAID",
                cents,
                currency: order.currency,
                occurred_at: Self::timestamp(at),
            };
        }
        if known.is_empty() || self.rng.below(10) < 4 {
            let order_id = format!("soak-o-{}", self.orders.len() + 1);
            let customer_id = (*self.rng.pick(customers)).to_owned();
            let currency = *self.rng.pick(CURRENCIES);
            self.orders.push(OrderModel {
                order_id: order_id.clone(),
                customer_id: customer_id.clone(),
                currency,
                newest: self.clock,
            });
            self.sent.new_orders += 1;
            return Event {
                event_id,
                order_id,
                customer_id,
                status: "PLACED",
                cents,
                currency,
                occurred_at: Self::timestamp(self.clock),
            };
        }
        let clock = self.clock;
        let index = known[self.rng.below(known.len())];
        let status = *self.rng.pick(&["PAID", "SHIPPED", "CANCELLED", "PAID"]);
        let order = &mut self.orders[index];
        order.newest = clock;
        self.sent.updates += 1;
        Event {
            event_id,
            order_id: order.order_id.clone(),
            customer_id: order.customer_id.clone(),
            status,
            cents,
            currency: order.currency,
            occurred_at: Self::timestamp(clock),
        }
    }

    fn record(&mut self, event: &Event) {
        self.events.entry(event.order_id.clone()).or_default().push(event.clone());
    }

    /// One tick's messages: (queue key, body, FIFO group).
    pub(crate) fn tick_messages(&mut self) -> Vec<(&'static str, String, Option<String>, bool)> {
        let mut out = Vec::new();
        for _ in 0..EVENTS_PER_TICK {
            let roll = self.rng.below(100);
            if roll < 8 && !self.standard_lines.is_empty() {
                let line = self.rng.pick(&self.standard_lines).clone();
                self.sent.exact_resends += 1;
                out.push((STANDARD_QUEUE, line, None, false));
            } else if roll < 15 && !self.standard_lines.is_empty() {
                let line = self.rng.pick(&self.standard_lines).clone();
                let value: Value = serde_json::from_str(&line).expect("the producer's own valid JSON");
                self.sent.reformatted_resends += 1;
                let pretty = serde_json::to_string_pretty(&value).expect("a JSON value serializes");
                out.push((STANDARD_QUEUE, pretty, None, false));
            } else if roll < 20 {
                let poison = match self.rng.below(4) {
                    0 => "{not json".to_owned(),
                    1 => r#"{"eventId": "x", "orderId": "o", "customerId": "c", "status": "REFUNDED", "amount": "1.00", "currency": "USD", "occurredAt": "2026-12-01T00:00:00Z"}"#.to_owned(),
                    2 => r#"{"eventId": "x", "orderId": "o", "customerId": "c", "status": "PAID", "amount": "1e30", "currency": "USD", "occurredAt": "2026-12-01T00:00:00Z"}"#.to_owned(),
                    _ => r#"{"eventId": "x", "orderId": "o", "status": "PAID", "amount": "1.00", "currency": "USD", "occurredAt": "2026-12-01T00:00:00Z"}"#.to_owned(),
                };
                self.sent.poison += 1;
                out.push((STANDARD_QUEUE, poison, None, true));
            } else if roll < 27 {
                let event = self.valid_event(false, true);
                self.sent.older_events += 1;
                self.record(&event);
                let line = event.json();
                self.standard_lines.push(line.clone());
                out.push((STANDARD_QUEUE, line, None, false));
            } else if roll < 40 {
                let event = self.valid_event(true, false);
                self.sent.fifo += 1;
                self.record(&event);
                out.push((FIFO_QUEUE, event.json(), Some(event.customer_id.clone()), false));
            } else {
                let event = self.valid_event(false, false);
                self.record(&event);
                let line = event.json();
                self.standard_lines.push(line.clone());
                out.push((STANDARD_QUEUE, line, None, false));
            }
        }
        out
    }

    /// An NDJSON object: valid events and two bad lines.
    pub(crate) fn object(&mut self) -> (String, Vec<u8>) {
        let mut lines = Vec::new();
        for _ in 0..OBJECT_LINES - 2 {
            let event = self.valid_event(false, false);
            self.record(&event);
            lines.push(event.json());
        }
        let bad_at = self.rng.below(lines.len());
        lines.insert(bad_at, "{\"eventId\": \"broken\"".to_owned());
        lines.push(r#"{"eventId": "b", "orderId": "o", "customerId": "c", "status": "PAID", "amount": "-5.00", "currency": "USD", "occurredAt": "2026-12-01T00:00:00Z"}"#.to_owned());
        self.sent.objects += 1;
        self.sent.object_lines += lines.len() as u64;
        self.sent.bad_object_lines += 2;
        let key = format!("soak-{}.ndjson", self.sent.objects);
        (key, (lines.join("\n") + "\n").into_bytes())
    }

    /// Where the stored orders differ from what the apply rule gives for
    /// every valid event sent (whatever the order and number of
    /// deliveries), and orders stored that were never sent.
    pub(crate) fn order_problems(&self, snapshot: &crate::report::StateSnapshot) -> Vec<String> {
        let mut problems = Vec::new();
        let expected = self.expected_orders();
        let stored: BTreeMap<&str, &crate::report::OrderRow> =
            snapshot.orders.iter().map(|o| (o.order_id.as_str(), o)).collect();
        for (id, event) in &expected {
            match stored.get(id) {
                None => problems.push(format!("order {id}: missing; its newest event is {}", event.event_id)),
                Some(row) => {
                    let want = (event.event_id.as_str(), event.status, event.amount().normalize(), event.currency);
                    let got = (
                        row.last_event_id.as_str(),
                        row.status.as_str(),
                        row.amount.normalize(),
                        row.currency.as_str(),
                    );
                    if want != got {
                        problems.push(format!("order {id}: stored {got:?}, the apply rule gives {want:?}"));
                    }
                }
            }
        }
        for id in stored.keys().filter(|id| !expected.contains_key(*id)) {
            problems.push(format!("order {id} is stored but was never sent"));
        }
        problems
    }

    /// Per order: the event the apply rule leaves stored (the greatest
    /// `(occurredAt, eventId)` of its valid events, whatever the order of
    /// arrival).
    pub(crate) fn expected_orders(&self) -> BTreeMap<&str, &Event> {
        self.events
            .iter()
            .filter_map(|(id, events)| {
                let newest = events.iter().max_by(|a, b| {
                    (a.occurred_at.as_str(), a.event_id.as_str()).cmp(&(b.occurred_at.as_str(), b.event_id.as_str()))
                })?;
                Some((id.as_str(), newest))
            })
            .collect()
    }
}

/// What the run observed, for the report.
#[derive(Debug, Default)]
struct Observed {
    kills: BTreeMap<String, u64>,
    invocations: u64,
    crashed_invocations: u64,
    /// Records of sqs-consumer invocations reported crashed: each may have
    /// been settled (and logged) before its answer was lost.
    crashed_sqs_records: u64,
    /// sqs-consumer messages received again: each may have been settled by
    /// its earlier delivery too (a 2 s local visibility timeout can end while
    /// a slow invocation still holds the message, and another poller takes it).
    redelivered_sqs: u64,
    function_errors: u64,
    item_failures: u64,
}

/// Runs the soak; fails when any check fails.
pub async fn run(options: Options) -> Result<()> {
    let start = Instant::now();
    let Options { duration, concurrency, seed, engine } = options;
    println!(
        "soak: {:.1} min of traffic, concurrency {concurrency}, seed {seed}, DynamoDB on {}",
        duration.as_secs_f64() / 60.0,
        engine.name()
    );
    header("building the functions");
    super::build_stack_functions().await?;
    header("starting the local stack, the fault proxy and the functions");
    let mut stack = Stack::start_with(engine).await?;
    let faults = vec![
        Fault::Throttle,
        Fault::ServerError,
        Fault::Drop,
        Fault::Slow(Duration::from_millis(300)),
        Fault::Slow(Duration::from_millis(2500)),
    ];
    // moto's transactions are not isolated from each other (see
    // `FaultProxy::serializing`): with overlapping invocations its DynamoDB
    // gets one request at a time. DynamoDB Local needs none.
    let serializer = match engine {
        Engine::Moto if concurrency > 1 => Some(FaultProxy::serializing(&stack.dynamodb_endpoint).await?),
        _ => None,
    };
    let upstream = serializer.as_ref().map_or_else(|| stack.dynamodb_endpoint.clone(), FaultProxy::endpoint);
    let proxy = FaultProxy::start(&upstream, Target::DynamoDb, Plan::Rate { rate: FAULT_RATE, faults, seed })
        .await
        .context("starting the fault proxy")?;
    stack.function_dynamodb_endpoint = Some(proxy.endpoint());
    stack.function_concurrency = concurrency;
    stack.start_lambda().await?;
    println!("  ready ({})", elapsed(start));
    let result = soak(&stack, &proxy, options, start).await;
    if result.is_err() {
        stack.keep_logs();
    }
    result
}

async fn soak(stack: &Stack, proxy: &FaultProxy, options: Options, start: Instant) -> Result<()> {
    let lambda = stack.lambda().context("lambda just started")?;
    let done = AtomicBool::new(false);
    let mut producer = Producer::new(options.seed);
    let mut observed = Observed::default();

    header("traffic: producer, faults and kills (one line per 100 invocations)");
    let produce = async {
        let result = produce(stack, &mut producer, options.duration).await;
        done.store(true, Ordering::SeqCst);
        result
    };
    let kill = kill(stack, &done, options.seed, &mut observed.kills);
    let mut reports: Vec<InvocationReport> = Vec::new();
    let drive = async {
        let mut driver = Driver::new(stack, lambda)?.concurrent(options.concurrency, options.concurrency);
        let mut progress = |r: &InvocationReport| {
            reports.push(r.clone());
            if reports.len().is_multiple_of(100) {
                println!("  {} invocations ({})", reports.len(), elapsed(start));
            }
        };
        while !done.load(Ordering::SeqCst) {
            if !driver.poll_once(&mut progress).await? {
                tokio::time::sleep(IDLE).await;
            }
        }
        println!("  producer stopped; draining ({})", elapsed(start));
        driver.drain(DRAIN_TIMEOUT, &mut progress).await?;
        println!("  drained ({})", elapsed(start));
        anyhow::Ok(driver.stats())
    };
    let ((), (), stats) = tokio::try_join!(produce, kill, drive)?;
    for r in &reports {
        observed.invocations += 1;
        observed.item_failures += r.item_failures as u64;
        if r.mapping.starts_with("sqs-consumer") {
            observed.redelivered_sqs += r.redelivered as u64;
        }
        match &r.function_error {
            Some(e) if e.starts_with(RUNTIME_EXIT_ERROR) => {
                observed.crashed_invocations += 1;
                if r.mapping.starts_with("sqs-consumer") {
                    observed.crashed_sqs_records += r.records as u64;
                }
            }
            Some(_) => observed.function_errors += 1,
            None => {}
        }
    }

    let checks = check(stack, lambda, &producer, &observed).await?;
    print_report(&producer.sent, &proxy.stats(), &observed, &stats, &checks, options, start);
    if !checks.problems.is_empty() {
        bail!(
            "the soak found {} problem(s); reproduce with: cargo xtask soak --minutes {} --concurrency {} --seed {}",
            checks.problems.len(),
            options.duration.as_secs_f64() / 60.0,
            options.concurrency,
            options.seed
        );
    }
    Ok(())
}

async fn produce(stack: &Stack, producer: &mut Producer, duration: Duration) -> Result<()> {
    let start = Instant::now();
    let prefix =
        stack.spec.bucket.notifications.first().context("stack.json declares no bucket notification")?.prefix.clone();
    let mut tick = 0u64;
    while start.elapsed() < duration {
        tick += 1;
        for (queue, body, group, poison) in producer.tick_messages() {
            let id = stack.send(queue, &body, group.as_deref()).await?;
            producer.sent.messages += 1;
            if poison {
                producer.poison_ids.insert(id);
            }
        }
        let readings = producer.tick_readings();
        stack.put_kinesis_records(TELEMETRY_STREAM, &readings).await?;
        if tick.is_multiple_of(OBJECT_EVERY_TICKS) {
            let (name, bytes) = producer.object();
            let key = format!("{prefix}{name}");
            stack.put_object(&key, bytes).await?;
            producer.objects.push(key);
        }
        tokio::time::sleep(TICK).await;
    }
    Ok(())
}

async fn kill(stack: &Stack, done: &AtomicBool, seed: u64, kills: &mut BTreeMap<String, u64>) -> Result<()> {
    let mut rng = Rng::new(seed ^ 0x6B69_6C6C);
    // The pipeline's functions: those fed by what the soak produces (the
    // order queues, the uploads' notification queue, the state table's
    // stream, the telemetry stream), not the other declared functions,
    // which see no traffic here.
    let prefix = stack.spec.bucket.notifications.first().map(|n| n.queue.clone());
    let fed = |source: &crate::spec::MappingSource| match source {
        crate::spec::MappingSource::Queue { queue } => {
            [STANDARD_QUEUE, FIFO_QUEUE].contains(&queue.as_str()) || Some(queue) == prefix.as_ref()
        }
        crate::spec::MappingSource::Table { table } => table == "state",
        crate::spec::MappingSource::Stream { stream } => stream == TELEMETRY_STREAM,
    };
    let mut functions: Vec<String> =
        stack.spec.mappings.iter().filter(|m| fed(&m.source)).map(|m| m.function.clone()).collect();
    functions.dedup();
    let (low, high) = KILL_EVERY;
    while !done.load(Ordering::SeqCst) {
        let spread = u64::try_from((high - low).as_millis()).unwrap_or(1);
        let wait = low + Duration::from_millis(rng.next() % spread);
        // Wake up early when the producer stops: no kill during the drain.
        let until = Instant::now() + wait;
        while Instant::now() < until && !done.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if done.load(Ordering::SeqCst) {
            break;
        }
        let function = rng.pick(&functions).clone();
        if stack.kill_one_function(&function, rng.below(64)).await? {
            *kills.entry(function).or_default() += 1;
        }
    }
    Ok(())
}

/// The checks and what they read.
struct Checks {
    problems: Vec<String>,
    accounting: BTreeMap<String, Accounting>,
    orders_checked: usize,
    /// sqs-consumer outcomes logged beyond one per message sent.
    settled_twice: u64,
}

impl Checks {
    /// The functions' accounting: sqs-consumer's logged outcomes (applied,
    /// stale, duplicate, quarantined) cover every message sent, and exceed
    /// it by at most the records of its invocations that crashed plus its
    /// messages received again (an invocation killed after it logged its
    /// summary is settled again when its messages come back; a kill fails
    /// the invocation that process held, as on Lambda; and a message whose
    /// visibility timeout ends while a slow invocation holds it goes to
    /// another poller too).
    fn accounting(&self) -> &BTreeMap<String, Accounting> {
        &self.accounting
    }
}

async fn check(
    stack: &Stack,
    lambda: &crate::lambda::Lambda,
    producer: &Producer,
    observed: &Observed,
) -> Result<Checks> {
    let verdict = scenario::verdict_allowing(
        stack,
        &lambda.log_text(),
        producer.sent.messages,
        &producer.objects,
        observed.crashed_sqs_records + observed.redelivered_sqs,
    )
    .await?;
    let mut problems = verdict.problems.clone();
    let snapshot = &verdict.snapshot;

    // Every order as the apply rule leaves it, no order more.
    problems.extend(producer.order_problems(snapshot));

    // Every poison message quarantined with a reason, under its queue.
    let queue = &stack.spec.queue(STANDARD_QUEUE)?.name;
    let source = format!("sqs/{queue}");
    let quarantined: BTreeSet<&str> = snapshot
        .quarantine
        .iter()
        .filter(|q| q.source == source && !q.reason.trim().is_empty())
        .map(|q| q.record_id.as_str())
        .collect();
    for id in &producer.poison_ids {
        if !quarantined.contains(id.as_str()) {
            problems.push(format!("poison message {id} is not quarantined under {source}"));
        }
    }
    let rejected: u64 = snapshot.manifests.iter().map(|m| m.rejected).sum();
    if rejected != producer.sent.bad_object_lines {
        problems
            .push(format!("{rejected} object line(s) rejected, {} bad line(s) sent", producer.sent.bad_object_lines));
    }

    // Kinesis: every device's counters are its readings, each once.
    let devices = &stack.spec.table("devices")?.name;
    for (device, (readings, wh)) in &producer.devices {
        let item = stack
            .dynamodb
            .get_item()
            .table_name(devices)
            .key("device", aws_sdk_dynamodb::types::AttributeValue::S((*device).to_owned()))
            .consistent_read(true)
            .send()
            .await
            .with_context(|| format!("reading device {device}"))?;
        let number = |name: &str| {
            item.item()
                .and_then(|i| i.get(name))
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let got = (number("readings"), number("wh"));
        if got != (*readings, *wh) {
            problems.push(format!("device {device}: counters {got:?}, the readings put give {:?}", (readings, wh)));
        }
    }
    let stream = &stack.spec.stream(TELEMETRY_STREAM)?.name;
    let kinesis_source = format!("kinesis/{stream}");
    let bad_quarantined = snapshot.quarantine.iter().filter(|q| q.source == kinesis_source).count() as u64;
    if bad_quarantined != producer.sent.bad_readings {
        problems.push(format!(
            "{bad_quarantined} reading(s) quarantined under {kinesis_source}, {} bad reading(s) put",
            producer.sent.bad_readings
        ));
    }
    let given_up = stack.queue_depth(TELEMETRY_FAILURES).await?;
    if given_up > 0 {
        problems.push(format!("{given_up} Kinesis batch(es) given up on in {TELEMETRY_FAILURES}"));
    }

    let sqs = verdict.accounting.get("sqs-consumer").copied().unwrap_or_default();
    let settled = sqs.applied + sqs.stale + sqs.duplicate + sqs.quarantined;
    Ok(Checks {
        problems,
        accounting: verdict.accounting,
        orders_checked: producer.events.len(),
        settled_twice: settled.saturating_sub(producer.sent.messages),
    })
}

fn print_report(
    sent: &Sent,
    faults: &Stats,
    observed: &Observed,
    stats: &BTreeMap<String, MappingStats>,
    checks: &Checks,
    options: Options,
    start: Instant,
) {
    header("soak report");
    println!(
        "  {:.1} min of traffic, concurrency {}, seed {}, {} in all",
        options.duration.as_secs_f64() / 60.0,
        options.concurrency,
        options.seed,
        elapsed(start)
    );
    let n = |v: u64| v.to_string();
    let mut rows = sent.rows("SQS messages sent", "  to the FIFO queue");
    rows.extend([
        vec!["Kinesis records put".into(), n(sent.kinesis_records)],
        vec!["  readings (in KPL aggregates)".into(), format!("{} ({})", sent.readings, sent.aggregated_readings)],
        vec!["  bad readings".into(), n(sent.bad_readings)],
    ]);
    print!("{}", table(&["events", "count"], rows));
    print!(
        "{}",
        table(
            &["DynamoDB faults", "count"],
            vec![
                vec!["forwarded untouched".into(), n(faults.forwarded)],
                vec!["throttled".into(), n(faults.throttled)],
                vec!["500".into(), n(faults.server_errors)],
                vec!["connection dropped".into(), n(faults.dropped)],
                vec!["answer delayed (0.3 s) or stalled (2.5 s)".into(), n(faults.slowed)],
            ]
        )
    );
    let kills: u64 = observed.kills.values().sum();
    let kill_detail = observed.kills.iter().map(|(f, k)| format!("{f} {k}")).collect::<Vec<_>>().join(", ");
    print!(
        "{}",
        table(
            &["invocations", "count"],
            vec![
                vec!["invocations".into(), n(observed.invocations)],
                vec!["  crashed (Runtime.ExitError)".into(), n(observed.crashed_invocations)],
                vec!["  other function errors".into(), n(observed.function_errors)],
                vec!["  records reported for retry".into(), n(observed.item_failures)],
                vec!["processes killed (SIGKILL)".into(), format!("{kills} ({kill_detail})")],
            ]
        )
    );
    print!(
        "{}",
        table(
            &["mapping", "invocations", "records", "deleted", "on-failure"],
            stats
                .iter()
                .map(|(m, s)| vec![m.clone(), n(s.invocations), n(s.records), n(s.deleted), n(s.sent_to_on_failure)])
                .collect()
        )
    );
    print!(
        "{}",
        table(
            &["function", "applied", "stale", "duplicate", "quarantined", "ignored", "retried"],
            checks
                .accounting()
                .iter()
                .map(|(f, a)| {
                    vec![
                        f.clone(),
                        n(a.applied),
                        n(a.stale),
                        n(a.duplicate),
                        n(a.quarantined),
                        n(a.ignored),
                        n(a.failed),
                    ]
                })
                .collect()
        )
    );
    println!(
        "  orders checked against the apply rule: {}; sqs-consumer outcomes logged twice: {} (bound: {} records of \
         crashed invocations + {} redelivered messages)",
        checks.orders_checked, checks.settled_twice, observed.crashed_sqs_records, observed.redelivered_sqs
    );
    if checks.problems.is_empty() {
        println!("\nINVARIANT HOLDS; every record accounted for");
    } else {
        println!("\nPROBLEMS:");
        for p in &checks.problems {
            println!("  - {p}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_workload() {
        let run = |seed| {
            let mut p = Producer::new(seed);
            let messages: Vec<String> = (0..50).flat_map(|_| p.tick_messages()).map(|m| m.1).collect();
            (messages, p.object().1)
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn the_model_keeps_the_newest_event_of_each_order() {
        let mut p = Producer::new(3);
        for _ in 0..200 {
            p.tick_messages();
        }
        assert!(p.sent.older_events > 0 && p.sent.updates > 0 && p.sent.poison > 0, "{:?}", p.sent);
        for (id, newest) in p.expected_orders() {
            for e in &p.events[id] {
                assert!(
                    (e.occurred_at.as_str(), e.event_id.as_str())
                        <= (newest.occurred_at.as_str(), newest.event_id.as_str())
                );
            }
        }
    }
}
