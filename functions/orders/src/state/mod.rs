//! Typed persistence of the state table: orders and customer totals (and,
//! through the toolkit, object manifests and quarantined records), behind
//! one small port ([`StateStore`]) with a DynamoDB implementation and an
//! in-memory one for unit tests.
//!
//! Every write that must happen once commits together with what proves it
//! happened: an order update carries its apply-rule condition, a totals delta
//! commits with its idempotency marker, an object chunk's orders commit with
//! the manifest checkpoint that covers them.

pub mod dynamo;
pub mod item;
pub mod memory;

use std::collections::BTreeMap;
use std::future::Future;

use shared::dynamo::StoreError;
use shared::error::{Classify, ErrorClass};
use shared::manifest::{Manifest, ManifestFn};
use shared::quarantine::QuarantineStore;

use crate::order::{CustomerTotals, OrderEvent};

pub use shared::batch::Outcome;

/// An idempotency marker: written in the same transaction as the effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// The idempotency key (the marker item's partition key).
    pub key: String,
    /// Hash of the payload, to tell a duplicate from a reused key.
    pub validation: Option<String>,
}

/// A stream record's effect on customer totals, with the idempotency key that
/// makes it happen once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaRecord {
    /// The key of the marker written with the deltas.
    pub idempotency_key: String,
    /// customerId -> delta. Empty when the change does not affect totals
    /// (the marker is still written, so a replay is seen as a duplicate).
    pub deltas: BTreeMap<String, CustomerTotals>,
}

/// Why applying totals deltas stopped.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Adding a record's delta to a customer's totals would overflow
    /// (permanent: that record is quarantined, the others go on).
    #[error("customer {customer}: {source}")]
    Overflow {
        /// The customer whose totals would overflow.
        customer: String,
        /// What overflowed.
        source: crate::order::TotalsOverflow,
    },
}

impl Classify for DeltaError {
    fn class(&self) -> ErrorClass {
        match self {
            Self::Store(e) => e.class(),
            Self::Overflow { .. } => ErrorClass::Permanent,
        }
    }
}

/// The state table port.
pub trait StateStore: QuarantineStore {
    /// Applies order events by the apply rule; returns one outcome per event,
    /// in input order. With a manifest, the manifest write commits in the same
    /// transaction as the last group of orders; it is built from the outcomes
    /// the events will have if that transaction commits.
    ///
    /// With `markers` (one per event), each event also writes its idempotency
    /// marker in the same transaction: an event whose marker exists is a
    /// duplicate (or `KeyReused`) and changes nothing.
    fn apply_orders(
        &self,
        events: &[OrderEvent],
        markers: Option<&[Marker]>,
        manifest: Option<&ManifestFn<'_>>,
    ) -> impl Future<Output = Result<Vec<Outcome>, StoreError>> + Send;

    /// Applies order events guarded by their orders, without markers: each
    /// order item keeps its last event's id and fingerprint, so the apply
    /// rule's own condition makes a redelivered event change nothing (a
    /// duplicate when the order still holds it, stale once a later event
    /// superseded it) and a reused event id with another payload is told
    /// (`KeyReused`, while the order holds it). `markers` (one per event:
    /// its key, here derived from its event id, and its fingerprint) decide
    /// keys repeated within the batch and name a reused key. The cheap path
    /// of [`shared::exactly_once`]: one write request unit per applied event
    /// instead of four, and none for a stale or duplicate one. The default
    /// commits through [`apply_orders`](Self::apply_orders) with the markers.
    fn apply_orders_guarded(
        &self,
        events: &[OrderEvent],
        markers: &[Marker],
    ) -> impl Future<Output = Result<Vec<Outcome>, StoreError>> + Send {
        self.apply_orders(events, Some(markers), None)
    }

    /// Applies an object chunk's order events guarded by their orders, as
    /// [`apply_orders_guarded`](Self::apply_orders_guarded) does, then
    /// commits the manifest `manifest` builds from their outcomes: the
    /// chunk's checkpoint, conditional on the one it started from. Each
    /// order written keeps the chunk's identity (object revision and
    /// starting checkpoint) as its fingerprint, so a chunk read again after
    /// its orders committed but its checkpoint did not (the invocation died
    /// in between) counts its own writes as applied, and the manifest's
    /// counts come out as if nothing had failed. The default commits the
    /// chunk and its manifest in transactions
    /// ([`apply_orders`](Self::apply_orders)).
    fn apply_chunk_guarded(
        &self,
        events: &[OrderEvent],
        manifest: &ManifestFn<'_>,
    ) -> impl Future<Output = Result<Vec<Outcome>, StoreError>> + Send {
        self.apply_orders(events, None, Some(manifest))
    }

    /// Applies totals deltas exactly once each, in order. Returns the outcomes
    /// of the records committed (a prefix of `records`) and the error that
    /// stopped the rest, if any.
    fn apply_deltas(&self, records: &[DeltaRecord]) -> impl Future<Output = (Vec<Outcome>, Option<DeltaError>)> + Send;

    /// Reads the manifest of an object revision.
    fn get_manifest(
        &self,
        bucket: &str,
        key: &str,
        revision: &str,
    ) -> impl Future<Output = Result<Option<Manifest>, StoreError>> + Send;
}

/// Commits totals deltas in shard order, a chunk at a time, keeping the
/// stream's order duty: a record that fails for good (its totals would
/// overflow, a stored total that does not read) is reported permanent (the
/// engine quarantines it) and the rest go on; at the first transient
/// failure the shard stops, the records after it not attempted, and Lambda
/// retries from that record.
pub async fn commit_deltas<S: StateStore>(store: &S, deltas: Vec<DeltaRecord>) -> shared::engine::Committed {
    use shared::engine::CommitError;
    let mut results: Vec<Result<Outcome, CommitError>> = Vec::with_capacity(deltas.len());
    while results.len() < deltas.len() {
        let (outcomes, error) = store.apply_deltas(&deltas[results.len()..]).await;
        results.extend(outcomes.into_iter().map(Ok));
        let Some(e) = error else { break };
        let error = CommitError::from(&e);
        let permanent = matches!(error, CommitError::Permanent(_));
        if !permanent {
            tracing::error!(error = %e, "applying totals failed; the shard retries from the first unapplied record");
        }
        results.push(Err(error));
        if !permanent {
            break;
        }
    }
    results
}

pub(crate) use crate::order::combine as combine_orders;

/// Of the events not yet `decided`, decides those that lose their order to a
/// greater one of the same batch (stale or duplicate) and returns the
/// winners' indices: one event per order is left to the apply rule.
pub(crate) fn decide_losers(events: &[OrderEvent], decided: &mut [Option<Outcome>]) -> Vec<usize> {
    let candidates: Vec<usize> = (0..events.len()).filter(|i| decided[*i].is_none()).collect();
    let candidate_events: Vec<&OrderEvent> = candidates.iter().map(|i| &events[*i]).collect();
    let (winners, losers) = combine_orders(&candidate_events);
    for (c, outcome) in losers.into_iter().enumerate() {
        if outcome.is_some() {
            decided[candidates[c]] = outcome;
        }
    }
    winners.into_iter().map(|w| candidates[w]).collect()
}

/// Decides events whose key repeats an earlier event's key in the same batch:
/// duplicates, or reused keys when the payload hashes differ.
pub(crate) fn dedupe_markers(len: usize, markers: Option<&[Marker]>) -> Vec<Option<Outcome>> {
    match markers {
        Some(markers) => {
            assert_eq!(markers.len(), len, "one marker per event");
            let keys: Vec<(&str, Option<&str>)> =
                markers.iter().map(|m| (m.key.as_str(), m.validation.as_deref())).collect();
            shared_core::plan::repeated_keys(&keys)
        }
        None => vec![None; len],
    }
}
