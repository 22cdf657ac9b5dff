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
