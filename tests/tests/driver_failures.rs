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

/// `drain` stops when its sources read empty, so the depth must count a
/// message at every moment until it is deleted or dead-lettered, including
/// the moment its visibility timeout ends (the race that once let the test
/// above stop with its message still queued).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_depth_counts_every_message_while_visibility_timeouts_end() -> anyhow::Result<()> {
    use aws_sdk_sqs::types::QueueAttributeName;
    const MESSAGES: u64 = 40;
    let stack = integration_tests::Stack::start().await?;
    let url = stack.queue_url("orders")?.to_owned();
    for i in 0..MESSAGES {
        stack.send("orders", &format!("m-{i}"), None).await?;
    }
    // One receive per message: their timeouts end one after another, spread
    // over the reads below.
    for _ in 0..MESSAGES {
        let out =
            stack.sqs.receive_message().queue_url(&url).max_number_of_messages(1).visibility_timeout(1).send().await?;
        assert_eq!(out.messages().len(), 1);
    }
    let visible = || async {
        let out = stack
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await?;
        let count = out.attributes().and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages)).cloned();
        anyhow::Ok(count.and_then(|c| c.parse::<u64>().ok()).unwrap_or(0))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut reads = 0;
    while visible().await? < MESSAGES {
        assert!(std::time::Instant::now() < deadline, "the timeouts did not end within a minute");
        // A message moving between two counts may be counted twice (drain
        // then looks once more), never missed.
        let counted = depth(&stack, "orders").await?;
        assert!(counted >= MESSAGES, "read {reads}: {counted} of {MESSAGES} messages counted");
        reads += 1;
    }
    assert!(reads > 0, "the depth was read while the timeouts ran");
    Ok(())
}
