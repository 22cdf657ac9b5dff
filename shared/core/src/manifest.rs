//! The manifest of an ingested object: where its read stopped (the
//! checkpoint) and how its lines ended (the counters). Each chunk of lines
//! commits together with the manifest that covers it, so an object resumes
//! exactly where the last commit left it, on any platform.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::batch::Outcome;

/// Processing state of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ObjectStatus {
    /// `IN_PROGRESS`: chunks are committed up to the checkpoint; the rest is
    /// still to read (by this invocation, or a retry that resumes there).
    InProgress,
    /// `COMPLETED`: every line is counted.
    Completed,
    /// `FAILED`: the object cannot be processed (for example, an unsupported
    /// format).
    Failed,
}

impl ObjectStatus {
    /// The `status` attribute's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "IN_PROGRESS",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
        }
    }
}

/// Where processing of an object stopped: the next line to read, and the byte
/// offset of that line in the (uncompressed) object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Number of the last line committed (1-based; 0: none yet). Reading
    /// resumes at line `line + 1`.
    pub line: u64,
    /// Byte offset of line `line + 1` in the decoded object.
    pub byte: u64,
}

/// Per-object accounting: every line ends in exactly one of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Record lines read (blank lines and a CSV header row are not records):
    /// the sum of the four counters below.
    pub lines: u64,
    /// Lines whose record was applied.
    pub accepted: u64,
    /// Lines quarantined as unparseable or invalid.
    pub rejected: u64,
    /// Lines whose record is older than the stored state.
    pub stale: u64,
    /// Lines whose record was already applied.
    pub duplicates: u64,
}

/// The manifest item of one object revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The object's bucket.
    pub bucket: String,
    /// The object's key (decoded).
    pub key: String,
    /// versionId, or eTag when unversioned.
    pub revision: String,
    /// How far processing of the object got.
    pub status: ObjectStatus,
    /// Lines counted up to the checkpoint.
    pub counts: Counts,
    /// Where the next chunk starts.
    pub checkpoint: Checkpoint,
    /// The header row of a CSV object, kept so a resumed read can parse rows.
    pub csv_header: Option<String>,
    /// When the first invocation started on this revision.
    pub started_at: DateTime<Utc>,
    /// When processing ended (`COMPLETED` or `FAILED`); `None` while in progress.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A manifest write, conditional on the checkpoint the writer started from, so
/// two invocations working on one object cannot both commit the same chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestWrite {
    /// The manifest as it is after the chunk.
    pub manifest: Manifest,
    /// `None`: the manifest must not exist yet.
    pub expected: Option<Checkpoint>,
}

/// Builds the manifest write of a chunk from its records' outcomes.
pub type ManifestFn<'a> = dyn Fn(&[Outcome]) -> ManifestWrite + Send + Sync + 'a;
