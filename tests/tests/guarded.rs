//! The guarded path against DynamoDB Local: order events applied without
//! markers and outside transactions (`StateStore::apply_orders_guarded`,
//! on `BatchExecuteStatement`), each order guarding its events itself. A
//! redelivered batch, a resend in other formatting, a reused event id, a
//! stale event and two concurrent deliveries are each accounted for as on
//! the marker path, and each event is applied once.

use integration_tests::{Stack, dec, n, s, state_item};
use orders::order::{OrderEvent, fingerprint, parse_order_event};
use orders::state::dynamo::DynamoStore;
use orders::state::{Marker, Outcome, StateStore};

fn event(event_id: &str, order_id: &str, status: &str, amount: &str, at: &str) -> String {
    format!(
        r#"{{"eventId":"{event_id}","orderId":"{order_id}","customerId":"c-guard","status":"{status}","amount":"{amount}","currency":"EUR","occurredAt":"{at}"}}"#
    )
}

/// Events with their markers as sqs-consumer makes them (the key of the
/// event id, the fingerprint of the validated event).
fn planned(bodies: &[String]) -> (Vec<OrderEvent>, Vec<Marker>) {
    bodies
        .iter()
        .map(|body| {
            let event = parse_order_event(body).expect("a valid event");
            let marker = Marker {
                key: format!("orders#sqs-body#/eventId={}", event.event_id),
                validation: Some(fingerprint(&event)),
            };
            (event, marker)
        })
        .unzip()
}

fn store(stack: &Stack) -> anyhow::Result<DynamoStore> {
    Ok(DynamoStore::new(
        stack.dynamodb.clone(),
        stack.spec.table("state")?.name.clone(),
        stack.spec.table("idempotency")?.name.clone(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_orders_account_for_redeliveries_resends_reused_ids_and_stale_events() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let store = store(&stack)?;
    let first = [
        event("e-1", "o-1", "PLACED", "10.00", "2026-12-01T10:00:00Z"),
        event("e-2", "o-2", "PLACED", "20.00", "2026-12-01T10:00:00Z"),
        event("e-3", "o-2", "PAID", "20.00", "2026-12-01T11:00:00Z"),
    ];
    let (events, markers) = planned(&first);
    let outcomes = store.apply_orders_guarded(&events, &markers).await?;
    // e-2 loses o-2 to the later e-3 in the same batch.
    assert_eq!(outcomes, [Outcome::Applied, Outcome::Stale, Outcome::Applied]);

    // The same batch again: the orders hold e-1 and e-3 (duplicates); e-2
    // was superseded (stale, as it was the first time).
    let again = store.apply_orders_guarded(&events, &markers).await?;
    assert_eq!(again, [Outcome::Duplicate, Outcome::Stale, Outcome::Duplicate]);

    // A resend of e-1 in other formatting is a duplicate; e-3's id with
    // another amount is a reused key; an event older than o-1's is stale.
    let resend = r#"{ "orderId": "o-1", "eventId": "e-1", "amount": 10, "customerId": "c-guard",
        "status": "PLACED", "currency": "EUR", "occurredAt": "2026-12-01T10:00:00.000Z" }"#;
    let later = [
        resend.to_owned(),
        event("e-3", "o-2", "PAID", "99.00", "2026-12-01T11:00:00Z"),
        event("e-0", "o-1", "PLACED", "5.00", "2026-12-01T09:00:00Z"),
    ];
    let (events, markers) = planned(&later);
    let outcomes = store.apply_orders_guarded(&events, &markers).await?;
    assert_eq!(outcomes, [Outcome::Duplicate, Outcome::KeyReused, Outcome::Stale]);

    for (order, last, amount) in [("o-1", "e-1", "10"), ("o-2", "e-3", "20")] {
        let item = state_item(&stack, &format!("ORDER#{order}"), "ORDER").await?.expect("the order");
        assert_eq!(s(&item, "lastEventId")?, last);
        assert_eq!(n(&item, "amount")?, dec(amount));
        assert!(item.contains_key("lastFingerprint"), "{item:?}");
    }
    let o1 = state_item(&stack, "ORDER#o-1", "ORDER").await?.expect("o-1");
    assert_eq!(n(&o1, "version")?, dec("1"), "o-1 written once: {o1:?}");
    let o2 = state_item(&stack, "ORDER#o-2", "ORDER").await?.expect("o-2");
    assert_eq!(n(&o2, "version")?, dec("1"), "o-2 written once, by e-3: {o2:?}");
    assert!(stack.scan("idempotency").await?.is_empty(), "no marker on the guarded path");
    Ok(())
}

/// Two deliveries of one batch at once, then a later event: every order is
/// written once per event that changes it, whichever delivery wins; the
/// loser's inserts find the orders there and read as duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_orders_delivered_concurrently_apply_each_event_once() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let store = store(&stack)?;
    let bodies: Vec<String> = (0..30)
        .map(|i| event(&format!("e-{i}"), &format!("o-{i}"), "PLACED", "1.50", "2026-12-01T10:00:00Z"))
        .collect();
    let (events, markers) = planned(&bodies);
    let (a, b) =
        tokio::join!(store.apply_orders_guarded(&events, &markers), store.apply_orders_guarded(&events, &markers));
    let (a, b) = (a?, b?);
    for i in 0..30 {
        let pair = [a[i], b[i]];
        assert!(
            pair.contains(&Outcome::Applied) && pair.contains(&Outcome::Duplicate),
            "event {i}: one delivery applies it, the other sees it applied: {pair:?}"
        );
        let item = state_item(&stack, &format!("ORDER#o-{i}"), "ORDER").await?.expect("the order");
        assert_eq!(n(&item, "version")?, dec("1"), "o-{i} written once: {item:?}");
    }
    let paid: Vec<String> =
        (0..30).map(|i| event(&format!("p-{i}"), &format!("o-{i}"), "PAID", "1.50", "2026-12-01T11:00:00Z")).collect();
    let (events, markers) = planned(&paid);
    assert!(store.apply_orders_guarded(&events, &markers).await?.iter().all(|o| *o == Outcome::Applied));
    let item = state_item(&stack, "ORDER#o-7", "ORDER").await?.expect("o-7");
    assert_eq!((s(&item, "status")?, n(&item, "version")?), ("PAID", dec("2")));
    Ok(())
}

/// Stream records that move no total (a status change, say) have no effect
/// to pair their marker with: their markers go alone, guarded, outside the
/// totals' transaction. A retried batch still finds every record done once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totals_records_without_a_delta_are_marked_alone_and_read_as_duplicates_when_retried() -> anyhow::Result<()> {
    use orders::state::DeltaRecord;
    let stack = Stack::start().await?;
    let store = store(&stack)?;
    let record = |key: &str, amount: Option<&str>| DeltaRecord {
        idempotency_key: key.to_owned(),
        deltas: amount
            .map(|a| {
                let totals = orders::order::CustomerTotals {
                    order_count: 1,
                    totals: [(orders::order::Currency::parse("EUR").expect("EUR"), a.parse().expect("a decimal"))]
                        .into_iter()
                        .collect(),
                };
                [("c-stream".to_owned(), totals)].into_iter().collect()
            })
            .unwrap_or_default(),
    };
    let batch = [
        record("test#ddb-stream#1", Some("10.50")),
        record("test#ddb-stream#2", None),
        record("test#ddb-stream#3", None),
        record("test#ddb-stream#4", Some("2.00")),
    ];
    let (outcomes, error) = store.apply_deltas(&batch).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(outcomes, [Outcome::Applied; 4]);
    let (again, error) = store.apply_deltas(&batch).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(again, [Outcome::Duplicate; 4], "each record done once");
    let totals = state_item(&stack, "CUSTOMER#c-stream", "TOTALS").await?.expect("the totals");
    assert_eq!(n(&totals, "orderCount")?, dec("2"));
    assert_eq!(integration_tests::totals(&totals)?.get("EUR"), Some(&dec("12.50")));
    let markers = stack.scan("idempotency").await?;
    assert_eq!(markers.len(), 4, "a marker per record, the two without a delta's included: {markers:?}");
    assert!(markers.iter().all(|m| s(m, "status").ok() == Some("COMPLETED")), "{markers:?}");
    Ok(())
}

/// The manifest write of a one-chunk object `key` of `lines` lines: its
/// counts from the chunk's outcomes, its checkpoint after them.
fn whole_object(key: &'static str, lines: u64) -> impl Fn(&[Outcome]) -> shared::manifest::ManifestWrite + Send + Sync {
    use shared::manifest::{Checkpoint, Counts, Manifest, ManifestWrite, ObjectStatus};
    move |outcomes: &[Outcome]| {
        let mut counts = Counts { lines, ..Counts::default() };
        for o in outcomes {
            match o {
                Outcome::Applied => counts.accepted += 1,
                Outcome::Stale => counts.stale += 1,
                Outcome::Duplicate | Outcome::KeyReused => counts.duplicates += 1,
            }
        }
        ManifestWrite {
            manifest: Manifest {
                bucket: "uploads".into(),
                key: key.into(),
                revision: "v1".into(),
                status: ObjectStatus::Completed,
                counts,
                checkpoint: Checkpoint { line: lines, byte: 100 * lines },
                csv_header: None,
                started_at: chrono::Utc::now(),
                finished_at: None,
            },
            expected: None,
        }
    }
}

/// s3-ingest's chunks on the guarded path: the orders commit outside a
/// transaction, then the checkpoint. When the checkpoint fails after the
/// orders are in (the invocation died in between), the chunk read again
/// counts its own writes as applied: the manifest's counts are those of a
/// run without the failure. A line whose event came before by another
/// object, or on the queue, is a duplicate; and an event a line applied is
/// a duplicate on the queue, not a reused key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_chunk_read_again_after_its_checkpoint_failed_counts_its_own_writes_as_applied() -> anyhow::Result<()>
{
    use integration_tests::fault_proxy::{Fault, FaultProxy, Plan, Target};
    use orders::lines::Chunks;
    use shared::ingest::ChunkStore;

    let stack = Stack::start().await?;
    let store = store(&stack)?;
    let bodies = [
        event("e-10", "o-10", "PLACED", "1.00", "2026-12-01T10:00:00Z"),
        event("e-11", "o-11", "PLACED", "2.00", "2026-12-01T10:00:00Z"),
        event("e-12", "o-11", "PAID", "2.00", "2026-12-01T11:00:00Z"),
    ];
    let (events, _) = planned(&bodies);
    let manifest = whole_object("a.ndjson", 3);

    // Every TransactWriteItems refused: the orders go in, the checkpoint does not.
    let proxy = FaultProxy::start(
        &stack.dynamodb_endpoint,
        Target::DynamoDbOperation("TransactWriteItems"),
        Plan::Rate { rate: 1.0, faults: vec![Fault::ServerError], seed: 1 },
    )
    .await?;
    let failing = DynamoStore::new(
        stack.dynamodb_client_at(&proxy.endpoint()),
        stack.spec.table("state")?.name.clone(),
        stack.spec.table("idempotency")?.name.clone(),
    );
    let failed = Chunks(&failing).commit_chunk(&events, &manifest).await;
    assert!(failed.is_err(), "the checkpoint cannot commit: {failed:?}");
    let o11 = state_item(&stack, "ORDER#o-11", "ORDER").await?.expect("the orders went in");
    assert_eq!(s(&o11, "lastEventId")?, "e-12");
    assert!(state_item(&stack, "OBJECT#uploads/a.ndjson", "v1").await?.is_none(), "no checkpoint");

    // Read again: its own writes count as applied, e-11 lost o-11 to e-12 as before.
    let outcomes = Chunks(&store).commit_chunk(&events, &manifest).await?;
    assert_eq!(outcomes, [Outcome::Applied, Outcome::Stale, Outcome::Applied]);
    let m = state_item(&stack, "OBJECT#uploads/a.ndjson", "v1").await?.expect("the checkpoint");
    assert_eq!((n(&m, "accepted")?, n(&m, "stale")?, n(&m, "duplicates")?), (dec("2"), dec("1"), dec("0")), "{m:?}");

    // The same events in another object are duplicates there.
    let other = whole_object("b.ndjson", 3);
    let outcomes = Chunks(&store).commit_chunk(&events, &other).await?;
    assert_eq!(outcomes, [Outcome::Duplicate, Outcome::Stale, Outcome::Duplicate]);

    // On the queue, an event a line applied is a duplicate, not a reused key.
    let (queued, markers) = planned(&bodies[..1]);
    assert_eq!(store.apply_orders_guarded(&queued, &markers).await?, [Outcome::Duplicate]);
    Ok(())
}
