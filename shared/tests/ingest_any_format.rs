//! `shared::ingest` with a domain that is not orders: sensor readings, one
//! per NDJSON line or CSV row, committed by a store of the test's own. The
//! store is in memory (this is the ingest logic's test; the DynamoDB path
//! is s3-ingest's, tested against the emulator).

use std::sync::Mutex;

use shared::batch::{Outcome, Summary};
use shared::dynamo::StoreError;
use shared::event::s3::ObjectRef;
use shared::ingest::{ChunkStore, Deadline, IngestOptions, LineParser, ingest_object};
use shared::manifest::{Manifest, ManifestFn, ObjectStatus};
use shared::object::MemorySource;
use shared::quarantine::{QuarantineStore, Quarantined};

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
struct Reading {
    sensor: String,
    value: String,
}

struct Readings;

/// Why a line is not a reading.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotAReading(String);

impl LineParser for Readings {
    type Record = Reading;
    type Error = NotAReading;

    fn parse(&self, json: &str) -> Result<Reading, NotAReading> {
        let r: Reading = serde_json::from_str(json).map_err(|e| NotAReading(format!("not a reading: {e}")))?;
        r.value.parse::<f64>().map_err(|_| NotAReading(format!("value: {:?} is not a number", r.value)))?;
        Ok(r)
    }
}

#[derive(Default)]
struct Store {
    readings: Mutex<Vec<Reading>>,
    manifest: Mutex<Option<Manifest>>,
    quarantined: Mutex<Vec<Quarantined>>,
}

impl QuarantineStore for Store {
    async fn write_quarantine(&self, records: &[Quarantined]) -> Result<(), StoreError> {
        self.quarantined.lock().unwrap().extend(records.iter().cloned());
        Ok(())
    }
}

impl ChunkStore<Reading> for Store {
    async fn get_manifest(&self, _: &str, _: &str, _: &str) -> Result<Option<Manifest>, StoreError> {
        Ok(self.manifest.lock().unwrap().clone())
    }

    async fn commit_chunk(&self, records: &[Reading], manifest: &ManifestFn<'_>) -> Result<Vec<Outcome>, StoreError> {
        let outcomes = vec![Outcome::Applied; records.len()];
        let write = manifest(&outcomes);
        let mut stored = self.manifest.lock().unwrap();
        // The manifest's condition, as a transaction would check it.
        if stored.as_ref().map(|m| m.checkpoint) != write.expected {
            return Err(StoreError::ManifestConflict { bucket: "b".into(), key: "k".into(), line: 0 });
        }
        self.readings.lock().unwrap().extend(records.iter().cloned());
        *stored = Some(write.manifest);
        Ok(outcomes)
    }
}

fn object(key: &str) -> ObjectRef {
    ObjectRef {
        bucket: "b".into(),
        key: key.into(),
        size: None,
        e_tag: Some("etag".into()),
        version_id: None,
        sequencer: None,
    }
}

const OPTIONS: IngestOptions = IngestOptions { max_line_bytes: 1024, deadline_margin: std::time::Duration::ZERO };

#[tokio::test]
async fn csv_readings_are_ingested_and_bad_rows_rejected_with_their_line() {
    let mut objects = MemorySource::new();
    objects.insert("b", "readings.csv", "sensor,value\ns1,3.5\ns2,warm\ns3,1\n\"s4,2\n");
    let store = Store::default();
    let mut summary = Summary::default();
    let report =
        ingest_object(&store, &objects, &Readings, &OPTIONS, &object("readings.csv"), &Deadline::None, &mut summary)
            .await
            .unwrap();
    assert_eq!(report.result, "COMPLETED");
    let sensors: Vec<String> = store.readings.lock().unwrap().iter().map(|r| r.sensor.clone()).collect();
    assert_eq!(sensors, ["s1", "s3"]);
    let rejected: Vec<(String, String)> =
        store.quarantined.lock().unwrap().iter().map(|q| (q.record_id.clone(), q.reason.clone())).collect();
    assert_eq!(
        rejected,
        [
            ("line-3".to_owned(), "value: \"warm\" is not a number".to_owned()),
            ("line-5".to_owned(), "CSV: unterminated quoted field".to_owned()),
        ]
    );
    let manifest = store.manifest.lock().unwrap().clone().unwrap();
    assert_eq!(manifest.status, ObjectStatus::Completed);
    assert_eq!((manifest.counts.lines, manifest.counts.accepted, manifest.counts.rejected), (4, 2, 2));
    assert_eq!(summary, Summary { applied: 2, quarantined: 2, ..Summary::default() });
}

#[tokio::test]
async fn an_interrupted_object_resumes_from_its_checkpoint_to_one_clean_pass() {
    let lines: String = (0..250).map(|i| format!("{{\"sensor\":\"s{i}\",\"value\":\"{i}\"}}\n")).collect();
    let mut objects = MemorySource::new();
    objects.insert("b", "readings.ndjson", lines.as_bytes().to_vec());
    let store = Store::default();
    let target = object("readings.ndjson");

    // The deadline passes after the first chunk: the invocation stops at
    // its checkpoint.
    let mut first = Summary::default();
    let report = ingest_object(&store, &objects, &Readings, &OPTIONS, &target, &Deadline::after_chunks(1), &mut first)
        .await
        .unwrap();
    assert_eq!(report.result, "UNFINISHED");
    assert_eq!(store.readings.lock().unwrap().len(), shared::ingest::CHUNK_RECORDS);

    let mut second = Summary::default();
    let report =
        ingest_object(&store, &objects, &Readings, &OPTIONS, &target, &Deadline::None, &mut second).await.unwrap();
    assert_eq!(report.result, "COMPLETED");
    let sensors: Vec<String> = store.readings.lock().unwrap().iter().map(|r| r.sensor.clone()).collect();
    let expected: Vec<String> = (0..250).map(|i| format!("s{i}")).collect();
    assert_eq!(sensors, expected, "every line once, in order");
    assert_eq!(first.applied + second.applied, 250);

    // Notified again: completed, skipped.
    let mut third = Summary::default();
    let report =
        ingest_object(&store, &objects, &Readings, &OPTIONS, &target, &Deadline::None, &mut third).await.unwrap();
    assert_eq!(report.result, "SKIPPED");
    assert_eq!(store.readings.lock().unwrap().len(), 250);
}
