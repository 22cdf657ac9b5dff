//! `{{name}}`: an SQS consumer. Each message asks to add a quantity to one
//! item of the `{{name}}` table, exactly once.
//!
//! The whole domain is [`plan`]: parse and validate the message, key it by
//! its event id, and describe its effect as a DynamoDB update. The toolkit's
//! engine does the rest (partial batch response, FIFO order, quarantine of
//! what can never succeed, the deadline), and `ExactlyOnce` commits each
//! effect together with its idempotency marker.
//!
//! TODO: replace [`Event`] and the update in [`plan`] with your domain.

use aws_sdk_dynamodb::types::{AttributeValue, Update};
use serde::Deserialize;
use shared::batch::RecordError;
use shared::core::key::{Keys, fingerprint};
use shared::engine::Plan;
use shared::event::sqs;
use shared::exactly_once::{UnitOfWork, Write};

/// One message body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Unique per event: the idempotency key, so a producer's resend is
    /// caught as well as SQS redelivery.
    pub event_id: String,
    /// The item the quantity is added to.
    pub item_id: String,
    /// How many, at least one.
    pub quantity: u32,
}

/// The key (`pk`, `sk`) of an item of the `{{name}}` table.
pub fn item_key(item_id: &str) -> (String, String) {
    (format!("ITEM#{item_id}"), "ITEM".to_owned())
}

/// Plans one message: add its quantity to its item, under the key
/// `{prefix}#{{name}}#{eventId}`.
pub fn plan(keys: &Keys, table: &str, message: &sqs::Message) -> Result<Plan<UnitOfWork>, RecordError> {
    let event: Event = message.json_body().map_err(|e| RecordError::Permanent(e.to_string()))?;
    if event.quantity == 0 {
        return Err(RecordError::Permanent("quantity: must be at least 1".into()));
    }
    let (pk, sk) = item_key(&event.item_id);
    let add = Update::builder()
        .table_name(table)
        .key("pk", AttributeValue::S(pk))
        .key("sk", AttributeValue::S(sk))
        .update_expression("SET quantity = if_not_exists(quantity, :zero) + :n, events = if_not_exists(events, :zero) + :one")
        .expression_attribute_values(":n", AttributeValue::N(event.quantity.to_string()))
        .expression_attribute_values(":one", AttributeValue::N("1".into()))
        .expression_attribute_values(":zero", AttributeValue::N("0".into()));
    let add = Write::update(add).map_err(|e| RecordError::Permanent(e.to_string()))?;
    // The fingerprint covers what the event means: the same event resent is
    // a duplicate; its id reused for another item or quantity is reported.
    let meaning = format!("{}\n{}", event.item_id, event.quantity);
    Ok(Plan::Effect(
        UnitOfWork::new(keys.custom("{{name}}", &event.event_id)).fingerprint(fingerprint(meaning.as_bytes())).write(add),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The records of the fixture event, parsed as the engine parses them.
    fn fixture() -> Vec<sqs::Message> {
        let event: serde_json::Value = serde_json::from_str(include_str!("../events/sqs.json")).unwrap();
        event["Records"].as_array().unwrap().iter().map(|r| sqs::Message::parse(r).unwrap()).collect()
    }

    #[test]
    fn a_valid_message_is_keyed_by_its_event_id() {
        let keys = Keys::new("test");
        let Plan::Effect(unit) = plan(&keys, "table", &fixture()[0]).unwrap() else { panic!("an effect") };
        assert_eq!(unit.key(), Some(keys.custom("{{name}}", "e-1").as_str()));
    }

    #[test]
    fn what_can_never_succeed_is_a_permanent_error_naming_why() {
        let keys = Keys::new("test");
        let messages = fixture();
        let Err(zero) = plan(&keys, "table", &messages[1]) else { panic!("an error") };
        assert_eq!(zero, RecordError::Permanent("quantity: must be at least 1".into()));
        let Err(malformed) = plan(&keys, "table", &messages[2]) else { panic!("an error") };
        assert!(matches!(&malformed, RecordError::Permanent(m) if m.starts_with("malformed JSON")), "{malformed:?}");
    }
}
