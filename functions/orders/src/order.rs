//! The order domain: parsing and validating order events (the input contract of
//! DESIGN.md), the apply rule, and the contribution rule for customer totals.
//!
//! Everything here is pure: no I/O, no clocks. Stores and handlers call these
//! functions so the rules live in one place and are property-tested.

use std::borrow::{Borrow, Cow};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use chrono::{DateTime, Datelike, Timelike, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use shared_core::batch::Outcome;

/// Longest id accepted for `eventId`, `orderId` and `customerId`, in characters.
pub const MAX_ID_CHARS: usize = 128;
/// Most decimal places an amount may have (minor units of the currency).
pub const MAX_AMOUNT_SCALE: u32 = 2;
/// Largest amount, in cents: 10^15 - 1 cents (999,999,999,999,999.99), far
/// beyond any real order. A bound on each amount is what keeps every sum
/// exact: 10^13 orders of one customer in one currency still fit an exact
/// decimal (about 7.9 * 10^28), and DynamoDB's numbers (38 digits).
pub const MAX_AMOUNT_CENTS: i64 = 99_999_999_999_999_999;

/// [`MAX_AMOUNT_CENTS`] as a decimal amount.
pub fn max_amount() -> Decimal {
    Decimal::new(MAX_AMOUNT_CENTS, MAX_AMOUNT_SCALE)
}

/// Lifecycle state of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// `PLACED`: the order exists.
    Placed,
    /// `PAID`.
    Paid,
    /// `SHIPPED`.
    Shipped,
    /// `CANCELLED`: the order no longer counts in its customer's totals.
    Cancelled,
}

impl OrderStatus {
    /// The wire name (`PLACED`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Placed => "PLACED",
            Self::Paid => "PAID",
            Self::Shipped => "SHIPPED",
            Self::Cancelled => "CANCELLED",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "PLACED" => Self::Placed,
            "PAID" => Self::Paid,
            "SHIPPED" => Self::Shipped,
            "CANCELLED" => Self::Cancelled,
            _ => return None,
        })
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated order event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderEvent {
    /// `eventId`: unique id of this event.
    pub event_id: String,
    /// `orderId`.
    pub order_id: String,
    /// `customerId`.
    pub customer_id: String,
    /// `status`.
    pub status: OrderStatus,
    /// `amount`: exact, at most [`MAX_AMOUNT_SCALE`] decimal places.
    pub amount: Decimal,
    /// `currency`.
    pub currency: Currency,
    /// `occurredAt`.
    pub occurred_at: DateTime<Utc>,
}

/// An ISO 4217 currency code (three upper-case letters from the active list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

impl Currency {
    /// Parses an active ISO 4217 code.
    pub fn parse(s: &str) -> Option<Self> {
        let bytes: [u8; 3] = s.as_bytes().try_into().ok()?;
        if !bytes.iter().all(u8::is_ascii_uppercase) {
            return None;
        }
        ISO_4217.binary_search(&s).ok().map(|_| Self(bytes))
    }

    /// The three-letter code.
    pub fn as_str(&self) -> &str {
        // Constructed only from ASCII upper-case letters.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Active ISO 4217 alphabetic codes (sorted, for binary search), including the
/// fund and precious-metal codes producers sometimes send.
const ISO_4217: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BGN", "BHD", "BIF",
    "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHE", "CHF", "CHW", "CLF",
    "CLP", "CNY", "COP", "COU", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR",
    "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS",
    "INR", "IQD", "IRR", "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT",
    "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP",
    "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE",
    "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS",
    "UAH", "UGX", "USD", "USN", "UYI", "UYU", "UYW", "UZS", "VED", "VES", "VND", "VUV", "WST", "XAF", "XAG", "XAU",
    "XBA", "XBB", "XBC", "XBD", "XCD", "XCG", "XDR", "XOF", "XPD", "XPF", "XPT", "XSU", "XUA", "YER", "ZAR", "ZMW",
    "ZWG", "ZWL",
];

/// Why an order event was rejected. Always permanent: the same input fails the
/// same way on every retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// Not JSON, or not a JSON object.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// A required field is absent.
    #[error("{field}: missing")]
    Missing {
        /// The field's wire name.
        field: &'static str,
    },
    /// A field breaks its rule.
    #[error("{field}: {rule}")]
    Invalid {
        /// The field's wire name.
        field: &'static str,
        /// The rule it breaks, and what it was.
        rule: String,
    },
}

impl ValidationError {
    fn invalid(field: &'static str, rule: impl Into<String>) -> Self {
        Self::Invalid { field, rule: rule.into() }
    }
}

/// Fields as they arrive: each kept raw so its error can name the field and rule.
#[derive(Deserialize)]
struct RawOrderEvent<'a> {
    #[serde(rename = "eventId", borrow)]
    event_id: Option<&'a RawValue>,
    #[serde(rename = "orderId", borrow)]
    order_id: Option<&'a RawValue>,
    #[serde(rename = "customerId", borrow)]
    customer_id: Option<&'a RawValue>,
    #[serde(borrow)]
    status: Option<&'a RawValue>,
    #[serde(borrow)]
    amount: Option<&'a RawValue>,
    #[serde(borrow)]
    currency: Option<&'a RawValue>,
    #[serde(rename = "occurredAt", borrow)]
    occurred_at: Option<&'a RawValue>,
}

/// The fields of an order event of the types they must have: what almost
/// every event is. Strings are borrowed from the text where they have no
/// escapes, and the text is read once.
#[derive(Deserialize)]
struct TypedOrderEvent<'a> {
    #[serde(rename = "eventId", borrow)]
    event_id: Option<Text<'a>>,
    #[serde(rename = "orderId", borrow)]
    order_id: Option<Text<'a>>,
    #[serde(rename = "customerId", borrow)]
    customer_id: Option<Text<'a>>,
    #[serde(borrow)]
    status: Option<Text<'a>>,
    #[serde(borrow)]
    amount: Option<&'a RawValue>,
    #[serde(borrow)]
    currency: Option<Text<'a>>,
    #[serde(rename = "occurredAt", borrow)]
    occurred_at: Option<Text<'a>>,
}

/// A JSON string, borrowed when it has no escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// Parses and validates one order event from JSON text.
pub fn parse_order_event(json: &str) -> Result<OrderEvent, ValidationError> {
    // An event whose fields have the types they must have is read in one
    // pass; anything else (malformed JSON, a field of the wrong type) is
    // read again, field by field, to name what is wrong. Both give the same
    // event, or the same first error.
    // (serde would read a struct from an array too, by position.)
    let object = json.trim_start().starts_with('{');
    let Some(typed) = object.then(|| serde_json::from_str::<TypedOrderEvent<'_>>(json).ok()).flatten() else {
        return parse_field_by_field(json);
    };
    Ok(OrderEvent {
        event_id: check_id("eventId", text("eventId", typed.event_id)?.into_owned())?,
        order_id: check_id("orderId", text("orderId", typed.order_id)?.into_owned())?,
        customer_id: check_id("customerId", text("customerId", typed.customer_id)?.into_owned())?,
        status: status(&text("status", typed.status)?)?,
        amount: amount_field(typed.amount)?,
        currency: currency(&text("currency", typed.currency)?)?,
        occurred_at: occurred_at(&text("occurredAt", typed.occurred_at)?)?,
    })
}

fn text<'a>(field: &'static str, value: Option<Text<'a>>) -> Result<Cow<'a, str>, ValidationError> {
    value.map(|t| t.0).ok_or(ValidationError::Missing { field })
}

/// [`parse_order_event`] with each field kept raw, so that its error names
/// the field and the rule.
fn parse_field_by_field(json: &str) -> Result<OrderEvent, ValidationError> {
    if json.trim_start().starts_with('[') {
        return Err(ValidationError::MalformedJson("expected a JSON object".into()));
    }
    let raw: RawOrderEvent<'_> = serde_json::from_str(json).map_err(|e| {
        if e.is_data() && json.trim_start().starts_with('{') {
            ValidationError::MalformedJson(e.to_string())
        } else if e.is_data() {
            ValidationError::MalformedJson("expected a JSON object".into())
        } else {
            ValidationError::MalformedJson(e.to_string())
        }
    })?;
    Ok(OrderEvent {
        event_id: check_id("eventId", string_field("eventId", raw.event_id)?)?,
        order_id: check_id("orderId", string_field("orderId", raw.order_id)?)?,
        customer_id: check_id("customerId", string_field("customerId", raw.customer_id)?)?,
        status: status(&string_field("status", raw.status)?)?,
        amount: amount_field(raw.amount)?,
        currency: currency(&string_field("currency", raw.currency)?)?,
        occurred_at: occurred_at(&string_field("occurredAt", raw.occurred_at)?)?,
    })
}

fn status(s: &str) -> Result<OrderStatus, ValidationError> {
    OrderStatus::parse(s).ok_or_else(|| {
        ValidationError::invalid(
            "status",
            format!("must be PLACED, PAID, SHIPPED or CANCELLED, got {:?}", truncate(s, 32)),
        )
    })
}

fn currency(s: &str) -> Result<Currency, ValidationError> {
    Currency::parse(s).ok_or_else(|| {
        ValidationError::invalid(
            "currency",
            format!("must be an ISO 4217 code (3 upper-case letters), got {:?}", truncate(s, 32)),
        )
    })
}

fn occurred_at(s: &str) -> Result<DateTime<Utc>, ValidationError> {
    parse_timestamp(s).ok_or_else(|| {
        ValidationError::invalid(
            "occurredAt",
            format!("must be an RFC 3339 timestamp in the years 0000-9999 UTC, got {:?}", truncate(s, 40)),
        )
    })
}

/// Parses an RFC 3339 timestamp into UTC. The instant must fall in the years
/// 0000-9999 in UTC: RFC 3339 has four-digit years only, so an instant outside
/// them (`0000-01-01T00:00:00+01:00` is in year -1) has no stored form that
/// reads back or sorts as text.
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    let t = DateTime::parse_from_rfc3339(s).ok()?.with_timezone(&Utc);
    (0..=9999).contains(&t.year()).then_some(t)
}

/// The stored form of `occurredAt`: UTC with a fixed nanosecond width, so that
/// string order equals time order (DynamoDB condition expressions compare the
/// strings; a variable width would sort `…:00Z` after `…:00.5Z`).
pub fn format_timestamp(t: &DateTime<Utc>) -> String {
    let mut out = String::with_capacity(30);
    let _ = write_timestamp(&mut out, t);
    out
}

/// [`format_timestamp`] into `out` (RFC 3339 with nine fraction digits and
/// `Z`, as chrono's `to_rfc3339_opts(SecondsFormat::Nanos, true)` writes it),
/// without a string of its own.
fn write_timestamp(out: &mut impl fmt::Write, t: &DateTime<Utc>) -> fmt::Result {
    let (mut second, mut nano) = (t.second(), t.nanosecond());
    // chrono keeps a leap second as nanoseconds past 10^9.
    if nano >= 1_000_000_000 {
        second += 1;
        nano -= 1_000_000_000;
    }
    // Digits by hand: `{:02}` through `fmt` was a third of the fingerprint.
    let mut text = *b"0000-00-00T00:00:00.000000000Z";
    let mut digits = |at: usize, width: usize, value: u32| {
        let mut value = value;
        for i in (at..at + width).rev() {
            text[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    // Validated events are of the years 0000-9999 (`parse_timestamp`); any
    // other instant is written as chrono writes it.
    let Some(year) = u32::try_from(t.year()).ok().filter(|y| *y <= 9999) else {
        return out.write_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true));
    };
    digits(0, 4, year);
    digits(5, 2, t.month());
    digits(8, 2, t.day());
    digits(11, 2, t.hour());
    digits(14, 2, t.minute());
    digits(17, 2, second);
    digits(20, 9, nano);
    out.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
}

fn string_field(field: &'static str, raw: Option<&RawValue>) -> Result<String, ValidationError> {
    let raw = raw.filter(|r| r.get() != "null").ok_or(ValidationError::Missing { field })?;
    serde_json::from_str::<String>(raw.get())
        .map_err(|_| ValidationError::invalid(field, format!("must be a string, got {}", json_kind(raw.get()))))
}

fn check_id(field: &'static str, s: String) -> Result<String, ValidationError> {
    let chars = s.chars().count();
    if chars == 0 {
        return Err(ValidationError::invalid(field, "must not be empty"));
    }
    if chars > MAX_ID_CHARS {
        return Err(ValidationError::invalid(field, format!("must be at most {MAX_ID_CHARS} characters, got {chars}")));
    }
    Ok(s)
}

fn amount_field(raw: Option<&RawValue>) -> Result<Decimal, ValidationError> {
    const FIELD: &str = "amount";
    let raw = raw.filter(|r| r.get() != "null").ok_or(ValidationError::Missing { field: FIELD })?;
    let text = raw.get();
    let number = if text.starts_with('"') {
        serde_json::from_str::<Text<'_>>(text).map_err(|e| ValidationError::invalid(FIELD, e.to_string()))?.0
    } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        Cow::Borrowed(text)
    } else {
        return Err(ValidationError::invalid(
            FIELD,
            format!("must be a decimal string or a JSON number, got {}", json_kind(text)),
        ));
    };
    parse_amount(&number).map_err(|rule| ValidationError::invalid(FIELD, rule))
}

/// Parses an exact, non-negative decimal with at most two decimal places;
/// the error is the rule it breaks (the caller names the field).
fn parse_amount(s: &str) -> Result<Decimal, String> {
    let trimmed = s.trim();
    if trimmed.is_empty() || trimmed != s {
        return Err(format!("must be a decimal number, got {:?}", truncate(s, 40)));
    }
    let value =
        if trimmed.contains(['e', 'E']) { Decimal::from_scientific(trimmed) } else { trimmed.parse::<Decimal>() }
            .map_err(|_| format!("must be a decimal number, got {:?}", truncate(s, 40)))?;
    if value.is_sign_negative() && !value.is_zero() {
        return Err(format!("must be >= 0, got {value}"));
    }
    let value = value.normalize();
    if value.scale() > MAX_AMOUNT_SCALE {
        return Err(format!("must have at most {MAX_AMOUNT_SCALE} decimal places, got {s}"));
    }
    if value > max_amount() {
        return Err(format!("must be at most {}, got {}", max_amount(), truncate(s, 40)));
    }
    // Normalise `-0` to `0` so equal amounts compare and serialise equally.
    Ok(if value.is_zero() { Decimal::ZERO } else { value })
}

fn json_kind(text: &str) -> &'static str {
    match text.as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// Cuts `s` to at most `max` characters (for error messages and quarantine).
pub fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The current state of an order, as stored in the state table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// `orderId`.
    pub order_id: String,
    /// `customerId` of the latest event.
    pub customer_id: String,
    /// `status` of the latest event.
    pub status: OrderStatus,
    /// `amount` of the latest event.
    pub amount: Decimal,
    /// `currency` of the latest event.
    pub currency: Currency,
    /// `occurredAt` of the latest event.
    pub occurred_at: DateTime<Utc>,
    /// `lastEventId`: the latest event's id.
    pub last_event_id: String,
    /// Number of events applied to this order.
    pub version: u64,
}

/// What applying an event to an order did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The event was newer than the stored state and replaced it.
    Applied(Order),
    /// The stored state already came from a newer event.
    Stale,
    /// The stored state came from this very event.
    Duplicate,
}

/// The event's fingerprint: SHA-256 of its validated fields in their
/// canonical form (amount normalised, time in UTC), so a producer's resend
/// that differs only in formatting, field order or ignored fields is the
/// same event (a duplicate), and one that changes a field that matters is
/// another payload (a reused key).
pub fn fingerprint(event: &OrderEvent) -> String {
    // The canonical text is hashed as it is written, never built as a
    // string: a `format!` of it was a tenth of the SQS handler's time.
    let mut hasher = shared_core::key::Hasher::default();
    let _ = write_canonical(&mut hasher, event);
    hasher.finish()
}

/// The canonical form [`fingerprint`] hashes: the validated fields, one per
/// line. Kept as text so that its bytes are those of every stored fingerprint.
fn write_canonical(out: &mut impl fmt::Write, event: &OrderEvent) -> fmt::Result {
    for text in [&event.event_id, &event.order_id, &event.customer_id, event.status.as_str()] {
        out.write_str(text)?;
        out.write_char('\n')?;
    }
    writeln!(out, "{}", event.amount.normalize())?;
    out.write_str(event.currency.as_str())?;
    out.write_char('\n')?;
    write_timestamp(out, &event.occurred_at)
}

/// The ordering key of the apply rule: `(occurredAt, eventId)`.
pub fn event_key(event: &OrderEvent) -> (DateTime<Utc>, &str) {
    (event.occurred_at, &event.event_id)
}

/// The apply rule: an event changes an order only if `(occurredAt, eventId)` is
/// greater than the stored `(occurredAt, lastEventId)`.
pub fn apply(current: Option<&Order>, event: &OrderEvent) -> ApplyOutcome {
    let version = match current {
        None => 0,
        Some(order) => {
            let stored = (order.occurred_at, order.last_event_id.as_str());
            let incoming = event_key(event);
            if incoming == stored {
                return ApplyOutcome::Duplicate;
            }
            if incoming < stored {
                return ApplyOutcome::Stale;
            }
            order.version
        }
    };
    ApplyOutcome::Applied(Order {
        order_id: event.order_id.clone(),
        customer_id: event.customer_id.clone(),
        status: event.status,
        amount: event.amount,
        currency: event.currency,
        occurred_at: event.occurred_at,
        last_event_id: event.event_id.clone(),
        version: version + 1,
    })
}

/// A customer's running totals: order count and amount per currency.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerTotals {
    /// Orders that count (not `CANCELLED`).
    pub order_count: i64,
    /// Their amounts, summed per currency.
    pub totals: BTreeMap<Currency, Decimal>,
}

/// Totals that do not fit: an order count past `i64`, or an amount past
/// what an exact decimal holds (about 7.9 * 10^28). Permanent: the same
/// numbers overflow on every retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} would overflow")]
pub struct TotalsOverflow {
    /// What overflowed: `orderCount`, or `totals.<currency>`.
    pub what: String,
}

impl CustomerTotals {
    /// Adds a delta, with checked arithmetic: on overflow nothing changes and
    /// the error names what overflowed. Currencies whose total returns to zero
    /// are dropped so that equal totals compare equal however they were reached.
    pub fn checked_add(&mut self, delta: &CustomerTotals) -> Result<(), TotalsOverflow> {
        let order_count = self
            .order_count
            .checked_add(delta.order_count)
            .ok_or_else(|| TotalsOverflow { what: "orderCount".into() })?;
        let mut totals = self.totals.clone();
        for (currency, amount) in &delta.totals {
            let entry = totals.entry(*currency).or_default();
            *entry = exact_add(*entry, *amount).ok_or_else(|| TotalsOverflow { what: format!("totals.{currency}") })?;
            if entry.is_zero() {
                totals.remove(currency);
            }
        }
        self.order_count = order_count;
        self.totals = totals;
        Ok(())
    }

    /// True when adding this changes nothing.
    pub fn is_zero(&self) -> bool {
        self.order_count == 0 && self.totals.values().all(Decimal::is_zero)
    }
}

/// `a + b`, only when the sum is exact. `Decimal::checked_add` fails only
/// past the largest magnitude; a sum whose digits do not fit in 96 bits at
/// the operands' scale it rounds to fewer decimal places instead (found by
/// the `aggregation` fuzz target: -7.9e28 + -792281.62... lost its
/// fraction). Without overflow the sum keeps the larger scale, so a smaller
/// one means digits were dropped.
fn exact_add(a: Decimal, b: Decimal) -> Option<Decimal> {
    let sum = a.checked_add(b)?;
    (sum.scale() >= a.scale().max(b.scale())).then_some(sum)
}

/// The contribution rule: an order adds `(1, amount in its currency)` to its
/// customer's totals, unless it is `CANCELLED`.
pub fn contribution(order: &Order) -> Option<(&str, CustomerTotals)> {
    if order.status == OrderStatus::Cancelled {
        return None;
    }
    Some((
        &order.customer_id,
        CustomerTotals { order_count: 1, totals: BTreeMap::from([(order.currency, order.amount)]) },
    ))
}

/// The delta a change of an order (`old` -> `new`, either absent) makes to
/// customer totals: `contribution(new) - contribution(old)`, per customer.
/// Usually one customer; two if the change moved the order between customers.
///
/// Stored images are not validated input: an amount read back from the table
/// may be negative or huge, so the difference is checked too.
pub fn totals_delta(
    old: Option<&Order>,
    new: Option<&Order>,
) -> Result<BTreeMap<String, CustomerTotals>, TotalsOverflow> {
    let mut deltas: BTreeMap<String, CustomerTotals> = BTreeMap::new();
    if let Some((customer, c)) = new.and_then(contribution) {
        deltas.entry(customer.to_owned()).or_default().checked_add(&c)?;
    }
    if let Some((customer, c)) = old.and_then(contribution) {
        let negated =
            CustomerTotals { order_count: -c.order_count, totals: c.totals.iter().map(|(k, v)| (*k, -*v)).collect() };
        deltas.entry(customer.to_owned()).or_default().checked_add(&negated)?;
    }
    deltas.retain(|_, d| !d.is_zero());
    Ok(deltas)
}

/// Combines events on one order before they are written: DynamoDB allows one
/// action per item per transaction. Returns the events that win their order
/// (the greatest apply key; to be written, in input order), and for every
/// other event its outcome, decided here: stale against the winner, or a
/// duplicate of it.
pub fn combine<E: Borrow<OrderEvent>>(events: &[E]) -> (Vec<usize>, Vec<Option<Outcome>>) {
    let event = |i: usize| -> &OrderEvent { events[i].borrow() };
    // For each order, the index of the event with the greatest apply key; the
    // others are decided here: stale against it, or duplicates of it.
    // A hash map and a flag per event: combining runs on every batch.
    let mut winners: HashMap<&str, usize> = HashMap::with_capacity(events.len());
    for i in 0..events.len() {
        winners
            .entry(&event(i).order_id)
            .and_modify(|w| {
                if event_key(event(i)) > event_key(event(*w)) {
                    *w = i;
                }
            })
            .or_insert(i);
    }
    let mut wins = vec![false; events.len()];
    winners.values().for_each(|&w| wins[w] = true);
    let mut decided = vec![None; events.len()];
    for i in (0..events.len()).filter(|&i| !wins[i]) {
        let w = event(winners[event(i).order_id.as_str()]);
        decided[i] = Some(if event_key(event(i)) == event_key(w) { Outcome::Duplicate } else { Outcome::Stale });
    }
    ((0..events.len()).filter(|&i| wins[i]).collect(), decided)
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Currency::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("not an ISO 4217 code: {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use chrono::SecondsFormat;

    use super::*;

    #[test]
    fn a_totals_sum_that_would_round_is_an_overflow_not_a_silent_loss() {
        let usd = Currency::parse("USD").unwrap();
        let huge = Decimal::from_parts(u32::MAX, u32::MAX, u32::MAX, true, 0);
        let mut totals = CustomerTotals { order_count: 1, totals: BTreeMap::from([(usd, huge)]) };
        let fraction: Decimal = "-792281.625".parse().unwrap();
        let delta = CustomerTotals { order_count: 0, totals: BTreeMap::from([(usd, fraction)]) };
        let before = totals.clone();
        assert_eq!(totals.checked_add(&delta).unwrap_err().what, "totals.USD");
        assert_eq!(totals, before, "nothing changes on overflow");
        // An exact sum of the same size passes.
        let whole = CustomerTotals { order_count: 0, totals: BTreeMap::from([(usd, Decimal::ONE)]) };
        totals.checked_add(&whole).unwrap();
        assert_eq!(totals.totals[&usd], huge + Decimal::ONE);
    }
    use proptest::prelude::*;
    use serde_json::json;

    fn valid() -> serde_json::Value {
        json!({"eventId": "e-1", "orderId": "o-1", "customerId": "c-1", "status": "PAID",
               "amount": "12.30", "currency": "EUR", "occurredAt": "2026-11-28T10:00:00+01:00"})
    }

    fn reason(value: serde_json::Value) -> String {
        parse_order_event(&value.to_string()).unwrap_err().to_string()
    }

    #[test]
    fn valid_event_parses_exactly() {
        let mut v = valid();
        v["extra"] = json!({"ignored": true});
        let e = parse_order_event(&v.to_string()).unwrap();
        assert_eq!(e.amount, Decimal::new(1230, 2));
        assert_eq!(e.currency.as_str(), "EUR");
        assert_eq!(format_timestamp(&e.occurred_at), "2026-11-28T09:00:00.000000000Z");
        assert_eq!(e.status, OrderStatus::Paid);
    }

    #[test]
    fn amounts_are_exact_decimals_from_strings_or_numbers() {
        for (raw, expected) in [
            (json!("0.1"), "0.1"),
            (json!(0.1), "0.1"),
            (json!(12), "12"),
            (json!("12.300"), "12.3"),
            (json!(1e2), "100"),
            (json!("-0"), "0"),
            (json!("999999999999999.99"), "999999999999999.99"),
        ] {
            let mut v = valid();
            v["amount"] = raw.clone();
            assert_eq!(parse_order_event(&v.to_string()).unwrap().amount.to_string(), expected, "{raw}");
        }
        // A JSON number keeps its exact digits (no float round trip: 17
        // significant digits are more than an f64 holds).
        let text = valid().to_string().replace("\"12.30\"", "123456789012345.67");
        assert_eq!(parse_order_event(&text).unwrap().amount.to_string(), "123456789012345.67");
    }

    #[test]
    fn every_rule_violation_names_the_field_and_the_rule() {
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("eventId", json!(null), "eventId: missing"),
            ("eventId", json!(""), "eventId: must not be empty"),
            ("orderId", json!(42), "orderId: must be a string, got a number"),
            ("customerId", json!("x".repeat(129)), "customerId: must be at most 128 characters, got 129"),
            ("status", json!("placed"), "status: must be PLACED, PAID, SHIPPED or CANCELLED, got \"placed\""),
            ("amount", json!("-1"), "amount: must be >= 0, got -1"),
            ("amount", json!("1.234"), "amount: must have at most 2 decimal places, got 1.234"),
            ("amount", json!("abc"), "amount: must be a decimal number, got \"abc\""),
            ("amount", json!(true), "amount: must be a decimal string or a JSON number, got a boolean"),
            ("currency", json!("EURO"), "currency: must be an ISO 4217 code (3 upper-case letters), got \"EURO\""),
            ("currency", json!("ABC"), "currency: must be an ISO 4217 code (3 upper-case letters), got \"ABC\""),
            (
                "occurredAt",
                json!("2026-11-28 10:00"),
                "occurredAt: must be an RFC 3339 timestamp in the years 0000-9999 UTC, got \"2026-11-28 10:00\"",
            ),
            (
                "occurredAt",
                json!("0000-01-01T00:00:00+01:00"),
                "occurredAt: must be an RFC 3339 timestamp in the years 0000-9999 UTC, got \"0000-01-01T00:00:00+01:00\"",
            ),
            (
                "occurredAt",
                json!("9999-12-31T23:00:00-01:00"),
                "occurredAt: must be an RFC 3339 timestamp in the years 0000-9999 UTC, got \"9999-12-31T23:00:00-01:00\"",
            ),
        ];
        for (field, value, expected) in cases {
            let mut v = valid();
            if value.is_null() {
                v.as_object_mut().unwrap().remove(field);
            } else {
                v[field] = value;
            }
            assert_eq!(reason(v), expected);
        }
        let id_128 = "é".repeat(128);
        let mut v = valid();
        v["orderId"] = json!(id_128);
        assert!(parse_order_event(&v.to_string()).is_ok(), "the limit counts characters, not bytes");
    }

    #[test]
    fn malformed_json_and_non_objects_are_reported() {
        assert!(parse_order_event("{\"eventId\": ").unwrap_err().to_string().starts_with("malformed JSON"));
        assert_eq!(parse_order_event("[1,2]").unwrap_err().to_string(), "malformed JSON: expected a JSON object");
        assert!(parse_order_event("").unwrap_err().to_string().starts_with("malformed JSON"));
    }

    fn event(id: &str, minute: u32, status: OrderStatus, cents: i64) -> OrderEvent {
        OrderEvent {
            event_id: id.into(),
            order_id: "o".into(),
            customer_id: "c".into(),
            status,
            amount: Decimal::new(cents, 2),
            currency: Currency::parse("USD").unwrap(),
            occurred_at: parse_timestamp(&format!("2026-11-28T10:{minute:02}:00Z")).unwrap(),
        }
    }

    #[test]
    fn apply_rule_orders_by_time_then_event_id() {
        let first = event("b", 1, OrderStatus::Placed, 100);
        let ApplyOutcome::Applied(order) = apply(None, &first) else { panic!("first event applies") };
        assert_eq!(order.version, 1);
        assert_eq!(apply(Some(&order), &first), ApplyOutcome::Duplicate);
        assert_eq!(apply(Some(&order), &event("z", 0, OrderStatus::Paid, 1)), ApplyOutcome::Stale);
        assert_eq!(
            apply(Some(&order), &event("a", 1, OrderStatus::Paid, 1)),
            ApplyOutcome::Stale,
            "same time, smaller id"
        );
        let ApplyOutcome::Applied(next) = apply(Some(&order), &event("c", 1, OrderStatus::Paid, 1)) else {
            panic!("same time, greater id applies")
        };
        assert_eq!((next.version, next.status), (2, OrderStatus::Paid));
    }

    #[test]
    fn the_fingerprint_is_the_sha256_of_the_canonical_text_stored_fingerprints_were_made_of() {
        let event = parse_order_event(&valid().to_string()).unwrap();
        // As the first implementation computed it (a `format!`, then SHA-256),
        // for this event: markers already stored must keep matching.
        assert_eq!(fingerprint(&event), "f2e1bda075fbd44545ee7928c87ea6fcf2d8988ec2ec53083053b65ecdcf88cc");
        let mut canonical = String::new();
        write_canonical(&mut canonical, &event).unwrap();
        assert_eq!(canonical, "e-1\no-1\nc-1\nPAID\n12.3\nEUR\n2026-11-28T09:00:00.000000000Z");
        assert_eq!(fingerprint(&event), shared_core::key::fingerprint(canonical.as_bytes()));
    }

    #[test]
    fn stored_timestamps_are_chronos_rfc3339_with_nanoseconds_leap_seconds_included() {
        for text in ["2026-11-28T23:59:60.5Z", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999Z"] {
            let t = parse_timestamp(text).unwrap();
            assert_eq!(format_timestamp(&t), t.to_rfc3339_opts(SecondsFormat::Nanos, true), "{text}");
        }
    }

    #[test]
    fn the_fingerprint_ignores_formatting_and_ignored_fields_not_what_matters() {
        let a = parse_order_event(&valid().to_string()).unwrap();
        let mut resent = valid();
        resent["note"] = json!("resent by the producer");
        resent["amount"] = json!(12.3);
        let pretty = serde_json::to_string_pretty(&resent).unwrap();
        let b = parse_order_event(&pretty).unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        let mut changed = valid();
        changed["amount"] = json!("12.31");
        assert_ne!(fingerprint(&a), fingerprint(&parse_order_event(&changed.to_string()).unwrap()));
    }

    #[test]
    fn amounts_past_the_bound_are_rejected_with_the_bound() {
        assert_eq!(parse_amount("999999999999999.99").unwrap(), max_amount());
        assert_eq!(
            parse_amount("1000000000000000").unwrap_err(),
            "must be at most 999999999999999.99, got 1000000000000000"
        );
        // The largest exact decimal (the old contract's ceiling): two of them
        // overflowed a customer's totals.
        assert!(parse_amount("79228162514264337593543950335").unwrap_err().starts_with("must be at most"));
        assert!(parse_amount("12345678901234567.89").is_err());
    }

    #[test]
    fn contribution_and_delta_rules() {
        let ApplyOutcome::Applied(placed) = apply(None, &event("1", 1, OrderStatus::Placed, 1000)) else { panic!() };
        let ApplyOutcome::Applied(cancelled) = apply(Some(&placed), &event("2", 2, OrderStatus::Cancelled, 1000))
        else {
            panic!()
        };
        assert!(contribution(&cancelled).is_none());
        let delta = totals_delta(Some(&placed), Some(&cancelled)).unwrap();
        assert_eq!(delta["c"].order_count, -1);
        assert_eq!(delta["c"].totals[&Currency::parse("USD").unwrap()], Decimal::new(-1000, 2));
        assert!(totals_delta(Some(&cancelled), Some(&cancelled)).unwrap().is_empty());
        let moved = Order { customer_id: "d".into(), ..placed.clone() };
        let delta = totals_delta(Some(&placed), Some(&moved)).unwrap();
        assert_eq!((delta["c"].order_count, delta["d"].order_count), (-1, 1));
    }

    proptest! {
        /// The stored form of any instant of the years 0000-9999 is chrono's.
        #[test]
        fn stored_timestamps_match_chrono(seconds in -63_000_000_000i64..254_000_000_000, nano in 0u32..2_000_000_000) {
            if let Some(t) = DateTime::<Utc>::from_timestamp(seconds, nano) {
                prop_assert_eq!(format_timestamp(&t), t.to_rfc3339_opts(SecondsFormat::Nanos, true));
            }
        }

        /// The stored state after any permutation (with repeats) of a set of
        /// events is the state after the greatest event.
        #[test]
        fn apply_is_order_and_duplicate_insensitive(
            specs in prop::collection::vec((0u32..5, 0u8..4, 0i64..10_000), 1..12),
            order in prop::collection::vec(any::<prop::sample::Index>(), 1..40),
        ) {
            let statuses = [OrderStatus::Placed, OrderStatus::Paid, OrderStatus::Shipped, OrderStatus::Cancelled];
            let events: Vec<OrderEvent> = specs
                .iter()
                .enumerate()
                .map(|(i, (minute, s, cents))| event(&format!("e{i}"), *minute, statuses[*s as usize], *cents))
                .collect();
            let mut state: Option<Order> = None;
            for pick in order.iter().map(|ix| &events[ix.index(events.len())]).chain(events.iter()) {
                if let ApplyOutcome::Applied(next) = apply(state.as_ref(), pick) {
                    state = Some(next);
                }
            }
            let greatest = events.iter().max_by(|a, b| event_key(a).cmp(&event_key(b))).unwrap();
            let state = state.unwrap();
            prop_assert_eq!(&state.last_event_id, &greatest.event_id);
            prop_assert_eq!(state.amount, greatest.amount);
            prop_assert_eq!(state.status, greatest.status);
        }

        /// Sums of any amounts and counts, the extremes included, never
        /// panic: they add exactly, or fail naming what overflowed and
        /// leave the totals as they were.
        #[test]
        fn totals_arithmetic_never_panics(
            steps in prop::collection::vec((any::<i64>(), 0u8..3, any::<i128>(), 0u32..29), 1..30),
        ) {
            let currencies = ["EUR", "USD", "JPY"];
            let mut totals = CustomerTotals::default();
            for (count, c, mantissa, scale) in steps {
                let amount = Decimal::try_from_i128_with_scale(mantissa % 79_228_162_514_264_337_593_543_950_335, scale)
                    .unwrap_or(Decimal::MAX);
                let delta = CustomerTotals {
                    order_count: count,
                    totals: BTreeMap::from([(Currency::parse(currencies[usize::from(c)]).unwrap(), amount)]),
                };
                let before = totals.clone();
                match totals.checked_add(&delta) {
                    Ok(()) => prop_assert_eq!(totals.order_count, before.order_count + count),
                    Err(e) => {
                        prop_assert_eq!(&totals, &before, "an overflow changes nothing ({})", e);
                    }
                }
            }
        }

        /// Long histories of valid amounts never overflow: 10^4 maximal
        /// orders of one customer sum exactly.
        #[test]
        fn sums_of_maximal_valid_amounts_stay_exact(n in 1usize..10_000) {
            let mut totals = CustomerTotals::default();
            let usd = Currency::parse("USD").unwrap();
            let one = CustomerTotals { order_count: 1, totals: BTreeMap::from([(usd, max_amount())]) };
            for _ in 0..n {
                totals.checked_add(&one).unwrap();
            }
            prop_assert_eq!(totals.totals[&usd], max_amount() * Decimal::from(n as u64));
        }

        /// Parsing never panics, whatever the input.
        #[test]
        fn parsing_arbitrary_text_never_panics(text in ".{0,200}") {
            let _ = parse_order_event(&text);
        }
    }
}
