//! `{{name}}`: objects created under `{{name}}/` in the uploads bucket,
//! announced by S3 notifications through its queue. Each new object (each
//! version of it) is recorded once in the `{{name}}` table.
//!
//! The whole domain is [`plan`]: read the notification, decide, and
//! describe the effect as DynamoDB writes. The toolkit's engine does the
//! rest (partial batch response, quarantine, the deadline), and
//! `ExactlyOnce` commits each effect with its idempotency marker, keyed by
//! the object's revision (version id, else eTag), so a notification that
//! comes twice records nothing twice.
//!
//! TODO: replace the record in [`plan`] with your domain. The function may
//! read the objects under its prefix (`s3:GetObject`, declared in
//! `infra/stack.json`); `functions/s3-ingest` shows reading large objects
//! in constant memory, resumable across invocations.

use aws_sdk_dynamodb::types::{AttributeValue, Put};
use shared::batch::RecordError;
use shared::core::key::Keys;
use shared::engine::Plan;
use shared::event::s3::{Notification, ObjectRef, from_sqs_body};
use shared::event::sqs;
use shared::exactly_once::{UnitOfWork, Write};

/// The key (`pk`, `sk`) of an object's record in the `{{name}}` table.
pub fn object_key(object: &ObjectRef) -> (String, String) {
    (format!("OBJECT#{}/{}", object.bucket, object.key), object.revision().to_owned())
}

/// Plans one notification message: a record of each object it announces as
/// created; test events and other S3 events do nothing.
pub fn plan(keys: &Keys, table: &str, message: &sqs::Message) -> Result<Plan<UnitOfWork>, RecordError> {
    let mut created = Vec::new();
    for notification in from_sqs_body(&message.body) {
        match notification.map_err(|e| RecordError::Permanent(e.to_string()))? {
            Notification::ObjectCreated(object) => created.push(object),
            Notification::TestEvent | Notification::Ignored { .. } => {}
        }
    }
    let Some(first) = created.first() else { return Ok(Plan::Ignore) };
    // One object per message as S3 sends them: keyed by the object's
    // revision; several, by the message.
    let identity = if created.len() == 1 {
        format!("{}/{}/{}", first.bucket, first.key, first.revision())
    } else {
        message.message_id.clone()
    };
    let mut unit = UnitOfWork::new(keys.custom("{{name}}", &identity));
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
        unit = unit.write(Write::put(put, &["pk", "sk"]).map_err(|e| RecordError::Permanent(e.to_string()))?);
    }
    Ok(Plan::Effect(unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The records of the fixture event, parsed as the engine parses them.
    fn fixture() -> Vec<sqs::Message> {
        let event: serde_json::Value = serde_json::from_str(include_str!("../events/s3-via-sqs.json")).unwrap();
        event["Records"].as_array().unwrap().iter().map(|r| sqs::Message::parse(r).unwrap()).collect()
    }

    #[test]
    fn a_created_object_is_keyed_by_its_revision() {
        let keys = Keys::new("test");
        let Plan::Effect(unit) = plan(&keys, "table", &fixture()[0]).unwrap() else { panic!("an effect") };
        assert_eq!(unit.key(), Some(keys.custom("{{name}}", "uploads/{{name}}/example.json/etag-1").as_str()));
    }

    #[test]
    fn a_test_event_does_nothing_and_a_broken_notification_is_permanent() {
        let keys = Keys::new("test");
        let messages = fixture();
        assert!(matches!(plan(&keys, "table", &messages[1]), Ok(Plan::Ignore)), "s3:TestEvent");
        assert!(matches!(plan(&keys, "table", &messages[2]), Err(RecordError::Permanent(_))), "not JSON");
    }
}
