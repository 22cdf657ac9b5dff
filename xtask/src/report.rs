//! Reading the pipeline's results back through the AWS API (the state table,
//! the queues) and from the functions' logs, checking DESIGN.md's invariant,
//! and printing it all as tables.
//!
//! Items are read by the output contract of DESIGN.md (attribute names and
//! types), not through the `shared` crate's converters, so the tests check the
//! contract rather than the code under test.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use aws_sdk_dynamodb::types::AttributeValue;
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::stack::Stack;

type Item = HashMap<String, AttributeValue>;

/// An order item (`pk=ORDER#{orderId}`, `sk=ORDER`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    pub order_id: String,
    pub customer_id: String,
    pub status: String,
    pub amount: Decimal,
    pub currency: String,
    pub occurred_at: String,
    pub last_event_id: String,
    /// Events applied to this order.
    pub version: u64,
}

/// A customer totals item (`pk=CUSTOMER#{customerId}`, `sk=TOTALS`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TotalsRow {
    pub customer_id: String,
    pub order_count: u64,
    pub totals: BTreeMap<String, Decimal>,
}

/// An object manifest (`pk=OBJECT#{bucket}/{key}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRow {
    pub object: String,
    pub revision: String,
    pub status: String,
    pub lines: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub stale: u64,
    pub duplicates: u64,
}

/// A quarantined record (`pk=QUARANTINE#{source}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineRow {
    pub source: String,
    pub record_id: String,
    pub reason: String,
}

/// Everything in the state table, by entity.
#[derive(Debug, Clone, Default)]
pub struct StateSnapshot {
    pub orders: Vec<OrderRow>,
    pub totals: Vec<TotalsRow>,
    pub manifests: Vec<ManifestRow>,
    pub quarantine: Vec<QuarantineRow>,
}

fn s<'a>(item: &'a Item, name: &str) -> Result<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v),
        other => bail!("attribute {name} is not a string (S): {other:?}"),
    }
}

fn n<T: FromStr>(item: &Item, name: &str) -> Result<T> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => {
            v.parse().ok().with_context(|| format!("attribute {name}: {v:?} is not a valid number"))
        }
        other => bail!("attribute {name} is not a number (N): {other:?}"),
    }
}

impl StateSnapshot {
    /// Scans the state table.
    pub async fn read(stack: &Stack) -> Result<Self> {
        let mut snapshot = Self::default();
        for item in stack.scan("state").await? {
            let pk = s(&item, "pk")?.to_owned();
            let sk = s(&item, "sk")?.to_owned();
            let parsed = snapshot.add(&pk, &sk, &item);
            parsed.with_context(|| format!("state item pk={pk} sk={sk}"))?;
        }
        snapshot.orders.sort_by(|a, b| a.order_id.cmp(&b.order_id));
        snapshot.totals.sort_by(|a, b| a.customer_id.cmp(&b.customer_id));
        snapshot.manifests.sort_by(|a, b| a.object.cmp(&b.object));
        snapshot.quarantine.sort_by(|a, b| (&a.source, &a.record_id).cmp(&(&b.source, &b.record_id)));
        Ok(snapshot)
    }

    fn add(&mut self, pk: &str, sk: &str, item: &Item) -> Result<()> {
        if let Some(order_id) = pk.strip_prefix("ORDER#") {
            self.orders.push(OrderRow {
                order_id: order_id.to_owned(),
                customer_id: s(item, "customerId")?.to_owned(),
                status: s(item, "status")?.to_owned(),
                amount: n(item, "amount")?,
                currency: s(item, "currency")?.to_owned(),
                occurred_at: s(item, "occurredAt")?.to_owned(),
                last_event_id: s(item, "lastEventId")?.to_owned(),
                version: n(item, "version")?,
            });
        } else if let Some(customer_id) = pk.strip_prefix("CUSTOMER#") {
            let mut totals = BTreeMap::new();
            match item.get("totals") {
                Some(AttributeValue::M(m)) => {
                    for (currency, v) in m {
                        let AttributeValue::N(v) = v else {
                            bail!("totals.{currency} is not a number (N)");
                        };
                        totals.insert(currency.clone(), v.parse().with_context(|| format!("totals.{currency}"))?);
                    }
                }
                other => bail!("attribute totals is not a map (M): {other:?}"),
            }
            self.totals.push(TotalsRow {
                customer_id: customer_id.to_owned(),
                order_count: n(item, "orderCount")?,
                totals,
            });
        } else if let Some(object) = pk.strip_prefix("OBJECT#") {
            self.manifests.push(ManifestRow {
                object: object.to_owned(),
                revision: sk.to_owned(),
                status: s(item, "status")?.to_owned(),
                lines: n(item, "lines")?,
                accepted: n(item, "accepted")?,
                rejected: n(item, "rejected")?,
                stale: n(item, "stale")?,
                duplicates: n(item, "duplicates")?,
            });
        } else if let Some(source) = pk.strip_prefix("QUARANTINE#") {
            if s(item, "entity")? != "quarantine" {
                bail!("a QUARANTINE# item has entity {:?}", s(item, "entity")?);
            }
            self.quarantine.push(QuarantineRow {
                source: source.to_owned(),
                record_id: sk.to_owned(),
                reason: s(item, "reason")?.to_owned(),
            });
        }
        Ok(())
    }

    /// The totals DESIGN.md's aggregation rule gives for the orders in the
    /// table: per customer, the count and per-currency sum of non-CANCELLED
    /// orders.
    pub fn expected_totals(&self) -> BTreeMap<String, TotalsRow> {
        let mut expected: BTreeMap<String, TotalsRow> = BTreeMap::new();
        for o in &self.orders {
            let row = expected
                .entry(o.customer_id.clone())
                .or_insert_with(|| TotalsRow { customer_id: o.customer_id.clone(), ..TotalsRow::default() });
            if o.status != "CANCELLED" {
                row.order_count += 1;
                *row.totals.entry(o.currency.clone()).or_default() += o.amount;
            }
        }
        expected
    }

    /// The invariant: each customer's stored totals equal the expected ones.
    /// Returns one line per violation (empty when it holds). A customer with
    /// only cancelled orders may have no item or an all-zero one.
    pub fn invariant_violations(&self) -> Vec<String> {
        let normalise = |t: &TotalsRow| {
            let totals: BTreeMap<String, Decimal> =
                t.totals.iter().filter(|(_, v)| !v.is_zero()).map(|(c, v)| (c.clone(), v.normalize())).collect();
            (t.order_count, totals)
        };
        let expected = self.expected_totals();
        let actual: BTreeMap<&str, &TotalsRow> = self.totals.iter().map(|t| (t.customer_id.as_str(), t)).collect();
        let mut violations = Vec::new();
        let customers: std::collections::BTreeSet<&str> =
            expected.keys().map(String::as_str).chain(actual.keys().copied()).collect();
        for c in customers {
            let want = expected.get(c).map(normalise).unwrap_or_default();
            let got = actual.get(c).map(|t| normalise(t)).unwrap_or_default();
            if want != got {
                violations.push(format!(
                    "customer {c}: stored {} order(s) {}, orders in the table give {} order(s) {}",
                    got.0,
                    money(&got.1),
                    want.0,
                    money(&want.1)
                ));
            }
        }
        violations
    }

    /// The orders as a table.
    pub fn orders_table(&self) -> String {
        table(
            &["order", "customer", "status", "amount", "currency", "events applied"],
            self.orders
                .iter()
                .map(|o| {
                    vec![
                        o.order_id.clone(),
                        o.customer_id.clone(),
                        o.status.clone(),
                        o.amount.to_string(),
                        o.currency.clone(),
                        o.version.to_string(),
                    ]
                })
                .collect(),
        )
    }

    /// The customer totals as a table.
    pub fn totals_table(&self) -> String {
        table(
            &["customer", "orders", "totals"],
            self.totals
                .iter()
                .map(|t| vec![t.customer_id.clone(), t.order_count.to_string(), money(&t.totals)])
                .collect(),
        )
    }

    /// The object manifests as a table.
    pub fn manifests_table(&self) -> String {
        table(
            &["object", "status", "lines", "accepted", "rejected", "stale", "duplicates"],
            self.manifests
                .iter()
                .map(|m| {
                    vec![
                        m.object.clone(),
                        m.status.clone(),
                        m.lines.to_string(),
                        m.accepted.to_string(),
                        m.rejected.to_string(),
                        m.stale.to_string(),
                        m.duplicates.to_string(),
                    ]
                })
                .collect(),
        )
    }

    /// The quarantine as a table.
    pub fn quarantine_table(&self) -> String {
        table(
            &["source", "record", "reason"],
            self.quarantine.iter().map(|q| vec![q.source.clone(), q.record_id.clone(), q.reason.clone()]).collect(),
        )
    }
}

/// `12.5 EUR + 3 USD`: normalised, sorted by currency, zero sums left out.
pub fn money(totals: &BTreeMap<String, Decimal>) -> String {
    if totals.values().all(Decimal::is_zero) {
        return "-".into();
    }
    totals
        .iter()
        .filter(|(_, v)| !v.is_zero())
        .map(|(c, v)| format!("{} {c}", v.normalize()))
        .collect::<Vec<_>>()
        .join(" + ")
}

/// A plain-text table with a header rule.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "  {}", padded.join("  ").trim_end());
    };
    line(&mut out, header.iter().map(|h| (*h).to_owned()).collect());
    line(&mut out, widths.iter().map(|w| "-".repeat(*w)).collect());
    if rows.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for row in rows {
        line(&mut out, row);
    }
    out
}

/// The per-invocation accounting line every function logs
/// (`shared::batch::Summary::log`), summed per function: what CloudWatch Logs
/// Insights would give on AWS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Accounting {
    #[serde(default)]
    pub applied: u64,
    #[serde(default)]
    pub stale: u64,
    #[serde(default)]
    pub duplicate: u64,
    #[serde(default)]
    pub quarantined: u64,
    #[serde(default)]
    pub ignored: u64,
    #[serde(default)]
    pub failed: u64,
}

impl Accounting {
    fn add(&mut self, o: &Self) {
        self.applied += o.applied;
        self.stale += o.stale;
        self.duplicate += o.duplicate;
        self.quarantined += o.quarantined;
        self.ignored += o.ignored;
        self.failed += o.failed;
    }

    /// Records with a final outcome (everything but retried failures).
    pub fn settled(&self) -> u64 {
        self.applied + self.stale + self.duplicate + self.quarantined + self.ignored
    }
}

/// The message of the functions' summary log line.
const SUMMARY_MESSAGE: &str = "invocation summary";

/// Sums the summary lines of the functions' JSON logs, per function. Reads
/// both layouts of `AWS_LAMBDA_LOG_FORMAT=JSON` logs: fields at the top level
/// (`{"message": .., "function_name": .., "applied": ..}`) and tracing's
/// default nesting under `fields`.
pub fn accounting_from_logs(log: &str) -> BTreeMap<String, Accounting> {
    let mut out: BTreeMap<String, Accounting> = BTreeMap::new();
    for line in log.lines() {
        let Some(start) = line.find('{') else {
            continue;
        };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&line[start..]) else {
            continue;
        };
        let fields = value.get("fields").unwrap_or(&value);
        if fields.get("message").and_then(serde_json::Value::as_str) != Some(SUMMARY_MESSAGE) {
            continue;
        }
        let Ok(counts) = serde_json::from_value::<Accounting>(fields.clone()) else {
            continue;
        };
        let function = ["function", "function_name"]
            .iter()
            .find_map(|k| fields.get(*k).or_else(|| value.get(*k)).and_then(serde_json::Value::as_str))
            .unwrap_or("unknown")
            .to_owned();
        out.entry(function).or_default().add(&counts);
    }
    out
}

/// Messages waiting in a queue, read without consuming them for long: each is
/// received and immediately made visible again. Returns the bodies.
pub async fn peek_queue(stack: &Stack, queue_key: &str) -> Result<Vec<String>> {
    let url = stack.queue_url(queue_key)?;
    let mut bodies = Vec::new();
    let mut handles = Vec::new();
    loop {
        let out = stack
            .sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(30)
            .send()
            .await
            .with_context(|| format!("peeking into queue {queue_key}"))?;
        if out.messages().is_empty() {
            break;
        }
        for m in out.messages() {
            bodies.push(m.body().unwrap_or_default().to_owned());
            handles.push(m.receipt_handle().unwrap_or_default().to_owned());
        }
    }
    for h in handles {
        stack
            .sqs
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(h)
            .visibility_timeout(0)
            .send()
            .await
            .with_context(|| format!("releasing a peeked message of {queue_key}"))?;
    }
    Ok(bodies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lines_are_summed_per_function() {
        let log = r#"   Running `target/debug/sqs-consumer`
{"level":"INFO","fields":{"message":"invocation summary","function":"sqs-consumer","applied":3,"stale":1,"duplicate":0,"quarantined":1,"ignored":0,"failed":0,"records":5}}
{"level":"INFO","fields":{"message":"order event","function":"sqs-consumer","applied":9}}
{"level":"INFO","fields":{"message":"invocation summary","function":"sqs-consumer","applied":1,"stale":0,"duplicate":2,"quarantined":0,"ignored":0,"failed":1,"records":4}}
{"applied":2,"duplicate":0,"failed":0,"function_name":"s3-ingest","level":"INFO","message":"invocation summary","quarantined":1,"records":3,"stale":0}
not json {"broken"
"#;
        let acc = accounting_from_logs(log);
        let a = acc["sqs-consumer"];
        assert_eq!((a.applied, a.stale, a.duplicate, a.quarantined, a.failed), (4, 1, 2, 1, 1));
        assert_eq!(a.settled(), 8);
        assert_eq!(acc["s3-ingest"].applied, 2);
        assert_eq!(acc["s3-ingest"].quarantined, 1);
    }

    fn order(id: &str, customer: &str, status: &str, amount: &str, currency: &str) -> OrderRow {
        OrderRow {
            order_id: id.into(),
            customer_id: customer.into(),
            status: status.into(),
            amount: amount.parse().unwrap(),
            currency: currency.into(),
            occurred_at: String::new(),
            last_event_id: String::new(),
            version: 1,
        }
    }

    #[test]
    fn invariant_counts_non_cancelled_orders_per_currency() {
        let mut snap = StateSnapshot {
            orders: vec![
                order("1", "c", "PAID", "1.50", "USD"),
                order("2", "c", "PLACED", "2", "USD"),
                order("3", "c", "CANCELLED", "7", "USD"),
                order("4", "c", "SHIPPED", "3", "EUR"),
                order("5", "d", "CANCELLED", "3", "EUR"),
            ],
            totals: vec![TotalsRow {
                customer_id: "c".into(),
                order_count: 3,
                totals: BTreeMap::from([
                    ("USD".into(), "3.500".parse().unwrap()),
                    ("EUR".into(), "3".parse().unwrap()),
                ]),
            }],
            ..StateSnapshot::default()
        };
        assert_eq!(snap.invariant_violations(), Vec::<String>::new());
        snap.totals[0].order_count = 4;
        let v = snap.invariant_violations();
        assert_eq!(v.len(), 1);
        assert!(v[0].contains("customer c"), "{v:?}");
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&["a", "bb"], vec![vec!["long".into(), "x".into()]]);
        assert_eq!(t, "  a     bb\n  ----  --\n  long  x\n");
    }
}
