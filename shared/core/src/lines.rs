//! Line formats of ingested objects: which format an object is in (NDJSON, or
//! CSV with a header row; either optionally gzip-compressed), CSV rows as
//! JSON objects, so one record parser serves both formats, and [`Records`]:
//! an object's text lines turned into records, the same way on every
//! platform.

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
