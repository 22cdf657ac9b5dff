//! An inventory-reservation SQS consumer: each message reserves a quantity
//! of one SKU, exactly once, or is quarantined with the reason it cannot be.
//!
//! The whole domain is [`reserve`]: validate the request and describe its
//! effect, a DynamoDB update with its condition. The toolkit does the rest
//! (the partial batch response, FIFO order, quarantine, the deadline, and
//! the idempotency marker committed with the update).

use serde::Deserialize;
use shared::dynamodb::types::{AttributeValue, Update};
use shared::{Invalid, UnitOfWork, Write};

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

/// The reservation's update of its SKU's stock in `table`, once per
/// reservation id: the same request resent is a duplicate; the same id with
/// another SKU or quantity is a reused key (both read from the body).
pub fn reserve(table: &str, r: Reservation) -> Result<UnitOfWork, Invalid> {
    if r.quantity == 0 {
        return Err(Invalid::new("quantity: must be at least 1"));
    }
    let update = Update::builder()
        .table_name(table)
        .key("sku", AttributeValue::S(r.sku.clone()))
        .update_expression("SET available = available - :n, reserved = if_not_exists(reserved, :zero) + :n")
        .condition_expression("available >= :n")
        .expression_attribute_values(":n", AttributeValue::N(r.quantity.to_string()))
        .expression_attribute_values(":zero", AttributeValue::N("0".into()));
    let (sku, wanted) = (r.sku, r.quantity);
    let reserve = Write::update(update).reject_with(move |stored| match stored.and_then(|i| i.get("available")) {
        None => format!("sku {sku}: no such item"),
        Some(left) => format!("sku {sku}: {wanted} requested, {} available", left.as_n().map_or("?", String::as_str)),
    });
    Ok(UnitOfWork::keyed("reservation", r.reservation_id).write(reserve))
}
