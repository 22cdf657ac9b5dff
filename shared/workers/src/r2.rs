//! Objects on R2: the typed event notification R2 sends to a queue, an
//! object's bytes to the core's numbered lines ([`ObjectLines`], gzip
//! decoded as the body streams in), an object's manifest as a D1 row
//! ([`ObjectManifest`]: the core's checkpoint and counters), and (wasm32)
//! the ingest: any [`LineParser`](shared_core::lines::LineParser)'s records committed in chunks, each
//! with the manifest in the same D1 batch, resumed from the checkpoint,
//! handed on to the next invocation when one runs long.
//!
//! R2 event notifications:
//! <https://developers.cloudflare.com/r2/buckets/event-notifications/#message-format>

use std::io::Write as _;

use flate2::write::MultiGzDecoder;
use serde::{Deserialize, Serialize};
use shared_core::batch::Outcome;
use shared_core::lines::{Line, LineSplitter};
use shared_core::manifest::{Checkpoint, Counts, ObjectStatus};

use crate::Decided;
use crate::d1::{self, Param, Statement};

/// An R2 event notification, as R2 sends it to a queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// The account.
    #[serde(default)]
    pub account: String,
    /// `PutObject`, `CopyObject`, `CompleteMultipartUpload`,
    /// `DeleteObject`, `LifecycleDeletion`.
    pub action: String,
    /// The bucket.
    pub bucket: String,
    /// The object.
    pub object: NotifiedObject,
    /// When it happened (RFC 3339).
    #[serde(default)]
    pub event_time: String,
}

/// The object of a notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifiedObject {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    #[serde(default)]
    pub size: Option<u64>,
    /// Its eTag: the revision this notification is about.
    #[serde(rename = "eTag", default)]
    pub e_tag: Option<String>,
}

impl Notification {
    /// Whether it announces a new object (a put, a copy, a completed
    /// multipart upload), the notifications an ingest reads.
    ///
    /// ```
    /// let n: shared_workers::r2::Notification = serde_json::from_str(
    ///     r#"{"account":"a","action":"PutObject","bucket":"b","object":{"key":"k.ndjson","size":3,"eTag":"e"},"eventTime":"2026-12-05T00:00:00Z"}"#,
    /// ).unwrap();
    /// assert!(n.is_created());
    /// ```
    pub fn is_created(&self) -> bool {
        matches!(self.action.as_str(), "PutObject" | "CopyObject" | "CompleteMultipartUpload")
    }
}

/// Splits an object's stream into the core's [`Line`]s, decoding gzip
/// first when asked: the rule the Lambda functions read S3 objects by.
pub struct ObjectLines {
    gzip: Option<MultiGzDecoder<Vec<u8>>>,
    splitter: LineSplitter,
}

impl ObjectLines {
    /// Lines of an object whose first line is `first_line`, starting at
    /// decoded offset `offset` (a ranged read resuming at a checkpoint).
    pub fn new(gzip: bool, max_line_bytes: usize, first_line: u64, offset: u64) -> Self {
        Self {
            gzip: gzip.then(|| MultiGzDecoder::new(Vec::new())),
            splitter: LineSplitter::new(max_line_bytes, first_line, offset),
        }
    }

    /// Feeds the next bytes of the object; returns the lines they complete.
    /// An error means the object is not valid gzip (permanent).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Line>, String> {
        match &mut self.gzip {
            Some(decoder) => {
                decoder.write_all(bytes).map_err(not_gzip)?;
                let decoded = std::mem::take(decoder.get_mut());
                Ok(self.splitter.push(&decoded))
            }
            None => Ok(self.splitter.push(bytes)),
        }
    }

    /// Ends the object: the lines its last bytes complete, the last one
    /// without a newline included.
    pub fn finish(&mut self) -> Result<Vec<Line>, String> {
        let mut lines = match self.gzip.take() {
            Some(decoder) => self.splitter.push(&decoder.finish().map_err(not_gzip)?),
            None => Vec::new(),
        };
        lines.extend(self.splitter.finish());
        Ok(lines)
    }
}

fn not_gzip(e: std::io::Error) -> String {
    format!("not valid gzip: {e}")
}

/// Where an object revision stands: the core's [`ObjectStatus`], or
/// `REJECTED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `IN_PROGRESS`, `COMPLETED`, or `FAILED` (it cannot be read).
    Object(ObjectStatus),
    /// `REJECTED`: not a format the ingest reads.
    Rejected,
}

impl Status {
    /// The `status` column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Object(status) => status.as_str(),
            Self::Rejected => "REJECTED",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [ObjectStatus::InProgress, ObjectStatus::Completed, ObjectStatus::Failed]
            .into_iter()
            .map(Self::Object)
            .chain([Self::Rejected])
            .find(|s| s.as_str() == text)
    }
}

/// One object revision's manifest: its status, checkpoint and counters, a
/// row of the manifests table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectManifest {
    /// The bucket.
    pub bucket: String,
    /// The object key.
    pub key: String,
    /// The eTag of the revision.
    pub revision: String,
    /// How far it got.
    pub status: Status,
    /// Why it failed or was rejected.
    pub reason: Option<String>,
    /// The last line committed and the decoded offset after it (stored as
    /// `next_line` = `line + 1` and `next_byte`).
    pub checkpoint: Checkpoint,
    /// Every record line up to the checkpoint, by its end.
    pub counts: Counts,
    /// Writes so far; the write guard.
    pub version: i64,
}

impl ObjectManifest {
    /// A new manifest, nothing read yet.
    pub fn new(bucket: &str, key: &str, revision: &str) -> Self {
        Self {
            bucket: bucket.into(),
            key: key.into(),
            revision: revision.into(),
            status: Status::Object(ObjectStatus::InProgress),
            reason: None,
            checkpoint: Checkpoint::default(),
            counts: Counts::default(),
            version: 0,
        }
    }

    /// Whether nothing is left to do for this revision.
    pub fn is_final(&self) -> bool {
        self.status != Status::Object(ObjectStatus::InProgress)
    }

    /// Counts one record line by what became of it.
    pub fn count(&mut self, decided: &Decided) {
        let counter = match decided {
            Ok(Outcome::Applied) => &mut self.counts.accepted,
            Ok(Outcome::Stale) => &mut self.counts.stale,
            Ok(Outcome::Duplicate | Outcome::KeyReused) => &mut self.counts.duplicates,
            Err(_) => &mut self.counts.rejected,
        };
        *counter += 1;
        self.counts.lines += 1;
    }

    /// The statements that write it to `table` with `now` as its time: an
    /// insert when `stored` is false, else an update guarded by the
    /// version read (so two invocations cannot both commit a chunk).
    pub fn write(&self, table: &str, stored: bool, now: &str) -> Vec<Statement> {
        let count = |n: u64| Param::from(n);
        let counters = vec![
            Param::from(self.status.as_str()),
            Param::from(self.reason.clone()),
            count(self.checkpoint.line + 1),
            count(self.checkpoint.byte),
            count(self.counts.lines),
            count(self.counts.accepted),
            count(self.counts.rejected),
            count(self.counts.stale),
            count(self.counts.duplicates),
            Param::from(now),
        ];
        let key = [Param::from(&self.bucket), Param::from(&self.key), Param::from(&self.revision)];
        if stored {
            let mut params = counters;
            params.extend(key);
            params.push(Param::Int(self.version));
            vec![
                Statement::with_params(
                    format!(
                        "UPDATE {table} SET status = ?, reason = ?, next_line = ?, next_byte = ?, lines = ?, accepted = ?, rejected = ?, stale = ?, duplicates = ?, updated_at = ?, version = version + 1 WHERE bucket = ? AND key = ? AND revision = ? AND version = ?"
                    ),
                    params,
                ),
                d1::guard(MANIFEST_GUARD),
            ]
        } else {
            let mut params = key.to_vec();
            params.extend(counters);
            vec![Statement::with_params(
                format!(
                    "INSERT INTO {table} (bucket, key, revision, status, reason, next_line, next_byte, lines, accepted, rejected, stale, duplicates, updated_at, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)"
                ),
                params,
            )]
        }
    }

    /// The statement that reads the manifest of `bucket/key` at
    /// `revision` from `table`.
    pub fn select(table: &str, bucket: &str, key: &str, revision: &str) -> Statement {
        Statement::new(format!("SELECT {MANIFEST_COLUMNS} FROM {table} WHERE bucket = ? AND key = ? AND revision = ?"))
            .bind(bucket)
            .bind(key)
            .bind(revision)
    }
}

/// The guard of a manifest's update.
const MANIFEST_GUARD: &str = "manifest";

/// Columns of [`ManifestRow`].
const MANIFEST_COLUMNS: &str = "bucket, key, revision, status, reason, next_line, next_byte, lines, accepted, rejected, stale, duplicates, version";

/// A row of the manifests table as D1 returns it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ManifestRow {
    bucket: String,
    key: String,
    revision: String,
    status: String,
    reason: Option<String>,
    next_line: i64,
    next_byte: i64,
    lines: i64,
    accepted: i64,
    rejected: i64,
    stale: i64,
    duplicates: i64,
    version: i64,
}

impl ManifestRow {
    /// The manifest it holds; an error names what does not read back.
    pub fn into_manifest(self) -> Result<ObjectManifest, String> {
        let status = Status::parse(&self.status).ok_or_else(|| format!("status {:?} is not a status", self.status))?;
        let count = |n: i64, what: &str| u64::try_from(n).map_err(|_| format!("{what} {n} is negative"));
        Ok(ObjectManifest {
            status,
            checkpoint: Checkpoint {
                line: count(self.next_line.saturating_sub(1), "next_line - 1")?,
                byte: count(self.next_byte, "next_byte")?,
            },
            counts: Counts {
                lines: count(self.lines, "lines")?,
                accepted: count(self.accepted, "accepted")?,
                rejected: count(self.rejected, "rejected")?,
                stale: count(self.stale, "stale")?,
                duplicates: count(self.duplicates, "duplicates")?,
            },
            bucket: self.bucket,
            key: self.key,
            revision: self.revision,
            reason: self.reason,
            version: self.version,
        })
    }
}

#[cfg(target_arch = "wasm32")]
pub use ingest::{Chunks, IngestSettings, ingest};

#[cfg(target_arch = "wasm32")]
mod ingest;

#[cfg(test)]
mod tests {
    use super::*;

    /// A line as the Worker reads it: its number, end and text, or why it
    /// is not one.
    fn all(splitter: &mut ObjectLines, max: usize, chunks: &[&[u8]]) -> Vec<(u64, u64, Result<String, String>)> {
        let mut lines = Vec::new();
        for c in chunks {
            lines.extend(splitter.push(c).unwrap());
        }
        lines.extend(splitter.finish().unwrap());
        lines
            .iter()
            .map(|l| (l.number, l.end, l.content.text(max).map(str::to_owned).map_err(|e| e.to_string())))
            .collect()
    }

    #[test]
    fn lines_split_across_chunks_carry_numbers_and_end_offsets_and_resume_from_a_checkpoint() {
        let lines = all(&mut ObjectLines::new(false, 100, 1, 0), 100, &[b"ab", b"c\r\nde\n", b"\nlast"]);
        assert_eq!(
            lines,
            vec![
                (1, 5, Ok("abc".into())),
                (2, 8, Ok("de".into())),
                (3, 9, Ok(String::new())),
                (4, 13, Ok("last".into()))
            ]
        );
        let resumed = all(&mut ObjectLines::new(false, 100, 7, 40), 100, &[b"x\ny\n"]);
        assert_eq!((resumed[0].0, resumed[0].1, resumed[1].0, resumed[1].1), (7, 42, 8, 44));
    }

    #[test]
    fn a_gzipped_crlf_line_at_the_limit_reads_as_on_lambda_and_bad_gzip_is_an_error() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"abcd\r\nabcde\r\n").unwrap();
        let bytes = gz.finish().unwrap();
        for size in 1..bytes.len() {
            let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
            assert_eq!(
                all(&mut ObjectLines::new(true, 4, 1, 0), 4, &chunks),
                vec![(1, 6, Ok("abcd".into())), (2, 13, Err("line is 5 bytes, over the limit of 4".into()))],
                "gzip chunks of {size} bytes"
            );
        }
        assert!(ObjectLines::new(true, 100, 1, 0).push(b"definitely not gzip").is_err());
    }

    #[test]
    fn invalid_utf8_and_overlong_lines_are_bad_lines_not_failures() {
        let lines = all(&mut ObjectLines::new(false, 4, 1, 0), 4, &[b"\xff\xfe\n12", b"345678", b"9\nok\n"]);
        assert_eq!(lines[0].2, Err("line is not valid UTF-8".into()));
        assert_eq!(lines[1].2, Err("line is 9 bytes, over the limit of 4".into()));
        assert_eq!(lines[2].2, Ok("ok".into()));
    }

    #[test]
    fn a_manifest_writes_its_checkpoint_as_the_next_line_and_reads_back_from_its_row() {
        let mut m = ObjectManifest::new("b", "k.ndjson", "etag");
        for decided in [Ok(Outcome::Applied), Ok(Outcome::Stale), Ok(Outcome::Duplicate), Err("bad".into())] {
            m.count(&decided);
        }
        m.checkpoint = Checkpoint { line: 6, byte: 120 };
        let insert = m.write("manifests", false, "now").pop().unwrap();
        assert!(insert.sql().starts_with("INSERT INTO manifests"), "{}", insert.sql());
        let ints: Vec<&Param> = insert.params().iter().filter(|p| matches!(p, Param::Int(_))).collect();
        assert_eq!(ints, [7, 120, 4, 1, 1, 1, 1].map(Param::Int).iter().collect::<Vec<_>>());
        let update = m.write("manifests", true, "now");
        assert_eq!(update.len(), 2, "guarded");
        assert_eq!(update[0].params().last(), Some(&Param::Int(0)), "by the version read");
        let row: ManifestRow = serde_json::from_value(serde_json::json!({
            "bucket": "b", "key": "k.ndjson", "revision": "etag", "status": "IN_PROGRESS", "reason": null,
            "next_line": 7, "next_byte": 120, "lines": 4, "accepted": 1, "rejected": 1, "stale": 1, "duplicates": 1,
            "version": 0,
        }))
        .unwrap();
        assert_eq!(row.into_manifest().unwrap(), m);
        let odd: ManifestRow = serde_json::from_value(serde_json::json!({
            "bucket": "b", "key": "k", "revision": "r", "status": "DONE", "reason": null,
            "next_line": 1, "next_byte": -1, "lines": 0, "accepted": 0, "rejected": 0, "stale": 0, "duplicates": 0,
            "version": 1,
        }))
        .unwrap();
        assert!(odd.into_manifest().unwrap_err().contains("\"DONE\""));
    }
}
