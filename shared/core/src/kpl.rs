//! Records aggregated by the Kinesis Producer Library (KPL): one Kinesis
//! record that carries many user records, split here into those records,
//! each with its sub-sequence number (its position in the aggregate, as the
//! KCL numbers them).
//!
//! The format (<https://github.com/awslabs/amazon-kinesis-producer/blob/master/aggregation-format.md>):
//! the four magic bytes `F3 89 9A C2`, a protobuf `AggregatedRecord`, then the
//! MD5 digest of that protobuf message (16 bytes):
//!
//! ```text
//! message AggregatedRecord {
//!   repeated string partition_key_table     = 1;
//!   repeated string explicit_hash_key_table = 2;
//!   repeated Record records                 = 3;
//! }
//! message Record {
//!   required uint64 partition_key_index     = 1;
//!   optional uint64 explicit_hash_key_index = 2;
//!   required bytes  data                    = 3;
//!   repeated Tag    tags                    = 4;
//! }
//! ```
//!
//! Data without the magic bytes is a plain record ([`split`] returns `None`).
//! Unlike the KCL, which hands a record whose digest does not match (or
//! whose protobuf does not read) to the consumer as if it were plain binary
//! data, an aggregate that is not whole is an [`AggregateError`] naming
//! what is wrong: the record is quarantined with that reason rather than
//! read as a body it never was.
//!
//! ```
//! use shared_core::kpl::{UserRecord, aggregate, split};
//!
//! let records = [UserRecord::new("device-1", br#"{"n":1}"#.to_vec()), UserRecord::new("device-2", br#"{"n":2}"#.to_vec())];
//! let data = aggregate(&records);
//! let users = split(&data).unwrap().unwrap();
//! assert_eq!(users, records);
//! assert_eq!(users[1].partition_key, "device-2");
//! assert!(split(br#"{"plain": true}"#).is_none());
//! ```

use md5::{Digest, Md5};

/// The first bytes of an aggregated record's data.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// Length of the MD5 digest that ends an aggregated record.
const DIGEST_LEN: usize = 16;

/// One user record of an aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The partition key the producer gave it.
    pub partition_key: String,
    /// The explicit hash key the producer gave it, if any.
    pub explicit_hash_key: Option<String>,
    /// Its data, as the producer put it.
    pub data: Vec<u8>,
}

impl UserRecord {
    /// A user record with a partition key and data.
    pub fn new(partition_key: impl Into<String>, data: Vec<u8>) -> Self {
        Self { partition_key: partition_key.into(), explicit_hash_key: None, data }
    }
}

/// Why an aggregated record cannot be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AggregateError {
    /// The data ends before the digest, or the digest does not match.
    #[error("KPL aggregated record: MD5 checksum mismatch (the aggregate is truncated or corrupt)")]
    Checksum,
    /// The protobuf message does not read.
    #[error("KPL aggregated record: malformed protobuf: {0}")]
    Protobuf(&'static str),
    /// A user record names a partition or explicit hash key the tables do
    /// not hold.
    #[error("KPL aggregated record: user record {record} names {table} key {index}, but the table has {len}")]
    KeyIndex {
        /// The user record's position (its sub-sequence number).
        record: usize,
        /// `partition` or `explicit hash`.
        table: &'static str,
        /// The index it names.
        index: u64,
        /// The table's length.
        len: usize,
    },
    /// A user record without its required fields.
    #[error("KPL aggregated record: user record {record} has no {field}")]
    Missing {
        /// The user record's position.
        record: usize,
        /// The field's name.
        field: &'static str,
    },
}

/// The user records of `data` when it is an aggregate (it starts with
/// [`MAGIC`]), in order: a record's index is its sub-sequence number.
/// `None` for plain data.
pub fn split(data: &[u8]) -> Option<Result<Vec<UserRecord>, AggregateError>> {
    let body = data.strip_prefix(&MAGIC)?;
    Some(split_body(body))
}

fn split_body(body: &[u8]) -> Result<Vec<UserRecord>, AggregateError> {
    let at = body.len().checked_sub(DIGEST_LEN).ok_or(AggregateError::Checksum)?;
    let (message, digest) = body.split_at(at);
    if Md5::digest(message).as_slice() != digest {
        return Err(AggregateError::Checksum);
    }
    let mut partition_keys: Vec<String> = Vec::new();
    let mut hash_keys: Vec<String> = Vec::new();
    let mut raw_records: Vec<&[u8]> = Vec::new();
    let mut reader = Reader { rest: message };
    while let Some((field, value)) = reader.field()? {
        match (field, value) {
            (1, Value::Bytes(b)) => partition_keys.push(text(b)?),
            (2, Value::Bytes(b)) => hash_keys.push(text(b)?),
            (3, Value::Bytes(b)) => raw_records.push(b),
            (1..=3, _) => return Err(AggregateError::Protobuf("a table or record field of the wrong wire type")),
            _ => {} // Unknown fields are skipped, as protobuf readers do.
        }
    }
    raw_records
        .into_iter()
        .enumerate()
        .map(|(index, raw)| {
            let mut partition = None;
            let mut hash = None;
            let mut data = None;
            let mut reader = Reader { rest: raw };
            while let Some((field, value)) = reader.field()? {
                match (field, value) {
                    (1, Value::Varint(v)) => partition = Some(v),
                    (2, Value::Varint(v)) => hash = Some(v),
                    (3, Value::Bytes(b)) => data = Some(b),
                    (1..=3, _) => return Err(AggregateError::Protobuf("a record field of the wrong wire type")),
                    _ => {} // Tags (4) and unknown fields.
                }
            }
            let lookup = |table: &'static str, keys: &[String], i: u64| {
                usize::try_from(i).ok().and_then(|i| keys.get(i)).cloned().ok_or(AggregateError::KeyIndex {
                    record: index,
                    table,
                    index: i,
                    len: keys.len(),
                })
            };
            let partition = partition.ok_or(AggregateError::Missing { record: index, field: "partition_key_index" })?;
            Ok(UserRecord {
                partition_key: lookup("partition", &partition_keys, partition)?,
                explicit_hash_key: hash.map(|h| lookup("explicit hash", &hash_keys, h)).transpose()?,
                data: data.ok_or(AggregateError::Missing { record: index, field: "data" })?.to_vec(),
            })
        })
        .collect()
}

fn text(bytes: &[u8]) -> Result<String, AggregateError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| AggregateError::Protobuf("a key that is not UTF-8"))
}

/// The data of one aggregated record holding `records`, in order (for
/// producers of test data and the local stack; the KPL does this itself).
/// Partition keys repeated across records are stored once.
pub fn aggregate(records: &[UserRecord]) -> Vec<u8> {
    let mut keys: Vec<&str> = Vec::new();
    let mut hash_keys: Vec<&str> = Vec::new();
    let mut message = Vec::new();
    let mut encoded_records: Vec<Vec<u8>> = Vec::with_capacity(records.len());
    for r in records {
        let mut record = Vec::new();
        put_varint_field(&mut record, 1, index(&mut keys, &r.partition_key));
        if let Some(hash) = &r.explicit_hash_key {
            put_varint_field(&mut record, 2, index(&mut hash_keys, hash));
        }
        put_bytes_field(&mut record, 3, &r.data);
        encoded_records.push(record);
    }
    for key in &keys {
        put_bytes_field(&mut message, 1, key.as_bytes());
    }
    for key in &hash_keys {
        put_bytes_field(&mut message, 2, key.as_bytes());
    }
    for record in &encoded_records {
        put_bytes_field(&mut message, 3, record);
    }
    let mut out = Vec::with_capacity(MAGIC.len() + message.len() + DIGEST_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&message);
    out.extend_from_slice(Md5::digest(&message).as_slice());
    out
}

/// The position of `key` in `table`, added at the end if it is new.
fn index<'k>(table: &mut Vec<&'k str>, key: &'k str) -> u64 {
    let at = table.iter().position(|k| *k == key).unwrap_or_else(|| {
        table.push(key);
        table.len() - 1
    });
    at as u64
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7F) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    put_varint(out, field << 3);
    put_varint(out, v);
}

fn put_bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A protobuf field's value, by wire type.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// Reads protobuf fields off a message, every length checked against what
/// is left.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, AggregateError> {
        let mut value: u64 = 0;
        for (i, byte) in self.rest.iter().enumerate().take(10) {
            let bits = u64::from(byte & 0x7F);
            let shift = 7 * i as u32;
            // The tenth byte may carry only the top bit of a u64.
            if shift == 63 && bits > 1 {
                return Err(AggregateError::Protobuf("a varint longer than 64 bits"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                self.rest = &self.rest[i + 1..];
                return Ok(value);
            }
        }
        Err(AggregateError::Protobuf("a truncated or overlong varint"))
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], AggregateError> {
        let len = usize::try_from(len).ok().filter(|l| *l <= self.rest.len());
        let len = len.ok_or(AggregateError::Protobuf("a length past the end of the message"))?;
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(taken)
    }

    /// The next field's number and value, `None` at the end.
    fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, AggregateError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 {
            return Err(AggregateError::Protobuf("field number 0"));
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            2 => {
                let len = self.varint()?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            _ => return Err(AggregateError::Protobuf("an unsupported wire type")),
        };
        Ok(Some((field, value)))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn an_aggregate_with_explicit_hash_keys_and_tags_splits_in_order() {
        let mut records = vec![UserRecord::new("a", b"1".to_vec()), UserRecord::new("b", b"2".to_vec())];
        records[1].explicit_hash_key = Some("170141183460469231731687303715884105728".into());
        records.push(UserRecord::new("a", Vec::new()));
        let data = aggregate(&records);
        assert_eq!(split(&data), Some(Ok(records)));
    }

    #[test]
    fn a_damaged_aggregate_names_what_is_wrong() {
        let data = aggregate(&[UserRecord::new("a", b"{}".to_vec())]);
        let mut flipped = data.clone();
        flipped[6] ^= 1;
        assert_eq!(split(&flipped), Some(Err(AggregateError::Checksum)));
        assert_eq!(split(&data[..10]), Some(Err(AggregateError::Checksum)));
        assert_eq!(split(&MAGIC), Some(Err(AggregateError::Checksum)));
        // A record naming a partition key the table lacks, with a valid digest.
        let mut record = Vec::new();
        put_varint_field(&mut record, 1, 3);
        put_bytes_field(&mut record, 3, b"x");
        let mut message = Vec::new();
        put_bytes_field(&mut message, 1, b"only");
        put_bytes_field(&mut message, 3, &record);
        let framed = [&MAGIC[..], &message, Md5::digest(&message).as_slice()].concat();
        assert_eq!(
            split(&framed).unwrap().unwrap_err().to_string(),
            "KPL aggregated record: user record 0 names partition key 3, but the table has 1"
        );
    }

    proptest! {
        /// What is aggregated splits back whole; any byte string, with or
        /// without the magic bytes, splits or fails without a panic.
        #[test]
        fn aggregates_round_trip(records in proptest::collection::vec(("[a-c]{1,3}", proptest::collection::vec(any::<u8>(), 0..40)), 0..20)) {
            let records: Vec<UserRecord> = records.into_iter().map(|(k, d)| UserRecord::new(k, d)).collect();
            prop_assert_eq!(split(&aggregate(&records)), Some(Ok(records)));
        }

        #[test]
        fn any_bytes_split_without_panicking(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = split(&[&MAGIC[..], &body].concat());
            // With a valid digest, the protobuf reader itself is exercised.
            let framed = [&MAGIC[..], &body, Md5::digest(&body).as_slice()].concat();
            let _ = split(&framed);
        }
    }
}
