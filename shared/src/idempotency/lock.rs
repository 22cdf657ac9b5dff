//! The lock path: [`Idempotency`] over an [`IdempotencyStore`].

use crate::error::Classify;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Status of an idempotency record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `INPROGRESS`: an invocation holds the lock and is running the effect.
    InProgress,
    /// `COMPLETED`: the effect ran; `data` holds its result.
    Completed,
}

impl Status {
    /// The `status` attribute's value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "INPROGRESS",
            Self::Completed => "COMPLETED",
        }
    }
}

/// One record of the idempotency table (the Powertools schema).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `id`: the key.
    pub id: String,
    /// `status`: `INPROGRESS` or `COMPLETED`.
    pub status: Status,
    /// `expiration`: epoch seconds after which the record counts as absent
    /// (and DynamoDB's TTL deletes it).
    pub expiration: i64,
    /// `in_progress_expiration`: epoch milliseconds after which an
    /// `INPROGRESS` record may be taken over (its invocation is gone).
    pub in_progress_expiration: Option<i64>,
    /// `data`: the cached result (JSON).
    pub data: Option<String>,
    /// `validation`: hash of the payload the key was first used with.
    pub validation: Option<String>,
}

impl Record {
    /// True when the record no longer counts at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expiration <= epoch_seconds(now)
    }

    /// True when an `INPROGRESS` record's invocation is over at `now`.
    pub fn in_progress_expired(&self, now: SystemTime) -> bool {
        self.status == Status::InProgress && self.in_progress_expiration.is_some_and(|t| t <= epoch_millis(now))
    }
}

/// What a store reports when the lock could not be taken: the record in the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockAttempt {
    /// The record was written: this invocation holds the lock.
    Acquired,
    /// A live record was in the way (as stored), so nothing was written.
    Exists(Record),
}

/// Why an idempotent call did not run.
#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    /// Another invocation holds the lock: retry later (transient).
    #[error("idempotency key {key} is in progress in another invocation; retry later")]
    InProgress {
        /// The idempotency key.
        key: String,
    },
    /// The key was used before with a different payload (permanent).
    #[error("idempotency key {key} was already used with a different payload")]
    PayloadMismatch {
        /// The idempotency key.
        key: String,
    },
    /// The store failed; its class decides (throttling: transient; a
    /// missing table: fatal).
    #[error("idempotency store: {0}")]
    Store(#[from] crate::dynamo::StoreError),
    /// The cached result does not deserialize as the caller's type, or the
    /// effect's result does not serialize (permanent).
    #[error("cached result of {key} cannot be read: {message}")]
    Cache {
        /// The idempotency key.
        key: String,
        /// serde_json's error.
        message: String,
    },
}

impl Classify for IdempotencyError {
    fn class(&self) -> crate::error::ErrorClass {
        match self {
            Self::InProgress { .. } => crate::error::ErrorClass::Transient,
            Self::Store(e) => e.class(),
            Self::PayloadMismatch { .. } | Self::Cache { .. } => crate::error::ErrorClass::Permanent,
        }
    }
}

/// The storage port: get, put-if-absent (the lock), update, delete.
pub trait IdempotencyStore: Send + Sync {
    /// Writes `record` unless a live record is in the way: absent, expired, or
    /// `INPROGRESS` past its in-progress expiry count as free.
    fn try_lock(
        &self,
        record: &Record,
        now: SystemTime,
    ) -> impl Future<Output = Result<LockAttempt, crate::dynamo::StoreError>> + Send;
    /// Replaces the record (completion).
    fn update(&self, record: &Record) -> impl Future<Output = Result<(), crate::dynamo::StoreError>> + Send;
    /// Deletes the record (release after a failure).
    fn delete(&self, id: &str) -> impl Future<Output = Result<(), crate::dynamo::StoreError>> + Send;
    /// Reads a record.
    fn get(&self, id: &str) -> impl Future<Output = Result<Option<Record>, crate::dynamo::StoreError>> + Send;
}

/// How the lock path behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long a completed result is kept (and replayed).
    pub expires_after: Duration,
    /// Check that a reused key comes with the same payload.
    pub validate_payload: bool,
}

impl Default for Options {
    fn default() -> Self {
        // Powertools' default: one hour.
        Self { expires_after: Duration::from_secs(3600), validate_payload: true }
    }
}

/// The outcome of an idempotent call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Run<T> {
    /// The effect ran now.
    Executed(T),
    /// The effect ran before; this is its cached result.
    Replayed(T),
}

/// The lock-path core over a store.
#[derive(Debug, Clone)]
pub struct Idempotency<S> {
    store: S,
    options: Options,
}

impl<S: IdempotencyStore> Idempotency<S> {
    /// The lock path over `store`.
    pub fn new(store: S, options: Options) -> Self {
        Self { store, options }
    }

    /// The store, to inspect records directly (tests, tools).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Runs `effect` at most once per key (while the record lives).
    ///
    /// `deadline` is the invocation's deadline: the lock expires with it, so a
    /// crashed invocation's lock is taken over once that invocation is surely
    /// gone, never before. A deadline already passed (or zero) still yields an
    /// expiry (now), never a lock that lives forever.
    pub async fn run<T, E, F, Fut>(
        &self,
        key: &str,
        payload: &[u8],
        deadline: Option<SystemTime>,
        effect: F,
    ) -> Result<Result<Run<T>, E>, IdempotencyError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let now = SystemTime::now();
        let validation = self.options.validate_payload.then(|| payload_hash(payload));
        let lock = Record {
            id: key.to_owned(),
            status: Status::InProgress,
            expiration: epoch_seconds(now + self.options.expires_after),
            in_progress_expiration: Some(in_progress_expiry(deadline, now)),
            data: None,
            validation: validation.clone(),
        };
        match self.store.try_lock(&lock, now).await.map_err(IdempotencyError::Store)? {
            LockAttempt::Acquired => {}
            LockAttempt::Exists(existing) => {
                if let (Some(stored), Some(given)) = (&existing.validation, &validation)
                    && stored != given
                {
                    return Err(IdempotencyError::PayloadMismatch { key: key.to_owned() });
                }
                return match existing.status {
                    Status::InProgress => Err(IdempotencyError::InProgress { key: key.to_owned() }),
                    Status::Completed => {
                        let data = existing.data.as_deref().unwrap_or("null");
                        serde_json::from_str(data)
                            .map(|t| Ok(Run::Replayed(t)))
                            .map_err(|e| IdempotencyError::Cache { key: key.to_owned(), message: e.to_string() })
                    }
                };
            }
        }
        match effect().await {
            Ok(result) => {
                let data = serde_json::to_string(&result)
                    .map_err(|e| IdempotencyError::Cache { key: key.to_owned(), message: e.to_string() })?;
                let completed = Record {
                    status: Status::Completed,
                    expiration: epoch_seconds(SystemTime::now() + self.options.expires_after),
                    in_progress_expiration: None,
                    data: Some(data),
                    ..lock
                };
                self.store.update(&completed).await.map_err(IdempotencyError::Store)?;
                Ok(Ok(Run::Executed(result)))
            }
            Err(e) => {
                // Release, so a retry can run the effect again.
                self.store.delete(key).await.map_err(IdempotencyError::Store)?;
                Ok(Err(e))
            }
        }
    }
}

impl<S: IdempotencyStore> Idempotency<S> {
    /// [`run`](Self::run) for the batch engine: the effect's outcome as a
    /// commit result. Ran now: applied; ran before: a duplicate (its cached
    /// result is not needed); another invocation holds the lock, or the store
    /// failed: transient; the key was used with another payload: permanent.
    /// The effect's own error decides by its class.
    ///
    /// A stream handler that calls an outside service once per record commits
    /// its effects with this, one after another, stopping at the first
    /// failure (the engine's ordering contract):
    ///
    /// ```no_run
    /// # use shared::idempotency::{Idempotency, memory::MemoryIdempotencyStore};
    /// # use shared::engine::{CommitError, Committed};
    /// # async fn commit(lock: &Idempotency<MemoryIdempotencyStore>, calls: Vec<(String, String)>) -> Committed {
    /// let mut results = Vec::new();
    /// for (key, payload) in calls {
    ///     let result = lock
    ///         .commit_with_lock(&key, payload.as_bytes(), None, || async { Ok::<_, CommitError>(()) })
    ///         .await;
    ///     let failed = result.is_err();
    ///     results.push(result);
    ///     if failed {
    ///         break;
    ///     }
    /// }
    /// results
    /// # }
    /// ```
    pub async fn commit_with_lock<T, F, Fut>(
        &self,
        key: &str,
        payload: &[u8],
        deadline: Option<SystemTime>,
        effect: F,
    ) -> Result<crate::batch::Outcome, crate::engine::CommitError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, crate::engine::CommitError>>,
    {
        use crate::engine::CommitError;
        match self.run(key, payload, deadline, effect).await {
            Ok(Ok(Run::Executed(_))) => Ok(crate::batch::Outcome::Applied),
            Ok(Ok(Run::Replayed(_))) => Ok(crate::batch::Outcome::Duplicate),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(match e.class() {
                crate::error::ErrorClass::Permanent => CommitError::Permanent(e.to_string()),
                crate::error::ErrorClass::Fatal => CommitError::Fatal(e.to_string()),
                crate::error::ErrorClass::Transient => CommitError::Transient(e.to_string()),
            }),
        }
    }
}

/// The in-progress expiry for an invocation deadline (epoch milliseconds).
pub fn in_progress_expiry(deadline: Option<SystemTime>, now: SystemTime) -> i64 {
    // Without a deadline (outside Lambda), a minute: long enough for one effect.
    const NO_DEADLINE: Duration = Duration::from_secs(60);
    let at = match deadline {
        Some(d) if d > UNIX_EPOCH => d,
        Some(_) => now, // A zero deadline: expired at once, never "forever".
        None => now + NO_DEADLINE,
    };
    epoch_millis(at)
}

/// SHA-256 of a payload, hex: the `validation` attribute.
pub fn payload_hash(payload: &[u8]) -> String {
    shared_core::key::fingerprint(payload)
}

pub(crate) fn epoch_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

pub(crate) fn epoch_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::memory::MemoryIdempotencyStore;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn core() -> Idempotency<MemoryIdempotencyStore> {
        Idempotency::new(MemoryIdempotencyStore::default(), Options::default())
    }

    #[test]
    fn payload_hash_is_lower_case_hex_sha256() {
        // FIPS 180-2, appendix B.1.
        assert_eq!(payload_hash(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    fn in_a_minute() -> Option<SystemTime> {
        Some(SystemTime::now() + Duration::from_secs(60))
    }

    #[tokio::test]
    async fn idempotent_record_replays_cached_result() {
        let idem = core();
        let runs = AtomicUsize::new(0);
        let effect = || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(42u32)
        };
        let first = idem.run("k", b"p", in_a_minute(), effect).await.unwrap().unwrap();
        let second = idem.run("k", b"p", in_a_minute(), effect).await.unwrap().unwrap();
        assert_eq!((first, second), (Run::Executed(42), Run::Replayed(42)));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn reused_key_with_a_different_payload_is_reported_not_replayed() {
        let idem = core();
        idem.run("k", b"one", in_a_minute(), || async { Ok::<_, String>(1) }).await.unwrap().unwrap();
        let err = idem.run("k", b"two", in_a_minute(), || async { Ok::<_, String>(2) }).await.unwrap_err();
        assert!(matches!(err, IdempotencyError::PayloadMismatch { .. }), "{err}");
        assert_eq!(err.class(), crate::error::ErrorClass::Permanent);
    }

    #[tokio::test]
    async fn failed_effect_releases_the_lock() {
        let idem = core();
        let failed = idem.run("k", b"p", in_a_minute(), || async { Err::<u32, _>("boom") }).await.unwrap();
        assert_eq!(failed, Err("boom"));
        let retried = idem.run("k", b"p", in_a_minute(), || async { Ok::<_, &str>(7) }).await.unwrap();
        assert_eq!(retried, Ok(Run::Executed(7)));
    }

    #[tokio::test]
    async fn concurrent_duplicates_run_once_and_the_other_is_told_to_retry() {
        let idem = Arc::new(core());
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let idem = idem.clone();
            tokio::spawn(async move {
                idem.run("k", b"p", in_a_minute(), || async {
                    wait.await.unwrap();
                    Ok::<_, String>(1)
                })
                .await
            })
        };
        // Await the lock, not a sleep: the second call must see INPROGRESS.
        while idem.store().get("k").await.unwrap().is_none() {
            tokio::task::yield_now().await;
        }
        let second = idem.run("k", b"p", in_a_minute(), || async { Ok::<_, String>(2) }).await;
        assert!(matches!(second, Err(IdempotencyError::InProgress { .. })), "{second:?}");
        assert_eq!(second.unwrap_err().class(), crate::error::ErrorClass::Transient);
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), Ok(Run::Executed(1)));
    }

    #[tokio::test]
    async fn lock_of_a_crashed_invocation_is_taken_over_after_its_expiry_not_before() {
        let idem = core();
        let now = SystemTime::now();
        let crashed = |deadline_ms: i64| Record {
            id: "k".into(),
            status: Status::InProgress,
            expiration: epoch_seconds(now) + 3600,
            in_progress_expiration: Some(deadline_ms),
            data: None,
            validation: Some(payload_hash(b"p")),
        };
        idem.store().update(&crashed(epoch_millis(now) + 60_000)).await.unwrap();
        let before = idem.run("k", b"p", in_a_minute(), || async { Ok::<_, String>(1) }).await;
        assert!(matches!(before, Err(IdempotencyError::InProgress { .. })));
        idem.store().update(&crashed(epoch_millis(now) - 1)).await.unwrap();
        let after = idem.run("k", b"p", in_a_minute(), || async { Ok::<_, String>(1) }).await.unwrap();
        assert_eq!(after, Ok(Run::Executed(1)));
    }

    #[test]
    fn zero_deadline_still_expires() {
        let now = SystemTime::now();
        assert_eq!(in_progress_expiry(Some(UNIX_EPOCH), now), epoch_millis(now));
        assert_eq!(in_progress_expiry(Some(now + Duration::from_secs(5)), now), epoch_millis(now) + 5000);
    }
}
