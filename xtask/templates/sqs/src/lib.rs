//! `{{name}}`: an SQS consumer. Each message asks to add a quantity to one
//! item of the `{{name}}` table, exactly once.
//!
//! The whole domain is [`plan`]: validate the message and describe its
//! effect as a DynamoDB update. The toolkit does the rest (each body read
//! as an [`Event`], what cannot be read or is refused quarantined with its
//! reason, the partial batch response, FIFO order, the deadline, and the
//! idempotency marker committed with the update).
//!
//! TODO: replace [`Event`] and the update in [`plan`] with your domain.

use serde::Deserialize;
use shared::dynamodb::types::{AttributeValue, Update};
use shared::{Invalid, UnitOfWork, Write};

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

/// Plans one message: add its quantity to its item in `table`, once per
/// event id (the same event resent is a duplicate; its id reused with
/// another body is a reused key).
pub fn plan(table: &str, event: Event) -> Result<UnitOfWork, Invalid> {
    if event.quantity == 0 {
        return Err(Invalid::new("quantity: must be at least 1"));
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
    Ok(UnitOfWork::keyed("{{name}}", event.event_id).write(Write::update(add)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixture's message bodies, read as the entry point reads them.
    fn fixture() -> Vec<serde_json::Result<Event>> {
        let event: serde_json::Value = serde_json::from_str(include_str!("../events/sqs.json")).unwrap();
        let records = event["Records"].as_array().unwrap();
        records.iter().map(|r| serde_json::from_str(r["body"].as_str().unwrap())).collect()
    }

    #[test]
    fn a_valid_message_is_keyed_by_its_event_id() {
        let event = fixture().remove(0).unwrap();
        let unit = plan("table", event).unwrap();
        assert_eq!(unit.keyed_by(), Some(("{{name}}", "e-1")));
    }

    #[test]
    fn what_can_never_succeed_is_refused_naming_why() {
        let mut messages = fixture();
        let zero = messages.remove(1).unwrap();
        assert_eq!(plan("table", zero).unwrap_err(), Invalid::new("quantity: must be at least 1"));
        // Not JSON: the entry point quarantines it before any plan.
        assert!(messages.remove(1).is_err());
    }
}
