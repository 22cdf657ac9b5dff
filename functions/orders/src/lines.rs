//! Order events in objects: the line parser the object ingest reads them
//! with, and the state table as the store its chunks commit to.

use shared::dynamo::StoreError;
use shared::ingest::{ChunkStore, LineParser};
use shared::manifest::{Manifest, ManifestFn};
use shared::quarantine::{QuarantineStore, Quarantined};

use crate::order::{OrderEvent, ValidationError, parse_order_event};
use crate::state::{Outcome, StateStore};

/// Order events, one per line (an NDJSON line, or a CSV row as the object
/// of its fields).
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderLines;

impl LineParser for OrderLines {
    type Record = OrderEvent;
    type Error = ValidationError;

    fn parse(&self, json: &str) -> Result<OrderEvent, ValidationError> {
        parse_order_event(json)
    }
}

/// A [`StateStore`] as the store an object's chunks commit to: each chunk's
/// orders by the apply rule, guarded by the orders themselves, then the
/// manifest's checkpoint ([`StateStore::apply_chunk_guarded`]).
#[derive(Debug, Clone, Copy)]
pub struct Chunks<'s, S>(pub &'s S);

impl<S: StateStore> QuarantineStore for Chunks<'_, S> {
    fn write_quarantine(
        &self,
        records: &[Quarantined],
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send {
        self.0.write_quarantine(records)
    }
}

impl<S: StateStore> ChunkStore<OrderEvent> for Chunks<'_, S> {
    fn get_manifest(
        &self,
        bucket: &str,
        key: &str,
        revision: &str,
    ) -> impl std::future::Future<Output = Result<Option<Manifest>, StoreError>> + Send {
        self.0.get_manifest(bucket, key, revision)
    }

    fn commit_chunk(
        &self,
        records: &[OrderEvent],
        manifest: &ManifestFn<'_>,
    ) -> impl std::future::Future<Output = Result<Vec<Outcome>, StoreError>> + Send {
        self.0.apply_chunk_guarded(records, manifest)
    }
}
