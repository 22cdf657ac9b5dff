//! End to end: the demo scenario (sample objects, order events on both
//! queues with a duplicate, an older event and poison messages, late events
//! after a first drain) through every mapping and the real binaries served as
//! Lambda serves them, then DESIGN.md's invariant and the accounting.

use integration_tests::{dec, drain, n, stack_with_functions, state_item, totals};
use xtask::scenario::{self, FIFO_QUEUE, STANDARD_QUEUE};

/// customer, orderCount, (currency, sum) pairs.
type ExpectedTotals = (&'static str, &'static str, &'static [(&'static str, &'static str)]);

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

    // The totals the README promises: sample files plus xtask/demo/, by the
    // apply rule (latest event per order wins) and the aggregation rule
    // (non-CANCELLED orders count).
    let expected: [ExpectedTotals; 8] = [
        ("c-alice", "4", &[("USD", "63.74")]),
        ("c-bob", "1", &[("EUR", "12")]),
        ("c-carol", "1", &[("GBP", "40")]),
        ("c-dave", "1", &[("USD", "100")]),
        ("c-erin", "2", &[("EUR", "20")]),
        ("c-frank", "2", &[("CHF", "20")]),
        ("c-gina", "2", &[("EUR", "17.34")]),
        ("c-hal", "1", &[("GBP", "70")]),
    ];
    for (customer, count, sums) in expected {
        let item = state_item(&stack, &format!("CUSTOMER#{customer}"), "TOTALS")
            .await?
            .unwrap_or_else(|| panic!("no totals for {customer}"));
        assert_eq!(n(&item, "orderCount")?, dec(count), "{customer}");
        let got: std::collections::BTreeMap<String, _> =
            totals(&item)?.into_iter().filter(|(_, v)| !v.is_zero()).collect();
        let want: std::collections::BTreeMap<String, _> = sums.iter().map(|(c, v)| ((*c).to_owned(), dec(v))).collect();
        assert_eq!(got, want, "{customer}");
    }
    let quarantined = verdict.snapshot.quarantine.len();
    assert_eq!(quarantined, 8, "6 bad lines in the files, 2 poison messages");
    Ok(())
}
