//! An inventory-reservation queue consumer on Cloudflare Workers: each
//! message reserves a quantity of one SKU in D1, exactly once, or is
//! quarantined with the reason it cannot be.
//!
//! The whole domain is [`reserve`]: validate the request and describe its
//! effect, a D1 update with its condition. The toolkit does the rest (each
//! message's ack or retry, quarantine, and the idempotency marker committed
//! in the same D1 batch as the update).

use serde::Deserialize;
use shared_workers::d1::Statement;
use shared_workers::{Invalid, UnitOfWork, Write};

#[cfg(target_arch = "wasm32")]
mod worker;

/// A reservation request, the body of one message.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    /// Unique per reservation: the idempotency key, so a producer's resend
    /// is caught as well as the queue's redelivery.
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
    let update = Statement::new(format!(
        "UPDATE {table} SET available = available - ?1, reserved = reserved + ?1 WHERE sku = ?2 AND available >= ?1"
    ))
    .bind(r.quantity)
    .bind(&r.sku);
    let stored = Statement::new(format!("SELECT available FROM {table} WHERE sku = ?1")).bind(&r.sku);
    let (sku, wanted) = (r.sku, r.quantity);
    let reserve =
        Write::new(update).read(stored).reject_with(move |stored| match stored.and_then(|row| row.get("available")) {
            None => format!("sku {sku}: no such item"),
            Some(left) => format!(
                "sku {sku}: {wanted} requested, {} available",
                left.as_i64().map_or(left.to_string(), |n| n.to_string())
            ),
        });
    Ok(UnitOfWork::keyed("reservation", r.reservation_id).write(reserve))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_of_nothing_is_refused_and_one_of_something_is_an_update() {
        let none = Reservation { reservation_id: "r-1".into(), sku: "A-1".into(), quantity: 0 };
        assert_eq!(reserve("inventory", none).unwrap_err().to_string(), "quantity: must be at least 1");
        let three = Reservation { reservation_id: "r-2".into(), sku: "A-1".into(), quantity: 3 };
        assert!(reserve("inventory", three).is_ok());
    }
}
