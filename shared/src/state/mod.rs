//! Typed persistence of the state table: orders, customer totals, object
//! manifests and quarantined records, behind one small port ([`StateStore`])
//! with a DynamoDB implementation and an in-memory one for unit tests.
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

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::order::{CustomerTotals, OrderEvent};

pub use shared_core::batch::Outcome;
pub use shared_core::error::ErrorClass;

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

/// A record that can never be processed, kept with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    /// Where it came from: `sqs/<queue>`, `s3/<bucket>/<key>`, `ddb-stream/<table>`.
    pub source: String,
    /// Its id there: message id, line number, sequence number.
    pub record_id: String,
    /// Why it can never be processed (the parse or validation error).
    pub reason: String,
    /// The raw record, truncated to [`MAX_QUARANTINED_RAW_BYTES`].
    pub raw: String,
}

/// Largest raw record kept in a quarantine item: far under DynamoDB's 400 KB
/// item limit, large enough to see what was wrong.
pub const MAX_QUARANTINED_RAW_BYTES: usize = 8 * 1024;

impl Quarantined {
    /// A quarantined record; `raw` is truncated to
    /// [`MAX_QUARANTINED_RAW_BYTES`] on a character boundary.
    pub fn new(source: impl Into<String>, record_id: impl Into<String>, reason: impl Into<String>, raw: &str) -> Self {
        Self {
            source: source.into(),
            record_id: record_id.into(),
            reason: reason.into(),
            raw: truncate_bytes(raw, MAX_QUARANTINED_RAW_BYTES).to_owned(),
        }
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Processing state of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ObjectStatus {
    /// `IN_PROGRESS`: chunks are committed up to the checkpoint; the rest is
    /// still to read (by this invocation, or a retry that resumes there).
    InProgress,
    /// `COMPLETED`: every line is counted.
    Completed,
    /// `FAILED`: the object cannot be processed (for example, an unsupported
    /// format).
    Failed,
}

impl ObjectStatus {
    /// The `status` attribute's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "IN_PROGRESS",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
        }
    }
}

/// Where processing of an object stopped: the next line to read, and the byte
/// offset of that line in the (uncompressed) object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Number of the last line committed (1-based; 0: none yet). Reading
    /// resumes at line `line + 1`.
    pub line: u64,
    /// Byte offset of line `line + 1` in the decoded object.
    pub byte: u64,
}

/// Per-object accounting: every line ends in exactly one of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Record lines read (blank lines and a CSV header row are not records):
    /// the sum of the four counters below.
    pub lines: u64,
    /// Lines whose order event was applied.
    pub accepted: u64,
    /// Lines quarantined as unparseable or invalid.
    pub rejected: u64,
    /// Lines whose event is older than the order's stored one (the apply rule).
    pub stale: u64,
    /// Lines whose event was already applied.
    pub duplicates: u64,
}

/// The manifest item of one object revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The object's bucket.
    pub bucket: String,
    /// The object's key (decoded).
    pub key: String,
    /// versionId, or eTag when unversioned.
    pub revision: String,
    /// How far processing of the object got.
    pub status: ObjectStatus,
    /// Lines counted up to the checkpoint.
    pub counts: Counts,
    /// Where the next chunk starts.
    pub checkpoint: Checkpoint,
    /// The header row of a CSV object, kept so a resumed read can parse rows.
    pub csv_header: Option<String>,
    /// When the first invocation started on this revision.
    pub started_at: DateTime<Utc>,
    /// When processing ended (`COMPLETED` or `FAILED`); `None` while in progress.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A manifest write, conditional on the checkpoint the writer started from, so
/// two invocations working on one object cannot both commit the same chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestWrite {
    /// The manifest as it is after the chunk.
    pub manifest: Manifest,
    /// `None`: the manifest must not exist yet.
    pub expected: Option<Checkpoint>,
}

/// Builds the manifest write of a chunk from its events' outcomes.
pub type ManifestFn<'a> = dyn Fn(&[Outcome]) -> ManifestWrite + Send + Sync + 'a;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A DynamoDB request failed.
    #[error("DynamoDB {operation} on table {table} failed: {message}")]
    Dynamo {
        /// The API call, e.g. `TransactWriteItems`.
        operation: &'static str,
        /// The table it was made on.
        table: String,
        /// The service's error code and message.
        message: String,
        /// Whether a retry can help, by the error code.
        class: ErrorClass,
    },
    /// A stored item does not read as its type (permanent).
    #[error(transparent)]
    Item(#[from] item::ItemError),
    /// Adding a record's delta to a customer's totals would overflow
    /// (permanent: that record is quarantined, the others go on).
    #[error("customer {customer}: {source}")]
    Overflow {
        /// The customer whose totals would overflow.
        customer: String,
        /// What overflowed.
        source: crate::order::TotalsOverflow,
    },
    /// The manifest's checkpoint is not the one this writer started from:
    /// another invocation committed a chunk of the object (transient).
    #[error("another invocation moved the manifest of s3://{bucket}/{key} past checkpoint line {line}")]
    ManifestConflict {
        /// The object's bucket.
        bucket: String,
        /// The object's key.
        key: String,
        /// The checkpoint line this writer expected (0: no manifest).
        line: u64,
    },
    /// A request kept being refused in part or whole (transaction conflicts,
    /// throttling, unprocessed items) until the attempts ran out (transient).
    #[error("gave up after {attempts} attempts: {message}")]
    Contention {
        /// Attempts made.
        attempts: u32,
        /// What kept being refused.
        message: String,
    },
}

impl StoreError {
    /// The error class the batch layer uses.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Dynamo { class, .. } => *class,
            Self::Item(_) | Self::Overflow { .. } => ErrorClass::Permanent,
            Self::ManifestConflict { .. } | Self::Contention { .. } => ErrorClass::Transient,
        }
    }
}

/// The state table port.
pub trait StateStore: Send + Sync {
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

    /// Applies totals deltas exactly once each, in order. Returns the outcomes
    /// of the records committed (a prefix of `records`) and the error that
    /// stopped the rest, if any.
    fn apply_deltas(&self, records: &[DeltaRecord]) -> impl Future<Output = (Vec<Outcome>, Option<StoreError>)> + Send;

    /// Reads the manifest of an object revision.
    fn get_manifest(
        &self,
        bucket: &str,
        key: &str,
        revision: &str,
    ) -> impl Future<Output = Result<Option<Manifest>, StoreError>> + Send;

    /// Writes records to quarantine (idempotent: same source and id overwrite).
    fn quarantine(&self, records: &[Quarantined]) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Where permanently bad records go, with their reason: the port the batch
/// engine writes quarantine items through. Every [`StateStore`] is one.
pub trait QuarantineStore: Send + Sync {
    /// Writes records to quarantine (idempotent: same source and id overwrite).
    fn write_quarantine(&self, records: &[Quarantined]) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl<S: StateStore> QuarantineStore for S {
    fn write_quarantine(&self, records: &[Quarantined]) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.quarantine(records)
    }
}

pub(crate) use shared_core::order::combine as combine_orders;

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
