//! The driver's failure semantics against the emulator: an invocation that
//! fails as a whole leaves its batch on the queue; after `maxReceiveCount`
//! receives the emulator's redrive moves it to the dead-letter queue.

use integration_tests::{depth, drain, stack_with_functions};
use xtask::stack::dlq_key;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_invocations_end_in_the_dead_letter_queue() -> anyhow::Result<()> {
    let stack = stack_with_functions().await?;
    // Without its table sqs-consumer can do nothing: the whole invocation
    // fails (DESIGN.md, error classes), every time.
    stack.dynamodb.delete_table().table_name(&stack.spec.table("state")?.name).send().await?;
    let body = r#"{"eventId":"e-dlq","orderId":"o-dlq","customerId":"c","status":"PLACED","amount":"1","currency":"EUR","occurredAt":"2026-11-01T10:00:00Z"}"#;
    stack.send("orders", body, None).await?;
    drain(&stack).await?;
    assert_eq!(depth(&stack, "orders").await?, 0);
    let dead = xtask::report::peek_queue(&stack, &dlq_key("orders")).await?;
    assert_eq!(dead, vec![body.to_owned()], "the message was dead-lettered intact");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_stream_retries_go_to_the_on_failure_queue() -> anyhow::Result<()> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let stack = stack_with_functions().await?;
    // stream-aggregator commits each delta with its marker in the idempotency
    // table: without it every invocation fails as a whole.
    stack.dynamodb.delete_table().table_name(&stack.spec.table("idempotency")?.name).send().await?;
    for order in ["o-f1", "o-f2"] {
        let s = |v: &str| AttributeValue::S(v.to_owned());
        stack
            .dynamodb
            .put_item()
            .table_name(&stack.spec.table("state")?.name)
            .item("pk", s(&format!("ORDER#{order}")))
            .item("sk", s("ORDER"))
            .item("entity", s("order"))
            .item("orderId", s(order))
            .item("customerId", s("c-fail"))
            .item("status", s("PAID"))
            .item("amount", AttributeValue::N("1".into()))
            .item("currency", s("EUR"))
            .item("occurredAt", s("2026-11-01T10:00:00Z"))
            .item("lastEventId", s("e-1"))
            .item("version", AttributeValue::N("1".into()))
            .send()
            .await?;
    }
    drain(&stack).await?;

    let failures = xtask::report::peek_queue(&stack, "streamFailures").await?;
    assert!(!failures.is_empty(), "retries exhausted, batches reported");
    let mut records = 0;
    for body in &failures {
        let message: serde_json::Value = serde_json::from_str(body)?;
        assert_eq!(message["requestContext"]["condition"], "RetryAttemptsExhausted");
        let info = &message["DDBStreamBatchInfo"];
        assert!(info["shardId"].as_str().is_some_and(|s| !s.is_empty()), "{message}");
        assert!(info["startSequenceNumber"].is_string(), "{message}");
        assert!(info["endSequenceNumber"].is_string(), "{message}");
        assert!(info["streamArn"].as_str().is_some_and(|a| a.contains(":table/")), "{message}");
        records += info["batchSize"].as_u64().unwrap_or(0);
    }
    assert_eq!(records, 2, "both order records reported: {failures:?}");
    assert!(integration_tests::state_item(&stack, "CUSTOMER#c-fail", "TOTALS").await?.is_none());
    Ok(())
}
