//! The bench counts DynamoDB capacity from the requests it sees, by AWS's
//! documented rules from item sizes (`bench::null_dynamo::units`), because
//! its endpoints do not report it (the latency model, the null endpoint)
//! or report it otherwise (DynamoDB Local: one unit per transactional write
//! instead of two, nothing for `BatchExecuteStatement`). Where DynamoDB
//! Local does report it, for single writes and reads, the rules must give
//! what it reports: the same request bodies, sent to it with
//! `ReturnConsumedCapacity`.

use bench::null_dynamo::units;
use integration_tests::Stack;
use serde_json::{Value, json};

/// Sends one DynamoDB JSON request and returns the units it reports.
async fn reported(http: &reqwest::Client, endpoint: &str, operation: &str, body: &Value) -> anyhow::Result<f64> {
    let answer: Value = http
        .post(endpoint)
        .header("X-Amz-Target", format!("DynamoDB_20120810.{operation}"))
        .header("Content-Type", "application/x-amz-json-1.0")
        // DynamoDB Local wants a credential in the header, not a valid signature.
        .header("Authorization", "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0")
        .json(body)
        .send()
        .await?
        .json()
        .await?;
    answer
        .pointer("/ConsumedCapacity/CapacityUnits")
        .and_then(Value::as_f64)
        .ok_or_else(|| anyhow::anyhow!("no consumed capacity in {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchs_capacity_rules_give_what_dynamodb_local_reports_for_single_writes_and_reads() -> anyhow::Result<()>
{
    let stack = Stack::start().await?;
    let table = stack.spec.table("state")?.name.clone();
    let http = reqwest::Client::new();
    let endpoint = &stack.dynamodb_endpoint;
    let key = |pk: &str| json!({"pk": {"S": pk}, "sk": {"S": "X"}});
    let put = |pk: &str, attributes: Value| {
        let mut item = key(pk);
        item.as_object_mut().expect("an object").extend(attributes.as_object().expect("an object").clone());
        json!({"TableName": table, "Item": item, "ReturnConsumedCapacity": "TOTAL"})
    };
    // Every kind of attribute; strings of sizes around the 1 KB and 3 KB steps.
    let mut checked = 0;
    let shapes = [
        json!({"n": {"N": "123.450"}, "b": {"BOOL": true}, "z": {"NULL": true}, "ss": {"SS": ["a", "bc"]},
               "m": {"M": {"k": {"S": "v"}, "l": {"L": [{"N": "1"}, {"S": "two"}]}}}}),
        json!({"s": {"S": "x".repeat(990)}}),
        json!({"s": {"S": "x".repeat(1010)}}),
        json!({"s": {"S": "x".repeat(3000)}}),
        json!({"s": {"S": "é".repeat(600)}}),
    ];
    for (i, attributes) in shapes.into_iter().enumerate() {
        let body = put(&format!("capacity-{i}"), attributes);
        let ours = units(&body).write as f64;
        let theirs = reported(&http, endpoint, "PutItem", &body).await?;
        assert_eq!(ours, theirs, "PutItem {i}: the rules say {ours}, DynamoDB Local reports {theirs}");
        checked += 1;
    }
    for consistent in [true, false] {
        let body = json!({"TableName": table, "Key": key("capacity-0"), "ConsistentRead": consistent,
                          "ReturnConsumedCapacity": "TOTAL"});
        let ours = units(&body).read_halves as f64 / 2.0;
        let theirs = reported(&http, endpoint, "GetItem", &body).await?;
        assert_eq!(ours, theirs, "GetItem (consistent: {consistent})");
        checked += 1;
    }
    assert_eq!(checked, 7);
    Ok(())
}
