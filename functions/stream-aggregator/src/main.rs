//! Lambda entry point of `stream-aggregator`: the toolkit's settings with
//! the orders' defaults, the state store, then the handler for every batch.

use orders::config::{Config, DEFAULTS};
use orders::state::dynamo::DynamoStore;
use shared::event::RawBatch;

fn main() -> Result<(), shared::Error> {
    shared::Function::new("stream-aggregator").defaults(DEFAULTS).run(|aws| {
        let config = Config::from_settings(aws.settings().clone())?;
        let store = DynamoStore::from_aws(aws, &config);
        Ok(async move |batch: RawBatch, deadline| {
            stream_aggregator::handle_batch(&store, &config, &batch, Some(deadline)).await
        })
    })
}
