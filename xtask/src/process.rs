//! Child processes of the local stack, and their cleanup.
//!
//! Each child (moto, `cargo lambda watch`) runs in its own process group under
//! a tiny `sh` guardian that leads the group: it starts the program, and if
//! the xtask process that owns it disappears (killed with SIGKILL, a crashed
//! test binary) it kills the whole group. On a normal exit, [`ChildGroup`]'s
//! `Drop` kills the group at once. Ctrl-C reaches only the terminal's
//! foreground group, so the commands catch it and drop their stack (see
//! `main.rs`).
//!
//! Every stack also owns a run directory `target/local-stack/<pid>-<n>/` with
//! the children's logs and process group ids. A run that was killed midway
//! leaves its directory behind; the next start removes directories of dead
//! owners and kills any group still recorded there ([`cleanup_stale_runs`]).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// How often the guardian checks that its owner is alive: the longest an
/// orphaned emulator outlives a killed xtask.
const GUARDIAN_PERIOD_SECONDS: u32 = 1;

/// How long a group gets to exit on SIGTERM before it is sent SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// The file in a run directory listing its process group ids, one a line.
const PGIDS_FILE: &str = "pgids";

/// Distinguishes several stacks of one process (parallel tests).
static RUN_SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// The directory holding all run directories.
pub fn runs_root(root: &Path) -> PathBuf {
    root.join("target").join("local-stack")
}

/// A stack's run directory; removed on drop (kept, and its path printed, when
/// the thread is panicking so a failed test's logs can be read).
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    keep: std::sync::atomic::AtomicBool,
}

impl RunDir {
    /// Cleans up after dead runs, then creates a fresh directory for this one.
    pub fn create(root: &Path) -> Result<Self> {
        let parent = runs_root(root);
        cleanup_stale_runs(&parent);
        let n = RUN_SEQUENCE.fetch_add(1, Ordering::SeqCst);
        let path = parent.join(format!("{}-{n}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("removing old run directory {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating run directory {}", path.display()))?;
        Ok(Self { path, keep: std::sync::atomic::AtomicBool::new(false) })
    }

    /// Keeps the directory (logs) after the stack stops, until the next
    /// run's cleanup.
    pub fn keep(&self) {
        self.keep.store(true, Ordering::SeqCst);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record_pgid(&self, pgid: u32) -> Result<()> {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path.join(PGIDS_FILE))
            .context("recording a process group id")?;
        writeln!(f, "{pgid}").context("recording a process group id")
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if std::thread::panicking() || self.keep.load(Ordering::SeqCst) {
            eprintln!("local stack logs kept in {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Removes run directories whose owning process is gone, killing any process
/// group they still record (a demo killed with SIGKILL before its guardians
/// noticed). Best effort: failures here must not stop a new run.
pub fn cleanup_stale_runs(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if owner == std::process::id() || process_alive(owner) {
            continue;
        }
        if let Ok(pgids) = fs::read_to_string(entry.path().join(PGIDS_FILE)) {
            for pgid in pgids.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                if is_our_guardian(pgid, owner) {
                    kill_group(pgid, "KILL");
                }
            }
        }
        let _ = fs::remove_dir_all(entry.path());
    }
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether `pgid` is still a guardian started for `owner` (guards against a
/// recycled pid: the guardian's command line names its owner).
fn is_our_guardian(pgid: u32, owner: u32) -> bool {
    fs::read(format!("/proc/{pgid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(&format!("{GUARDIAN_MARKER}{owner}")))
        .unwrap_or(false)
}

/// Marks a guardian's command line with its owner's pid.
const GUARDIAN_MARKER: &str = "xtask-local-stack-owner=";

fn kill_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A program running in its own process group under a guardian.
#[derive(Debug)]
pub struct ChildGroup {
    name: String,
    child: Child,
    log: PathBuf,
}

impl ChildGroup {
    /// Starts `program args` with `envs`, output appended to `<run>/<name>.log`.
    pub fn spawn(
        run: &RunDir,
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(String, String)],
        cwd: &Path,
    ) -> Result<Self> {
        let log = run.path().join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating a log file handle")?;
        let owner = std::process::id();
        // The guardian: `$0` carries the owner marker (visible in
        // /proc/<pid>/cmdline); the program runs in the background so the
        // shell can watch the owner; `kill 0` ends the whole group.
        let script = format!(
            r#""$@" & child=$!
while kill -0 {owner} 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep {GUARDIAN_PERIOD_SECONDS}; done
kill -TERM 0"#
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(format!("{GUARDIAN_MARKER}{owner}"))
            .arg(program)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        run.record_pgid(child.id())?;
        Ok(Self { name: name.to_owned(), child, log })
    }

    /// Whether the program (or its guardian) has exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// The program's log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last lines of the log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Ends the group: SIGTERM, then SIGKILL after a grace period.
    pub fn stop(&mut self) {
        if self.exited() {
            // The guardian is gone but the group may still have members.
            kill_group(self.child.id(), "KILL");
            return;
        }
        let pgid = self.child.id();
        kill_group(pgid, "TERM");
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            if self.exited() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        kill_group(pgid, "KILL");
        let _ = self.child.wait();
    }
}

impl Drop for ChildGroup {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_runs_of_dead_owners_are_removed_live_ones_kept() {
        let parent = std::env::temp_dir().join(format!("xtask-runs-test-{}", std::process::id()));
        // Above Linux's pid_max (2^22): no process has this pid.
        let dead = parent.join("4194399-0");
        let live = parent.join(format!("{}-7", std::process::id()));
        let unrelated = parent.join("notes");
        for dir in [&dead, &live, &unrelated] {
            fs::create_dir_all(dir).unwrap();
        }
        fs::write(dead.join(PGIDS_FILE), "4194399\n").unwrap();
        cleanup_stale_runs(&parent);
        assert!(!dead.exists());
        assert!(live.exists());
        assert!(unrelated.exists());
        fs::remove_dir_all(&parent).unwrap();
    }
}
