//! The Worker's queue handler (wasm32): the orders' glue on the adapter.
//!
//! The ingest queue goes to the adapter's object ingest with the orders'
//! line parser and chunk planner; every other queue carries order events,
//! decided together from one read of the rows they touch and committed in
//! one D1 batch (the orders' own commit, as `shared::Function::run` is on
//! Lambda), then acknowledged or retried by the adapter.

use std::collections::BTreeSet;

use orders::order::{OrderEvent, ValidationError, parse_order_event};
use shared_core::batch::Disposition;
use shared_core::quarantine::Quarantined;
use shared_workers::d1::{Db, DbError, Statement, select_in};
use shared_workers::r2::{Chunks, IngestSettings, ingest};
use shared_workers::{Batch, Consumer, Decided, Env, Error, back_off, now};

use crate::ledger::{
    Ledger, MARKER_COLUMNS, MarkerRecord, ORDER_COLUMNS, OrderRecord, TOTALS_COLUMNS, TotalsRecord, marker_of,
};

shared_workers::export_queue!(consume);

/// The orders' line parser: an NDJSON line, or a CSV row as the JSON object
/// of its fields, to an order event (a function is a line parser).
const PARSER: fn(&str) -> Result<OrderEvent, ValidationError> = parse_order_event;

/// Attempts of one batch's commit when a guard fails (a concurrent writer),
/// each after a random back-off; then the messages go back to the queue.
const CONFLICT_ATTEMPTS: u32 = 8;

async fn consume(batch: Batch, env: Env) -> Result<(), Error> {
    // Keys under `orders` unless IDEMPOTENCY_KEY_PREFIX says otherwise: the
    // Lambda functions' default, so either platform's markers match.
    let consumer = Consumer::new("orders", &env)?;
    let objects = IngestSettings::from_env(&env);
    if batch.queue() == objects.ingest_queue {
        ingest(&consumer, batch, &env, &objects, &PARSER, &OrderChunks).await;
    } else {
        let dispositions = orders(&consumer, &batch).await;
        let summary = consumer.answer(&batch, &dispositions);
        consumer.report(&batch, summary);
    }
    Ok(())
}

/// What a chunk of an object's order events does: decided from one read of
/// the rows they touch, without markers (the manifest's checkpoint, in the
/// same batch, makes a chunk once).
struct OrderChunks;

impl Chunks<OrderEvent> for OrderChunks {
    async fn plan(
        &self,
        db: &Db,
        events: &[&OrderEvent],
        now: &str,
    ) -> Result<(Vec<Decided>, Vec<Statement>), DbError> {
        let mut ledger = Ledger::new();
        load(db, &mut ledger, events, &BTreeSet::new()).await?;
        let decided = events.iter().map(|e| ledger.decide(e, None)).collect();
        Ok((decided, ledger.statements(now)))
    }
}

/// Loads the rows the events touch: their orders, markers and customers'
/// totals in one round trip, and the totals of customers their stored orders
/// belong to (an order moving between customers) in a second when needed.
async fn load(db: &Db, ledger: &mut Ledger, events: &[&OrderEvent], keys: &BTreeSet<String>) -> Result<(), DbError> {
    let order_ids: BTreeSet<String> = events.iter().map(|e| e.order_id.clone()).collect();
    let customers: BTreeSet<String> = events.iter().map(|e| e.customer_id.clone()).collect();
    let orders = select_in(ORDER_COLUMNS, "orders", "order_id", &order_ids);
    let totals = select_in(TOTALS_COLUMNS, "customer_totals", "customer_id", &customers);
    let markers = select_in(MARKER_COLUMNS, "idempotency", "key", keys);
    let (n_orders, n_totals) = (orders.len(), totals.len());
    let statements: Vec<Statement> = orders.into_iter().chain(totals).chain(markers).collect();
    let (mut order_rows, mut totals_rows, mut marker_rows) = (Vec::new(), Vec::new(), Vec::new());
    for (i, r) in db.run(&statements).await?.iter().enumerate() {
        if i < n_orders {
            order_rows.extend(r.rows::<OrderRecord>()?);
        } else if i < n_orders + n_totals {
            totals_rows.extend(r.rows::<TotalsRecord>()?);
        } else {
            marker_rows.extend(r.rows::<MarkerRecord>()?);
        }
    }
    ledger.load_orders(&order_ids, order_rows);
    ledger.load_totals(&customers, totals_rows);
    ledger.load_markers(marker_rows);
    let more = ledger.customers_to_load(&customers);
    if !more.is_empty() {
        let mut rows = Vec::new();
        for r in db.run(&select_in(TOTALS_COLUMNS, "customer_totals", "customer_id", &more)).await? {
            rows.extend(r.rows::<TotalsRecord>()?);
        }
        ledger.load_totals(&more, rows);
    }
    Ok(())
}

/// A message's event with its idempotency key and fingerprint, or why it
/// is not one.
type Parsed = Result<(OrderEvent, (String, String)), String>;

/// A batch of order events, decided together and committed in one D1 batch:
/// each message's outcome, or quarantined with its reason; every message
/// failed (to be retried) when the batch cannot commit, since then nothing
/// of it was applied.
async fn orders(consumer: &Consumer, batch: &Batch) -> Vec<Disposition> {
    let (db, keys, source) = (consumer.db(), consumer.settings().keys(), Consumer::source(batch));
    let messages = batch.messages();
    let parsed: Vec<Parsed> = messages
        .iter()
        .map(|m| {
            parse_order_event(m.body())
                .map(|e| {
                    let marker = marker_of(&keys, &e);
                    (e, marker)
                })
                .map_err(|e| e.to_string())
        })
        .collect();
    let events: Vec<&OrderEvent> = parsed.iter().filter_map(|p| p.as_ref().ok().map(|(e, _)| e)).collect();
    let keys: BTreeSet<String> = parsed.iter().filter_map(|p| p.as_ref().ok().map(|(_, (k, _))| k.clone())).collect();
    let mut why = "the commit kept conflicting with other writers".to_owned();
    for attempt in 0..CONFLICT_ATTEMPTS {
        back_off(attempt).await;
        let mut ledger = Ledger::new();
        if let Err(e) = load(db, &mut ledger, &events, &keys).await {
            why = format!("reading D1 failed: {e}");
            continue;
        }
        let mut dispositions = Vec::with_capacity(messages.len());
        for (message, parsed) in messages.iter().zip(&parsed) {
            let decided = match parsed {
                Ok((event, marker)) => ledger.decide(event, Some(marker.clone())),
                Err(reason) => Err(reason.clone()),
            };
            dispositions.push(match decided {
                Ok(outcome) => Disposition::Done(outcome),
                Err(reason) => {
                    ledger.quarantine(Quarantined::new(&source, message.id(), reason, message.body()));
                    Disposition::Quarantined
                }
            });
        }
        match db.run(&ledger.statements(&now())).await {
            Ok(_) => return dispositions,
            Err(e) if e.is_conflict() => why = format!("the commit kept conflicting with other writers: {e}"),
            Err(e) => why = format!("committing to D1 failed: {e}"),
        }
    }
    shared_workers::worker::console_error!("{why}; the batch will be retried");
    messages.iter().map(|_| Disposition::Failed(why.clone())).collect()
}
