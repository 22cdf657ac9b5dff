//! Worker entry point: the inventory table from the Worker's vars
//! (`INVENTORY_TABLE`, key `sku`), then the toolkit's queue consumer, which
//! reads `IDEMPOTENCY_TABLE`, `QUARANTINE_TABLE` and its optional settings.

use shared_workers::{Batch, Env, Error};

shared_workers::export_queue!(consume);

async fn consume(batch: Batch, env: Env) -> Result<(), Error> {
    let inventory = shared_workers::config::required(&env, "INVENTORY_TABLE")?;
    shared_workers::queue("inventory-reservations", batch, &env, move |r| crate::reserve(&inventory, r)).await
}
