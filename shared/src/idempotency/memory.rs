//! An in-memory [`IdempotencyStore`] for unit tests.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use super::{IdempotencyStore, LockAttempt, Record};
use crate::dynamo::StoreError;

/// Idempotency records in a map, with the DynamoDB store's lock rule (absent,
/// expired or in-progress-expired counts as free). Public for doctests.
#[derive(Debug, Default)]
pub struct MemoryIdempotencyStore {
    records: Mutex<HashMap<String, Record>>,
}

impl MemoryIdempotencyStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl IdempotencyStore for MemoryIdempotencyStore {
    async fn try_lock(&self, record: &Record, now: SystemTime) -> Result<LockAttempt, StoreError> {
        let mut records = self.lock();
        // in_progress_expired is only true for INPROGRESS records.
        let free = records.get(&record.id).is_none_or(|r| r.is_expired(now) || r.in_progress_expired(now));
        if free {
            records.insert(record.id.clone(), record.clone());
            Ok(LockAttempt::Acquired)
        } else {
            Ok(LockAttempt::Exists(records[&record.id].clone()))
        }
    }

    async fn update(&self, record: &Record) -> Result<(), StoreError> {
        self.lock().insert(record.id.clone(), record.clone());
        Ok(())
    }

    async fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.lock().remove(id);
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        Ok(self.lock().get(id).cloned())
    }
}
