//! An inventory-reservation SQS consumer: each message reserves a quantity
//! of one SKU, exactly once, or is quarantined with the reason it cannot be.
//!
//! The whole domain is [`plan`]: parse and validate the message, key it by
//! its reservation id, and describe the effect as a DynamoDB update with
//! its condition. The toolkit's engine does the rest (partial batch
//! response, FIFO order, quarantine, the deadline), and `ExactlyOnce`
//! commits each reservation together with its idempotency marker.

use aws_sdk_dynamodb::types::{AttributeValue, Update};
use serde::Deserialize;
use shared::batch::RecordError;
use shared::core::key::{Keys, fingerprint};
use shared::engine::Plan;
use shared::event::sqs;
use shared::exactly_once::{UnitOfWork, Verdict, Write};

/// A reservation request, the body of one message.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    /// Unique per reservation: the idempotency key, so a producer's resend
    /// is caught as well as SQS redelivery.
    pub reservation_id: String,
    /// The item reserved from.
    pub sku: String,
    /// How many, at least one.
    pub quantity: u32,
}

/// Plans one message: the reservation's update of its SKU's stock, under
/// the key `{prefix}#reservation#{reservationId}`.
pub fn plan(keys: &Keys, table: &str, message: &sqs::Message) -> Result<Plan<UnitOfWork>, RecordError> {
    let r: Reservation = message.json_body().map_err(|e| RecordError::Permanent(e.to_string()))?;
    if r.quantity == 0 {
        return Err(RecordError::Permanent("quantity: must be at least 1".into()));
    }
    let reserve = Update::builder()
        .table_name(table)
        .key("sku", AttributeValue::S(r.sku.clone()))
        .update_expression("SET available = available - :n, reserved = if_not_exists(reserved, :zero) + :n")
        .condition_expression("available >= :n")
        .expression_attribute_values(":n", AttributeValue::N(r.quantity.to_string()))
        .expression_attribute_values(":zero", AttributeValue::N("0".into()));
    let (sku, wanted) = (r.sku.clone(), r.quantity);
    let reserve =
        Write::update(reserve).on_condition_failed(move |stored| match stored.and_then(|item| item.get("available")) {
            None => Verdict::Reject(format!("sku {sku}: no such item")),
            Some(available) => Verdict::Reject(format!(
                "sku {sku}: {wanted} requested, {} available",
                available.as_n().map_or("?", String::as_str)
            )),
        });
    // The fingerprint covers what the reservation means, not its JSON
    // formatting: the same request resent is a duplicate; the same id with
    // another SKU or quantity is a reused key.
    let meaning = format!("{}\n{}", r.sku, r.quantity);
    Ok(Plan::Effect(
        UnitOfWork::new(keys.custom("reservation", &r.reservation_id))
            .fingerprint(fingerprint(meaning.as_bytes()))
            .write(reserve),
    ))
}
