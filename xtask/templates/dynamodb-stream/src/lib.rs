//! `{{name}}`: a DynamoDB stream consumer. Each item written to the
//! `{{name}}` table under `sk = ITEM` with a `quantity` counts once toward
//! the table's summary item, exactly once however often the stream delivers
//! its record.
//!
//! The whole domain is [`plan`]: read the change, decide, and describe the
//! effect as a DynamoDB update. The toolkit does the rest: each record's
//! images read as [`Item`]s (what cannot be read is quarantined with its
//! reason), the shard's order (the first record that fails stops the batch,
//! and Lambda retries from it), and the idempotency marker, keyed by the
//! record's `eventID`, committed with the update. The mapping's filter
//! (`infra/stack.json`) passes only `sk = ITEM` records, so the summary's
//! own writes never come back.
//!
//! TODO: replace [`Item`] and the rule in [`plan`] with your domain.

use serde::Deserialize;
use shared::dynamodb::types::{AttributeValue, Update};
use shared::event::stream::ChangeKind;
use shared::{Change, UnitOfWork, Write};

/// An item of the `{{name}}` table, as its stream images carry it.
#[derive(Debug, Deserialize)]
pub struct Item {
    /// How many the item holds.
    pub quantity: u64,
}

/// The key (`pk`, `sk`) of the summary item.
pub fn summary_key() -> (String, String) {
    ("SUMMARY".to_owned(), "SUMMARY".to_owned())
}

/// Plans one stream record: a new item counts its quantity into the
/// summary in `table`; other changes do nothing.
pub fn plan(table: &str, change: Change<Item>) -> Option<UnitOfWork> {
    if change.kind != ChangeKind::Insert {
        return None;
    }
    let new = change.new?;
    let (pk, sk) = summary_key();
    let add = Update::builder()
        .table_name(table)
        .key("pk", AttributeValue::S(pk))
        .key("sk", AttributeValue::S(sk))
        .update_expression("SET quantity = if_not_exists(quantity, :zero) + :n, #items = if_not_exists(#items, :zero) + :one")
        .expression_attribute_names("#items", "items")
        .expression_attribute_values(":n", AttributeValue::N(new.quantity.to_string()))
        .expression_attribute_values(":one", AttributeValue::N("1".into()))
        .expression_attribute_values(":zero", AttributeValue::N("0".into()));
    Some(UnitOfWork::for_record().write(Write::update(add)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::event::stream::Record;

    /// The fixture's records, their images read as the entry point reads them.
    fn fixture() -> Vec<Result<Change<Item>, shared::event::EventError>> {
        let event: serde_json::Value = serde_json::from_str(include_str!("../events/stream.json")).unwrap();
        let records = event["Records"].as_array().unwrap();
        records.iter().map(|r| Record::parse(r).unwrap().typed::<Item>()).collect()
    }

    #[test]
    fn a_new_item_counts_and_a_change_of_one_does_nothing() {
        let mut records = fixture();
        assert!(plan("table", records.remove(0).unwrap()).is_some(), "an INSERT");
        assert!(plan("table", records.remove(0).unwrap()).is_none(), "a MODIFY");
    }

    #[test]
    fn an_item_without_quantity_is_refused_naming_the_field() {
        let Err(err) = fixture().remove(2) else { panic!("an error") };
        assert!(err.to_string().contains("quantity"), "{err}");
    }
}
