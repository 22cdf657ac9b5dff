//! The DynamoDB [`IdempotencyStore`], on the Powertools table schema: `id`,
//! `expiration` (TTL, epoch seconds), `status`, `in_progress_expiration`
//! (epoch ms), `data`, `validation`.

use std::collections::HashMap;
use std::time::SystemTime;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};

use super::{IdempotencyStore, LockAttempt, Record, Status, epoch_millis, epoch_seconds};
use crate::dynamo::ItemError;
use crate::dynamo::StoreError;
use crate::error::{classify_sdk, sdk_message};

/// The idempotency table in DynamoDB.
#[derive(Debug, Clone)]
pub struct DynamoIdempotencyStore {
    client: Client,
    table: String,
}

impl DynamoIdempotencyStore {
    /// The store on `table` (its partition key `id`, a string).
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
    }

    fn error<E>(
        &self,
        operation: &'static str,
        err: &aws_sdk_dynamodb::error::SdkError<E, aws_smithy_runtime_api::http::Response>,
    ) -> StoreError
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        StoreError::Dynamo { operation, table: self.table.clone(), message: sdk_message(err), class: classify_sdk(err) }
    }
}

fn to_item(record: &Record) -> HashMap<String, AttributeValue> {
    let mut item = HashMap::from([
        ("id".to_owned(), AttributeValue::S(record.id.clone())),
        ("status".to_owned(), AttributeValue::S(record.status.as_str().to_owned())),
        ("expiration".to_owned(), AttributeValue::N(record.expiration.to_string())),
    ]);
    if let Some(t) = record.in_progress_expiration {
        item.insert("in_progress_expiration".into(), AttributeValue::N(t.to_string()));
    }
    if let Some(data) = &record.data {
        item.insert("data".into(), AttributeValue::S(data.clone()));
    }
    if let Some(v) = &record.validation {
        item.insert("validation".into(), AttributeValue::S(v.clone()));
    }
    item
}

fn from_item(item: &HashMap<String, AttributeValue>) -> Result<Record, StoreError> {
    const E: &str = "idempotency record";
    let s = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    let n = |k: &str| item.get(k).and_then(|v| v.as_n().ok()).and_then(|v| v.parse::<i64>().ok());
    let bad = |attribute: &'static str, problem: &str| ItemError { entity: E, attribute, problem: problem.to_owned() };
    Ok(Record {
        id: s("id").ok_or_else(|| bad("id", "is missing"))?,
        status: match s("status").as_deref() {
            Some("INPROGRESS") => Status::InProgress,
            Some("COMPLETED") => Status::Completed,
            other => return Err(bad("status", &format!("is {other:?}, not INPROGRESS or COMPLETED")).into()),
        },
        expiration: n("expiration").ok_or_else(|| bad("expiration", "is missing or not a whole number"))?,
        in_progress_expiration: n("in_progress_expiration"),
        data: s("data"),
        validation: s("validation"),
    })
}

impl IdempotencyStore for DynamoIdempotencyStore {
    async fn try_lock(&self, record: &Record, now: SystemTime) -> Result<LockAttempt, StoreError> {
        // Timeline of one key:
        //   absent ---lock---> INPROGRESS (until the invocation's deadline) ---> COMPLETED (until expiration)
        // The lock is free when the record is absent, past `expiration`, or
        // INPROGRESS past `in_progress_expiration` (its invocation is gone).
        // One conditional put takes it; on conflict DynamoDB returns the record
        // in the way (ReturnValuesOnConditionCheckFailure), so no second read.
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_item(record)))
            .condition_expression(
                "attribute_not_exists(id) OR expiration <= :now \
                 OR (#status = :inprogress AND in_progress_expiration <= :now_ms)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":now", AttributeValue::N(epoch_seconds(now).to_string()))
            .expression_attribute_values(":now_ms", AttributeValue::N(epoch_millis(now).to_string()))
            .expression_attribute_values(":inprogress", AttributeValue::S(Status::InProgress.as_str().into()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(LockAttempt::Acquired),
            Err(err) => match err.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(e)) => match e.item() {
                    Some(item) => from_item(item).map(LockAttempt::Exists),
                    None => Err(StoreError::Dynamo {
                        operation: "PutItem",
                        table: self.table.clone(),
                        message: format!("lock on {} refused without the record in the way", record.id),
                        class: crate::error::ErrorClass::Transient,
                    }),
                },
                _ => Err(self.error("PutItem", &err)),
            },
        }
    }

    async fn update(&self, record: &Record) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_item(record)))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.error("PutItem", &e))
    }

    async fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("id", AttributeValue::S(id.to_owned()))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.error("DeleteItem", &e))
    }

    async fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("id", AttributeValue::S(id.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.error("GetItem", &e))?;
        out.item.as_ref().map(from_item).transpose()
    }
}
