//! Object manifests in DynamoDB: one item per object revision in a table
//! keyed `pk` (S) + `sk` (S) (`pk` = `OBJECT#<bucket>/<key>`, `sk` = the
//! revision), read when an object's ingest starts and written, with its
//! checkpoint condition, in the same transaction as each chunk.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue as SdkValue, Put};
use chrono::Utc;
use serde_dynamo::{AttributeValue, Item};

use crate::dynamo::{ItemError, ItemExt, StoreError, from_sdk, n, s, to_sdk};
use crate::exactly_once::Write;

pub use shared_core::manifest::{Checkpoint, Counts, Manifest, ManifestFn, ManifestWrite, ObjectStatus};

/// The `entity` attribute of a manifest item.
pub const ENTITY: &str = "object";

/// Partition key of an object manifest.
pub fn object_pk(bucket: &str, key: &str) -> String {
    format!("OBJECT#{bucket}/{key}")
}

/// Reads the manifest of an object revision from `table` (strongly consistent).
pub async fn get_manifest(
    client: &Client,
    table: &str,
    bucket: &str,
    key: &str,
    revision: &str,
) -> Result<Option<Manifest>, StoreError> {
    let out = client
        .get_item()
        .table_name(table)
        .key("pk", SdkValue::S(object_pk(bucket, key)))
        .key("sk", SdkValue::S(revision.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| StoreError::sdk("GetItem", table, &e))?;
    out.item.map(|item| manifest_from_item(&from_sdk(item))).transpose().map_err(Into::into)
}

/// The manifest write of a chunk, conditional on the checkpoint the writer
/// started from.
pub fn manifest_put(table: &str, write: &ManifestWrite) -> Write {
    let mut put = Put::builder().table_name(table).set_item(Some(to_sdk(manifest_to_item(&write.manifest))));
    put = match write.expected {
        None => put.condition_expression("attribute_not_exists(pk)"),
        Some(cp) => put
            .condition_expression("checkpoint.#line = :line AND checkpoint.#byte = :byte")
            .expression_attribute_names("#line", "line")
            .expression_attribute_names("#byte", "byte")
            .expression_attribute_values(":line", SdkValue::N(cp.line.to_string()))
            .expression_attribute_values(":byte", SdkValue::N(cp.byte.to_string())),
    };
    Write::put(put, &["pk", "sk"])
}

/// The manifest item of an object revision.
pub fn manifest_to_item(m: &Manifest) -> Item {
    let Counts { lines, accepted, rejected, stale, duplicates } = m.counts;
    let mut map = HashMap::from([
        ("pk".to_owned(), s(object_pk(&m.bucket, &m.key))),
        ("sk".to_owned(), s(&m.revision)),
        ("entity".to_owned(), s(ENTITY)),
        ("bucket".to_owned(), s(&m.bucket)),
        ("key".to_owned(), s(&m.key)),
        ("status".to_owned(), s(m.status.as_str())),
        ("lines".to_owned(), n(lines)),
        ("accepted".to_owned(), n(accepted)),
        ("rejected".to_owned(), n(rejected)),
        ("stale".to_owned(), n(stale)),
        ("duplicates".to_owned(), n(duplicates)),
        (
            "checkpoint".to_owned(),
            AttributeValue::M(HashMap::from([
                ("line".to_owned(), n(m.checkpoint.line)),
                ("byte".to_owned(), n(m.checkpoint.byte)),
            ])),
        ),
        ("startedAt".to_owned(), s(m.started_at.to_rfc3339())),
    ]);
    if let Some(header) = &m.csv_header {
        map.insert("csvHeader".to_owned(), s(header));
    }
    if let Some(at) = m.finished_at {
        map.insert("finishedAt".to_owned(), s(at.to_rfc3339()));
    }
    Item::from(map)
}

/// Reads a manifest item.
pub fn manifest_from_item(item: &Item) -> Result<Manifest, ItemError> {
    const E: &str = ENTITY;
    let bad = |attribute, problem: &str| ItemError { entity: E, attribute, problem: problem.to_owned() };
    let status = match item.get_s(E, "status")? {
        "IN_PROGRESS" => ObjectStatus::InProgress,
        "COMPLETED" => ObjectStatus::Completed,
        "FAILED" => ObjectStatus::Failed,
        _ => return Err(bad("status", "is not IN_PROGRESS, COMPLETED or FAILED")),
    };
    let checkpoint = match item.get("checkpoint") {
        Some(AttributeValue::M(m)) => {
            let num = |k: &str| match m.get(k) {
                Some(AttributeValue::N(v)) => v.parse::<u64>().ok(),
                _ => None,
            };
            Checkpoint {
                line: num("line").ok_or_else(|| bad("checkpoint", "has no numeric line"))?,
                byte: num("byte").ok_or_else(|| bad("checkpoint", "has no numeric byte"))?,
            }
        }
        _ => return Err(bad("checkpoint", "is missing or not a map")),
    };
    let time = |attribute: &'static str| -> Result<Option<chrono::DateTime<Utc>>, ItemError> {
        item.opt_s(attribute)
            .map(|t| {
                chrono::DateTime::parse_from_rfc3339(t)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| bad(attribute, "is not an RFC 3339 timestamp"))
            })
            .transpose()
    };
    Ok(Manifest {
        bucket: item.get_s(E, "bucket")?.to_owned(),
        key: item.get_s(E, "key")?.to_owned(),
        revision: item.get_s(E, "sk")?.to_owned(),
        status,
        counts: Counts {
            lines: item.get_n(E, "lines")?,
            accepted: item.get_n(E, "accepted")?,
            rejected: item.get_n(E, "rejected")?,
            stale: item.get_n(E, "stale")?,
            duplicates: item.get_n(E, "duplicates")?,
        },
        checkpoint,
        csv_header: item.opt_s("csvHeader").map(str::to_owned),
        started_at: time("startedAt")?.ok_or_else(|| bad("startedAt", "is missing"))?,
        finished_at: time("finishedAt")?,
    })
}
