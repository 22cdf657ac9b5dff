//! Replays the fuzz corpora (`fuzz/corpus/<target>/`) through the fuzz
//! targets' bodies, so inputs that once found a bug, and the fuzzer's
//! interesting inputs, are rerun by every `cargo test` without libFuzzer or a
//! nightly toolchain. The bodies are `fuzz/src/lib.rs`, included here by path:
//! the test runs exactly the code the fuzzer runs, panics and invariants alike.
//! See fuzz/README.md for running the fuzzer itself.

use std::any::Any;
use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

#[path = "../../../fuzz/src/lib.rs"]
mod harness;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The regular files of a directory (libFuzzer's `.tmp*` scratch excluded), sorted.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display())).path())
        .filter(|path| path.is_file() && !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    files
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// Runs `body` on every file of the target's corpus and returns, for each
/// input that panics, its file and panic message. Fails if the corpus is
/// missing or empty: a deleted corpus must not pass silently.
fn replay(target: &str, body: fn(&[u8])) -> Vec<String> {
    let dir = fuzz_dir().join("corpus").join(target);
    assert!(dir.is_dir(), "fuzz corpus {} is missing", dir.display());
    let files = files_in(&dir);
    assert!(!files.is_empty(), "fuzz corpus {} is empty", dir.display());
    files
        .iter()
        .filter_map(|file| {
            let data = std::fs::read(file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
            catch_unwind(AssertUnwindSafe(|| body(&data))).err().map(|payload| {
                let name = file.strip_prefix(fuzz_dir()).unwrap_or(file).display();
                format!("fuzz/{name}: {}", panic_message(payload.as_ref()))
            })
        })
        .collect()
}

/// Every corpus input of every target runs without a panic or a broken
/// invariant (the order event round-trips, order images survive their item
/// form, lines account for every byte): see `fuzz/src/lib.rs`.
#[test]
fn every_fuzz_corpus_input_runs_clean() {
    let failures: Vec<String> = harness::TARGETS.iter().flat_map(|(target, body)| replay(target, *body)).collect();
    assert!(failures.is_empty(), "{} fuzz corpus inputs fail:\n{}", failures.len(), failures.join("\n"));
}

/// The harness, the fuzz targets and the corpora name the same set of targets,
/// so a new target cannot go without a corpus, nor a corpus without its replay.
#[test]
fn every_fuzz_target_has_a_corpus_and_a_replay() {
    let harness: BTreeSet<String> = harness::TARGETS.iter().map(|(name, _)| (*name).to_owned()).collect();
    let sources: BTreeSet<String> = files_in(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|path| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    let corpus_dir = fuzz_dir().join("corpus");
    let corpora: BTreeSet<String> = std::fs::read_dir(&corpus_dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", corpus_dir.display()))
        .map(|entry| entry.expect("corpus directory entry").path())
        .filter(|path| path.is_dir())
        .filter_map(|path| path.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    assert_eq!(sources, harness, "fuzz/fuzz_targets/*.rs vs harness::TARGETS");
    assert_eq!(corpora, harness, "fuzz/corpus/*/ vs harness::TARGETS");
}
