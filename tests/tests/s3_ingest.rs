//! s3-ingest through the real path: an object uploaded under `incoming/`, the
//! emulator's own S3 notification to the ingest queue, the driver's SQS
//! mapping, the function under `cargo lambda watch`, DynamoDB read back.

use integration_tests::{dec, depth, drain, n, s, stack_with_functions, state_item, state_items_with_prefix};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_objects_become_orders_manifests_and_quarantine() -> anyhow::Result<()> {
    let stack = stack_with_functions().await?;
    let bucket = stack.spec.bucket.name.clone();
    let prefix = stack.spec.bucket.notifications[0].prefix.clone();
    let plain = format!("{prefix}orders.ndjson");
    // Space and plus: S3 notifications URL-encode keys (moto also encodes '/').
    let awkward = format!("{prefix}daily orders+extra.ndjson");
    stack.put_object(&plain, xtask::scenario::sample_file(&stack, "orders.ndjson")?).await?;
    stack.put_object(&awkward, xtask::scenario::sample_file(&stack, "daily orders+extra.ndjson")?).await?;
    // Outside the notification prefix: must not be ingested.
    stack.put_object("elsewhere/orders.ndjson", xtask::scenario::sample_file(&stack, "orders.ndjson")?).await?;
    drain(&stack).await?;

    let o1001 = state_item(&stack, "ORDER#o-1001", "ORDER").await?.expect("order o-1001 written");
    assert_eq!(s(&o1001, "entity")?, "order");
    assert_eq!(s(&o1001, "customerId")?, "c-alice");
    assert_eq!(s(&o1001, "status")?, "PAID", "the later event wins");
    assert_eq!(n(&o1001, "amount")?, dec("25.50"));
    assert_eq!(s(&o1001, "currency")?, "USD");
    let o1003 = state_item(&stack, "ORDER#o-1003", "ORDER").await?.expect("order o-1003 written");
    assert_eq!(s(&o1003, "status")?, "CANCELLED");
    assert!(
        state_item(&stack, "ORDER#o-1004", "ORDER").await?.is_none(),
        "o-1004 has an invalid currency and must be quarantined, not applied"
    );
    let frank = state_item(&stack, "ORDER#o-5001", "ORDER")
        .await?
        .expect("the object with a space and a plus in its key was ingested");
    assert_eq!(s(&frank, "customerId")?, "c-frank");

    let manifests = state_items_with_prefix(&stack, "OBJECT#").await?;
    let manifest_of = |key: &str| {
        let pk = format!("OBJECT#{bucket}/{key}");
        manifests
            .iter()
            .find(|m| s(m, "pk").ok() == Some(pk.as_str()))
            .cloned()
            .unwrap_or_else(|| panic!("no manifest {pk}; manifests: {manifests:?}"))
    };
    let m = manifest_of(&plain);
    assert_eq!(s(&m, "entity")?, "object");
    assert_eq!(s(&m, "status")?, "COMPLETED");
    assert_eq!(n(&m, "lines")?, dec("7"));
    assert_eq!(n(&m, "rejected")?, dec("2"), "bad JSON and a lower-case currency");
    assert_eq!(
        n(&m, "accepted")? + n(&m, "stale")? + n(&m, "duplicates")?,
        dec("5"),
        "every valid line is accounted for"
    );
    assert_eq!(s(&manifest_of(&awkward), "status")?, "COMPLETED");
    assert_eq!(manifests.len(), 2, "nothing outside {prefix} is ingested: {manifests:?}");

    let quarantined = state_items_with_prefix(&stack, "QUARANTINE#").await?;
    assert_eq!(quarantined.len(), 2, "{quarantined:?}");
    for q in &quarantined {
        assert_eq!(s(q, "entity")?, "quarantine");
        assert!(!s(q, "reason")?.is_empty());
    }
    assert_eq!(depth(&stack, "ingest").await?, 0);
    assert_eq!(depth(&stack, "ingestDlq").await?, 0, "nothing dead-lettered");
    Ok(())
}
