//! The example events published with `aws_lambda_events` (its `src/fixtures/`)
//! parse without error through our parsers. Read from the crate's source in
//! the Cargo registry, at the version in Cargo.lock.

use std::path::PathBuf;

use serde_json::Value;
use shared::event::{envelope, records, s3, sqs, stream};

fn locked_version() -> String {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).unwrap();
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"aws_lambda_events\"" {
            let version = lines.next().unwrap();
            return version.trim_start_matches("version = \"").trim_end_matches('"').to_owned();
        }
    }
    panic!("aws_lambda_events is not in Cargo.lock");
}

fn fixtures_dir() -> PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cargo"));
    let crate_dir = format!("aws_lambda_events-{}", locked_version());
    let registry = cargo_home.join("registry/src");
    for index in std::fs::read_dir(&registry).expect("the Cargo registry source exists") {
        let dir = index.unwrap().path().join(&crate_dir).join("src/fixtures");
        if dir.is_dir() {
            return dir;
        }
    }
    panic!("{crate_dir} not found under {}", registry.display());
}

fn load(name: &str) -> Value {
    let path = fixtures_dir().join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

#[test]
fn s3_fixtures_parse() {
    for name in ["example-s3-event.json", "example-s3-event-with-decoded.json"] {
        let parsed = s3::from_value(&load(name), 0);
        assert!(!parsed.is_empty(), "{name}");
        for n in parsed {
            assert!(matches!(n, Ok(s3::Notification::ObjectCreated(_))), "{name}: {n:?}");
        }
    }
}

#[test]
fn sqs_fixtures_parse() {
    for name in ["example-sqs-event.json", "example-sqs-event-obj.json"] {
        let event = load(name);
        let recs = records(&event).unwrap();
        assert!(!recs.is_empty());
        for r in recs {
            sqs::Message::parse(r).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

#[test]
fn sns_fixtures_parse() {
    for name in ["example-sns-event.json", "example-sns-event-obj.json", "example-sns-event-pascal-case.json"] {
        let event = load(name);
        for r in records(&event).unwrap() {
            let message = envelope::sns_message(r).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!message.message.is_empty(), "{name}");
        }
    }
}

#[test]
fn dynamodb_fixtures_parse() {
    for name in [
        "example-dynamodb-event.json",
        "example-dynamodb-event-null-items.json",
        "example-dynamodb-event-record-with-optional-fields.json",
    ] {
        let event = load(name);
        // One fixture is a bare record rather than an event.
        let recs = records(&event).unwrap_or(std::slice::from_ref(&event));
        assert!(!recs.is_empty());
        for r in recs {
            stream::Record::parse(r).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

#[test]
fn eventbridge_fixtures_parse() {
    for name in ["example-eventbridge-event-obj.json", "example-eventbridge-schedule.json"] {
        envelope::eventbridge(&load(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Not S3 events: the S3 parser says so instead of guessing.
        let parsed = s3::from_value(&load(name), 0);
        assert!(matches!(&parsed[..], [Err(e)] if e.to_string().contains("not aws.s3")), "{name}: {parsed:?}");
    }
}
