//! What a batch (or an object's chunk) does to D1, decided in memory.
//!
//! A [`Ledger`] is loaded with the rows the records touch (orders, customer
//! totals, idempotency markers, the object's manifest), then decides each
//! record in order with the orders' rules ([`order::apply`],
//! [`order::totals_delta`], [`CustomerTotals::checked_add`]), so a later
//! record of the batch sees the earlier ones' effects: each ends in the
//! core's [`Outcome`] or is rejected with its reason (quarantined as the
//! core's [`Quarantined`]). [`Ledger::statements`] turns the result into
//! the statements of one D1 batch (the adapter's [`Statement`]s): every
//! write guarded by what was read (the adapter's [`d1::guard`]), so the
//! batch aborts as a whole if anything changed in between. An object's
//! chunk goes through the adapter's ingest, which adds its quarantine rows
//! and its manifest to the same batch.
//!
//! Schema: `infra/cloudflare/migrations/`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use orders::order::{self, ApplyOutcome, Currency, CustomerTotals, Order, OrderEvent, OrderStatus};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use shared_core::batch::Outcome;
use shared_core::key::Keys;
use shared_core::quarantine::Quarantined;
use shared_workers::Decided;
use shared_workers::d1::{self, Param, Statement};

/// The idempotency key and fingerprint of an order event from a queue: the
/// core's `/eventId` body key under `keys`' prefix and the fingerprint of
/// the validated event, as `sqs-consumer` computes them.
pub fn marker_of(keys: &Keys, event: &OrderEvent) -> (String, String) {
    (keys.body_string("/eventId", &event.event_id), order::fingerprint(event))
}

/// A record's end as the `outcome` of its idempotency marker.
fn marker_outcome(decided: &Decided) -> &'static str {
    match decided {
        Ok(Outcome::Applied) => "APPLIED",
        Ok(Outcome::Stale) => "STALE",
        Ok(Outcome::Duplicate) => "DUPLICATE",
        Ok(Outcome::KeyReused) | Err(_) => "QUARANTINED",
    }
}

fn text(s: impl Into<String>) -> Param {
    Param::Text(s.into())
}

/// The guard after an update of the ledger's rows: it fails the batch when
/// the update matched nothing (the row moved since it was read).
fn guard() -> Statement {
    d1::guard("ledger")
}

/// Columns of [`OrderRecord`].
pub const ORDER_COLUMNS: &str = "order_id, customer_id, status, amount, currency, occurred_at, last_event_id, version";
/// Columns of [`TotalsRecord`].
pub const TOTALS_COLUMNS: &str = "customer_id, order_count, totals, version";
/// Columns of [`MarkerRecord`].
pub const MARKER_COLUMNS: &str = "key, fingerprint";

/// A row of `orders`, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    /// `orderId`.
    pub order_id: String,
    /// `customerId` of the latest event.
    pub customer_id: String,
    /// `status` of the latest event.
    pub status: String,
    /// `amount`, exact decimal text.
    pub amount: String,
    /// `currency`.
    pub currency: String,
    /// `occurredAt`, RFC 3339 UTC.
    pub occurred_at: String,
    /// The latest event's id.
    pub last_event_id: String,
    /// Events applied; the write guard.
    pub version: i64,
}

impl OrderRecord {
    /// The stored order; an error names what does not read back (rows are
    /// not validated input).
    pub fn to_order(&self) -> Result<Order, String> {
        let status: OrderStatus = serde_json::from_value(serde_json::Value::String(self.status.clone()))
            .map_err(|_| format!("status {:?} is not an order status", self.status))?;
        let amount: Decimal =
            self.amount.parse().map_err(|_| format!("amount {:?} is not an exact decimal", self.amount))?;
        let currency =
            Currency::parse(&self.currency).ok_or_else(|| format!("currency {:?} is not ISO 4217", self.currency))?;
        let occurred_at = order::parse_timestamp(&self.occurred_at)
            .ok_or_else(|| format!("occurred_at {:?} is not an RFC 3339 timestamp", self.occurred_at))?;
        let version = u64::try_from(self.version).map_err(|_| format!("version {} is negative", self.version))?;
        Ok(Order {
            order_id: self.order_id.clone(),
            customer_id: self.customer_id.clone(),
            status,
            amount,
            currency,
            occurred_at,
            last_event_id: self.last_event_id.clone(),
            version,
        })
    }
}

/// A row of `customer_totals`, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TotalsRecord {
    /// `customerId`.
    pub customer_id: String,
    /// Orders that count.
    pub order_count: i64,
    /// Per-currency sums: a JSON object of exact decimal strings.
    pub totals: String,
    /// Writes so far; the write guard.
    pub version: i64,
}

impl TotalsRecord {
    /// The stored totals; an error names what does not read back.
    pub fn to_totals(&self) -> Result<CustomerTotals, String> {
        let totals: BTreeMap<Currency, Decimal> = serde_json::from_str(&self.totals)
            .map_err(|e| format!("totals {:?} do not read back: {e}", order::truncate(&self.totals, 80)))?;
        Ok(CustomerTotals { order_count: self.order_count, totals })
    }
}

/// A row of `idempotency`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkerRecord {
    /// The idempotency key.
    pub key: String,
    /// The fingerprint of the event that took it.
    pub fingerprint: String,
}

/// A row as read, or absent, or present but unreadable (the reason).
#[derive(Debug, Clone)]
enum Slot<T> {
    Absent,
    Present(T),
    Unreadable(String),
}

/// Fills `slots` and `versions` with the ids `asked` for (absent unless a
/// row came back) and the rows read: (the value or why it does not read
/// back, the row's version, its id).
fn load<T>(
    slots: &mut HashMap<String, Slot<T>>,
    versions: &mut HashMap<String, Option<i64>>,
    asked: &BTreeSet<String>,
    rows: impl Iterator<Item = (Result<T, String>, i64, String)>,
) {
    for id in asked {
        slots.entry(id.clone()).or_insert(Slot::Absent);
        versions.entry(id.clone()).or_insert(None);
    }
    for (value, version, id) in rows {
        versions.insert(id.clone(), Some(version));
        slots.insert(id, value.map_or_else(Slot::Unreadable, Slot::Present));
    }
}

/// The batch's view of the rows it touches and what it changes.
#[derive(Debug, Default)]
pub struct Ledger {
    orders: HashMap<String, Slot<Order>>,
    /// Version of each order row as read (`None`: absent).
    order_read: HashMap<String, Option<i64>>,
    totals: HashMap<String, Slot<CustomerTotals>>,
    totals_read: HashMap<String, Option<i64>>,
    markers: HashMap<String, String>,
    dirty_orders: BTreeSet<String>,
    dirty_totals: BTreeSet<String>,
    new_markers: Vec<(String, String, &'static str)>,
    quarantine: Vec<Quarantined>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records which orders were asked for and the rows found: an id asked
    /// for and not found is absent.
    pub fn load_orders(&mut self, asked: &BTreeSet<String>, rows: Vec<OrderRecord>) {
        let rows = rows.into_iter().map(|r| (r.to_order(), r.version, r.order_id));
        load(&mut self.orders, &mut self.order_read, asked, rows);
    }

    /// Customers whose totals a change of the loaded orders may touch and
    /// that are not loaded yet: an order can move between customers.
    pub fn customers_to_load(&self, events: &BTreeSet<String>) -> BTreeSet<String> {
        let stored = self.orders.values().filter_map(|s| match s {
            Slot::Present(o) => Some(o.customer_id.clone()),
            _ => None,
        });
        events.iter().cloned().chain(stored).filter(|c| !self.totals.contains_key(c)).collect()
    }

    /// Records which customers were asked for and the rows found.
    pub fn load_totals(&mut self, asked: &BTreeSet<String>, rows: Vec<TotalsRecord>) {
        let rows = rows.into_iter().map(|r| (r.to_totals(), r.version, r.customer_id));
        load(&mut self.totals, &mut self.totals_read, asked, rows);
    }

    /// Records the markers found.
    pub fn load_markers(&mut self, rows: Vec<MarkerRecord>) {
        self.markers.extend(rows.into_iter().map(|m| (m.key, m.fingerprint)));
    }

    /// Quarantines a record with its reason.
    pub fn quarantine(&mut self, record: Quarantined) {
        self.quarantine.push(record);
    }

    /// Decides one event, with its idempotency marker when it has one (queue
    /// messages do; object lines are keyed by the apply rule alone). A key
    /// used before with a different payload is rejected with a reason that
    /// names it.
    pub fn decide(&mut self, event: &OrderEvent, marker: Option<(String, String)>) -> Decided {
        if let Some((key, fingerprint)) = &marker
            && let Some(stored) = self.markers.get(key)
        {
            return if stored == fingerprint {
                Ok(Outcome::Duplicate)
            } else {
                Err(format!("idempotency key {key} was already used with a different payload"))
            };
        }
        let current = match self.orders.get(&event.order_id) {
            Some(Slot::Present(o)) => Some(o.clone()),
            Some(Slot::Unreadable(e)) => {
                return Err(format!("stored order {} does not read back: {e}", event.order_id));
            }
            Some(Slot::Absent) | None => None,
        };
        let decided = match order::apply(current.as_ref(), event) {
            ApplyOutcome::Stale => Ok(Outcome::Stale),
            ApplyOutcome::Duplicate => Ok(Outcome::Duplicate),
            ApplyOutcome::Applied(new) => {
                let deltas = match order::totals_delta(current.as_ref(), Some(&new)) {
                    Ok(d) => d,
                    Err(e) => return Err(format!("the order's contribution: {e}")),
                };
                let mut updated = Vec::with_capacity(deltas.len());
                for (customer, delta) in deltas {
                    let mut totals = match self.totals.get(&customer) {
                        Some(Slot::Present(t)) => t.clone(),
                        Some(Slot::Unreadable(e)) => {
                            return Err(format!("stored totals of customer {customer} do not read back: {e}"));
                        }
                        Some(Slot::Absent) | None => CustomerTotals::default(),
                    };
                    if let Err(e) = totals.checked_add(&delta) {
                        return Err(format!("customer {customer}'s totals: {e}"));
                    }
                    updated.push((customer, totals));
                }
                for (customer, totals) in updated {
                    self.totals.insert(customer.clone(), Slot::Present(totals));
                    self.dirty_totals.insert(customer);
                }
                self.dirty_orders.insert(new.order_id.clone());
                self.orders.insert(new.order_id.clone(), Slot::Present(new));
                Ok(Outcome::Applied)
            }
        };
        if let Some((key, fingerprint)) = marker {
            self.markers.insert(key.clone(), fingerprint.clone());
            self.new_markers.push((key, fingerprint, marker_outcome(&decided)));
        }
        decided
    }

    /// The D1 batch that commits everything decided, `now` (RFC 3339) as
    /// the time of markers and quarantine rows. Each write is guarded by
    /// what was read: a concurrent change makes the batch fail as a whole.
    pub fn statements(&self, now: &str) -> Vec<Statement> {
        let mut out = Vec::new();
        for id in &self.dirty_orders {
            let Some(Slot::Present(o)) = self.orders.get(id) else { continue };
            let values = vec![
                text(&o.customer_id),
                text(o.status.as_str()),
                text(o.amount.to_string()),
                text(o.currency.as_str()),
                text(order::format_timestamp(&o.occurred_at)),
                text(&o.last_event_id),
                Param::Int(i64::try_from(o.version).unwrap_or(i64::MAX)),
            ];
            match self.order_read.get(id).copied().flatten() {
                None => {
                    let mut params = vec![text(id)];
                    params.extend(values);
                    out.push(Statement::with_params(
                        "INSERT INTO orders (order_id, customer_id, status, amount, currency, occurred_at, last_event_id, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        params,
                    ));
                }
                Some(read) => {
                    let mut params = values;
                    params.extend([text(id), Param::Int(read)]);
                    out.push(Statement::with_params(
                        "UPDATE orders SET customer_id = ?, status = ?, amount = ?, currency = ?, occurred_at = ?, last_event_id = ?, version = ? WHERE order_id = ? AND version = ?",
                        params,
                    ));
                    out.push(guard());
                }
            }
        }
        for customer in &self.dirty_totals {
            let Some(Slot::Present(t)) = self.totals.get(customer) else { continue };
            let sums = serde_json::to_string(&t.totals).unwrap_or_else(|_| "{}".into());
            match self.totals_read.get(customer).copied().flatten() {
                None => out.push(Statement::with_params(
                    "INSERT INTO customer_totals (customer_id, order_count, totals, version) VALUES (?, ?, ?, 1)",
                    vec![text(customer), Param::Int(t.order_count), text(sums)],
                )),
                Some(read) => {
                    out.push(Statement::with_params(
                        "UPDATE customer_totals SET order_count = ?, totals = ?, version = version + 1 WHERE customer_id = ? AND version = ?",
                        vec![Param::Int(t.order_count), text(sums), text(customer), Param::Int(read)],
                    ));
                    out.push(guard());
                }
            }
        }
        for (key, fingerprint, outcome) in &self.new_markers {
            out.push(Statement::with_params(
                "INSERT INTO idempotency (key, fingerprint, outcome, recorded_at) VALUES (?, ?, ?, ?)",
                vec![text(key), text(fingerprint), text(*outcome), text(now)],
            ));
        }
        out.extend(self.quarantine.iter().map(|q| d1::quarantine("quarantine", q, now)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orders::order::parse_order_event;

    /// The orders' keys, under the Worker's default prefix.
    fn keys() -> Keys {
        Keys::new("orders")
    }

    fn event(id: &str, order: &str, customer: &str, status: &str, amount: &str, at: &str) -> OrderEvent {
        parse_order_event(&format!(
            r#"{{"eventId":"{id}","orderId":"{order}","customerId":"{customer}","status":"{status}","amount":"{amount}","currency":"EUR","occurredAt":"{at}"}}"#
        ))
        .unwrap()
    }

    fn loaded(orders: Vec<OrderRecord>, totals: Vec<TotalsRecord>, events: &[&OrderEvent]) -> Ledger {
        let mut ledger = Ledger::new();
        let ids = events.iter().map(|e| e.order_id.clone()).collect();
        ledger.load_orders(&ids, orders);
        let customers = ledger.customers_to_load(&events.iter().map(|e| e.customer_id.clone()).collect());
        ledger.load_totals(&customers, totals);
        ledger
    }

    #[test]
    fn a_new_order_inserts_the_order_the_totals_and_the_marker_unguarded() {
        let e = event("e1", "o1", "c1", "PLACED", "10.50", "2026-11-01T10:00:00Z");
        let mut ledger = loaded(vec![], vec![], &[&e]);
        assert_eq!(ledger.decide(&e, Some(marker_of(&keys(), &e))), Ok(Outcome::Applied));
        let sql: Vec<String> = ledger.statements("now").into_iter().map(|s| s.sql().to_owned()).collect();
        assert!(sql[0].starts_with("INSERT INTO orders"), "{sql:?}");
        assert!(sql[1].starts_with("INSERT INTO customer_totals"), "{sql:?}");
        assert!(sql[2].starts_with("INSERT INTO idempotency"), "{sql:?}");
        assert_eq!(sql.len(), 3);
    }

    #[test]
    fn an_update_is_guarded_by_the_version_read_and_moves_totals_between_customers() {
        let stored = OrderRecord {
            order_id: "o1".into(),
            customer_id: "c-old".into(),
            status: "PLACED".into(),
            amount: "5".into(),
            currency: "EUR".into(),
            occurred_at: "2026-11-01T09:00:00Z".into(),
            last_event_id: "e0".into(),
            version: 3,
        };
        let old_totals =
            TotalsRecord { customer_id: "c-old".into(), order_count: 1, totals: r#"{"EUR":"5"}"#.into(), version: 7 };
        let e = event("e1", "o1", "c-new", "PAID", "6.00", "2026-11-01T10:00:00Z");
        let mut ledger = loaded(vec![stored], vec![old_totals], &[&e]);
        assert_eq!(ledger.decide(&e, None), Ok(Outcome::Applied));
        let statements = ledger.statements("now");
        let update = &statements[0];
        assert!(update.sql().starts_with("UPDATE orders"));
        assert_eq!(update.params().last(), Some(&Param::Int(3)), "guarded by the version read");
        assert_eq!(statements[1], guard());
        let old = statements
            .iter()
            .find(|s| s.sql().contains("customer_totals") && s.params().contains(&text("c-old")))
            .unwrap();
        assert!(old.sql().starts_with("UPDATE customer_totals"));
        assert_eq!(old.params()[0], Param::Int(0), "the order left c-old");
        assert_eq!(old.params()[1], text("{}"));
        let new = statements
            .iter()
            .find(|s| s.sql().contains("customer_totals") && s.params().contains(&text("c-new")))
            .unwrap();
        assert!(new.sql().starts_with("INSERT INTO customer_totals"));
        assert_eq!(new.params()[2], text(r#"{"EUR":"6"}"#));
    }

    #[test]
    fn later_records_see_earlier_ones_and_markers_tell_duplicates_from_reused_keys() {
        let placed = event("e1", "o1", "c1", "PLACED", "10", "2026-11-01T10:00:00Z");
        let older = event("e0", "o1", "c1", "PLACED", "9", "2026-11-01T09:00:00Z");
        let mut ledger = loaded(vec![], vec![], &[&placed, &older]);
        assert_eq!(ledger.decide(&placed, Some(marker_of(&keys(), &placed))), Ok(Outcome::Applied));
        assert_eq!(ledger.decide(&older, Some(marker_of(&keys(), &older))), Ok(Outcome::Stale));
        assert_eq!(ledger.decide(&placed, Some(marker_of(&keys(), &placed))), Ok(Outcome::Duplicate));
        let changed = event("e1", "o1", "c1", "PLACED", "11", "2026-11-01T10:00:00Z");
        match ledger.decide(&changed, Some(marker_of(&keys(), &changed))) {
            Err(reason) => assert!(reason.contains("different payload"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let markers =
            ledger.statements("now").iter().filter(|s| s.sql().starts_with("INSERT INTO idempotency")).count();
        assert_eq!(markers, 2, "one marker per first sight of a key");
    }

    #[test]
    fn unreadable_stored_rows_and_overflowing_totals_reject_the_record_alone() {
        let bad = OrderRecord {
            order_id: "o1".into(),
            customer_id: "c1".into(),
            status: "PLACED".into(),
            amount: "1e999".into(),
            currency: "EUR".into(),
            occurred_at: "2026-11-01T09:00:00Z".into(),
            last_event_id: "e0".into(),
            version: 1,
        };
        let full = TotalsRecord {
            customer_id: "c2".into(),
            order_count: i64::MAX,
            totals: r#"{"EUR":"1"}"#.into(),
            version: 1,
        };
        let on_bad = event("e1", "o1", "c1", "PAID", "1", "2026-11-01T10:00:00Z");
        let on_full = event("e2", "o2", "c2", "PLACED", "1", "2026-11-01T10:00:00Z");
        let fine = event("e3", "o3", "c3", "PLACED", "1", "2026-11-01T10:00:00Z");
        let mut ledger = loaded(vec![bad], vec![full], &[&on_bad, &on_full, &fine]);
        match ledger.decide(&on_bad, None) {
            Err(r) => assert!(r.contains("amount \"1e999\""), "{r}"),
            other => panic!("{other:?}"),
        }
        match ledger.decide(&on_full, None) {
            Err(r) => assert!(r.contains("orderCount would overflow"), "{r}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(ledger.decide(&fine, None), Ok(Outcome::Applied));
        let statements = ledger.statements("now");
        assert_eq!(statements.len(), 2, "only o3 and c3: {statements:?}");
    }

    #[test]
    fn marker_keys_take_the_configured_prefix_and_the_default_matches_stored_markers() {
        let e = event("e1", "o1", "c1", "PLACED", "1", "2026-11-01T10:00:00Z");
        assert_eq!(marker_of(&keys(), &e).0, "orders#sqs-body#/eventId=e1", "the key stored markers hold");
        assert_eq!(marker_of(&Keys::new("shop"), &e).0, "shop#sqs-body#/eventId=e1");
        assert_eq!(marker_of(&Keys::new("shop"), &e).1, marker_of(&keys(), &e).1, "the fingerprint is the event's");
    }

    #[test]
    fn quarantined_raw_records_are_cut_to_the_cores_bound_in_bytes() {
        let raw = "é".repeat(shared_core::quarantine::MAX_QUARANTINED_RAW_BYTES);
        let mut ledger = Ledger::new();
        ledger.quarantine(Quarantined::new("queue/q", "m-1", "malformed", &raw));
        let row = ledger.statements("now").pop().unwrap();
        let Param::Text(kept) = &row.params()[3] else { panic!("{row:?}") };
        assert_eq!(kept.len(), shared_core::quarantine::MAX_QUARANTINED_RAW_BYTES, "bytes, not characters");
        assert!(raw.starts_with(kept.as_str()));
    }
}
