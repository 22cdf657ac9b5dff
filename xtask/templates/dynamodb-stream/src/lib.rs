//! `{{name}}`: a DynamoDB stream consumer. Each item written to the
//! `{{name}}` table under `sk = ITEM` with a `quantity` counts once toward
//! the table's summary item, exactly once however often the stream delivers
//! its record.
//!
//! The whole domain is [`plan`]: read the record's images, decide, and
//! describe the effect as a DynamoDB update. The toolkit's engine keeps the
//! shard's order (the first record that fails stops the batch, and Lambda
//! retries from it) and quarantines what can never succeed;
//! `ExactlyOnce` commits each effect with its idempotency marker, keyed by
//! the record's `eventID`. The mapping's filter (`infra/stack.json`) passes
//! only `sk = ITEM` records, so the summary's own writes never come back.
//!
//! TODO: replace the rule in [`plan`] with your domain.

use aws_sdk_dynamodb::types::{AttributeValue, Update};
use serde_dynamo::{AttributeValue as Image, Item};
use shared::batch::RecordError;
use shared::core::key::Keys;
use shared::engine::Plan;
use shared::event::stream::{self, Change};
use shared::exactly_once::{UnitOfWork, Write};

/// The key (`pk`, `sk`) of the summary item.
pub fn summary_key() -> (String, String) {
    ("SUMMARY".to_owned(), "SUMMARY".to_owned())
}

fn number<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(Image::N(n)) => Some(n),
        _ => None,
    }
}

/// Plans one stream record: a new item counts its quantity into the
/// summary; other changes do nothing.
pub fn plan(keys: &Keys, table: &str, record: &stream::Record) -> Result<Plan<UnitOfWork>, RecordError> {
    if record.change != Change::Insert {
        return Ok(Plan::Ignore);
    }
    let Some(new) = record.new_image() else { return Ok(Plan::Ignore) };
    let quantity = number(new, "quantity")
        .ok_or_else(|| RecordError::Permanent("item image: no quantity (a number)".into()))?
        .to_owned();
    let (pk, sk) = summary_key();
    let add = Update::builder()
        .table_name(table)
        .key("pk", AttributeValue::S(pk))
        .key("sk", AttributeValue::S(sk))
        .update_expression("SET quantity = if_not_exists(quantity, :zero) + :n, #items = if_not_exists(#items, :zero) + :one")
        .expression_attribute_names("#items", "items")
        .expression_attribute_values(":n", AttributeValue::N(quantity))
        .expression_attribute_values(":one", AttributeValue::N("1".into()))
        .expression_attribute_values(":zero", AttributeValue::N("0".into()));
    let add = Write::update(add).map_err(|e| RecordError::Permanent(e.to_string()))?;
    Ok(Plan::Effect(UnitOfWork::new(keys.custom("{{name}}", &record.event_id)).write(add)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The records of the fixture event, parsed as the engine parses them.
    fn fixture() -> Vec<stream::Record> {
        let event: serde_json::Value = serde_json::from_str(include_str!("../events/stream.json")).unwrap();
        event["Records"].as_array().unwrap().iter().map(|r| stream::Record::parse(r).unwrap()).collect()
    }

    #[test]
    fn a_new_item_counts_once_under_its_event_id() {
        let keys = Keys::new("test");
        let records = fixture();
        let Plan::Effect(unit) = plan(&keys, "table", &records[0]).unwrap() else { panic!("an effect") };
        assert_eq!(unit.key(), Some(keys.custom("{{name}}", &records[0].event_id).as_str()));
    }

    #[test]
    fn changes_of_items_do_nothing_and_an_item_without_quantity_is_permanent() {
        let keys = Keys::new("test");
        let records = fixture();
        assert!(matches!(plan(&keys, "table", &records[1]), Ok(Plan::Ignore)), "a MODIFY");
        let Err(err) = plan(&keys, "table", &records[2]) else { panic!("an error") };
        assert_eq!(err, RecordError::Permanent("item image: no quantity (a number)".into()));
    }
}
