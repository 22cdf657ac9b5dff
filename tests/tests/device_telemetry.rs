//! The Kinesis example (`examples/device-telemetry` and its window function
//! `device-telemetry-windows`) through its real binaries under `cargo lambda
//! watch`, against the emulator's DynamoDB, invoked with Kinesis events as
//! Lambda's mapping delivers them: a redelivered batch changes nothing, a
//! failure in the middle of a shard is retried from that record only, a KPL
//! aggregate is applied record by record, and a tumbling window across
//! invocations, retried and redelivered, gives one result.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use integration_tests::fault_proxy::{Fault, FaultProxy, Plan, Target};
use integration_tests::{Item, n, s, state_items_with_prefix};
use serde_json::{Value, json};
use xtask::{Invocation, Lambda, Stack};

const TABLE: &str = "example-devices";
const SEQ: &str = "4959033827149025660855969253836157109592157598913658";

async fn create_devices_table(stack: &Stack) -> anyhow::Result<()> {
    stack
        .dynamodb
        .create_table()
        .table_name(TABLE)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder().attribute_name("device").attribute_type(ScalarAttributeType::S).build()?,
        )
        .key_schema(KeySchemaElement::builder().attribute_name("device").key_type(KeyType::Hash).build()?)
        .send()
        .await?;
    Ok(())
}

async fn device(stack: &Stack, id: &str) -> anyhow::Result<Option<Item>> {
    let out = stack
        .dynamodb
        .get_item()
        .table_name(TABLE)
        .key("device", AttributeValue::S(id.into()))
        .consistent_read(true)
        .send()
        .await?;
    Ok(out.item().cloned())
}

/// Each device's (readings, watt-hours).
async fn counters(stack: &Stack, ids: &[&str]) -> anyhow::Result<Vec<(String, i64, i64)>> {
    let mut out = Vec::new();
    for id in ids {
        let (readings, wh) = match device(stack, id).await? {
            Some(item) => (n(&item, "readings")?.try_into()?, n(&item, "wh")?.try_into()?),
            None => (0, 0),
        };
        out.push(((*id).to_owned(), readings, wh));
    }
    Ok(out)
}

fn response(invocation: &Invocation) -> &Value {
    match invocation {
        Invocation::Ok(response) => response,
        Invocation::FunctionError { error_type, message } => panic!("invocation failed: {error_type}: {message}"),
    }
}

fn failures(invocation: &Invocation) -> Vec<String> {
    response(invocation)["batchItemFailures"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f["itemIdentifier"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn fixture(text: &str) -> Value {
    serde_json::from_str(text).expect("fixture is JSON")
}

async fn start(stack: &Stack, function: &str) -> anyhow::Result<Lambda> {
    create_devices_table(stack).await?;
    let state_table = stack.spec.table("state")?.name.clone();
    let env = [("DEVICES_TABLE".to_owned(), TABLE.to_owned()), ("QUARANTINE_TABLE".to_owned(), state_table)];
    Lambda::start_for(stack, &[function.to_owned()], function, &env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_count_once_and_a_kpl_aggregate_is_applied_record_by_record() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let lambda = start(&stack, "device-telemetry").await?;
    let plain = fixture(include_str!("../../events/kinesis-telemetry.json"));
    let first = lambda.invoke("device-telemetry", &plain).await?;
    assert_eq!(failures(&first), Vec::<String>::new(), "{first:?}");
    let after_plain = counters(&stack, &["d-1", "d-2"]).await?;
    assert_eq!(after_plain, [("d-1".into(), 2, 200), ("d-2".into(), 0, 0)]);

    // The batch delivered again (a retried invocation): nothing moves.
    let again = lambda.invoke("device-telemetry", &plain).await?;
    assert_eq!(failures(&again), Vec::<String>::new(), "{again:?}");
    assert_eq!(counters(&stack, &["d-1", "d-2"]).await?, after_plain);

    // The aggregate's user records each count once; its reading without a
    // device, and the damaged aggregate, are quarantined with their reasons.
    let aggregated = fixture(include_str!("../../events/kinesis-kpl-aggregated.json"));
    for _ in 0..2 {
        let invocation = lambda.invoke("device-telemetry", &aggregated).await?;
        assert_eq!(failures(&invocation), Vec::<String>::new(), "{invocation:?}");
        assert_eq!(
            counters(&stack, &["d-1", "d-2", "d-3", "d-4"]).await?,
            [("d-1".into(), 3, 210), ("d-2".into(), 1, 20), ("d-3".into(), 1, 40), ("d-4".into(), 1, 7)]
        );
    }
    let mut quarantined: Vec<(String, String)> = state_items_with_prefix(&stack, "QUARANTINE#kinesis/device-telemetry")
        .await?
        .iter()
        .map(|q| Ok((s(q, "sk")?.to_owned(), s(q, "reason")?.to_owned())))
        .collect::<anyhow::Result<_>>()?;
    quarantined.sort();
    assert_eq!(quarantined.len(), 3, "{quarantined:?}");
    assert_eq!(quarantined[0].0, format!("{SEQ}8002"));
    assert!(quarantined[0].1.starts_with(r#"invalid: wh: invalid type: string "lots""#), "{quarantined:?}");
    assert_eq!(
        quarantined[1],
        (format!("{SEQ}8101/2"), "invalid: deviceId: must not be empty at line 1 column 37".to_owned())
    );
    assert_eq!(quarantined[2].0, format!("{SEQ}8102"));
    assert!(quarantined[2].1.contains("MD5 checksum mismatch"), "{quarantined:?}");
    // One marker per reading applied: two plain, three of the aggregate, one plain.
    assert_eq!(stack.scan("idempotency").await?.len(), 6);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_in_the_middle_of_a_shard_is_retried_from_that_record_only() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    // The batch's first transaction commits; every attempt at the second is
    // throttled: the SDK's three per call, for each of the committer's
    // eight (DynamoDB's throttling is transient; the committer backs off and
    // retries within the deadline, then reports the record for retry).
    const ATTEMPTS: u64 = 3 * 8;
    let schedule = (1..=ATTEMPTS).map(|i| (i, Fault::Throttle)).collect();
    let proxy = FaultProxy::start(
        &stack.dynamodb_endpoint,
        Target::DynamoDbOperation("TransactWriteItems"),
        Plan::Schedule(schedule),
    )
    .await?;
    stack.function_dynamodb_endpoint = Some(proxy.endpoint());
    let lambda = start(&stack, "device-telemetry").await?;
    let mut event = fixture(include_str!("../../events/kinesis-telemetry.json"));
    // Three readings of d-1, each in a transaction of its own (one action
    // per item in a transaction), the second record quarantined on the way.
    let fourth = {
        let mut r = event["Records"][2].clone();
        r["kinesis"]["sequenceNumber"] = json!(format!("{SEQ}8004"));
        r["eventID"] = json!(format!("shardId-000000000000:{SEQ}8004"));
        // {"deviceId": "d-1", "wh": 1}
        r["kinesis"]["data"] = json!("eyJkZXZpY2VJZCI6ICJkLTEiLCAid2giOiAxfQ==");
        r
    };
    event["Records"].as_array_mut().unwrap().push(fourth);

    let first = lambda.invoke("device-telemetry", &event).await?;
    assert_eq!(failures(&first), [format!("{SEQ}8003")], "the first failed record, alone: {first:?}");
    assert_eq!(counters(&stack, &["d-1"]).await?, [("d-1".into(), 1, 120)], "nothing after the failure applied");
    assert_eq!(proxy.stats().throttled, ATTEMPTS, "every attempt at the second transaction was refused");

    // Lambda resends from the reported record; the fault is over.
    let mut retry = event.clone();
    retry["Records"] = Value::Array(event["Records"].as_array().unwrap()[2..].to_vec());
    let second = lambda.invoke("device-telemetry", &retry).await?;
    assert_eq!(failures(&second), Vec::<String>::new(), "{second:?}");
    assert_eq!(counters(&stack, &["d-1"]).await?, [("d-1".into(), 3, 201)]);

    // The whole batch again: every reading a duplicate.
    let replay = lambda.invoke("device-telemetry", &event).await?;
    assert_eq!(failures(&replay), Vec::<String>::new(), "{replay:?}");
    assert_eq!(counters(&stack, &["d-1"]).await?, [("d-1".into(), 3, 201)]);
    Ok(())
}

/// A window invocation of `records` with `state`.
fn window_event(records: &[Value], state: &Value, last: bool) -> Value {
    json!({
        "Records": records,
        "window": {"start": "2026-11-28T10:02:00Z", "end": "2026-11-28T10:03:00Z"},
        "state": state,
        "shardId": "shardId-000000000000",
        "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/device-telemetry",
        "isFinalInvokeForWindow": last,
        "isWindowTerminatedEarly": false,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_across_invocations_retried_and_redelivered_gives_one_result() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let lambda = start(&stack, "device-telemetry-windows").await?;
    let plain = fixture(include_str!("../../events/kinesis-telemetry.json"));
    let aggregated = fixture(include_str!("../../events/kinesis-kpl-aggregated.json"));
    let function = "device-telemetry-windows";

    // The window's first batch: d-1 120 and 80; the reading of d-2 with
    // "lots" of watt-hours is quarantined.
    let first = window_event(plain["Records"].as_array().unwrap(), &json!({}), false);
    let one = lambda.invoke(function, &first).await?;
    assert_eq!(failures(&one), Vec::<String>::new(), "{one:?}");
    let state_one = response(&one)["state"].clone();
    assert!(state_one.as_object().is_some_and(|s| !s.is_empty()), "the state is handed back: {one:?}");

    // The same invocation retried (Lambda did not read the answer): the same
    // state, nothing folded twice.
    let retried = lambda.invoke(function, &first).await?;
    assert_eq!(response(&retried)["state"], state_one, "a retried invocation folds from the same state");

    // The second batch carries the first's state: the aggregate's user
    // records fold one by one.
    let second = window_event(&aggregated["Records"].as_array().unwrap()[..1], &state_one, false);
    let two = lambda.invoke(function, &second).await?;
    assert_eq!(failures(&two), Vec::<String>::new(), "{two:?}");
    let state_two = response(&two)["state"].clone();
    assert_ne!(state_two, state_one);
    assert!(
        device(&stack, "WINDOW#2026-11-28T10:02:00+00:00#shardId-000000000000").await?.is_none(),
        "no result before the window ends"
    );

    // The final invocation commits the window's totals; delivered again, it
    // is a duplicate of itself.
    let last = window_event(&[], &state_two, true);
    for _ in 0..2 {
        let end = lambda.invoke(function, &last).await?;
        assert_eq!(failures(&end), Vec::<String>::new(), "{end:?}");
        assert_eq!(response(&end)["state"], json!({}), "{end:?}");
    }
    let results: Vec<Item> = stack
        .dynamodb
        .scan()
        .table_name(TABLE)
        .send()
        .await?
        .items()
        .iter()
        .filter(|i| i.get("device").and_then(|d| d.as_s().ok()).is_some_and(|d| d.starts_with("WINDOW#")))
        .cloned()
        .collect();
    assert_eq!(results.len(), 1, "one result per window: {results:?}");
    let result = &results[0];
    assert_eq!(n(result, "readings")?, 5.into(), "{result:?}");
    let wh = result.get("wh").and_then(|m| m.as_m().ok()).expect("per-device watt-hours");
    let mut wh: Vec<(&str, &str)> =
        wh.iter().map(|(d, v)| (d.as_str(), v.as_n().map(String::as_str).unwrap_or("?"))).collect();
    wh.sort_unstable();
    assert_eq!(wh, [("d-1", "210"), ("d-2", "20"), ("d-3", "40")]);
    let markers = stack.scan("idempotency").await?;
    assert_eq!(markers.len(), 1, "the window's marker, committed with its result: {markers:?}");
    Ok(())
}
