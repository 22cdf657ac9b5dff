//! Lambda entry point of `s3-ingest`: the toolkit's settings with the
//! orders' defaults, the state store, the object source and the hand-off
//! queue, then the handler for every event.

use orders::config::{Config, DEFAULTS};
use orders::state::dynamo::DynamoStore;
use s3_ingest::{Deadline, Handoff};
use shared::object::S3Source;

fn main() -> Result<(), shared::Error> {
    shared::Function::new("s3-ingest").defaults(DEFAULTS).run(|aws| {
        let config = Config::from_settings(aws.settings().clone())?;
        let store = DynamoStore::from_aws(aws, &config);
        let objects = S3Source::new(aws.s3());
        let handoff = match &config.ingest_queue_url {
            Some(url) => Handoff::Queue { client: aws.sqs(), queue_url: url.clone() },
            None => Handoff::Retry,
        };
        Ok(async move |payload: serde_json::Value, deadline| {
            let deadline = Deadline::At(deadline);
            // Boxed: the ingest future is deep, and a boxed one keeps main's small.
            let handled = Box::pin(s3_ingest::handle(&store, &objects, &handoff, &config, &payload, &deadline)).await;
            handled.map(|(response, summary, _)| (response, summary))
        })
    })
}
