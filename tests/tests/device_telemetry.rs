//! The Kinesis example (`examples/device-telemetry` and its window function
//! `device-telemetry-windows`) through its real binaries under the local
//! Lambda, against the emulators: first invoked with Kinesis events as
//! Lambda's mapping delivers them, then fed by the local stack's Kinesis
//! mapping from moto's stream (two shards). A redelivered batch changes
//! nothing, a failure in the middle of a shard is retried from that record
//! only, a KPL aggregate is applied record by record, and a tumbling window
//! across invocations, retried and redelivered, gives one result.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use integration_tests::fault_proxy::{Fault, FaultProxy, Plan, Target};
use integration_tests::{DRAIN_TIMEOUT, Item, n, s, state_items_with_prefix};
use serde_json::{Value, json};
use xtask::driver::InvocationReport;
use xtask::lambda::RUNTIME_EXIT_ERROR;
use xtask::report::accounting_from_logs;
use xtask::{Driver, Invocation, Lambda, Stack};

const SEQ: &str = "4959033827149025660855969253836157109592157598913658";
/// The shard of the fixtures' records (their `eventID`s).
const SHARD: &str = "shardId-000000000000";

/// The devices table's name (declared as `devices` in infra/stack.json).
fn table(stack: &Stack) -> String {
    stack.spec.table("devices").map(|t| t.name.clone()).expect("infra/stack.json declares the devices table")
}

async fn device(stack: &Stack, id: &str) -> anyhow::Result<Option<Item>> {
    let out = stack
        .dynamodb
        .get_item()
        .table_name(table(stack))
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

async fn start<'s>(stack: &'s mut Stack, function: &str) -> anyhow::Result<&'s Lambda> {
    stack.start_lambda_for(&[function]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_count_once_and_a_kpl_aggregate_is_applied_record_by_record() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    start(&mut stack, "device-telemetry").await?;
    let stack = &stack;
    let lambda = stack.lambda().expect("started");
    let plain = fixture(include_str!("../../events/kinesis-telemetry.json"));
    let first = lambda.invoke("device-telemetry", &plain).await?;
    assert_eq!(failures(&first), Vec::<String>::new(), "{first:?}");
    let after_plain = counters(stack, &["d-1", "d-2"]).await?;
    assert_eq!(after_plain, [("d-1".into(), 2, 200), ("d-2".into(), 0, 0)]);

    // The batch delivered again (a retried invocation): nothing moves.
    let again = lambda.invoke("device-telemetry", &plain).await?;
    assert_eq!(failures(&again), Vec::<String>::new(), "{again:?}");
    assert_eq!(counters(stack, &["d-1", "d-2"]).await?, after_plain);

    // The aggregate's user records each count once; its reading without a
    // device, and the damaged aggregate, are quarantined with their reasons.
    let aggregated = fixture(include_str!("../../events/kinesis-kpl-aggregated.json"));
    for _ in 0..2 {
        let invocation = lambda.invoke("device-telemetry", &aggregated).await?;
        assert_eq!(failures(&invocation), Vec::<String>::new(), "{invocation:?}");
        assert_eq!(
            counters(stack, &["d-1", "d-2", "d-3", "d-4"]).await?,
            [("d-1".into(), 3, 210), ("d-2".into(), 1, 20), ("d-3".into(), 1, 40), ("d-4".into(), 1, 7)]
        );
    }
    let mut quarantined: Vec<(String, String)> = state_items_with_prefix(stack, "QUARANTINE#kinesis/device-telemetry")
        .await?
        .iter()
        .map(|q| Ok((s(q, "sk")?.to_owned(), s(q, "reason")?.to_owned())))
        .collect::<anyhow::Result<_>>()?;
    quarantined.sort();
    assert_eq!(quarantined.len(), 3, "{quarantined:?}");
    assert_eq!(quarantined[0].0, format!("{SHARD}:{SEQ}8002"));
    assert!(quarantined[0].1.starts_with(r#"invalid: wh: invalid type: string "lots""#), "{quarantined:?}");
    assert_eq!(
        quarantined[1],
        (format!("{SHARD}:{SEQ}8101/2"), "invalid: deviceId: must not be empty at line 1 column 37".to_owned())
    );
    assert_eq!(quarantined[2].0, format!("{SHARD}:{SEQ}8102"));
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
    start(&mut stack, "device-telemetry").await?;
    let stack = &stack;
    let lambda = stack.lambda().expect("started");
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
    assert_eq!(counters(stack, &["d-1"]).await?, [("d-1".into(), 1, 120)], "nothing after the failure applied");
    assert_eq!(proxy.stats().throttled, ATTEMPTS, "every attempt at the second transaction was refused");

    // Lambda resends from the reported record; the fault is over.
    let mut retry = event.clone();
    retry["Records"] = Value::Array(event["Records"].as_array().unwrap()[2..].to_vec());
    let second = lambda.invoke("device-telemetry", &retry).await?;
    assert_eq!(failures(&second), Vec::<String>::new(), "{second:?}");
    assert_eq!(counters(stack, &["d-1"]).await?, [("d-1".into(), 3, 201)]);

    // The whole batch again: every reading a duplicate.
    let replay = lambda.invoke("device-telemetry", &event).await?;
    assert_eq!(failures(&replay), Vec::<String>::new(), "{replay:?}");
    assert_eq!(counters(stack, &["d-1"]).await?, [("d-1".into(), 3, 201)]);
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
    let mut stack = Stack::start().await?;
    start(&mut stack, "device-telemetry-windows").await?;
    let stack = &stack;
    let lambda = stack.lambda().expect("started");
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
        device(stack, "WINDOW#2026-11-28T10:02:00+00:00#shardId-000000000000").await?.is_none(),
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
        .table_name(table(stack))
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

// Through the local stack's Kinesis mapping (infra/stack.json: the
// `telemetry` stream, two shards; `device-telemetry` reads it with a batch
// of 100, a 1 s batching window, a parallelization factor of 2, partial
// batch responses, bisect on error, 3 retries and a failure queue).

fn reading(device: &str, wh: u32) -> Vec<u8> {
    json!({ "deviceId": device, "wh": wh }).to_string().into_bytes()
}

/// Drains the stack's mappings of the functions started; returns every invocation.
async fn drain(stack: &Stack, driver: &mut Driver<'_>) -> anyhow::Result<Vec<InvocationReport>> {
    let mut reports = Vec::new();
    driver
        .drain(DRAIN_TIMEOUT, &mut |r| {
            println!("invoked {r:?}");
            reports.push(r.clone());
        })
        .await?;
    let _ = stack;
    Ok(reports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kinesis_mapping_applies_every_shard_once_and_a_replayed_stream_changes_nothing() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    start(&mut stack, "device-telemetry").await?;
    let stack = &stack;
    let lambda = stack.lambda().expect("started");
    // 48 readings of 8 devices (the partition key is the device, so the
    // stream's two shards both get some), a KPL aggregate of three
    // readings, and a reading that is not one.
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    let mut expected: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for i in 0..48u32 {
        let device = format!("k-{}", i % 8);
        records.push((device.clone(), reading(&device, i + 1)));
        let e = expected.entry(device).or_default();
        (e.0, e.1) = (e.0 + 1, e.1 + i64::from(i + 1));
    }
    let users = [("k-0", 100), ("k-1", 200), ("k-9", 300)];
    let aggregate = shared::core::kpl::aggregate(
        &users.iter().map(|(d, wh)| shared::core::kpl::UserRecord::new(*d, reading(d, *wh))).collect::<Vec<_>>(),
    );
    records.push(("k-0".into(), aggregate));
    for (d, wh) in users {
        let e = expected.entry(d.to_owned()).or_default();
        (e.0, e.1) = (e.0 + 1, e.1 + i64::from(wh));
    }
    records.push(("k-3".into(), br#"{"deviceId": "k-3", "wh": -1}"#.to_vec()));
    let placed = stack.put_kinesis_records("telemetry", &records).await?;
    let shards: std::collections::BTreeSet<&str> = placed.iter().map(|(shard, _)| shard.as_str()).collect();
    assert_eq!(shards.len(), 2, "both shards hold records: {placed:?}");

    drain(stack, &mut Driver::new(stack, lambda)?).await?;
    let devices: Vec<&str> = expected.keys().map(String::as_str).collect();
    let want: Vec<(String, i64, i64)> = expected.iter().map(|(d, (n, wh))| (d.clone(), *n, *wh)).collect();
    assert_eq!(counters(stack, &devices).await?, want);
    let first = accounting_from_logs(&lambda.log_text())["device-telemetry"];
    assert_eq!((first.applied, first.quarantined, first.duplicate, first.failed), (51, 1, 0, 0), "{first:?}");
    let quarantined = state_items_with_prefix(stack, "QUARANTINE#kinesis/").await?;
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert!(s(&quarantined[0], "reason")?.starts_with("invalid: wh: invalid value: integer `-1`"), "{quarantined:?}");

    // A mapping created anew at TRIM_HORIZON (a redeployed function, say)
    // delivers the whole stream again: every reading is a duplicate.
    drain(stack, &mut Driver::new(stack, lambda)?).await?;
    assert_eq!(counters(stack, &devices).await?, want, "a replayed stream changes nothing");
    let both = accounting_from_logs(&lambda.log_text())["device-telemetry"];
    assert_eq!((both.applied, both.duplicate), (51, 51), "{both:?}");
    assert_eq!(stack.queue_depth("telemetryFailures").await?, 0, "nothing given up on");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kinesis_mapping_retries_a_shard_from_its_failed_record_only() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    // Ten readings of one device: one shard, one of the shard's concurrent
    // batches, one transaction each (one item). Every attempt at the fifth
    // is throttled (the SDK's 3 per call, the committer's 8).
    let schedule = (4..4 + 3 * 8).map(|i| (i, Fault::Throttle)).collect();
    let proxy = FaultProxy::start(
        &stack.dynamodb_endpoint,
        Target::DynamoDbOperation("TransactWriteItems"),
        Plan::Schedule(schedule),
    )
    .await?;
    stack.function_dynamodb_endpoint = Some(proxy.endpoint());
    start(&mut stack, "device-telemetry").await?;
    let stack = &stack;
    let lambda = stack.lambda().expect("started");
    let records: Vec<(String, Vec<u8>)> = (1..=10).map(|wh| ("k-1".to_owned(), reading("k-1", wh))).collect();
    let placed = stack.put_kinesis_records("telemetry", &records).await?;

    let mut driver = Driver::new(stack, lambda)?;
    let reports = drain(stack, &mut driver).await?;
    assert_eq!(counters(stack, &["k-1"]).await?, [("k-1".into(), 10, 55)]);
    // The first delivery failed at the fifth reading (its sequence number
    // reported, the five after it held back); the retry started there: the
    // four before it were not delivered again.
    let failed: Vec<&InvocationReport> = reports.iter().filter(|r| r.item_failures > 0).collect();
    assert_eq!(failed.len(), 1, "{reports:#?}");
    assert_eq!(failed[0].item_failures, 6, "the failed record and the rest of the shard's batch: {reports:#?}");
    let accounting = accounting_from_logs(&lambda.log_text())["device-telemetry"];
    assert_eq!((accounting.applied, accounting.duplicate, accounting.failed), (10, 0, 6), "{accounting:?}");
    let stats = driver.stats();
    let mapping = stats.values().next().expect("one mapping");
    assert_eq!(mapping.records, 10 + 6, "delivered: the batch, then from the failed record ({placed:?})");
    Ok(())
}

/// Waits until just after a window boundary of `seconds`, so that what is
/// put next falls in one window.
async fn at_window_start(seconds: u64) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let into = now.as_millis() % u128::from(seconds * 1000);
    tokio::time::sleep(Duration::from_millis(u64::try_from(u128::from(seconds * 1000) - into).unwrap_or(0) + 50)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kinesis_mapping_plays_a_window_across_invocations_retries_and_a_redelivered_final() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    // Two proxies in a row: the first throttles the window function's
    // first quarantine writes (a poison reading cannot be quarantined on its
    // first delivery: the invocation reports it, and the next one starts
    // from it with the state returned); the second holds back the answer to
    // its first transaction, the window's result, and the test kills the
    // process then: the final invocation is delivered again.
    let hold = FaultProxy::start(
        &stack.dynamodb_endpoint,
        Target::DynamoDbOperation("TransactWriteItems"),
        Plan::Schedule(vec![(0, Fault::Slow(Duration::from_secs(300)))]),
    )
    .await?;
    let throttle = FaultProxy::start(
        &hold.endpoint(),
        Target::DynamoDbOperation("BatchWriteItem"),
        // The SDK's three attempts at one quarantine write: one invocation fails.
        Plan::Schedule((0..3).map(|i| (i, Fault::Throttle)).collect()),
    )
    .await?;
    stack.function_dynamodb_endpoint = Some(throttle.endpoint());
    start(&mut stack, "device-telemetry-windows").await?;
    let stack = &stack;
    let lambda = stack.lambda().expect("started");
    let function = "device-telemetry-windows";
    let seconds = stack.spec.mappings_of(function).find_map(|m| m.tumbling_window_in_seconds).expect("a window");
    // LATEST: the mapping reads what is put after it starts.
    let mut driver = Driver::new(stack, lambda)?;
    at_window_start(seconds).await;
    let mut records: Vec<(String, Vec<u8>)> = (1..=7).map(|wh| ("w-1".to_owned(), reading("w-1", wh))).collect();
    records.insert(3, ("w-1".into(), b"not a reading".to_vec()));
    stack.put_kinesis_records("telemetry", &records).await?;

    let mut reports = Vec::new();
    let kill = async {
        tokio::time::timeout(DRAIN_TIMEOUT, hold.wait_for(|s| s.slowed == 1))
            .await
            .map_err(|_| anyhow::anyhow!("the window's result never reached the emulator"))?;
        stack.kill_function(function).await
    };
    let mut record = |r: &InvocationReport| {
        println!("invoked {r:?}");
        reports.push(r.clone());
    };
    let (drained, killed) = tokio::join!(driver.drain(DRAIN_TIMEOUT, &mut record), kill);
    killed?;
    drained?;

    // Batches of three: several invocations in the window, one of which
    // reported the poison reading it could not yet quarantine.
    let in_window: Vec<&InvocationReport> = reports.iter().filter(|r| !r.mapping.contains("final")).collect();
    assert!(in_window.len() >= 3, "{reports:#?}");
    assert!(in_window.iter().any(|r| r.item_failures > 0), "a retried invocation: {reports:#?}");
    let finals: Vec<&InvocationReport> = reports.iter().filter(|r| r.mapping.contains("final")).collect();
    assert_eq!(finals.len(), 2, "the final invocation, killed, then delivered again: {reports:#?}");
    assert!(finals[0].function_error.as_deref().is_some_and(|e| e.starts_with(RUNTIME_EXIT_ERROR)), "{finals:?}");
    assert!(finals[1].function_error.is_none(), "{finals:?}");

    let results: Vec<Item> = stack
        .dynamodb
        .scan()
        .table_name(table(stack))
        .send()
        .await?
        .items()
        .iter()
        .filter(|i| i.get("device").and_then(|d| d.as_s().ok()).is_some_and(|d| d.starts_with("WINDOW#")))
        .cloned()
        .collect();
    assert_eq!(results.len(), 1, "one result for the window: {results:?}");
    assert_eq!(n(&results[0], "readings")?, 7.into(), "{results:?}");
    let wh = results[0].get("wh").and_then(|m| m.as_m().ok()).and_then(|m| m.get("w-1")).cloned();
    assert_eq!(wh, Some(AttributeValue::N("28".into())), "each reading folded once: {results:?}");
    let quarantined = state_items_with_prefix(stack, "QUARANTINE#kinesis/").await?;
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert_eq!(stack.queue_depth("telemetryFailures").await?, 0, "nothing given up on");
    Ok(())
}
