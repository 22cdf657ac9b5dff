//! Lambda entry point: the inventory table from the environment
//! (`INVENTORY_TABLE`, key `sku`), then the toolkit's SQS consumer, which
//! reads `IDEMPOTENCY_TABLE`, `QUARANTINE_TABLE` and its optional settings.

fn main() -> Result<(), shared::Error> {
    let inventory = shared::config::required("INVENTORY_TABLE")?;
    shared::sqs("inventory-reservations", move |r| inventory_reservations::reserve(&inventory, r))
}
