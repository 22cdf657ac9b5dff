//! `{{name}}`: objects created under `{{name}}/` in the uploads bucket,
//! announced by S3 notifications through its queue. Each new object (each
//! version of it) is recorded once in the `{{name}}` table.
//!
//! The whole domain is [`plan`]: read the notification, decide, and
//! describe the effect as DynamoDB writes. The toolkit does the rest
//! (partial batch response, quarantine with the reason, the deadline), and
//! commits each effect with its idempotency marker, keyed by the object's
//! revision (version id, else eTag), so a notification that comes twice
//! records nothing twice.
//!
//! TODO: replace the record in [`plan`] with your domain. The function may
//! read the objects under its prefix (`s3:GetObject`, declared in
//! `infra/stack.json`); `functions/s3-ingest` shows reading large objects
//! in constant memory, resumable across invocations.

use serde_json::Value;
use shared::dynamodb::types::{AttributeValue, Put};
use shared::event::s3::{Notification, ObjectRef, from_value};
use shared::{Invalid, UnitOfWork, Write};

/// The key (`pk`, `sk`) of an object's record in the `{{name}}` table.
pub fn object_key(object: &ObjectRef) -> (String, String) {
    (format!("OBJECT#{}/{}", object.bucket, object.key), object.revision().to_owned())
}

/// Plans one notification message (its body): a record in `table` of each
/// object it announces as created; test events and other S3 events do
/// nothing.
pub fn plan(table: &str, notification: &Value) -> Result<Option<UnitOfWork>, Invalid> {
    let mut created = Vec::new();
    for announced in from_value(notification, 0) {
        match announced.map_err(|e| Invalid::new(e.to_string()))? {
            Notification::ObjectCreated(object) => created.push(object),
            Notification::TestEvent | Notification::Ignored { .. } => {}
        }
    }
    let Some(first) = created.first() else { return Ok(None) };
    // One object per message, as S3 sends them: keyed by the object's
    // revision, which is also the fingerprint (a notification of the same
    // revision sent again is a duplicate whatever its other fields say).
    // Several in one message: keyed by the message.
    let mut unit = if created.len() == 1 {
        let revision = format!("{}/{}/{}", first.bucket, first.key, first.revision());
        UnitOfWork::keyed("{{name}}", revision.clone()).fingerprint(revision)
    } else {
        UnitOfWork::for_record()
    };
    for object in &created {
        let (pk, sk) = object_key(object);
        let mut put = Put::builder()
            .table_name(table)
            .item("pk", AttributeValue::S(pk))
            .item("sk", AttributeValue::S(sk))
            .item("bucket", AttributeValue::S(object.bucket.clone()))
            .item("key", AttributeValue::S(object.key.clone()));
        if let Some(size) = object.size {
            put = put.item("size", AttributeValue::N(size.to_string()));
        }
        unit = unit.write(Write::put(put, &["pk", "sk"]));
    }
    Ok(Some(unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixture's message bodies, read as the entry point reads them.
    fn fixture() -> Vec<serde_json::Result<Value>> {
        let event: Value = serde_json::from_str(include_str!("../events/s3-via-sqs.json")).unwrap();
        let records = event["Records"].as_array().unwrap();
        records.iter().map(|r| serde_json::from_str(r["body"].as_str().unwrap())).collect()
    }

    #[test]
    fn a_created_object_is_keyed_by_its_revision() {
        let body = fixture().remove(0).unwrap();
        let unit = plan("table", &body).unwrap().expect("an effect");
        assert_eq!(unit.keyed_by(), Some(("{{name}}", "uploads/{{name}}/example.json/etag-1")));
    }

    #[test]
    fn a_test_event_does_nothing_and_a_broken_notification_is_refused() {
        let mut messages = fixture();
        assert!(plan("table", &messages.remove(1).unwrap()).unwrap().is_none(), "s3:TestEvent");
        // Not JSON: the entry point quarantines it before any plan.
        assert!(messages.remove(1).is_err());
    }
}
