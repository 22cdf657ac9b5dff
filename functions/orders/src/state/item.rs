//! Conversions between domain types and state-table items (the output
//! contract of DESIGN.md). Items are `serde_dynamo::Item`s, the one item type
//! shared by stream images and the SDK (converted at the SDK boundary).

use std::collections::{BTreeMap, HashMap};

use rust_decimal::Decimal;
use serde_dynamo::{AttributeValue, Item};

use shared::dynamo::{ItemError, ItemExt, n, s};

use crate::order::{Currency, CustomerTotals, Order, OrderStatus, format_timestamp, parse_timestamp};

/// `entity` values of the state table's items.
pub(crate) mod entity {
    /// An order (`ORDER#<orderId>` / `ORDER`).
    pub(crate) const ORDER: &str = "order";
    /// A customer's totals (`CUSTOMER#<customerId>` / `TOTALS`).
    pub(crate) const CUSTOMER_TOTALS: &str = "customer_totals";
}

/// Sort key of order items.
pub const ORDER_SK: &str = "ORDER";
/// Sort key of customer totals items.
pub const TOTALS_SK: &str = "TOTALS";

/// Partition key of an order.
pub fn order_pk(order_id: &str) -> String {
    format!("ORDER#{order_id}")
}

/// Partition key of a customer's totals.
pub fn customer_pk(customer_id: &str) -> String {
    format!("CUSTOMER#{customer_id}")
}

/// True when the item is an order (by key: `sk = ORDER`, `pk = ORDER#…`).
pub fn is_order(item: &Item) -> bool {
    item.opt_s("sk") == Some(ORDER_SK) && item.opt_s("pk").is_some_and(|pk| pk.starts_with("ORDER#"))
}

/// The item of an order.
pub fn order_to_item(order: &Order) -> Item {
    let map: HashMap<String, AttributeValue> = HashMap::from([
        ("pk".to_owned(), s(order_pk(&order.order_id))),
        ("sk".to_owned(), s(ORDER_SK)),
        ("entity".to_owned(), s(entity::ORDER)),
        ("orderId".to_owned(), s(&order.order_id)),
        ("customerId".to_owned(), s(&order.customer_id)),
        ("status".to_owned(), s(order.status.as_str())),
        ("amount".to_owned(), n(order.amount)),
        ("currency".to_owned(), s(order.currency.as_str())),
        ("occurredAt".to_owned(), s(format_timestamp(&order.occurred_at))),
        ("lastEventId".to_owned(), s(&order.last_event_id)),
        ("version".to_owned(), n(order.version)),
    ]);
    Item::from(map)
}

/// Reads an order item.
pub fn order_from_item(item: &Item) -> Result<Order, ItemError> {
    const E: &str = entity::ORDER;
    let status = item.get_s(E, "status")?;
    let currency = item.get_s(E, "currency")?;
    let occurred_at = item.get_s(E, "occurredAt")?;
    Ok(Order {
        order_id: item.get_s(E, "orderId")?.to_owned(),
        customer_id: item.get_s(E, "customerId")?.to_owned(),
        status: serde_json::from_value::<OrderStatus>(serde_json::Value::from(status)).map_err(|_| ItemError {
            entity: E,
            attribute: "status",
            problem: format!("is not an order status: {status:?}"),
        })?,
        amount: item.get_n::<Decimal>(E, "amount")?,
        currency: Currency::parse(currency).ok_or_else(|| ItemError {
            entity: E,
            attribute: "currency",
            problem: format!("is not an ISO 4217 code: {currency:?}"),
        })?,
        occurred_at: parse_timestamp(occurred_at).ok_or_else(|| ItemError {
            entity: E,
            attribute: "occurredAt",
            problem: format!("is not an RFC 3339 timestamp: {occurred_at:?}"),
        })?,
        last_event_id: item.get_s(E, "lastEventId")?.to_owned(),
        version: item.get_n(E, "version")?,
    })
}

/// The item of a customer's totals. `version` counts the writes, for
/// optimistic concurrency.
pub fn totals_to_item(customer_id: &str, totals: &CustomerTotals, version: u64) -> Item {
    let amounts: HashMap<String, AttributeValue> =
        totals.totals.iter().map(|(c, a)| (c.as_str().to_owned(), n(a))).collect();
    Item::from(HashMap::from([
        ("pk".to_owned(), s(customer_pk(customer_id))),
        ("sk".to_owned(), s(TOTALS_SK)),
        ("entity".to_owned(), s(entity::CUSTOMER_TOTALS)),
        ("customerId".to_owned(), s(customer_id)),
        ("orderCount".to_owned(), n(totals.order_count)),
        ("totals".to_owned(), AttributeValue::M(amounts)),
        ("version".to_owned(), n(version)),
    ]))
}

/// Reads a customer totals item: the totals and the item's version.
pub fn totals_from_item(item: &Item) -> Result<(CustomerTotals, u64), ItemError> {
    const E: &str = entity::CUSTOMER_TOTALS;
    let mut totals = BTreeMap::new();
    match item.get("totals") {
        Some(AttributeValue::M(map)) => {
            for (currency, amount) in map {
                let code = Currency::parse(currency).ok_or_else(|| ItemError {
                    entity: E,
                    attribute: "totals",
                    problem: format!("has a key that is not an ISO 4217 code: {currency:?}"),
                })?;
                let AttributeValue::N(amount) = amount else {
                    return Err(ItemError {
                        entity: E,
                        attribute: "totals",
                        problem: format!("{currency} is not a number"),
                    });
                };
                let amount: Decimal = amount.parse().map_err(|_| ItemError {
                    entity: E,
                    attribute: "totals",
                    problem: format!("{currency} is not a valid number: {amount:?}"),
                })?;
                totals.insert(code, amount);
            }
        }
        None => {}
        Some(_) => {
            return Err(ItemError { entity: E, attribute: "totals", problem: "is not a map (M)".into() });
        }
    }
    let version = if item.contains_key("version") { item.get_n(E, "version")? } else { 0 };
    Ok((CustomerTotals { order_count: item.get_n(E, "orderCount")?, totals }, version))
}
