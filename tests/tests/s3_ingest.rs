//! s3-ingest through the real path: an object uploaded under `incoming/`, the
//! emulator's own S3 notification to the ingest queue, the driver's SQS
//! mapping, the function's binary served by the local stack, DynamoDB read back.

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

/// One object `key` of `lines` order events, in the stack's bucket, as the
/// SQS record of its notification.
async fn upload(stack: &integration_tests::Stack, key: &str, body: Vec<u8>) -> anyhow::Result<serde_json::Value> {
    stack.put_object(key, body).await?;
    let head = stack.s3.head_object().bucket(&stack.spec.bucket.name).key(key).send().await?;
    let notification = serde_json::json!({"Records": [{"eventName": "ObjectCreated:Put", "s3": {
        "bucket": {"name": stack.spec.bucket.name},
        "object": {"key": key, "size": head.content_length(), "eTag": head.e_tag().unwrap_or_default().trim_matches('"')}}}]});
    Ok(
        serde_json::json!({"Records": [{"eventSource": "aws:sqs", "messageId": "m-1", "body": notification.to_string()}]}),
    )
}

fn orders_body(lines: usize) -> Vec<u8> {
    (0..lines)
        .map(|i| {
            format!(
                "{{\"eventId\":\"e-{i}\",\"orderId\":\"o-{}\",\"customerId\":\"c-{}\",\"status\":\"PLACED\",\"amount\":\"{i}.25\",\"currency\":\"EUR\",\"occurredAt\":\"2026-11-29T10:{:02}:00Z\"}}\n",
                i % 150,
                i % 7,
                i % 60
            )
        })
        .collect::<String>()
        .into_bytes()
}

/// s3-ingest's handler with the real S3 and DynamoDB clients against a stack.
struct Ingest {
    store: orders::state::dynamo::DynamoStore,
    objects: shared::object::S3Source,
    config: orders::config::Config,
}

impl Ingest {
    fn new(stack: &integration_tests::Stack) -> anyhow::Result<Self> {
        let (state, idempotency) =
            (stack.spec.table("state")?.name.clone(), stack.spec.table("idempotency")?.name.clone());
        let config = orders::config::Config::from_lookup(|name| match name {
            "STATE_TABLE" => Some(state.clone()),
            "IDEMPOTENCY_TABLE" => Some(idempotency.clone()),
            _ => None,
        })?;
        Ok(Self {
            store: orders::state::dynamo::DynamoStore::new(stack.dynamodb.clone(), state, idempotency),
            objects: shared::object::S3Source::new(stack.s3.clone()),
            config,
        })
    }

    /// One invocation; true when the object is done (no item failure).
    async fn invoke(&self, event: &serde_json::Value, deadline: &s3_ingest::Deadline) -> anyhow::Result<bool> {
        let (response, _, _) =
            s3_ingest::handle(&self.store, &self.objects, &s3_ingest::Handoff::Retry, &self.config, event, deadline)
                .await
                .map_err(|e| anyhow::anyhow!("invocation failed: {e}"))?;
        Ok(response["batchItemFailures"].as_array().is_none_or(Vec::is_empty))
    }
}

/// Orders and the object's manifest, as the state table holds them.
async fn outcome(
    stack: &integration_tests::Stack,
) -> anyhow::Result<(Vec<integration_tests::Item>, integration_tests::Item)> {
    let mut orders = state_items_with_prefix(stack, "ORDER#").await?;
    for order in &mut orders {
        order.remove("updatedAt");
    }
    orders.sort_by(|a, b| format!("{:?}", a.get("pk")).cmp(&format!("{:?}", b.get("pk"))));
    let manifests = state_items_with_prefix(stack, "OBJECT#").await?;
    anyhow::ensure!(manifests.len() == 1, "one manifest expected: {manifests:?}");
    Ok((orders, manifests[0].clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_interrupted_by_the_deadline_resume_to_exactly_one_clean_pass() -> anyhow::Result<()> {
    use std::io::Write;
    let body = orders_body(400);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&body)?;
    // The two objects side by side: each waits mostly on its own emulators.
    tokio::try_join!(
        interrupted_pass_matches_a_clean_one("incoming/big.ndjson", body),
        interrupted_pass_matches_a_clean_one("incoming/big.ndjson.gz", gz.finish()?),
    )?;
    Ok(())
}

/// Ingests the object `key` once cleanly and once interrupted by the deadline
/// after every chunk, each on its own stack, and compares the results.
async fn interrupted_pass_matches_a_clean_one(key: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
    let clean = integration_tests::Stack::start().await?;
    let event = upload(&clean, key, bytes.clone()).await?;
    assert!(Ingest::new(&clean)?.invoke(&event, &s3_ingest::Deadline::None).await?, "{key}: one clean pass");

    let interrupted = integration_tests::Stack::start().await?;
    let event = upload(&interrupted, key, bytes).await?;
    let ingest = Ingest::new(&interrupted)?;
    let mut invocations = 0;
    // Two deadline checks per invocation: the message, then one chunk.
    while !ingest.invoke(&event, &s3_ingest::Deadline::after_chunks(2)).await? {
        invocations += 1;
        assert!(invocations < 50, "{key}: no progress");
    }
    assert!(invocations >= 3, "{key}: interrupted only {invocations} times");

    let (clean_orders, clean_manifest) = outcome(&clean).await?;
    let (orders, manifest) = outcome(&interrupted).await?;
    assert_eq!(orders.len(), 150, "{key}");
    assert_eq!(orders, clean_orders, "{key}: the orders of one clean pass");
    for field in ["status", "lines", "accepted", "stale", "duplicates", "rejected"] {
        assert_eq!(manifest.get(field), clean_manifest.get(field), "{key}: manifest {field}");
    }
    assert_eq!(n(&manifest, "lines")?, dec("400"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_object_completes_with_no_lines() -> anyhow::Result<()> {
    let stack = integration_tests::Stack::start().await?;
    let event = upload(&stack, "incoming/empty.ndjson", Vec::new()).await?;
    assert!(Ingest::new(&stack)?.invoke(&event, &s3_ingest::Deadline::None).await?);
    let (orders, manifest) = outcome(&stack).await?;
    assert!(orders.is_empty());
    assert_eq!(s(&manifest, "status")?, "COMPLETED");
    assert_eq!(n(&manifest, "lines")?, dec("0"));
    Ok(())
}
