//! Streaming reads of S3 objects: the body is read as a byte stream (never
//! buffered whole), gzip is decompressed on the fly, and lines come out one at
//! a time with their line number and byte offset, split by the core's line
//! rule ([`shared_core::lines`]; the Worker reads R2 objects by the same
//! one). A line longer than the bound is reported, not allocated; invalid
//! UTF-8 is reported, not fatal.

use crate::error::Classify;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};

use crate::event::s3::ObjectRef;
use shared_core::lines::LineSplitter;
pub use shared_core::lines::{Format, Layout, Line, LineContent, LineError, csv_record, split_csv};

/// Why an object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The request for the object (or a put of a report) failed.
    #[error("failed to fetch {uri}: {message}")]
    Fetch {
        /// `s3://bucket/key`.
        uri: String,
        /// The service's error code and message.
        message: String,
        /// Whether a retry can help (`NoSuchKey` cannot; throttling can).
        class: crate::error::ErrorClass,
    },
    /// The body failed mid-stream, or its gzip stream is corrupt.
    #[error("failed to read {uri} at byte {offset}: {source}")]
    Read {
        /// `s3://bucket/key`.
        uri: String,
        /// Offset in the decoded object where reading failed.
        offset: u64,
        /// The I/O (or decompression) error.
        source: std::io::Error,
    },
}

impl Classify for ObjectError {
    fn class(&self) -> crate::error::ErrorClass {
        match self {
            Self::Fetch { class, .. } => *class,
            // A body cut mid-stream or a corrupt gzip stream: retrying may help
            // the first; the second fails again and ends in the DLQ.
            Self::Read { .. } => crate::error::ErrorClass::Transient,
        }
    }
}

/// An opened object body.
pub struct ObjectBody {
    /// The raw bytes, as stored (still gzip-compressed if it was written so).
    pub reader: Pin<Box<dyn AsyncRead + Send>>,
    /// `Content-Type`, used to detect the format when the key has no known
    /// extension.
    pub content_type: Option<String>,
    /// `Content-Encoding` (`gzip`), likewise.
    pub content_encoding: Option<String>,
}

/// The object port: opens an object's body, from a byte offset.
pub trait ObjectSource: Send + Sync {
    /// Opens `object`'s body from byte `from_byte` (0: the whole object). The
    /// version read is `object`'s version id when it has one.
    fn open(&self, object: &ObjectRef, from_byte: u64) -> impl Future<Output = Result<ObjectBody, ObjectError>> + Send;
}

/// Where reports are written: a small object, whole.
pub trait ObjectSink: Send + Sync {
    /// Writes `body` as `s3://bucket/key`, replacing any object there.
    fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> impl Future<Output = Result<(), ObjectError>> + Send;
}

/// Objects in S3.
#[derive(Debug, Clone)]
pub struct S3Source {
    client: aws_sdk_s3::Client,
}

impl S3Source {
    /// Objects read and written through `client`.
    pub fn new(client: aws_sdk_s3::Client) -> Self {
        Self { client }
    }
}

impl ObjectSource for S3Source {
    async fn open(&self, object: &ObjectRef, from_byte: u64) -> Result<ObjectBody, ObjectError> {
        let mut request = self.client.get_object().bucket(&object.bucket).key(&object.key);
        if let Some(version) = object.version_id.as_deref().filter(|v| *v != "null") {
            request = request.version_id(version);
        }
        if from_byte > 0 {
            // Ranged read: resume an uncompressed object where the checkpoint is.
            request = request.range(format!("bytes={from_byte}-"));
        }
        let out = request.send().await.map_err(|e| ObjectError::Fetch {
            uri: object.uri(),
            message: crate::error::sdk_message(&e),
            class: object_read_class(&e),
        })?;
        Ok(ObjectBody {
            content_type: out.content_type.clone(),
            content_encoding: out.content_encoding.clone(),
            reader: Box::pin(out.body.into_async_read()),
        })
    }
}

/// How a failed `GetObject` is handled. By the usual classification
/// (throttling and 5xx transient, `NoSuchKey` and `NoSuchVersion`
/// permanent), except that a bucket that is gone or an object this function
/// may not read fails that object alone (permanent), not the invocation: the
/// other notifications of the batch may name other objects.
fn object_read_class<E, R>(e: &aws_sdk_s3::error::SdkError<E, R>) -> crate::error::ErrorClass
where
    E: aws_sdk_s3::error::ProvideErrorMetadata,
    R: crate::error::HttpStatus,
{
    let code = e.as_service_error().and_then(|s| s.code());
    match code {
        Some("AccessDenied" | "NoSuchBucket" | "InvalidObjectState") => crate::error::ErrorClass::Permanent,
        _ => crate::error::classify_sdk(e),
    }
}

impl ObjectSink for S3Source {
    async fn put(&self, bucket: &str, key: &str, body: Vec<u8>, content_type: &str) -> Result<(), ObjectError> {
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(body.into())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| ObjectError::Fetch {
                uri: format!("s3://{bucket}/{key}"),
                message: crate::error::sdk_message(&e),
                class: crate::error::classify_sdk(&e),
            })
    }
}

/// Objects held in memory, for unit tests.
#[derive(Debug, Default)]
pub struct MemorySource {
    objects: HashMap<(String, String), Vec<u8>>,
    written: std::sync::Mutex<Vec<(String, String, Vec<u8>)>>,
}

impl MemorySource {
    /// No objects, nothing written.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the object `bucket`/`key`, read back by
    /// [`ObjectSource::open`].
    pub fn insert(&mut self, bucket: &str, key: &str, body: impl Into<Vec<u8>>) {
        self.objects.insert((bucket.to_owned(), key.to_owned()), body.into());
    }

    /// Objects written through [`ObjectSink`], in order: (bucket, key, body).
    pub fn written(&self) -> Vec<(String, String, Vec<u8>)> {
        self.written.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ObjectSink for MemorySource {
    async fn put(&self, bucket: &str, key: &str, body: Vec<u8>, _content_type: &str) -> Result<(), ObjectError> {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        // Same key again overwrites, as S3 does.
        written.retain(|(b, k, _)| !(b == bucket && k == key));
        written.push((bucket.to_owned(), key.to_owned(), body));
        Ok(())
    }
}

impl ObjectSource for MemorySource {
    async fn open(&self, object: &ObjectRef, from_byte: u64) -> Result<ObjectBody, ObjectError> {
        let body =
            self.objects.get(&(object.bucket.clone(), object.key.clone())).ok_or_else(|| ObjectError::Fetch {
                uri: object.uri(),
                message: "NoSuchKey".into(),
                class: crate::error::ErrorClass::Permanent,
            })?;
        let start = usize::try_from(from_byte).unwrap_or(usize::MAX).min(body.len());
        Ok(ObjectBody {
            reader: Box::pin(std::io::Cursor::new(body[start..].to_vec())),
            content_type: None,
            content_encoding: None,
        })
    }
}

/// Wraps a raw body into a buffered reader of the decoded bytes.
pub fn decoded(reader: Pin<Box<dyn AsyncRead + Send>>, gzip: bool) -> Pin<Box<dyn AsyncBufRead + Send>> {
    // 64 KiB reads: few syscalls, constant memory.
    const READ_BUFFER: usize = 64 * 1024;
    let buffered = BufReader::with_capacity(READ_BUFFER, reader);
    if gzip {
        let mut decoder = async_compression::tokio::bufread::GzipDecoder::new(buffered);
        // Concatenated gzip members (as `cat a.gz b.gz` makes) are one stream.
        decoder.multiple_members(true);
        Box::pin(BufReader::with_capacity(READ_BUFFER, decoder))
    } else {
        Box::pin(buffered)
    }
}

/// Reads a decoded stream's lines: the core's [`LineSplitter`] (the line
/// rule every platform reads objects by) over an async buffered reader.
pub struct LineReader<R> {
    inner: R,
    splitter: LineSplitter,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    /// A reader whose first line has number `first_line` at byte `offset`.
    pub fn new(inner: R, max_line_bytes: usize, first_line: u64, offset: u64) -> Self {
        Self { inner, splitter: LineSplitter::new(max_line_bytes, first_line, offset) }
    }

    /// Offset of the next line to be read.
    pub fn offset(&self) -> u64 {
        self.splitter.offset()
    }

    /// Number of the next line to be read.
    pub fn next_number(&self) -> u64 {
        self.splitter.next_number()
    }

    /// Reads the next line; `None` at the end of the stream.
    pub async fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                return Ok(self.splitter.finish());
            }
            let (used, line) = self.splitter.feed(available);
            self.inner.consume(used);
            if line.is_some() {
                return Ok(line);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Line> {
        let mut reader = LineReader::new(input, max, 1, 0);
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().await.unwrap() {
            out.push(line);
        }
        out
    }

    #[tokio::test]
    async fn lines_carry_numbers_and_offsets() {
        let got = lines(b"ab\r\ncde\n\nf", 10).await;
        let texts: Vec<_> = got.iter().map(|l| (l.number, l.offset, l.content.clone())).collect();
        assert_eq!(
            texts,
            vec![
                (1, 0, LineContent::Text("ab".into())),
                (2, 4, LineContent::Text("cde".into())),
                (3, 8, LineContent::Text(String::new())),
                (4, 9, LineContent::Text("f".into())),
            ]
        );
    }

    #[tokio::test]
    async fn over_long_line_is_reported_and_the_next_line_still_read() {
        let mut input = vec![b'x'; 5000];
        input.extend_from_slice(b"\nok\n");
        let got = lines(&input, 100).await;
        // Only a bounded prefix is ever held, never the whole line.
        assert!(matches!(&got[0].content, LineContent::TooLong { length: 5000, prefix } if prefix.len() <= 101));
        assert_eq!(got[1].content, LineContent::Text("ok".into()));
        assert_eq!(got[1].offset, 5001);
    }

    #[tokio::test]
    async fn invalid_utf8_is_a_line_not_an_error() {
        let got = lines(b"\xff\xfe\nok\n", 100).await;
        assert_eq!(got[0].content, LineContent::InvalidUtf8(vec![0xff, 0xfe]));
        assert_eq!(got[1].content, LineContent::Text("ok".into()));
    }

    #[test]
    fn csv_quoting() {
        assert_eq!(split_csv(r#"a,"b,c","d""e",,"#).unwrap(), vec!["a", "b,c", "d\"e", "", ""]);
        assert!(split_csv(r#"a,"b"#).is_err());
    }

    #[test]
    fn layout_by_suffix_then_content_type() {
        let l = |k, t, e| Layout::detect(k, t, e);
        assert_eq!(l("a.ndjson", None, None), Some(Layout { format: Format::Ndjson, gzip: false }));
        assert_eq!(l("a.csv.gz", None, None), Some(Layout { format: Format::Csv, gzip: true }));
        assert_eq!(l("a", Some("text/csv"), Some("gzip")), Some(Layout { format: Format::Csv, gzip: true }));
        assert_eq!(l("a.bin", Some("application/octet-stream"), None), None);
    }
}
