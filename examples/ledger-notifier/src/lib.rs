//! A DynamoDB-stream handler with an effect outside DynamoDB: when a payment
//! of the payments table becomes `CAPTURED`, post a ledger entry to an HTTP
//! service, once.
//!
//! An HTTP call cannot join a DynamoDB transaction, so this takes the
//! toolkit's other path, the Powertools-style lock: an `INPROGRESS` record
//! that expires with the invocation's deadline, then `COMPLETED`. A replay
//! of the stream (or a second capture event of one payment) finds the key
//! completed and posts nothing. The engine keeps the shard's order: the
//! first call that fails stops the batch, and Lambda retries from it.

use serde::Serialize;
use serde_dynamo::{AttributeValue, Item};
use shared::batch::RecordError;
use shared::core::key::Keys;
use shared::engine::{CommitError, Plan};
use shared::event::stream;

/// The entry the ledger service receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntry {
    /// The payment.
    pub payment_id: String,
    /// Its amount, as stored (exact decimal text).
    pub amount: String,
    /// Its currency.
    pub currency: String,
}

/// One call to make, under its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `{prefix}#ledger-entry#{paymentId}`: one entry per payment, however
    /// many stream records say it was captured.
    pub key: String,
    /// What is posted.
    pub entry: LedgerEntry,
}

fn string<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(s)) => Some(s),
        Some(AttributeValue::N(n)) => Some(n),
        _ => None,
    }
}

/// Plans one stream record: a call when the payment became `CAPTURED`,
/// nothing for any other change.
pub fn plan(keys: &Keys, record: &stream::Record) -> Result<Plan<Call>, RecordError> {
    let captured = |image: Option<&Item>| image.and_then(|i| string(i, "status")) == Some("CAPTURED");
    let Some(new) = record.new_image().filter(|_| captured(record.new_image()) && !captured(record.old_image())) else {
        return Ok(Plan::Ignore);
    };
    let field = |name: &str| {
        string(new, name).map(str::to_owned).ok_or_else(|| RecordError::Permanent(format!("payment image: no {name}")))
    };
    let entry = LedgerEntry { payment_id: field("paymentId")?, amount: field("amount")?, currency: field("currency")? };
    Ok(Plan::Effect(Call { key: keys.custom("ledger-entry", &entry.payment_id), entry }))
}

/// Posts the entry: a 2xx is done; a 4xx means the ledger refuses it for
/// good (quarantined with its answer); anything else is retried.
pub async fn post(http: &reqwest::Client, url: &str, entry: &LedgerEntry) -> Result<(), CommitError> {
    let answer = http.post(url).json(entry).send().await.map_err(|e| CommitError::Transient(format!("ledger: {e}")))?;
    let status = answer.status();
    if status.is_success() {
        Ok(())
    } else if status.is_client_error() {
        Err(CommitError::Permanent(format!("ledger refused {}: {status}", entry.payment_id)))
    } else {
        Err(CommitError::Transient(format!("ledger answered {status} for {}", entry.payment_id)))
    }
}
