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
