//! sqs-consumer through the real path: messages on the emulator's queues, the
//! driver's SQS mappings, the function's binary served by the local stack, DynamoDB
//! and the dead-letter queues read back.

use integration_tests::{dec, depth, drain, n, s, stack_with_functions, state_item, state_items_with_prefix};
use xtask::stack::dlq_key;

fn event(event_id: &str, order_id: &str, status: &str, amount: &str, at: &str) -> String {
    serde_json::json!({
        "eventId": event_id, "orderId": order_id, "customerId": "c-test",
        "status": status, "amount": amount, "currency": "EUR", "occurredAt": at,
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_quarantined_and_valid_ones_applied() -> anyhow::Result<()> {
    let stack = stack_with_functions().await?;
    let valid = [
        event("e-1", "o-1", "PLACED", "10.00", "2026-11-01T10:00:00Z"),
        event("e-2", "o-2", "PAID", "2.50", "2026-11-01T11:00:00Z"),
        event("e-3", "o-3", "SHIPPED", "1", "2026-11-01T12:00:00Z"),
    ];
    for body in &valid {
        stack.send("orders", body, None).await?;
    }
    stack.send("orders", "{not json", None).await?;
    stack.send("orders", &event("e-4", "o-4", "LOST", "1", "2026-11-01T12:00:00Z"), None).await?;
    drain(&stack).await?;

    for (order, status) in [("o-1", "PLACED"), ("o-2", "PAID"), ("o-3", "SHIPPED")] {
        let item = state_item(&stack, &format!("ORDER#{order}"), "ORDER")
            .await?
            .unwrap_or_else(|| panic!("order {order} applied"));
        assert_eq!(s(&item, "status")?, status);
        assert_eq!(s(&item, "customerId")?, "c-test");
    }
    assert!(state_item(&stack, "ORDER#o-4", "ORDER").await?.is_none());
    let quarantined = state_items_with_prefix(&stack, "QUARANTINE#").await?;
    assert_eq!(quarantined.len(), 2, "{quarantined:?}");
    for q in &quarantined {
        assert_eq!(s(q, "entity")?, "quarantine");
        assert!(!s(q, "reason")?.is_empty(), "{q:?}");
    }
    assert_eq!(depth(&stack, "orders").await?, 0);
    assert_eq!(depth(&stack, &dlq_key("orders")).await?, 0, "a poison message is quarantined, never dead-lettered");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_queue_messages_are_applied_and_deleted() -> anyhow::Result<()> {
    let stack = stack_with_functions().await?;
    let at = "2026-11-01T10:00:00Z";
    for (id, status) in [("e-a", "PLACED"), ("e-b", "PAID"), ("e-c", "CANCELLED")] {
        stack.send("ordersFifo", &event(id, "o-fifo", status, "3.00", at), Some("c-test")).await?;
    }
    drain(&stack).await?;
    let item = state_item(&stack, "ORDER#o-fifo", "ORDER").await?.expect("FIFO order applied");
    // Equal occurredAt: the apply rule's eventId tie-break picks e-c.
    assert_eq!(s(&item, "status")?, "CANCELLED");
    assert_eq!(n(&item, "amount")?, dec("3"));
    assert_eq!(depth(&stack, "ordersFifo").await?, 0);
    assert_eq!(depth(&stack, &dlq_key("ordersFifo")).await?, 0);
    Ok(())
}
