//! Lambda entry point: the ledger's URL from the environment (`LEDGER_URL`),
//! then the toolkit's stream consumer under the idempotency lock, which
//! reads `IDEMPOTENCY_TABLE`, `QUARANTINE_TABLE` and its optional settings.

use ledger_notifier::{plan, post};

fn main() -> Result<(), shared::Error> {
    let (ledger, http) = (shared::config::required("LEDGER_URL")?, reqwest::Client::new());
    shared::dynamodb_stream_with_lock("ledger-notifier", plan, async |entry| post(&http, &ledger, entry).await)
}
