//! Idempotency against the emulator, through the DynamoDB stores the functions
//! use: a batch delivered twice, concurrently, and after a task was cancelled
//! between the commit and its answer leaves the state of one delivery; a key
//! reused with another payload is reported, not applied; the lock path runs an
//! effect once, tells a concurrent duplicate to retry, and takes over the lock
//! of a crashed invocation after its expiry, not before.

use std::time::{Duration, SystemTime};

use integration_tests::fault_proxy::{Fault, FaultProxy, Plan, Target};
use integration_tests::{Stack, dec, n, s, state_item, state_items_with_prefix};
use orders::order::{OrderEvent, parse_order_event};
use orders::state::dynamo::DynamoStore;
use orders::state::{Marker, Outcome, StateStore};
use shared::idempotency::dynamo::DynamoIdempotencyStore;
use shared::idempotency::{Idempotency, IdempotencyError, IdempotencyStore, Options, Run, payload_hash};
use xtask::dynamodb_local::Engine;

/// `n` order events, one per order, each with its marker.
fn batch(n: usize) -> (Vec<OrderEvent>, Vec<Marker>) {
    (0..n)
        .map(|i| {
            let body = format!(
                r#"{{"eventId":"e-{i}","orderId":"o-{i}","customerId":"c-{}","status":"PLACED","amount":"{i}.50","currency":"EUR","occurredAt":"2026-11-29T10:00:00Z"}}"#,
                i % 3
            );
            let event = parse_order_event(&body).expect("a valid event");
            (event, Marker { key: format!("test#sqs-body#/eventId=e-{i}"), validation: Some(payload_hash(body.as_bytes())) })
        })
        .unzip()
}

fn store(stack: &Stack, endpoint: &str) -> anyhow::Result<DynamoStore> {
    Ok(DynamoStore::new(
        stack.dynamodb_client_at(endpoint),
        stack.spec.table("state")?.name.clone(),
        stack.spec.table("idempotency")?.name.clone(),
    ))
}

/// The orders in the state table, as (orderId, amount) pairs.
async fn orders(stack: &Stack) -> anyhow::Result<Vec<(String, rust_decimal::Decimal)>> {
    let mut orders = Vec::new();
    for item in state_items_with_prefix(stack, "ORDER#").await? {
        orders.push((s(&item, "orderId")?.to_owned(), n(&item, "amount")?));
    }
    orders.sort();
    Ok(orders)
}

fn expected_orders(n: usize) -> Vec<(String, rust_decimal::Decimal)> {
    let mut orders: Vec<_> = (0..n).map(|i| (format!("o-{i}"), dec(&format!("{i}.50")))).collect();
    orders.sort();
    orders
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_delivered_concurrently_and_again_applies_each_event_once() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    // DynamoDB Local isolates transactions as DynamoDB does: the two
    // deliveries reach it at once, with nothing in between. moto does not
    // (a failing transaction restores a copy of the tables taken when it
    // started, undoing the other's commit), so with LOCAL_STACK_DYNAMODB=moto
    // they go through `serializing`, which gives them that isolation.
    let serializing = match stack.engine {
        Engine::Local => None,
        Engine::Moto => Some(FaultProxy::serializing(&stack.dynamodb_endpoint).await?),
    };
    let endpoint = serializing.as_ref().map_or_else(|| stack.dynamodb_endpoint.clone(), FaultProxy::endpoint);
    println!("{} at {endpoint}", stack.engine.name());
    let store = store(&stack, &endpoint)?;
    let (events, markers) = batch(40);

    // Two deliveries at once, then a third: each event is applied by exactly
    // one of them; the others see its marker. A delivery that fails as a whole
    // (a transaction conflict) is retried, as the event source mapping would.
    let deliver = || async {
        loop {
            match store.apply_orders(&events, Some(&markers), None).await {
                Ok(outcomes) => return outcomes,
                Err(e) => println!("delivery failed, retrying: {e}"),
            }
        }
    };
    let (first, second) = tokio::join!(deliver(), deliver());
    let third = deliver().await;
    for i in 0..events.len() {
        let outcomes = [first[i], second[i], third[i]];
        let applied = outcomes.iter().filter(|o| **o == Outcome::Applied).count();
        let duplicate = outcomes.iter().filter(|o| **o == Outcome::Duplicate).count();
        assert_eq!((applied, duplicate), (1, 2), "event {i}: {outcomes:?}");
    }
    assert_eq!(orders(&stack).await?, expected_orders(events.len()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_cancelled_after_its_commit_then_redelivered_leaves_one_deliverys_state() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    // The first DynamoDB request (the batch's transaction) commits at the
    // emulator, and its answer is held back: the task is cancelled then.
    let proxy = FaultProxy::start(
        &stack.dynamodb_endpoint,
        Target::DynamoDb,
        Plan::Schedule(vec![(0, Fault::Slow(Duration::from_secs(30)))]),
    )
    .await?;
    let cancelled_store = store(&stack, &proxy.endpoint())?;
    let (events, markers) = batch(20);
    let task = {
        let (events, markers) = (events.clone(), markers.clone());
        tokio::spawn(async move { cancelled_store.apply_orders(&events, Some(&markers), None).await })
    };
    let waiting = tokio::time::Instant::now();
    while proxy.stats().slowed == 0 {
        assert!(waiting.elapsed() < Duration::from_secs(60), "the transaction never reached the emulator");
        tokio::task::yield_now().await;
    }
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());

    // The redelivery finds every marker: nothing is applied twice.
    let outcomes = store(&stack, &stack.dynamodb_endpoint)?.apply_orders(&events, Some(&markers), None).await?;
    assert!(outcomes.iter().all(|o| *o == Outcome::Duplicate), "{outcomes:?}");
    assert_eq!(orders(&stack).await?, expected_orders(events.len()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_with_another_payload_is_reported_and_not_applied() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let store = store(&stack, &stack.dynamodb_endpoint)?;
    let (events, markers) = batch(1);
    assert_eq!(store.apply_orders(&events, Some(&markers), None).await?, [Outcome::Applied]);

    let body = r#"{"eventId":"e-0","orderId":"o-0","customerId":"c-0","status":"PAID","amount":"99.00","currency":"EUR","occurredAt":"2026-11-29T11:00:00Z"}"#;
    let changed = parse_order_event(body)?;
    let reused = Marker { key: markers[0].key.clone(), validation: Some(payload_hash(body.as_bytes())) };
    assert_eq!(store.apply_orders(&[changed], Some(&[reused]), None).await?, [Outcome::KeyReused]);
    let order = state_item(&stack, "ORDER#o-0", "ORDER").await?.expect("o-0 stored");
    assert_eq!((s(&order, "status")?, n(&order, "amount")?), ("PLACED", dec("0.50")), "the reused key changed nothing");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_path_runs_once_and_takes_over_a_crashed_lock_only_after_its_expiry() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let table = stack.spec.table("idempotency")?.name.clone();
    let idempotency = std::sync::Arc::new(Idempotency::new(
        DynamoIdempotencyStore::new(stack.dynamodb.clone(), table),
        Options::default(),
    ));

    // An invocation takes the lock and crashes before completing (its task is
    // aborted while the effect runs); its deadline is 5 s away (room for a loaded machine before the early retry).
    let deadline = SystemTime::now() + Duration::from_secs(5);
    let crashed = {
        let idempotency = idempotency.clone();
        tokio::spawn(async move {
            idempotency.run("k-crash", b"p", Some(deadline), std::future::pending::<Result<u32, String>>).await
        })
    };
    while idempotency.store().get("k-crash").await.map_err(anyhow::Error::msg)?.is_none() {
        tokio::task::yield_now().await;
    }
    crashed.abort();
    let _ = crashed.await;

    // Before the crashed invocation's deadline: in progress, retry later.
    let early = idempotency.run("k-crash", b"p", None, || async { Ok::<_, String>(1) }).await;
    assert!(matches!(early, Err(IdempotencyError::InProgress { .. })), "{early:?}");
    // After it (the condition is the clock itself): taken over and run once.
    if let Ok(wait) = deadline.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait + Duration::from_millis(50)).await;
    }
    let late = idempotency.run("k-crash", b"p", None, || async { Ok::<_, String>(1) }).await?;
    assert_eq!(late, Ok(Run::Executed(1)));
    // Completed: replayed, never run again; another payload is reported.
    let again = idempotency.run("k-crash", b"p", None, || async { Ok::<_, String>(2) }).await?;
    assert_eq!(again, Ok(Run::Replayed(1)));
    let other = idempotency.run("k-crash", b"other", None, || async { Ok::<_, String>(3) }).await;
    assert!(matches!(other, Err(IdempotencyError::PayloadMismatch { .. })), "{other:?}");
    Ok(())
}

/// What a later record with the key of a rejected one gets, per unit: by
/// default it is evaluated again (a reservation refused for want of stock
/// goes through once there is stock); a unit that remembers its rejection
/// leaves a marker with the reason, and the later record is rejected again
/// without its write being tried, whatever the stock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_records_key_is_evaluated_again_or_rejected_again_as_its_unit_says() -> anyhow::Result<()> {
    use shared::dynamodb::types::{AttributeValue, Update};
    use shared::exactly_once::ExactlyOnce;
    use shared::{CommitError, UnitOfWork, Write};

    let stack = Stack::start().await?;
    let state = stack.spec.table("state")?.name.clone();
    let committer = ExactlyOnce::new(stack.dynamodb.clone(), stack.spec.table("idempotency")?.name.clone());
    let stock = |n: &str| {
        stack
            .dynamodb
            .put_item()
            .table_name(&state)
            .item("pk", AttributeValue::S("SKU#A".into()))
            .item("sk", AttributeValue::S("STOCK".into()))
            .item("available", AttributeValue::N(n.into()))
            .send()
    };
    // Take 5 of SKU A under `key`, rejected when fewer are available.
    let take = |key: &str, remember: bool| {
        let update = Update::builder()
            .table_name(&state)
            .key("pk", AttributeValue::S("SKU#A".into()))
            .key("sk", AttributeValue::S("STOCK".into()))
            .update_expression("SET available = available - :n")
            .condition_expression("available >= :n")
            .expression_attribute_values(":n", AttributeValue::N("5".into()));
        let unit = UnitOfWork::new(key).write(Write::update(update).reject_with(|_| "not enough of A".into()));
        if remember { unit.remember_rejection() } else { unit }
    };
    let available = || async {
        let item = state_item(&stack, "SKU#A", "STOCK").await?.expect("the stock item");
        n(&item, "available")
    };

    stock("1").await?;
    let refused = committer.commit(vec![take("test#take#1", false), take("test#take#2", true)], None).await;
    assert_eq!(
        refused,
        vec![
            Err(CommitError::Permanent("not enough of A".into())),
            Err(CommitError::Permanent("not enough of A".into()))
        ]
    );
    assert_eq!(available().await?, dec("1"));

    stock("10").await?;
    let again = committer.commit(vec![take("test#take#1", false), take("test#take#2", true)], None).await;
    assert_eq!(
        again,
        vec![Ok(Outcome::Applied), Err(CommitError::Permanent("rejected before: not enough of A".into()))],
        "the first key is evaluated again and applied; the second is rejected again"
    );
    assert_eq!(available().await?, dec("5"), "only the re-evaluated take moved the stock");
    Ok(())
}
