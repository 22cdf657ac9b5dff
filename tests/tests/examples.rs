//! The examples of other domains, through their real binaries against the
//! emulator, served as `infra/stack.json` declares them (their tables,
//! environment and mappings, like any function of your own): what a team
//! writing its own function on the toolkit gets.

use aws_sdk_dynamodb::types::AttributeValue;
use integration_tests::{Item, n, s, state_items_with_prefix};
use serde_json::Value;
use xtask::{Invocation, Stack};

async fn inventory(stack: &Stack, table: &str, sku: &str) -> anyhow::Result<Item> {
    let out = stack
        .dynamodb
        .get_item()
        .table_name(table)
        .key("sku", AttributeValue::S(sku.into()))
        .consistent_read(true)
        .send()
        .await?;
    out.item().cloned().ok_or_else(|| anyhow::anyhow!("no inventory item {sku}"))
}

fn failures(invocation: &Invocation) -> Vec<String> {
    match invocation {
        Invocation::Ok(response) => response["batchItemFailures"]
            .as_array()
            .map(|a| a.iter().filter_map(|f| f["itemIdentifier"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default(),
        Invocation::FunctionError { error_type, message } => panic!("invocation failed: {error_type}: {message}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_reservations_apply_once_and_quarantine_what_cannot_be_reserved() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    // Its table (key `sku`) is declared, so the stack created it.
    let table = stack.spec.table("inventory")?.name.clone();
    let table = table.as_str();
    for (sku, available) in [("A-1", "10"), ("B-2", "1")] {
        stack
            .dynamodb
            .put_item()
            .table_name(table)
            .item("sku", AttributeValue::S(sku.into()))
            .item("available", AttributeValue::N(available.into()))
            .send()
            .await?;
    }
    stack.start_lambda().await?;
    let lambda = stack.lambda().expect("started");
    let event: Value =
        serde_json::from_str(include_str!("../../examples/inventory-reservations/events/sqs-reservations.json"))?;

    let first = lambda.invoke("inventory-reservations", &event).await?;
    assert_eq!(failures(&first), Vec::<String>::new(), "{first:?}");
    // r-1 (3) and r-3 (2) of A-1 reserved; the resend of r-1 is a duplicate.
    let a1 = inventory(&stack, table, "A-1").await?;
    assert_eq!((n(&a1, "available")?, n(&a1, "reserved")?), (5.into(), 5.into()), "{a1:?}");
    let b2 = inventory(&stack, table, "B-2").await?;
    assert_eq!(n(&b2, "available")?, 1.into(), "r-2 wants 5 of B-2 and must change nothing: {b2:?}");
    assert!(!b2.contains_key("reserved"), "{b2:?}");

    let quarantined = state_items_with_prefix(&stack, "QUARANTINE#sqs/reservations").await?;
    let reason_of = |message: &str| -> String {
        quarantined
            .iter()
            .find(|q| s(q, "sk").ok() == Some(message))
            .and_then(|q| s(q, "reason").ok())
            .unwrap_or_else(|| panic!("{message} quarantined: {quarantined:?}"))
            .to_owned()
    };
    assert_eq!(quarantined.len(), 5, "{quarantined:?}");
    assert_eq!(reason_of("res-msg-2"), "sku B-2: 5 requested, 1 available");
    assert!(reason_of("res-msg-4").starts_with("malformed JSON in SQS message body"), "{}", reason_of("res-msg-4"));
    assert!(reason_of("res-msg-6").contains("was already used with a different payload"), "{}", reason_of("res-msg-6"));
    assert_eq!(reason_of("res-msg-7"), "sku Z-9: no such item");
    assert_eq!(reason_of("res-msg-8"), "quantity: must be at least 1");

    // The whole batch delivered again: every reservation is a duplicate and
    // nothing moves.
    let again = lambda.invoke("inventory-reservations", &event).await?;
    assert_eq!(failures(&again), Vec::<String>::new(), "{again:?}");
    assert_eq!(inventory(&stack, table, "A-1").await?, a1);
    assert_eq!(inventory(&stack, table, "B-2").await?, b2);
    assert_eq!(state_items_with_prefix(&stack, "QUARANTINE#sqs/reservations").await?.len(), 5);
    let markers = stack.scan("idempotency").await?;
    assert_eq!(markers.len(), 2, "one marker per reservation applied (r-1, r-3): {markers:?}");
    Ok(())
}

/// A ledger service on a free loopback port: records every POST body it
/// accepts; answers 503 to the first entry of `flaky` payment.
struct Ledger {
    url: String,
    accepted: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Ledger {
    async fn start(flaky: &'static str) -> anyhow::Result<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/entries", listener.local_addr()?);
        let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (accepted_in, refused_in) = (accepted.clone(), refused.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (accepted, refused) = (accepted_in.clone(), refused_in.clone());
                tokio::spawn(async move {
                    // One request per connection: headers, then the body by its length.
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    let body = loop {
                        let Ok(read) = socket.read(&mut buf).await else { return };
                        if read == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..read]);
                        let text = String::from_utf8_lossy(&request).into_owned();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length = text[..end]
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                                })
                                .and_then(|v| v.parse::<usize>().ok())
                                .unwrap_or(0);
                            if request.len() >= end + 4 + length {
                                break request[end + 4..end + 4 + length].to_vec();
                            }
                        }
                    };
                    let entry: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let refuse = entry["paymentId"] == flaky
                        && refused
                            .compare_exchange(
                                0,
                                1,
                                std::sync::atomic::Ordering::SeqCst,
                                std::sync::atomic::Ordering::SeqCst,
                            )
                            .is_ok();
                    let status = if refuse {
                        "503 Service Unavailable"
                    } else {
                        accepted.lock().unwrap().push(entry);
                        "201 Created"
                    };
                    let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        Ok(Self { url, accepted, refused })
    }

    fn payments(&self) -> Vec<String> {
        self.accepted.lock().unwrap().iter().map(|e| e["paymentId"].as_str().unwrap_or("?").to_owned()).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_notifier_posts_each_captured_payment_once_under_the_lock() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let ledger = Ledger::start("p-3").await?;
    // The one variable the declaration cannot know: this test's own ledger.
    stack.set_function_env("ledger-notifier", "LEDGER_URL", &ledger.url)?;
    stack.start_lambda().await?;
    let lambda = stack.lambda().expect("started");
    let event: Value =
        serde_json::from_str(include_str!("../../examples/ledger-notifier/events/stream-payments.json"))?;
    let sequence = |i: usize| event["Records"][i]["dynamodb"]["SequenceNumber"].as_str().unwrap().to_owned();

    // p-1 and p-2 are posted; the ledger refuses p-3 once: the shard stops
    // there and reports that record alone.
    let first = lambda.invoke("ledger-notifier", &event).await?;
    assert_eq!(failures(&first), [sequence(3)], "{first:?}");
    assert_eq!(ledger.payments(), ["p-1", "p-2"]);
    assert_eq!(ledger.refused.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Lambda retries from the reported record: p-3 goes through, p-2's
    // second CAPTURED image changes nothing, p-4 (no amount) is quarantined.
    let mut retry = event.clone();
    retry["Records"] = Value::Array(event["Records"].as_array().unwrap()[3..].to_vec());
    let second = lambda.invoke("ledger-notifier", &retry).await?;
    assert_eq!(failures(&second), Vec::<String>::new(), "{second:?}");
    assert_eq!(ledger.payments(), ["p-1", "p-2", "p-3"]);
    let quarantined = state_items_with_prefix(&stack, "QUARANTINE#ddb-stream/payments").await?;
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert_eq!(s(&quarantined[0], "sk")?, sequence(5));
    assert_eq!(s(&quarantined[0], "reason")?, "payment image: no amount");

    // The whole batch replayed (a stream replay, a redeployed mapping):
    // every call is found completed under its key, nothing is posted again.
    let replay = lambda.invoke("ledger-notifier", &event).await?;
    assert_eq!(failures(&replay), Vec::<String>::new(), "{replay:?}");
    assert_eq!(ledger.payments(), ["p-1", "p-2", "p-3"], "each payment posted exactly once");
    let locks = stack.scan("idempotency").await?;
    assert_eq!(locks.len(), 3, "{locks:?}");
    assert!(locks.iter().all(|l| s(l, "status").ok() == Some("COMPLETED")), "{locks:?}");
    Ok(())
}
