//! End to end: the demo scenario (sample objects, order events on both
//! queues with a duplicate, an older event and poison messages, late events
//! after a first drain) through every mapping and the real binaries under
//! `cargo lambda watch`, then DESIGN.md's invariant and the accounting.

use integration_tests::{dec, drain, n, stack_with_functions, state_item, totals};
use xtask::scenario::{self, FIFO_QUEUE, STANDARD_QUEUE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_pipeline_holds_the_invariant_and_accounts_for_every_record() -> anyhow::Result<()> {
    let stack = stack_with_functions().await?;
    let objects = stack.upload_sample_data().await?;
    assert!(!objects.is_empty(), "events/data/ has sample files");
    let mut sent = scenario::send_lines(&stack, STANDARD_QUEUE, scenario::ORDERS_QUEUE).await?;
    sent += scenario::send_lines(&stack, FIFO_QUEUE, scenario::ORDERS_FIFO).await?;
    drain(&stack).await?;
    sent += scenario::send_lines(&stack, STANDARD_QUEUE, scenario::ORDERS_LATE).await?;
    drain(&stack).await?;
    assert_eq!(sent, scenario::demo_message_count());

    let lambda = stack.lambda().expect("started");
    let verdict = scenario::verdict(&stack, &lambda.log_text(), sent, &objects).await?;
    assert!(verdict.holds(), "problems: {:#?}\naccounting: {:#?}", verdict.problems, verdict.accounting);
    let sqs = verdict.accounting.get("sqs-consumer").copied().unwrap_or_default();
    assert_eq!(sqs.quarantined, 2, "the two poison messages");
    assert!(sqs.duplicate >= 1, "the re-sent event is a duplicate: {sqs:?}");
    assert!(sqs.stale >= 1, "the older event is stale: {sqs:?}");

    // Customers only the queues touch: exact totals.
    let gina = state_item(&stack, "CUSTOMER#c-gina", "TOTALS").await?.expect("c-gina");
    assert_eq!(n(&gina, "orderCount")?, dec("2"));
    assert_eq!(totals(&gina)?.get("EUR"), Some(&dec("17.34")));
    let hal = state_item(&stack, "CUSTOMER#c-hal", "TOTALS").await?.expect("c-hal");
    assert_eq!(n(&hal, "orderCount")?, dec("1"));
    assert_eq!(totals(&hal)?.get("GBP"), Some(&dec("70")));
    Ok(())
}
