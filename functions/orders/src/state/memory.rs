//! An in-memory [`StateStore`] for unit tests of handlers and rules. It keeps
//! the same semantics as the DynamoDB store (apply rule, exactly-once deltas,
//! manifest checkpoint condition) and records every order change, in commit
//! order, so tests can feed those changes to the aggregator as a stream would.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use shared::dynamo::StoreError;
use shared::manifest::{Manifest, ManifestFn};
use shared::quarantine::{QuarantineStore, Quarantined};

use super::{DeltaError, DeltaRecord, Marker, Outcome, StateStore};
use crate::order::{ApplyOutcome, CustomerTotals, Order, OrderEvent, apply};

/// One committed change of an order, as a stream record would carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderChange {
    /// The order before (a stream record's old image); `None` for a new order.
    pub old: Option<Order>,
    /// The order after (the new image).
    pub new: Order,
}

#[derive(Debug, Default)]
struct Inner {
    // Hash maps where nothing reads them in order: every record of a
    // handler's in-process benchmark runs through them.
    orders: HashMap<String, Order>,
    totals: BTreeMap<String, CustomerTotals>,
    markers: HashMap<String, Option<String>>,
    /// The guarded path's: each order's last event's fingerprint.
    fingerprints: HashMap<String, String>,
    manifests: BTreeMap<(String, String, String), Manifest>,
    quarantine: BTreeMap<(String, String), Quarantined>,
    changes: Vec<OrderChange>,
}

/// The in-memory store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the state from the others.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stored orders, by order id.
    pub fn orders(&self) -> BTreeMap<String, Order> {
        self.lock().orders.iter().map(|(id, order)| (id.clone(), order.clone())).collect()
    }

    /// The stored customer totals, by customer id.
    pub fn totals(&self) -> BTreeMap<String, CustomerTotals> {
        self.lock().totals.clone()
    }

    /// The quarantined records, in (source, record id) order.
    pub fn quarantined(&self) -> Vec<Quarantined> {
        self.lock().quarantine.values().cloned().collect()
    }

    /// The object manifests, in (bucket, key, revision) order.
    pub fn manifests(&self) -> Vec<Manifest> {
        self.lock().manifests.values().cloned().collect()
    }

    /// Takes the order changes committed since the last call.
    pub fn take_changes(&self) -> Vec<OrderChange> {
        std::mem::take(&mut self.lock().changes)
    }
}

impl StateStore for MemoryStore {
    async fn apply_orders_guarded(
        &self,
        events: &[OrderEvent],
        markers: &[Marker],
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut inner = self.lock();
        // As the DynamoDB store: repeated keys and the batch's losers first,
        // then each winner by the apply rule against its stored order, a
        // reused event id told by the fingerprint the order keeps.
        let mut outcomes = super::dedupe_markers(events.len(), Some(markers));
        for i in super::decide_losers(events, &mut outcomes) {
            let (event, fingerprint) = (&events[i], markers[i].validation.clone().unwrap_or_default());
            let current = inner.orders.get(&event.order_id);
            let same_event = current.is_some_and(|o| o.last_event_id == event.event_id);
            if same_event && inner.fingerprints.get(&event.order_id).is_some_and(|f| *f != fingerprint) {
                outcomes[i] = Some(Outcome::KeyReused);
                continue;
            }
            outcomes[i] = Some(match apply(current, event) {
                ApplyOutcome::Applied(order) => {
                    inner.fingerprints.insert(order.order_id.clone(), fingerprint);
                    let old = inner.orders.insert(order.order_id.clone(), order.clone());
                    inner.changes.push(OrderChange { old, new: order });
                    Outcome::Applied
                }
                ApplyOutcome::Stale => Outcome::Stale,
                ApplyOutcome::Duplicate => Outcome::Duplicate,
            });
        }
        Ok(outcomes.into_iter().map(|o| o.unwrap_or(Outcome::Applied)).collect())
    }

    async fn apply_orders(
        &self,
        events: &[OrderEvent],
        markers: Option<&[Marker]>,
        manifest: Option<&ManifestFn<'_>>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut inner = self.lock();
        // Decide every outcome first, writing nothing: the manifest condition
        // must hold before anything is written (all or nothing, like a
        // transaction). Combining leaves one event per order to apply, so
        // none of them needs to see another's write.
        let mut applied = Vec::new();
        // The same pre-combination as the DynamoDB store (one write per order),
        // so both stores report the same outcomes.
        let mut outcomes = super::dedupe_markers(events.len(), markers);
        let mut new_markers = Vec::new();
        if let Some(markers) = markers {
            for (i, m) in markers.iter().enumerate() {
                if outcomes[i].is_some() {
                    continue;
                }
                match inner.markers.get(&m.key) {
                    Some(stored) if stored.is_some() && m.validation.is_some() && *stored != m.validation => {
                        outcomes[i] = Some(Outcome::KeyReused)
                    }
                    Some(_) => outcomes[i] = Some(Outcome::Duplicate),
                    None => new_markers.push((m.key.clone(), m.validation.clone())),
                }
            }
        }
        for i in super::decide_losers(events, &mut outcomes) {
            let event = &events[i];
            outcomes[i] = Some(match apply(inner.orders.get(&event.order_id), event) {
                ApplyOutcome::Applied(order) => {
                    applied.push(order);
                    Outcome::Applied
                }
                ApplyOutcome::Stale => Outcome::Stale,
                ApplyOutcome::Duplicate => Outcome::Duplicate,
            });
        }
        let outcomes: Vec<Outcome> = outcomes.into_iter().map(|o| o.unwrap_or(Outcome::Applied)).collect();
        if let Some(build) = manifest {
            let write = build(&outcomes);
            let m = &write.manifest;
            let id = (m.bucket.clone(), m.key.clone(), m.revision.clone());
            let current = inner.manifests.get(&id).map(|m| m.checkpoint);
            if current != write.expected {
                return Err(StoreError::ManifestConflict {
                    bucket: m.bucket.clone(),
                    key: m.key.clone(),
                    line: write.expected.map_or(0, |c| c.line),
                });
            }
            inner.manifests.insert(id, write.manifest);
        }
        inner.orders.reserve(applied.len());
        inner.changes.reserve(applied.len());
        for order in applied {
            // The marker path keeps no fingerprint on the order (its marker does).
            inner.fingerprints.remove(&order.order_id);
            let old = inner.orders.insert(order.order_id.clone(), order.clone());
            inner.changes.push(OrderChange { old, new: order });
        }
        inner.markers.extend(new_markers);
        Ok(outcomes)
    }

    async fn apply_deltas(&self, records: &[DeltaRecord]) -> (Vec<Outcome>, Option<DeltaError>) {
        let mut inner = self.lock();
        let mut outcomes = Vec::with_capacity(records.len());
        for record in records {
            if inner.markers.insert(record.idempotency_key.clone(), None).is_some() {
                outcomes.push(Outcome::Duplicate);
                continue;
            }
            // All of the record's deltas, or none: checked on copies first.
            let mut updated = Vec::with_capacity(record.deltas.len());
            for (customer, delta) in &record.deltas {
                let mut totals = inner.totals.get(customer).cloned().unwrap_or_default();
                if let Err(source) = totals.checked_add(delta) {
                    inner.markers.remove(&record.idempotency_key);
                    return (outcomes, Some(DeltaError::Overflow { customer: customer.clone(), source }));
                }
                updated.push((customer.clone(), totals));
            }
            inner.totals.extend(updated);
            outcomes.push(Outcome::Applied);
        }
        (outcomes, None)
    }

    async fn get_manifest(&self, bucket: &str, key: &str, revision: &str) -> Result<Option<Manifest>, StoreError> {
        Ok(self.lock().manifests.get(&(bucket.to_owned(), key.to_owned(), revision.to_owned())).cloned())
    }
}

impl QuarantineStore for MemoryStore {
    async fn write_quarantine(&self, records: &[Quarantined]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for r in records {
            inner.quarantine.insert((r.source.clone(), r.record_id.clone()), r.clone());
        }
        Ok(())
    }
}
