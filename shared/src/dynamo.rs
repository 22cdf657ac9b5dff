//! DynamoDB plumbing every store of the toolkit (and of a domain built on
//! it) shares: one `TransactWriteItems` with its cancellation reasons, one
//! back-off, the store error with its class, and typed item access.
//!
//! Conflicts are resolved from a transaction's cancellation reasons
//! (`ReturnValuesOnConditionCheckFailure` returns the item that failed the
//! condition), never by re-reading.

use crate::error::Classify;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue as SdkValue, ReturnConsumedCapacity, TransactWriteItem};
use serde_dynamo::{AttributeValue, Item};

use crate::error::{ErrorClass, classify_sdk, sdk_message};
use crate::telemetry::CapacityMeter;

pub use shared_core::plan::MAX_TRANSACT_ITEMS;

/// An item as the SDK sends and returns it.
pub type SdkItem = HashMap<String, SdkValue>;

/// DynamoDB BatchWriteItem limit on requests per call.
pub const MAX_BATCH_WRITE: usize = 25;
/// DynamoDB BatchGetItem limit on keys per call.
pub const MAX_BATCH_GET: usize = 100;
/// Attempts at one request on throttling and conflicts, on top of the SDK's
/// own retries of each request.
pub const MAX_ATTEMPTS: u32 = 8;
/// The cancellation reason code of an action whose condition failed.
/// <https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html>
const CONDITIONAL_CHECK_FAILED: &str = "ConditionalCheckFailed";

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
    Item(#[from] ItemError),
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

impl Classify for StoreError {
    fn class(&self) -> ErrorClass {
        match self {
            Self::Dynamo { class, .. } => *class,
            Self::Item(_) => ErrorClass::Permanent,
            Self::ManifestConflict { .. } | Self::Contention { .. } => ErrorClass::Transient,
        }
    }
}

impl StoreError {
    /// A failed SDK call, classified by its error code.
    pub fn sdk<E>(
        operation: &'static str,
        table: &str,
        err: &aws_sdk_dynamodb::error::SdkError<E, aws_smithy_runtime_api::http::Response>,
    ) -> Self
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        Self::Dynamo { operation, table: table.to_owned(), message: sdk_message(err), class: classify_sdk(err) }
    }

    /// A request that could not even be built (permanent).
    pub fn unbuildable(operation: &'static str, table: &str, e: impl std::fmt::Display) -> Self {
        Self::Dynamo { operation, table: table.to_owned(), message: e.to_string(), class: ErrorClass::Permanent }
    }
}

/// One action's cancellation reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Reason {
    /// The reason's code (`None` for an action that did not fail).
    pub code: String,
    /// The item that failed the action's condition, with
    /// `ReturnValuesOnConditionCheckFailure`.
    pub item: Option<SdkItem>,
}

impl Reason {
    /// True when this action's condition failed.
    pub fn condition_failed(&self) -> bool {
        self.code == CONDITIONAL_CHECK_FAILED
    }
}

/// What a transaction came to, short of an error.
#[derive(Debug, Clone, PartialEq)]
pub enum Transacted {
    /// Every action committed.
    Committed,
    /// Cancelled: one reason per action, in the order sent.
    Cancelled(Vec<Reason>),
}

/// Sends one `TransactWriteItems` (its consumed capacity summed into
/// `capacity`). A cancellation is an answer, not an error: its reasons say
/// which action failed and why. `table` names the request in errors.
pub async fn transact(
    client: &Client,
    table: &str,
    actions: Vec<TransactWriteItem>,
    capacity: &CapacityMeter,
) -> Result<Transacted, StoreError> {
    let sent = client
        .transact_write_items()
        .set_transact_items(Some(actions))
        .return_consumed_capacity(ReturnConsumedCapacity::Total)
        .send()
        .await;
    match sent {
        Ok(out) => {
            capacity.add(out.consumed_capacity().iter().filter_map(|c| c.capacity_units).sum());
            Ok(Transacted::Committed)
        }
        Err(err) => {
            if let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) = err.as_service_error() {
                let reasons = cancelled
                    .cancellation_reasons()
                    .iter()
                    .map(|r| Reason { code: r.code().unwrap_or("None").to_owned(), item: r.item().cloned() })
                    .collect();
                return Ok(Transacted::Cancelled(reasons));
            }
            Err(StoreError::sdk("TransactWriteItems", table, &err))
        }
    }
}

/// The most statements one `BatchExecuteStatement` takes.
/// <https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_BatchExecuteStatement.html>
pub const MAX_BATCH_STATEMENTS: usize = 25;

/// Why one statement of a `BatchExecuteStatement` was not applied.
#[derive(Debug, Clone, PartialEq)]
pub struct StatementError {
    /// Its code: `ConditionalCheckFailed`, `DuplicateItem`, `ThrottlingError`, ...
    pub code: String,
    /// Its message.
    pub message: String,
    /// The item that failed the condition, with
    /// `ReturnValuesOnConditionCheckFailure`.
    pub item: Option<SdkItem>,
}

/// Sends one `BatchExecuteStatement` (its consumed capacity summed into
/// `capacity`): one answer per statement, in the order sent, `None` for a
/// statement that was applied. Each statement succeeds or fails on its
/// own; `table` names the request in errors.
pub async fn execute_statements(
    client: &Client,
    table: &str,
    statements: Vec<aws_sdk_dynamodb::types::BatchStatementRequest>,
    capacity: &CapacityMeter,
) -> Result<Vec<Option<StatementError>>, StoreError> {
    let sent = client
        .batch_execute_statement()
        .set_statements(Some(statements))
        .return_consumed_capacity(ReturnConsumedCapacity::Total)
        .send()
        .await
        .map_err(|e| StoreError::sdk("BatchExecuteStatement", table, &e))?;
    capacity.add(sent.consumed_capacity().iter().filter_map(|c| c.capacity_units).sum());
    Ok(sent
        .responses()
        .iter()
        .map(|r| {
            r.error().map(|e| StatementError {
                code: e.code().map_or("None", |c| c.as_str()).to_owned(),
                message: e.message().unwrap_or_default().to_owned(),
                item: e.item().cloned(),
            })
        })
        .collect())
}

/// Reads the items of `keys` from `table`, strongly consistent, in
/// `BatchGetItem`s of at most 100 keys, up to [`BATCH_GET_CONCURRENCY`] of
/// them at once (their consumed capacity summed into `capacity`), unprocessed
/// keys asked again with back-off. Items that do not exist are not in the
/// answer, which is in no particular order.
pub async fn batch_get(
    client: &Client,
    table: &str,
    keys: Vec<SdkItem>,
    capacity: &CapacityMeter,
) -> Result<Vec<SdkItem>, StoreError> {
    use futures::{StreamExt, TryStreamExt};
    let groups: Vec<Vec<SdkItem>> = keys.chunks(MAX_BATCH_GET).map(<[SdkItem]>::to_vec).collect();
    let found: Vec<Vec<SdkItem>> = futures::stream::iter(groups)
        .map(|group| batch_get_group(client, table, group, capacity))
        .buffer_unordered(BATCH_GET_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(found.into_iter().flatten().collect())
}

/// How many of [`batch_get`]'s requests are in flight at once: a batch of
/// 1,000 keys is read in one round trip.
pub const BATCH_GET_CONCURRENCY: usize = 10;

/// One `BatchGetItem` of at most 100 keys, its unprocessed keys asked again.
async fn batch_get_group(
    client: &Client,
    table: &str,
    group: Vec<SdkItem>,
    capacity: &CapacityMeter,
) -> Result<Vec<SdkItem>, StoreError> {
    use aws_sdk_dynamodb::types::KeysAndAttributes;
    let mut found = Vec::with_capacity(group.len());
    let wanted = KeysAndAttributes::builder()
        .consistent_read(true)
        .set_keys(Some(group))
        .build()
        .map_err(|e| StoreError::unbuildable("BatchGetItem", table, e))?;
    let mut request = Some(HashMap::from([(table.to_owned(), wanted)]));
    let mut attempt = 0;
    while let Some(items) = request.take().filter(|r| !r.is_empty()) {
        let out = client
            .batch_get_item()
            .set_request_items(Some(items))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(|e| StoreError::sdk("BatchGetItem", table, &e))?;
        capacity.add(out.consumed_capacity().iter().filter_map(|c| c.capacity_units).sum());
        found.extend(out.responses().and_then(|r| r.get(table)).into_iter().flatten().cloned());
        request = out.unprocessed_keys().cloned();
        if request.as_ref().is_some_and(|r| !r.is_empty()) {
            attempt += 1;
            backoff(attempt, None).await.map_err(|e| StoreError::Contention {
                attempts: attempt,
                message: format!("BatchGetItem unprocessed keys: {e}"),
            })?;
        }
    }
    Ok(found)
}

/// Why [`backoff`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GaveUp {
    /// The attempts are spent.
    #[error("gave up after {0} attempts")]
    Attempts(u32),
    /// The invocation's deadline would pass before the next attempt.
    #[error("the invocation's deadline is too near to try again")]
    Deadline,
}

/// Exponential back-off with jitter before attempt `attempt + 1`; an error
/// after the last attempt, or when the deadline would pass first.
pub async fn backoff(attempt: u32, deadline: Option<SystemTime>) -> Result<(), GaveUp> {
    if attempt >= MAX_ATTEMPTS {
        return Err(GaveUp::Attempts(attempt));
    }
    let base = 20u64 << attempt.min(6);
    let jitter = u64::from(chrono::Utc::now().timestamp_subsec_nanos()) % base;
    let wait = Duration::from_millis(base / 2 + jitter);
    if deadline.is_some_and(|d| SystemTime::now() + wait >= d) {
        return Err(GaveUp::Deadline);
    }
    tokio::time::sleep(wait).await;
    Ok(())
}

/// Converts an item to the SDK's attribute map.
pub fn to_sdk(item: Item) -> SdkItem {
    item.into_inner().into_iter().map(|(k, v)| (k, v.into())).collect()
}

/// Converts the SDK's attribute map to an item.
pub fn from_sdk(map: SdkItem) -> Item {
    Item::from(map.into_iter().map(|(k, v)| (k, AttributeValue::from(v))).collect::<HashMap<_, _>>())
}

/// A string (`S`) attribute value.
pub fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

/// A number (`N`) attribute value.
pub fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// Why an item could not be read as the type it claims to be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entity} item: attribute `{attribute}` {problem}")]
pub struct ItemError {
    /// The item's kind, e.g. `object`.
    pub entity: &'static str,
    /// The attribute's name.
    pub attribute: &'static str,
    /// What is wrong with it, e.g. `is missing`.
    pub problem: String,
}

/// Typed access to item attributes, each returning an error naming the attribute.
pub trait ItemExt {
    /// The string (`S`) attribute; an error when missing or of another type.
    fn get_s(&self, entity: &'static str, attribute: &'static str) -> Result<&str, ItemError>;
    /// The number (`N`) attribute parsed as `T`; an error when missing, of
    /// another type or not a valid `T`.
    fn get_n<T: std::str::FromStr>(&self, entity: &'static str, attribute: &'static str) -> Result<T, ItemError>;
    /// The string (`S`) attribute, if present as one.
    fn opt_s(&self, attribute: &str) -> Option<&str>;
}

impl ItemExt for Item {
    fn get_s(&self, entity: &'static str, attribute: &'static str) -> Result<&str, ItemError> {
        match self.get(attribute) {
            Some(AttributeValue::S(s)) => Ok(s),
            Some(_) => Err(ItemError { entity, attribute, problem: "is not a string (S)".into() }),
            None => Err(ItemError { entity, attribute, problem: "is missing".into() }),
        }
    }

    fn get_n<T: std::str::FromStr>(&self, entity: &'static str, attribute: &'static str) -> Result<T, ItemError> {
        match self.get(attribute) {
            Some(AttributeValue::N(n)) => {
                n.parse().map_err(|_| ItemError { entity, attribute, problem: format!("is not a valid number: {n:?}") })
            }
            Some(_) => Err(ItemError { entity, attribute, problem: "is not a number (N)".into() }),
            None => Err(ItemError { entity, attribute, problem: "is missing".into() }),
        }
    }

    fn opt_s(&self, attribute: &str) -> Option<&str> {
        match self.get(attribute) {
            Some(AttributeValue::S(s)) => Some(s),
            _ => None,
        }
    }
}
