//! Records that can never be processed, kept with their reason: what every
//! platform writes to its quarantine (a DynamoDB table on Lambda, a D1 table
//! on Workers).

use serde::{Deserialize, Serialize};

/// A record that can never be processed, kept with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    /// Where it came from: `sqs/<queue>`, `s3/<bucket>/<key>`, `ddb-stream/<table>`.
    pub source: String,
    /// Its id there: message id, line number, sequence number.
    pub record_id: String,
    /// Why it can never be processed (the parse or validation error).
    pub reason: String,
    /// The raw record, truncated to [`MAX_QUARANTINED_RAW_BYTES`].
    pub raw: String,
}

/// Largest raw record kept in a quarantine item: far under DynamoDB's 400 KB
/// item limit (and D1's 1 MB row), large enough to see what was wrong.
pub const MAX_QUARANTINED_RAW_BYTES: usize = 8 * 1024;

impl Quarantined {
    /// A quarantined record; `raw` is truncated to
    /// [`MAX_QUARANTINED_RAW_BYTES`] on a character boundary.
    pub fn new(source: impl Into<String>, record_id: impl Into<String>, reason: impl Into<String>, raw: &str) -> Self {
        Self {
            source: source.into(),
            record_id: record_id.into(),
            reason: reason.into(),
            raw: truncate_bytes(raw, MAX_QUARANTINED_RAW_BYTES).to_owned(),
        }
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
///
/// ```
/// assert_eq!(shared_core::quarantine::truncate_bytes("aé", 2), "a");
/// ```
pub fn truncate_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
