//! Lines of ingested objects, the same on every platform: [`LineSplitter`]
//! cuts an object's (decoded) bytes into numbered [`Line`]s with their
//! offsets, whatever chunks the bytes arrive in; [`Layout`] says which
//! format an object is in (NDJSON, or CSV with a header row; either
//! optionally gzip-compressed); CSV rows become JSON objects, so one record
//! parser serves both formats; and [`Records`] turns an object's text lines
//! into records by its format.
//!
//! Reading the bytes (an S3 body on Lambda, an R2 stream on Workers) and
//! decompressing them are the platforms' business; everything from the
//! decoded bytes on is here, once.
//!
//! # The line rule
//!
//! A line ends at `\n`. A `\r` just before that `\n` belongs to the
//! terminator (`\r\n`); any other `\r` (alone, or last in the object) is
//! part of the line. The bound, `max_line_bytes`, applies to a line's
//! content alone, never to its terminator: a line of exactly
//! `max_line_bytes` bytes is read whether it ends with `\n`, with `\r\n` or
//! with the object, and one byte more makes it too long. So an object means
//! the same with either line ending, and a `\r` that ends one chunk of input
//! is held, uncounted, until the next byte says whether it ends the line.
//! Every byte of the object belongs to exactly one line: each line's
//! [`end`](Line::end) is the next line's [`offset`](Line::offset), the last
//! one's the object's length.

use std::borrow::Cow;

/// How an object's records are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Ndjson,
    /// A header row naming the fields, then one record per row.
    Csv,
}

/// The layout of an object: record format and compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The record format.
    pub format: Format,
    /// Whether the object is gzip-compressed.
    pub gzip: bool,
}

impl Layout {
    /// Decides the layout from the key's suffix, else from the content type and
    /// encoding. `None` when neither says.
    pub fn detect(key: &str, content_type: Option<&str>, content_encoding: Option<&str>) -> Option<Self> {
        let lower = key.to_ascii_lowercase();
        let (stem, gzip_suffix) = match lower.strip_suffix(".gz") {
            Some(stem) => (stem, true),
            None => (lower.as_str(), false),
        };
        let gzip = gzip_suffix
            || content_encoding.is_some_and(|e| e.eq_ignore_ascii_case("gzip"))
            || content_type.is_some_and(|t| t.contains("gzip"));
        let by_suffix = if stem.ends_with(".ndjson") || stem.ends_with(".jsonl") || stem.ends_with(".json") {
            Some(Format::Ndjson)
        } else if stem.ends_with(".csv") {
            Some(Format::Csv)
        } else {
            None
        };
        let by_type = content_type.and_then(|t| {
            let t = t.to_ascii_lowercase();
            if t.contains("ndjson") || t.contains("jsonl") || t.contains("json") {
                Some(Format::Ndjson)
            } else if t.contains("csv") {
                Some(Format::Csv)
            } else {
                None
            }
        });
        by_suffix.or(by_type).map(|format| Self { format, gzip })
    }
}

/// Why a CSV row cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsvError {
    /// A quoted field runs to the end of the line.
    #[error("unterminated quoted field")]
    Unterminated,
    /// A closing quote is followed by something other than `,` or the end.
    #[error("unexpected {0:?} after a closing quote")]
    AfterQuote(char),
    /// The row has another number of fields than the header row.
    #[error("row has {row} fields, the header has {header}")]
    FieldCount {
        /// The row's fields.
        row: usize,
        /// The header row's fields.
        header: usize,
    },
    /// The header row cannot be read.
    #[error("header row: {0}")]
    Header(Box<CsvError>),
    /// A row before any header row.
    #[error("no header row")]
    NoHeader,
}

/// Parses a CSV line into fields (RFC 4180 quoting; records do not span lines).
pub fn split_csv(line: &str) -> Result<Vec<String>, CsvError> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => {
                    quoted = false;
                    match chars.peek() {
                        None | Some(',') => {}
                        Some(other) => return Err(CsvError::AfterQuote(*other)),
                    }
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            ',' => {
                fields.push(std::mem::take(&mut field));
                at_start = true;
                continue;
            }
            '"' if at_start && field.is_empty() => quoted = true,
            _ => field.push(c),
        }
        at_start = false;
    }
    if quoted {
        return Err(CsvError::Unterminated);
    }
    fields.push(field);
    Ok(fields)
}

/// A CSV row as the JSON object text of its fields, named by the `header`
/// row's fields. Empty fields are left out, as absent fields; a row whose
/// field count differs from the header's is an error that says so.
///
/// ```
/// let header = vec!["sku".to_owned(), "quantity".to_owned(), "note".to_owned()];
/// let json = shared_core::lines::csv_record(&header, "A-1,3,").unwrap();
/// assert_eq!(json, r#"{"quantity":"3","sku":"A-1"}"#);
/// ```
pub fn csv_record(header: &[String], row: &str) -> Result<String, CsvError> {
    let fields = split_csv(row)?;
    if fields.len() != header.len() {
        return Err(CsvError::FieldCount { row: fields.len(), header: header.len() });
    }
    let object: serde_json::Map<String, serde_json::Value> = header
        .iter()
        .zip(fields)
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v)))
        .collect();
    Ok(serde_json::Value::Object(object).to_string())
}

/// Parses one record of an object from its JSON text: an NDJSON line as it
/// is, a CSV row as the JSON object of its fields.
pub trait LineParser: Send + Sync {
    /// What a line becomes.
    type Record: Send + Sync;
    /// Why a line is not a record (its message names the field and the rule).
    type Error: std::error::Error + Send + Sync + 'static;
    /// The record, or why the line is rejected.
    fn parse(&self, json: &str) -> Result<Self::Record, Self::Error>;
}

/// A function from a record's JSON text to the record is a line parser:
/// `Records::new(&parse_my_record, format)` needs no type of its own.
///
/// ```
/// use shared_core::lines::{Format, Records};
///
/// fn quantity(json: &str) -> Result<u64, serde_json::Error> {
///     serde_json::from_str::<serde_json::Value>(json).map(|v| v["quantity"].as_str().map_or(0, |q| q.len() as u64))
/// }
/// let mut records = Records::new(&quantity, Format::Csv);
/// assert!(records.line("sku,quantity").is_none());
/// assert_eq!(records.line("A-1,333").unwrap().unwrap(), 3);
/// ```
impl<F, R, E> LineParser for F
where
    F: Fn(&str) -> Result<R, E> + Send + Sync,
    R: Send + Sync,
    E: std::error::Error + Send + Sync + 'static,
{
    type Record = R;
    type Error = E;

    fn parse(&self, json: &str) -> Result<R, E> {
        self(json)
    }
}

/// Why a line was rejected.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// The line is longer than the configured bound.
    #[error("line is {length} bytes, over the limit of {limit}")]
    TooLong {
        /// The line's length in bytes.
        length: u64,
        /// The bound, in bytes (`MAX_LINE_BYTES`).
        limit: usize,
    },
    /// The line is not UTF-8.
    #[error("line is not valid UTF-8")]
    InvalidUtf8,
    /// A CSV row that cannot be read (or no header row before it).
    #[error("CSV: {0}")]
    Csv(#[from] CsvError),
    /// The line's record does not parse: the parser's reason.
    #[error(transparent)]
    Record(Box<dyn std::error::Error + Send + Sync>),
}

/// The UTF-8 byte-order mark spreadsheets write before a CSV's header row.
const BYTE_ORDER_MARK: char = '\u{feff}';

/// An object's text lines turned into records by its format: NDJSON lines
/// as they are; for CSV, the first non-blank line is the header row (a
/// byte-order mark before it, quotes around its names and spaces around
/// them are taken off, as spreadsheets write them) and each later row is
/// the JSON object of its fields. Blank lines are not records.
///
/// ```
/// use shared_core::lines::{Format, LineParser, Records};
///
/// struct Json;
/// impl LineParser for Json {
///     type Record = serde_json::Value;
///     type Error = serde_json::Error;
///     fn parse(&self, json: &str) -> Result<serde_json::Value, serde_json::Error> {
///         serde_json::from_str(json)
///     }
/// }
///
/// // A spreadsheet's export: a byte-order mark, quoted names, CRLF (the
/// // line reader takes the CR off).
/// let mut records = Records::new(&Json, Format::Csv);
/// assert!(records.line("\u{feff}\"sku\",\"quantity\"").is_none());
/// let row = records.line("A-1,3").unwrap().unwrap();
/// assert_eq!(row, serde_json::json!({"sku": "A-1", "quantity": "3"}));
/// ```
#[derive(Debug)]
pub struct Records<'p, P> {
    parser: &'p P,
    format: Format,
    header: Option<Vec<String>>,
    header_line: Option<String>,
    /// The next line is the object's first (a byte-order mark may lead it).
    at_start: bool,
}

impl<'p, P: LineParser> Records<'p, P> {
    /// Records of an object read from its first line.
    pub fn new(parser: &'p P, format: Format) -> Self {
        Self { parser, format, header: None, header_line: None, at_start: true }
    }

    /// Records of an object read from a later line, with the header row an
    /// earlier read kept ([`header_line`](Self::header_line)).
    pub fn resume(parser: &'p P, format: Format, header_line: Option<String>) -> Self {
        let header = header_line.as_deref().and_then(|h| header_fields(h).ok());
        Self { parser, format, header, header_line, at_start: false }
    }

    /// The CSV header row as read (without a byte-order mark), once read.
    pub fn header_line(&self) -> Option<&str> {
        self.header_line.as_deref()
    }

    /// A line an earlier read already counted, passed again by a read that
    /// resumes from the object's start (a compressed object cannot be read
    /// from the middle): nothing is parsed, only a CSV header row not known
    /// yet is learnt from it, as [`line`](Self::line) would have. Skipping
    /// the lines before a checkpoint and reading the rest gives the records
    /// of one read from the start.
    pub fn skip(&mut self, text: &str) {
        if self.format == Format::Csv && self.header.is_none() {
            let _ = self.line(text);
        } else {
            self.at_start = false;
        }
    }

    /// One text line (without its terminator): `None` for a blank line or
    /// the header row, else its record or why it is rejected.
    pub fn line(&mut self, text: &str) -> Option<Result<P::Record, LineError>> {
        let text = if std::mem::take(&mut self.at_start) { text.trim_start_matches(BYTE_ORDER_MARK) } else { text };
        if text.trim().is_empty() {
            return None;
        }
        match self.format {
            Format::Ndjson => Some(self.parser.parse(text).map_err(|e| LineError::Record(Box::new(e)))),
            Format::Csv => match &self.header {
                None => match header_fields(text) {
                    Ok(fields) => {
                        self.header = Some(fields);
                        self.header_line = Some(text.to_owned());
                        None
                    }
                    Err(e) => Some(Err(LineError::Csv(CsvError::Header(Box::new(e))))),
                },
                Some(header) => Some(
                    csv_record(header, text)
                        .map_err(LineError::Csv)
                        .and_then(|json| self.parser.parse(&json).map_err(|e| LineError::Record(Box::new(e)))),
                ),
            },
        }
    }
}

/// The field names of a CSV header row.
fn header_fields(line: &str) -> Result<Vec<String>, CsvError> {
    Ok(split_csv(line)?.into_iter().map(|f| f.trim().to_owned()).collect())
}

/// Bytes of an over-long line kept (for the quarantine record and the
/// rejects report that say what it was), at most.
pub const TOO_LONG_PREFIX: usize = 256;

/// One line of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number in the object.
    pub number: u64,
    /// Byte offset of the line's first byte in the decoded object.
    pub offset: u64,
    /// Byte offset just past the line's terminator: where the next line
    /// starts, the checkpoint a resumed read starts from.
    pub end: u64,
    /// The line without its `\n` or `\r\n`.
    pub content: LineContent,
}

/// What a line holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineContent {
    /// A line of valid UTF-8 within the bound.
    Text(String),
    /// Longer than the bound; only the first bytes are kept (for the report).
    TooLong {
        /// The line's length in bytes, without its terminator.
        length: u64,
        /// Its first bytes: at most the bound, and at most [`TOO_LONG_PREFIX`].
        prefix: Vec<u8>,
    },
    /// Not UTF-8; the bytes are kept (bounded by the line bound).
    InvalidUtf8(Vec<u8>),
}

impl LineContent {
    /// The line's text, or why it is not a line to read: `limit` is the
    /// bound it was split with, which the error names.
    ///
    /// ```
    /// use shared_core::lines::LineContent;
    ///
    /// let long = LineContent::TooLong { length: 9, prefix: b"1234".to_vec() };
    /// assert_eq!(long.text(4).unwrap_err().to_string(), "line is 9 bytes, over the limit of 4");
    /// assert_eq!(LineContent::Text("ok".into()).text(4).unwrap(), "ok");
    /// ```
    pub fn text(&self, limit: usize) -> Result<&str, LineError> {
        match self {
            Self::Text(text) => Ok(text),
            Self::TooLong { length, .. } => Err(LineError::TooLong { length: *length, limit }),
            Self::InvalidUtf8(_) => Err(LineError::InvalidUtf8),
        }
    }

    /// What is kept of the line as text, invalid UTF-8 replaced: the raw
    /// record of a quarantine item or a report (an over-long line's prefix).
    pub fn lossy(&self) -> Cow<'_, str> {
        match self {
            Self::Text(text) => Cow::Borrowed(text),
            Self::TooLong { prefix: bytes, .. } | Self::InvalidUtf8(bytes) => String::from_utf8_lossy(bytes),
        }
    }
}

/// Cuts bytes into [`Line`]s by the line rule (see the [module](self)),
/// without I/O: the bytes are pushed in as they arrive, in chunks of any
/// size, split anywhere (inside a `\r\n` too), and the lines come out
/// numbered, with their offsets. An over-long line is counted, never held:
/// the splitter keeps at most `max_line_bytes` bytes of any line.
///
/// ```
/// use shared_core::lines::{LineContent, LineSplitter};
///
/// let mut splitter = LineSplitter::new(4, 1, 0);
/// let mut lines = splitter.push(b"abcd\r");
/// assert!(lines.is_empty(), "the \\r may end the line: held, not counted");
/// lines.extend(splitter.push(b"\nabcde\nlast"));
/// lines.extend(splitter.finish());
/// let got: Vec<_> = lines.iter().map(|l| (l.number, l.offset, l.end, l.content.clone())).collect();
/// assert_eq!(
///     got,
///     [
///         (1, 0, 6, LineContent::Text("abcd".into())),
///         (2, 6, 12, LineContent::TooLong { length: 5, prefix: b"abcd".to_vec() }),
///         (3, 12, 16, LineContent::Text("last".into())),
///     ]
/// );
/// ```
#[derive(Debug, Clone)]
pub struct LineSplitter {
    max_line_bytes: usize,
    next_number: u64,
    /// Offset of the line in progress (of the next line, between lines).
    offset: u64,
    /// Content bytes of the line in progress so far (a held `\r` not counted).
    length: u64,
    /// Its content while within the bound; once over, its prefix.
    buffer: Vec<u8>,
    /// The last byte pushed was a `\r`, not yet counted: a terminator if
    /// `\n` comes next, else content.
    carriage_return: bool,
}

impl LineSplitter {
    /// A splitter whose first line has number `first_line` and starts at
    /// byte `offset` (a read resuming at a checkpoint: 1 and 0 for a whole
    /// object).
    pub fn new(max_line_bytes: usize, first_line: u64, offset: u64) -> Self {
        Self { max_line_bytes, next_number: first_line, offset, length: 0, buffer: Vec::new(), carriage_return: false }
    }

    /// The bound on a line's content, in bytes.
    pub fn max_line_bytes(&self) -> usize {
        self.max_line_bytes
    }

    /// Number of the next line to come out.
    pub fn next_number(&self) -> u64 {
        self.next_number
    }

    /// Offset of the next line to come out (the one in progress, when part
    /// of it has been pushed).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Takes `bytes` up to and including the first line end among them:
    /// how many bytes it took, and the line they complete. It takes fewer
    /// than all only when a line completes; the rest is for the next call.
    /// A reader over a buffered stream calls it with what the stream has and
    /// consumes what it took.
    pub fn feed(&mut self, bytes: &[u8]) -> (usize, Option<Line>) {
        let Some((&first, _)) = bytes.split_first() else { return (0, None) };
        if std::mem::take(&mut self.carriage_return) {
            if first == b'\n' {
                return (1, Some(self.complete(2)));
            }
            self.append(b"\r");
        }
        match memchr::memchr(b'\n', bytes) {
            Some(i) => {
                let (content, terminator) = match bytes[..i].strip_suffix(b"\r") {
                    Some(content) => (content, 2),
                    None => (&bytes[..i], 1),
                };
                self.append(content);
                (i + 1, Some(self.complete(terminator)))
            }
            None => {
                let content = match bytes.strip_suffix(b"\r") {
                    Some(content) => {
                        self.carriage_return = true;
                        content
                    }
                    None => bytes,
                };
                self.append(content);
                (bytes.len(), None)
            }
        }
    }

    /// Takes all of `bytes`: the lines they complete.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<Line> {
        let mut lines = Vec::new();
        while let (used, Some(line)) = self.feed(bytes) {
            lines.push(line);
            bytes = &bytes[used..];
        }
        lines
    }

    /// Ends the input: its last line, when it does not end with `\n` (a
    /// `\r` last in the input is the line's, not a terminator).
    pub fn finish(&mut self) -> Option<Line> {
        if std::mem::take(&mut self.carriage_return) {
            self.append(b"\r");
        }
        (self.length > 0).then(|| self.complete(0))
    }

    /// Adds content to the line in progress, keeping at most the bound of it.
    fn append(&mut self, part: &[u8]) {
        self.length += part.len() as u64;
        if self.length <= self.max_line_bytes as u64 {
            self.buffer.extend_from_slice(part);
        } else {
            let keep = self.max_line_bytes.min(TOO_LONG_PREFIX);
            let room = keep.saturating_sub(self.buffer.len()).min(part.len());
            self.buffer.extend_from_slice(&part[..room]);
            self.buffer.truncate(keep);
        }
    }

    /// Ends the line in progress with a terminator of `terminator` bytes.
    fn complete(&mut self, terminator: u64) -> Line {
        let end = self.offset + self.length + terminator;
        // The next line's buffer starts at this one's size: a line costs one
        // allocation rather than a series of regrowths.
        let capacity = self.buffer.len().max(64).min(self.max_line_bytes);
        let bytes = std::mem::replace(&mut self.buffer, Vec::with_capacity(capacity));
        let content = if self.length > self.max_line_bytes as u64 {
            LineContent::TooLong { length: self.length, prefix: bytes }
        } else {
            match String::from_utf8(bytes) {
                Ok(text) => LineContent::Text(text),
                Err(e) => LineContent::InvalidUtf8(e.into_bytes()),
            }
        };
        let line = Line { number: self.next_number, offset: self.offset, end, content };
        self.next_number += 1;
        self.offset = end;
        self.length = 0;
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every line of `input`, pushed in the chunks that `cuts` (positions,
    /// any order, repeats allowed) cut it into.
    fn split(input: &[u8], max: usize, cuts: &[usize]) -> Vec<Line> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        cuts.extend([0, input.len()]);
        cuts.sort_unstable();
        let mut splitter = LineSplitter::new(max, 1, 0);
        let mut lines = Vec::new();
        for pair in cuts.windows(2) {
            lines.extend(splitter.push(&input[pair[0]..pair[1]]));
            assert!(splitter.buffer.len() <= max, "the splitter holds more than the bound of a line");
        }
        lines.extend(splitter.finish());
        assert_eq!(splitter.offset(), input.len() as u64, "the lines end where the input does");
        lines
    }

    /// The line rule, written as plainly as it reads, on the whole input.
    fn model(input: &[u8], max: usize) -> Vec<Line> {
        let mut lines = Vec::new();
        let mut start = 0;
        while start < input.len() {
            let rest = &input[start..];
            let (content, next) = match rest.iter().position(|b| *b == b'\n') {
                Some(i) => (rest[..i].strip_suffix(b"\r").unwrap_or(&rest[..i]), start + i + 1),
                None => (rest, input.len()),
            };
            let content = if content.len() > max {
                LineContent::TooLong {
                    length: content.len() as u64,
                    prefix: content[..max.min(TOO_LONG_PREFIX)].to_vec(),
                }
            } else {
                match String::from_utf8(content.to_vec()) {
                    Ok(text) => LineContent::Text(text),
                    Err(e) => LineContent::InvalidUtf8(e.into_bytes()),
                }
            };
            lines.push(Line { number: lines.len() as u64 + 1, offset: start as u64, end: next as u64, content });
            start = next;
        }
        lines
    }

    fn texts(lines: &[Line]) -> Vec<(u64, u64, LineContent)> {
        lines.iter().map(|l| (l.number, l.end, l.content.clone())).collect()
    }

    #[test]
    fn a_crlf_line_at_the_limit_is_read_and_one_byte_more_is_too_long() {
        let text = |s: &str| LineContent::Text(s.into());
        let long = |length, prefix: &[u8]| LineContent::TooLong { length, prefix: prefix.to_vec() };
        // The bound is on the content: the terminator never counts, whatever it is.
        assert_eq!(texts(&split(b"abcd\r\n", 4, &[])), [(1, 6, text("abcd"))]);
        assert_eq!(texts(&split(b"abcd\n", 4, &[])), [(1, 5, text("abcd"))]);
        assert_eq!(texts(&split(b"abcd", 4, &[])), [(1, 4, text("abcd"))]);
        assert_eq!(texts(&split(b"abcde\r\n", 4, &[])), [(1, 7, long(5, b"abcd"))]);
        assert_eq!(texts(&split(b"abcde\n", 4, &[])), [(1, 6, long(5, b"abcd"))]);
        // A `\r` that no `\n` follows is content, at the end of the input too.
        assert_eq!(texts(&split(b"abcd\r", 4, &[])), [(1, 5, long(5, b"abcd"))]);
        assert_eq!(texts(&split(b"abc\r", 4, &[])), [(1, 4, text("abc\r"))]);
        assert_eq!(texts(&split(b"ab\rc\n", 4, &[])), [(1, 5, text("ab\rc"))]);
        assert_eq!(texts(&split(b"abc\r\r\n", 4, &[])), [(1, 6, text("abc\r"))]);
        // Cut anywhere, the `\r\n` of a line at the limit included, the same lines.
        let input = b"abcd\r\nabcd\r\r\nab\r\n";
        let whole = split(input, 4, &[]);
        assert_eq!(texts(&whole), [(1, 6, text("abcd")), (2, 13, long(5, b"abcd")), (3, 17, text("ab"))]);
        for a in 0..=input.len() {
            for b in a..=input.len() {
                assert_eq!(split(input, 4, &[a, b]), whole, "cut at {a} and {b}");
            }
        }
    }

    #[test]
    fn an_over_long_line_is_counted_not_held_and_the_next_line_reads() {
        let mut splitter = LineSplitter::new(100, 1, 0);
        let mut lines = Vec::new();
        for _ in 0..50 {
            lines.extend(splitter.push(&[b'x'; 1000]));
            assert!(splitter.buffer.len() <= 100 && splitter.buffer.capacity() <= 1100);
        }
        lines.extend(splitter.push(b"\r\nok\n"));
        let prefix = vec![b'x'; 100];
        assert_eq!(lines[0].content, LineContent::TooLong { length: 50_000, prefix });
        assert_eq!((lines[1].number, lines[1].offset, lines[1].end), (2, 50_002, 50_005));
        assert_eq!(lines[1].content, LineContent::Text("ok".into()));
        let big = LineSplitter::new(10_000, 1, 0).push(&[[b'y'; 10_001].as_slice(), b"\n"].concat());
        assert!(
            matches!(&big[0].content, LineContent::TooLong { length: 10_001, prefix } if prefix.len() == TOO_LONG_PREFIX)
        );
    }

    #[test]
    fn a_resumed_split_numbers_and_offsets_from_its_checkpoint() {
        let mut splitter = LineSplitter::new(100, 7, 40);
        let lines = splitter.push(b"x\ny\n");
        assert_eq!((lines[0].number, lines[0].offset, lines[0].end), (7, 40, 42));
        assert_eq!((lines[1].number, lines[1].offset, lines[1].end), (8, 42, 44));
        assert_eq!((splitter.next_number(), splitter.offset()), (9, 44));
        assert_eq!(splitter.finish(), None, "an input ending with a newline has no line after it");
    }

    #[test]
    fn invalid_utf8_is_a_line_that_says_so_and_its_raw_text_is_kept_lossily() {
        let lines = split(b"\xff\xfe\nok\n", 100, &[1]);
        assert_eq!(lines[0].content, LineContent::InvalidUtf8(vec![0xff, 0xfe]));
        assert_eq!(lines[0].content.text(100).unwrap_err().to_string(), "line is not valid UTF-8");
        assert_eq!(lines[0].content.lossy(), "\u{fffd}\u{fffd}");
        assert_eq!(lines[1].content.text(100).unwrap(), "ok");
        // A character cut between two pushes is whole in its line.
        assert_eq!(split("é\n".as_bytes(), 100, &[1])[0].content, LineContent::Text("é".into()));
    }

    #[test]
    fn feed_takes_bytes_up_to_the_first_line_end_only() {
        let mut splitter = LineSplitter::new(100, 1, 0);
        let (used, line) = splitter.feed(b"ab\ncd\n");
        assert_eq!((used, line.map(|l| l.content)), (3, Some(LineContent::Text("ab".into()))));
        assert_eq!(splitter.feed(b""), (0, None));
        let (used, line) = splitter.feed(b"cd");
        assert_eq!((used, line), (2, None));
        assert_eq!(splitter.offset(), 3, "the line in progress starts at byte 3");
    }

    /// Bytes that make lines interesting: line ends, a lone `\r`, the two
    /// bytes of `é`, a byte that is never UTF-8.
    fn input() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(vec![b'a', b'{', b'\n', b'\r', 0xc3, 0xa9, 0xff]), 0..120)
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_lines_of_the_rule(
            input in input(),
            max in 0usize..12,
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            prop_assert_eq!(split(&input, max, &cuts), model(&input, max));
        }

        #[test]
        fn every_byte_is_in_exactly_one_line(input in input(), max in 0usize..12, cuts in prop::collection::vec(any::<usize>(), 0..6)) {
            let lines = split(&input, max, &cuts);
            let mut at = 0u64;
            for (i, line) in lines.iter().enumerate() {
                prop_assert_eq!(line.number, i as u64 + 1);
                prop_assert_eq!(line.offset, at, "line {} starts where the one before ends", line.number);
                let bytes = &input[line.offset as usize..line.end as usize];
                let (content, terminator) = match bytes.strip_suffix(b"\r\n").or_else(|| bytes.strip_suffix(b"\n")) {
                    Some(content) => (content, &bytes[content.len()..]),
                    None => (bytes, &b""[..]),
                };
                prop_assert!(terminator.is_empty() == (line.end == input.len() as u64 && !bytes.ends_with(b"\n")));
                match &line.content {
                    LineContent::Text(text) => prop_assert_eq!(text.as_bytes(), content),
                    LineContent::InvalidUtf8(raw) => prop_assert_eq!(raw.as_slice(), content),
                    LineContent::TooLong { length, prefix } => {
                        prop_assert_eq!(*length, content.len() as u64);
                        prop_assert!(*length > max as u64 && content.starts_with(prefix) && prefix.len() <= max);
                    }
                }
                at = line.end;
            }
            prop_assert_eq!(at, input.len() as u64, "the lines cover the input");
        }

        #[test]
        fn skipping_to_a_checkpoint_then_reading_gives_the_records_of_one_read(
            rows in prop::collection::vec(prop::sample::select(vec![
                "\u{feff}\"a\",\"b\"", "a,b", "", "  ", "1,2", "x", "\"u", "{\"a\":1}", "3,",
            ]), 0..10),
            csv in any::<bool>(),
            checkpoint in 0usize..10,
        ) {
            let parse = |json: &str| serde_json::from_str::<serde_json::Value>(json);
            let format = if csv { Format::Csv } else { Format::Ndjson };
            let read = |records: &mut Records<'_, _>, row: &str| {
                records.line(row).map(|r: Result<serde_json::Value, LineError>| r.map_err(|e| e.to_string()))
            };
            let mut whole = Records::new(&parse, format);
            let all: Vec<_> = rows.iter().map(|r| read(&mut whole, r)).collect();
            let checkpoint = checkpoint.min(rows.len());
            let mut resumed = Records::new(&parse, format);
            rows[..checkpoint].iter().for_each(|r| resumed.skip(r));
            let rest: Vec<_> = rows[checkpoint..].iter().map(|r| read(&mut resumed, r)).collect();
            prop_assert_eq!(&rest[..], &all[checkpoint..]);
        }
    }
}
