//! The state table's stream as the engine writes it, read back through the
//! DynamoDB Streams API: one record per write, in write order, each with its
//! full images. DynamoDB Local writes exactly that, as DynamoDB does, so the
//! driver passes its records on untouched. moto 5.2.5 writes a key-only INSERT
//! before the real one for every item an `UpdateItem` creates (alone or in a
//! transaction, as the functions write): with `LOCAL_STACK_DYNAMODB=moto` this
//! test shows those phantoms are still there, and that the driver's
//! `drop_phantom_inserts` (applied in that mode only) leaves one record per
//! write.

use anyhow::Result;
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};
use integration_tests::{Stack, order_item, put_state_item};
use serde_json::Value;
use xtask::driver::drop_phantom_inserts;
use xtask::dynamodb_local::Engine;

fn key(order: &str) -> [(String, AttributeValue); 2] {
    [("pk".into(), AttributeValue::S(format!("ORDER#{order}"))), ("sk".into(), AttributeValue::S("ORDER".into()))]
}

/// An `Update` that creates (or changes) an order, as the functions' writes do.
fn update(table: &str, order: &str, status: &str) -> Result<Update> {
    Ok(Update::builder()
        .table_name(table)
        .set_key(Some(key(order).into_iter().collect()))
        .update_expression("SET entity = :e, orderId = :o, customerId = :c, #s = :s")
        .expression_attribute_names("#s", "status")
        .expression_attribute_values(":e", AttributeValue::S("order".into()))
        .expression_attribute_values(":o", AttributeValue::S(order.into()))
        .expression_attribute_values(":c", AttributeValue::S("c-stream".into()))
        .expression_attribute_values(":s", AttributeValue::S(status.into()))
        .build()?)
}

fn is_key_only_insert(r: &Value) -> bool {
    let keys = r.pointer("/dynamodb/Keys").and_then(Value::as_object);
    let image = r.pointer("/dynamodb/NewImage").and_then(Value::as_object);
    r["eventName"] == "INSERT" && matches!((keys, image), (Some(k), Some(i)) if k.len() == i.len())
}

/// `(eventName, pk)` of each record.
fn described(records: &[Value]) -> Vec<(String, String)> {
    records
        .iter()
        .map(|r| {
            let name = r["eventName"].as_str().unwrap_or_default().to_owned();
            let pk = r.pointer("/dynamodb/Keys/pk/S").and_then(Value::as_str).unwrap_or_default().to_owned();
            (name, pk)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_is_one_stream_record_with_its_images_in_write_order() -> Result<()> {
    let stack = Stack::start().await?;
    let table = stack.spec.table("state")?.name.clone();
    let db = &stack.dynamodb;
    // 1. PutItem creates o-1.
    put_state_item(&stack, order_item("o-1", "c-stream", "PLACED", "1", "EUR")).await?;
    // 2. UpdateItem creates o-2.
    let u = update(&table, "o-2", "PLACED")?;
    db.update_item()
        .table_name(&table)
        .set_key(Some(u.key().clone()))
        .update_expression(u.update_expression())
        .set_expression_attribute_names(u.expression_attribute_names().cloned())
        .set_expression_attribute_values(u.expression_attribute_values().cloned())
        .send()
        .await?;
    // 3. UpdateItem changes o-1.
    db.update_item()
        .table_name(&table)
        .set_key(Some(key("o-1").into_iter().collect()))
        .update_expression("SET #s = :s")
        .expression_attribute_names("#s", "status")
        .expression_attribute_values(":s", AttributeValue::S("PAID".into()))
        .send()
        .await?;
    // 4. One transaction creates o-3 and o-4 with updates.
    db.transact_write_items()
        .transact_items(TransactWriteItem::builder().update(update(&table, "o-3", "PAID")?).build())
        .transact_items(TransactWriteItem::builder().update(update(&table, "o-4", "PAID")?).build())
        .send()
        .await?;
    // 5. DeleteItem removes o-2.
    db.delete_item().table_name(&table).set_key(Some(key("o-2").into_iter().collect())).send().await?;

    let raw = stack.stream_records("state").await?;
    println!("{} records from {}: {:#?}", raw.len(), stack.engine.name(), described(&raw));
    let phantoms = raw.iter().filter(|r| is_key_only_insert(r)).count();
    let records = match stack.engine {
        Engine::Local => {
            assert_eq!(phantoms, 0, "DynamoDB Local writes no key-only records: {raw:#?}");
            raw.clone()
        }
        Engine::Moto => {
            // The quirk the driver's workaround exists for: one phantom per
            // item an UpdateItem created (o-2, o-3, o-4).
            assert_eq!(phantoms, 3, "moto's key-only INSERTs: {raw:#?}");
            let (kept, dropped) = drop_phantom_inserts(raw.clone(), false);
            assert_eq!(dropped, 3);
            kept
        }
    };
    let mut got = described(&records);
    let pk = |o: &str| format!("ORDER#{o}");
    let mut want = vec![
        ("INSERT".to_owned(), pk("o-1")),
        ("INSERT".to_owned(), pk("o-2")),
        ("MODIFY".to_owned(), pk("o-1")),
        ("INSERT".to_owned(), pk("o-3")),
        ("INSERT".to_owned(), pk("o-4")),
        ("REMOVE".to_owned(), pk("o-2")),
    ];
    assert_eq!(got.len(), want.len(), "one record per write: {got:#?}");
    // The transaction's two records may come in either order.
    got[3..5].sort();
    want[3..5].sort();
    assert_eq!(got, want, "one record per write, in write order");

    let seqs: Vec<u128> = records
        .iter()
        .map(|r| r.pointer("/dynamodb/SequenceNumber").and_then(Value::as_str).unwrap_or("x").parse())
        .collect::<Result<_, _>>()?;
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "sequence numbers ascend: {seqs:?}");
    for r in &records {
        let images = (r.pointer("/dynamodb/OldImage").is_some(), r.pointer("/dynamodb/NewImage").is_some());
        let expected = match r["eventName"].as_str() {
            Some("INSERT") => (false, true),
            Some("MODIFY") => (true, true),
            Some("REMOVE") => (true, false),
            other => panic!("unexpected event {other:?}"),
        };
        assert_eq!(images, expected, "NEW_AND_OLD_IMAGES: {r:#}");
        for image in ["NewImage", "OldImage"] {
            if let Some(i) = r.pointer(&format!("/dynamodb/{image}")) {
                assert_eq!(i.pointer("/entity/S").and_then(Value::as_str), Some("order"), "a full {image}: {r:#}");
            }
        }
    }
    let modify = &records[2];
    assert_eq!(modify.pointer("/dynamodb/OldImage/status/S"), Some(&Value::from("PLACED")));
    assert_eq!(modify.pointer("/dynamodb/NewImage/status/S"), Some(&Value::from("PAID")));
    Ok(())
}
