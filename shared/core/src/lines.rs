//! Line formats of ingested objects: which format an object is in (NDJSON, or
//! CSV with a header row; either optionally gzip-compressed), and CSV rows as
//! JSON objects, so one record parser serves both formats.

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

/// Parses a CSV line into fields (RFC 4180 quoting; records do not span lines).
pub fn split_csv(line: &str) -> Result<Vec<String>, String> {
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
                        Some(other) => {
                            return Err(format!("unexpected {other:?} after a closing quote"));
                        }
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
        return Err("unterminated quoted field".into());
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
pub fn csv_record(header: &[String], row: &str) -> Result<String, String> {
    let fields = split_csv(row)?;
    if fields.len() != header.len() {
        return Err(format!("row has {} fields, the header has {}", fields.len(), header.len()));
    }
    let object: serde_json::Map<String, serde_json::Value> = header
        .iter()
        .zip(fields)
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v)))
        .collect();
    Ok(serde_json::Value::Object(object).to_string())
}
