//! Where permanently bad records go, with their reason: the port the batch
//! engine writes quarantine items through, a DynamoDB table keyed `pk` (S)
//! + `sk` (S), and an in-memory one for unit tests.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Mutex;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
use chrono::Utc;
use serde_dynamo::Item;

use crate::dynamo::{MAX_BATCH_WRITE, StoreError, backoff, s, to_sdk};

pub use shared_core::quarantine::{MAX_QUARANTINED_RAW_BYTES, Quarantined, truncate_bytes};

/// Where permanently bad records go, with their reason.
pub trait QuarantineStore: Send + Sync {
    /// Writes records to quarantine (idempotent: same source and id overwrite).
    fn write_quarantine(&self, records: &[Quarantined]) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl<Q: QuarantineStore> QuarantineStore for &Q {
    fn write_quarantine(&self, records: &[Quarantined]) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).write_quarantine(records)
    }
}

/// The `entity` attribute of a quarantine item.
pub const ENTITY: &str = "quarantine";

/// Partition key of quarantined records of a source: `QUARANTINE#<source>`.
pub fn quarantine_pk(source: &str) -> String {
    format!("QUARANTINE#{source}")
}

/// Quarantine items in a DynamoDB table keyed `pk` (S) + `sk` (S)
/// (`QUARANTINE_TABLE`): an item per record, `pk` = `QUARANTINE#<source>`,
/// `sk` = the record's id, with `reason`, `raw` (truncated to
/// [`MAX_QUARANTINED_RAW_BYTES`]) and `quarantinedAt`.
#[derive(Debug, Clone)]
pub struct DynamoQuarantine {
    client: Client,
    table: String,
}

impl DynamoQuarantine {
    /// Quarantine items in `table`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
    }

    /// Writes the items (`BatchWriteItem`, 25 at a time, unprocessed items
    /// retried with back-off).
    pub async fn write(&self, records: &[Quarantined]) -> Result<(), StoreError> {
        // Keys must be unique within one BatchWriteItem call.
        let mut unique: BTreeMap<(&str, &str), &Quarantined> = BTreeMap::new();
        for r in records {
            unique.insert((&r.source, &r.record_id), r);
        }
        let records: Vec<&Quarantined> = unique.into_values().collect();
        let now = Utc::now().to_rfc3339();
        for group in records.chunks(MAX_BATCH_WRITE) {
            let mut writes = Vec::with_capacity(group.len());
            for r in group {
                let put = PutRequest::builder()
                    .set_item(Some(to_sdk(quarantine_to_item(r, &now))))
                    .build()
                    .map_err(|e| StoreError::unbuildable("BatchWriteItem", &self.table, e))?;
                writes.push(WriteRequest::builder().put_request(put).build());
            }
            let mut request = Some(HashMap::from([(self.table.clone(), writes)]));
            let mut attempt = 0;
            while let Some(items) = request.take().filter(|r| !r.is_empty()) {
                let out = self
                    .client
                    .batch_write_item()
                    .set_request_items(Some(items))
                    .send()
                    .await
                    .map_err(|e| StoreError::sdk("BatchWriteItem", &self.table, &e))?;
                request = out.unprocessed_items().cloned();
                if request.as_ref().is_some_and(|r| !r.is_empty()) {
                    attempt += 1;
                    backoff(attempt, None).await.map_err(|e| StoreError::Contention {
                        attempts: attempt,
                        message: format!("BatchWriteItem unprocessed items: {e}"),
                    })?;
                }
            }
        }
        Ok(())
    }
}

impl QuarantineStore for DynamoQuarantine {
    fn write_quarantine(&self, records: &[Quarantined]) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.write(records)
    }
}

fn quarantine_to_item(r: &Quarantined, at: &str) -> Item {
    Item::from(HashMap::from([
        ("pk".to_owned(), s(quarantine_pk(&r.source))),
        ("sk".to_owned(), s(&r.record_id)),
        ("entity".to_owned(), s(ENTITY)),
        ("source".to_owned(), s(&r.source)),
        ("recordId".to_owned(), s(&r.record_id)),
        ("reason".to_owned(), s(&r.reason)),
        ("raw".to_owned(), s(&r.raw)),
        ("quarantinedAt".to_owned(), s(at)),
    ]))
}

/// Quarantine items in memory, for unit tests.
#[derive(Debug, Default)]
pub struct MemoryQuarantine {
    items: Mutex<BTreeMap<(String, String), Quarantined>>,
}

impl MemoryQuarantine {
    /// No items.
    pub fn new() -> Self {
        Self::default()
    }

    /// The quarantined records, in (source, record id) order.
    pub fn quarantined(&self) -> Vec<Quarantined> {
        self.items.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }
}

impl QuarantineStore for MemoryQuarantine {
    async fn write_quarantine(&self, records: &[Quarantined]) -> Result<(), StoreError> {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        for r in records {
            items.insert((r.source.clone(), r.record_id.clone()), r.clone());
        }
        Ok(())
    }
}
