//! The bodies of the fuzz targets, one function per target, each taking the
//! fuzzer's bytes. The targets in `fuzz_targets/` only call these, and
//! `functions/orders/tests/fuzz_corpus.rs` includes this file by path and feeds it every
//! corpus file, so the corpus is replayed in `cargo test` by the very code the
//! fuzzer ran.
//!
//! Each function panics when `shared` breaks a promise: by panicking itself, or
//! by failing one of the invariants asserted here (cheap ones, stated at each
//! assertion). Inputs that are merely invalid must return quietly.

use orders::lines::OrderLines;
use orders::order::{OrderEvent, format_timestamp, parse_order_event};
use orders::state::item::{order_from_item, order_to_item};
use serde_json::Value;
use shared::core::lines::LineSplitter;
use shared::event::{s3, sqs, stream};
use shared::ingest::Records;
use shared::object::{Format, Line, LineContent, LineReader};

/// Line bound of the `object_lines` target: small, so that short inputs reach
/// the over-long path (the functions use the configured bound, much larger).
pub const MAX_LINE_BYTES: usize = 64;

/// A fuzz target's body: panics on a bug, returns on any other input.
pub type Target = fn(&[u8]);

/// The fuzz targets by name, for the corpus test (`fuzz/corpus/<name>/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("order_event", order_event),
    ("s3_notification", s3_notification),
    ("sqs_record", sqs_record),
    ("stream_record", stream_record),
    ("object_lines", object_lines),
    ("aggregation", aggregation),
];

/// `parse_order_event` on the input (invalid UTF-8 replaced, so every input
/// reaches the parser; raw bytes are the line reader's business). A valid
/// event, written back as JSON and parsed again, must give the same event.
pub fn order_event(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(event) = parse_order_event(&text) {
        let json = order_event_json(&event);
        match parse_order_event(&json) {
            Ok(again) => assert_eq!(again, event, "re-parsing {json} changed the event"),
            Err(e) => panic!("a valid event written back as {json} does not parse: {e}"),
        }
    }
}

/// An order event in the input contract's JSON form.
pub fn order_event_json(event: &OrderEvent) -> String {
    serde_json::json!({
        "eventId": event.event_id,
        "orderId": event.order_id,
        "customerId": event.customer_id,
        "status": event.status.as_str(),
        "amount": event.amount.to_string(),
        "currency": event.currency.as_str(),
        "occurredAt": format_timestamp(&event.occurred_at),
    })
    .to_string()
}

/// `s3::from_sqs_body` on the input as text (an SQS body is always text).
pub fn s3_notification(data: &[u8]) {
    let Ok(body) = std::str::from_utf8(data) else { return };
    for notification in s3::from_sqs_body(body) {
        if let Ok(s3::Notification::ObjectCreated(object)) = notification {
            // Both end up in logs and idempotency keys.
            let _ = (object.uri(), object.revision());
        }
    }
}

/// `sqs::Message::parse_raw` on the input when it is JSON, as the engine
/// reads each record of a batch, then the message's body as the entry
/// points read it (`json_body`). A parsed message must be reportable:
/// `message_id_of` (used when parsing fails) agrees with it.
pub fn sqs_record(data: &[u8]) {
    let Ok(raw) = serde_json::from_slice::<Box<serde_json::value::RawValue>>(data) else { return };
    let record: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
    let id_of = sqs::message_id_of(&record);
    if let Ok(message) = sqs::Message::parse_raw(&raw) {
        assert_eq!(id_of, Some(message.message_id.as_str()), "message_id_of disagrees with Message::parse_raw");
        let _ = message.is_fifo();
        let _ = message.json_body::<Value>();
    }
}

/// `stream::Record::parse_raw` on the input when it is JSON, as the engine
/// reads each record of a batch, its images read as the entry points read
/// them (`typed`), then `order_from_item` on its images. An order read from an image must survive the trip through
/// the item form the state table stores (`order_to_item`).
pub fn stream_record(data: &[u8]) {
    let Ok(raw) = serde_json::from_slice::<Box<serde_json::value::RawValue>>(data) else { return };
    let value: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
    let _ = stream::sequence_number_of(&value);
    let Ok(record) = stream::Record::parse_raw(&raw) else { return };
    let _ = record.typed::<Value>();
    for image in [record.new_image(), record.old_image()].into_iter().flatten() {
        if let Ok(order) = order_from_item(image) {
            let item = order_to_item(&order);
            match order_from_item(&item) {
                Ok(again) => assert_eq!(again, order, "order changed through its item {item:?}"),
                Err(e) => panic!("the item written for {order:?} does not read back: {e}"),
            }
        }
    }
}

/// `LineReader` (bound [`MAX_LINE_BYTES`]) over the input, then each text
/// line through [`Records`] with the orders' line parser, as an object's
/// ingest reads it, once as NDJSON and once as CSV (its first non-blank line
/// the header row). Every line must be exactly its bytes of the input, and
/// reading the input in small chunks (a `BufReader` of 1 to 8 bytes, by input
/// length) must give the same lines as reading it whole: S3 bodies arrive in
/// chunks that split lines and `\r\n` anywhere. The Worker's way in, the
/// same chunks pushed into the core's splitter, must give them too.
pub fn object_lines(data: &[u8]) {
    let lines = read_lines(data, data.len());
    let capacity = 1 + data.len() % 8;
    let chunked = read_lines(tokio::io::BufReader::with_capacity(capacity, data), data.len());
    assert_eq!(chunked, lines, "reading in chunks of {capacity} bytes changes the lines");
    let mut splitter = LineSplitter::new(MAX_LINE_BYTES, 1, 0);
    let mut pushed: Vec<Line> = data.chunks(capacity).flat_map(|chunk| splitter.push(chunk)).collect();
    pushed.extend(splitter.finish());
    assert_eq!(pushed, lines, "pushing chunks of {capacity} bytes, as the Worker does, changes the lines");

    let mut ndjson = Records::new(&OrderLines, Format::Ndjson);
    let mut csv = Records::new(&OrderLines, Format::Csv);
    for (index, line) in lines.iter().enumerate() {
        assert_eq!(line.number, index as u64 + 1, "line numbers are consecutive from 1");
        let start = usize::try_from(line.offset).expect("offset fits in usize");
        let expected = line_content(data, start);
        match &line.content {
            LineContent::Text(text) => {
                assert_eq!(text.as_bytes(), expected, "text of line {}", line.number);
                assert!(text.len() <= MAX_LINE_BYTES, "text line {} over the bound", line.number);
                let _ = ndjson.line(text);
                let _ = csv.line(text);
            }
            LineContent::TooLong { length, prefix } => {
                assert_eq!(*length, expected.len() as u64, "length of over-long line {}", line.number);
                assert!(*length > MAX_LINE_BYTES as u64, "line {} of {length} bytes reported too long", line.number);
                assert!(expected.starts_with(prefix), "prefix of over-long line {}", line.number);
            }
            LineContent::InvalidUtf8(bytes) => {
                assert_eq!(bytes.as_slice(), expected, "bytes of line {}", line.number);
                assert!(std::str::from_utf8(bytes).is_err(), "line {} reported invalid is UTF-8", line.number);
            }
        }
    }
}

/// All lines of `input`, read to the end, which must be at byte `len`.
fn read_lines<R: tokio::io::AsyncBufRead + Unpin>(input: R, len: usize) -> Vec<Line> {
    futures::executor::block_on(async {
        let mut reader = LineReader::new(input, MAX_LINE_BYTES, 1, 0);
        let mut lines = Vec::new();
        while let Some(line) = reader.next_line().await.expect("reading from memory cannot fail") {
            assert_eq!(reader.next_number(), line.number + 1, "next line number after line {}", line.number);
            lines.push(line);
        }
        assert_eq!(reader.offset(), len as u64, "the lines cover the whole input");
        lines
    })
}

/// The content of the line starting at byte `start`: up to the next `\n`
/// (exclusive) or the end, without a `\r` just before the `\n`.
fn line_content(data: &[u8], start: usize) -> &[u8] {
    let rest = &data[start..];
    match rest.iter().position(|b| *b == b'\n') {
        Some(i) => rest[..i].strip_suffix(b"\r").unwrap_or(&rest[..i]),
        None => rest,
    }
}

/// The aggregation path over a history the input describes: each 20-byte
/// chunk is one event (order 0-3, customer 0-2, status, currency, time, and
/// an amount of any sign and size an exact decimal holds, as a stored image
/// may have), applied with the apply rule; every change's
/// `totals_delta` is added to its customers' running totals with checked
/// arithmetic. Promises: nothing panics (overflow is an error, never a
/// wrap); while nothing has overflowed, the running totals equal the totals
/// recomputed from the current orders by the contribution rule; and
/// `combine` over the whole history picks, per order, the event sequential
/// application leaves stored.
pub fn aggregation(data: &[u8]) {
    use std::collections::BTreeMap;

    use orders::order::{
        ApplyOutcome, Currency, CustomerTotals, Order, OrderStatus, apply, combine, contribution, totals_delta,
    };
    use rust_decimal::Decimal;

    const STATUSES: [OrderStatus; 4] =
        [OrderStatus::Placed, OrderStatus::Paid, OrderStatus::Shipped, OrderStatus::Cancelled];
    let currencies: Vec<Currency> = ["USD", "EUR", "JPY"].iter().filter_map(|c| Currency::parse(c)).collect();
    let base = chrono::DateTime::from_timestamp(1_790_000_000, 0).expect("a valid constant");
    let events: Vec<OrderEvent> = data
        .chunks_exact(20)
        .enumerate()
        .map(|(i, c)| {
            let word = |k: usize| u32::from_le_bytes([c[k], c[k + 1], c[k + 2], c[k + 3]]);
            OrderEvent {
                event_id: format!("e-{}", c[3] % 8),
                order_id: format!("o-{}", c[0] % 4),
                customer_id: format!("c-{}", c[1] % 3),
                status: STATUSES[usize::from(c[2] % 4)],
                amount: Decimal::from_parts(word(4), word(8), word(12), c[16] & 1 == 1, u32::from(c[17] % 29)),
                currency: currencies[usize::from(c[18]) % currencies.len()],
                occurred_at: base
                    + chrono::Duration::seconds(i64::from(c[19] % 16) + i64::try_from(i % 2).unwrap_or(0)),
            }
        })
        .collect();

    let mut orders: BTreeMap<String, Order> = BTreeMap::new();
    let mut running: BTreeMap<String, CustomerTotals> = BTreeMap::new();
    let mut overflowed = false;
    for event in &events {
        let current = orders.get(&event.order_id);
        let ApplyOutcome::Applied(new) = apply(current, event) else { continue };
        match totals_delta(current, Some(&new)) {
            Ok(deltas) => {
                for (customer, delta) in deltas {
                    if running.entry(customer).or_default().checked_add(&delta).is_err() {
                        overflowed = true;
                    }
                }
            }
            Err(_) => overflowed = true,
        }
        orders.insert(new.order_id.clone(), new);
    }

    if !overflowed {
        let mut recomputed: BTreeMap<String, CustomerTotals> = BTreeMap::new();
        for order in orders.values() {
            if let Some((customer, c)) = contribution(order)
                && recomputed.entry(customer.to_owned()).or_default().checked_add(&c).is_err()
            {
                return; // The recomputation itself does not fit: nothing to compare.
            }
        }
        let normal = |t: &BTreeMap<String, CustomerTotals>| -> BTreeMap<String, (i64, BTreeMap<Currency, Decimal>)> {
            t.iter()
                .map(|(c, v)| (c.clone(), (v.order_count, v.totals.iter().map(|(k, d)| (*k, d.normalize())).collect())))
                .filter(|(_, (n, m)): &(String, (i64, BTreeMap<Currency, Decimal>))| *n != 0 || !m.is_empty())
                .collect()
        };
        assert_eq!(normal(&running), normal(&recomputed), "running totals drifted from the orders");
    }

    let (winners, _) = combine(&events);
    for w in winners {
        let event = &events[w];
        let stored = &orders[&event.order_id];
        assert_eq!(
            (stored.occurred_at, stored.last_event_id.as_str()),
            (event.occurred_at, event.event_id.as_str()),
            "combine's winner for {} is not what sequential application stored",
            event.order_id
        );
    }
}
