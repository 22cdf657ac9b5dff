//! A DynamoDB-stream handler with an effect outside DynamoDB: when a payment
//! of the payments table becomes `CAPTURED`, post a ledger entry to an HTTP
//! service, once.
//!
//! An HTTP call cannot join a DynamoDB transaction, so this takes the
//! toolkit's other path, the Powertools-style lock: a replay of the stream
//! (or a second capture event of one payment) finds the key completed and
//! posts nothing. The shard keeps its order: the first call that fails
//! stops the batch there, and Lambda retries from it.

use serde::{Deserialize, Serialize};
use shared::{Call, Change, CommitError, Invalid};

/// A payment as the payments table stores it (any field may be missing).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payment {
    /// Its id.
    pub payment_id: Option<String>,
    /// `AUTHORIZED`, `CAPTURED`, ...
    pub status: Option<String>,
    /// Its amount, exactly as stored (a number attribute's text).
    pub amount: Option<String>,
    /// Its currency.
    pub currency: Option<String>,
}

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

/// A call once per payment that became `CAPTURED`; nothing for any other change.
pub fn plan(change: Change<Payment>) -> Result<Option<Call<LedgerEntry>>, Invalid> {
    let captured = |p: &Option<Payment>| p.as_ref().and_then(|p| p.status.as_deref()) == Some("CAPTURED");
    if !captured(&change.new) || captured(&change.old) {
        return Ok(None);
    }
    let Some(new) = change.new else { return Ok(None) };
    let field = |value: Option<String>, name| value.ok_or_else(|| Invalid::new(format!("payment image: no {name}")));
    let entry = LedgerEntry {
        payment_id: field(new.payment_id, "paymentId")?,
        amount: field(new.amount, "amount")?,
        currency: field(new.currency, "currency")?,
    };
    Ok(Some(Call::keyed("ledger-entry", entry.payment_id.clone(), entry)))
}

/// Posts the entry: a 2xx is done; a 4xx means the ledger refuses it for
/// good (quarantined with its answer); anything else is retried.
pub async fn post(http: &reqwest::Client, url: &str, entry: LedgerEntry) -> Result<(), CommitError> {
    let answer =
        http.post(url).json(&entry).send().await.map_err(|e| CommitError::Transient(format!("ledger: {e}")))?;
    match answer.status() {
        status if status.is_success() => Ok(()),
        status if status.is_client_error() => {
            Err(CommitError::Permanent(format!("ledger refused {}: {status}", entry.payment_id)))
        }
        status => Err(CommitError::Transient(format!("ledger answered {status} for {}", entry.payment_id))),
    }
}
