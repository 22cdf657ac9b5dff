//! The end-to-end scenario through a fault-injecting proxy: a fifth of the
//! functions' DynamoDB calls are throttled, fail with 500, are slowed, or have
//! their connection dropped. The pipeline must drain to the same final state
//! as a fault-free run, hold the invariant, and leave nothing that was not
//! poison in a dead-letter queue.

use std::time::Duration;

use integration_tests::fault_proxy::{Fault, FaultProxy, Plan, Target};
use integration_tests::{dec, drain, n, state_item, totals};
use xtask::Stack;
use xtask::scenario::{self, FIFO_QUEUE, STANDARD_QUEUE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_under_20_percent_dynamodb_faults_drains_to_the_fault_free_state() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let plan = Plan::Rate {
        rate: 0.2,
        faults: vec![Fault::Throttle, Fault::ServerError, Fault::Slow(Duration::from_millis(300)), Fault::Drop],
        seed: 20261128,
    };
    let proxy = FaultProxy::start(&stack.dynamodb_endpoint, Target::DynamoDb, plan).await?;
    stack.function_dynamodb_endpoint = Some(proxy.endpoint());
    stack.start_lambda().await?;

    let objects = stack.upload_sample_data().await?;
    let mut sent = scenario::send_lines(&stack, STANDARD_QUEUE, scenario::ORDERS_QUEUE).await?;
    sent += scenario::send_lines(&stack, FIFO_QUEUE, scenario::ORDERS_FIFO).await?;
    drain(&stack).await?;
    sent += scenario::send_lines(&stack, STANDARD_QUEUE, scenario::ORDERS_LATE).await?;
    drain(&stack).await?;

    let stats = proxy.stats();
    println!("fault proxy: {stats:?}");
    assert!(stats.throttled + stats.server_errors + stats.dropped > 0, "faults were injected: {stats:?}");

    let lambda = stack.lambda().expect("started");
    let verdict = scenario::verdict(&stack, &lambda.log_text(), sent, &objects).await?;
    assert!(verdict.holds(), "problems: {:#?}\naccounting: {:#?}", verdict.problems, verdict.accounting);
    // The same totals as the fault-free end-to-end test.
    for (customer, count, currency, sum) in [
        ("c-alice", "4", "USD", "63.74"),
        ("c-bob", "1", "EUR", "12"),
        ("c-gina", "2", "EUR", "17.34"),
        ("c-hal", "1", "GBP", "70"),
    ] {
        let item = state_item(&stack, &format!("CUSTOMER#{customer}"), "TOTALS").await?.expect("totals exist");
        assert_eq!(n(&item, "orderCount")?, dec(count), "{customer}");
        assert_eq!(totals(&item)?.get(currency).copied(), Some(dec(sum)), "{customer}");
    }
    for dlq in ["ordersDlq", "ordersFifoDlq", "ingestDlq"] {
        assert_eq!(stack.queue_depth(dlq).await?, 0, "{dlq}: only poison may end in a DLQ, and poison is quarantined");
    }
    assert_eq!(verdict.snapshot.quarantine.len(), 8, "the same 8 poison records, no more");
    Ok(())
}
