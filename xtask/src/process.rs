//! Child processes of the local stack, and their cleanup.
//!
//! Each child (moto, DynamoDB Local, the function processes) runs in its own process group under
//! a tiny `sh` guardian that leads the group: it starts the program, and if
//! the xtask process that owns it disappears (killed with SIGKILL, a crashed
//! test binary) it kills the whole group. On a normal exit, [`ChildGroup`]'s
//! `Drop` kills the group at once. Ctrl-C reaches only the terminal's
//! foreground group, so the commands catch it and drop their stack (see
//! `main.rs`).
//!
//! Every stack also owns a run directory `<target>/local-stack/<pid>-<n>/`
//! (`<target>`: cargo's target directory, see [`crate::workspace::target_dir`]) with
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

/// The directory holding all run directories: `local-stack/` in the
/// workspace's target directory.
pub fn runs_root(root: &Path) -> Result<PathBuf> {
    Ok(crate::workspace::target_dir(root)?.join("local-stack"))
}

/// A stack's run directory; removed on drop (kept, and its path printed, when
/// the thread is panicking so a failed test's logs can be read).
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    keep: std::sync::atomic::AtomicBool,
}

impl RunDir {
    /// Cleans up after dead runs, then creates a fresh directory for this
    /// one under [`runs_root`] of the workspace at `root`.
    pub fn create(root: &Path) -> Result<Self> {
        Self::create_in(&runs_root(root)?)
    }

    /// [`RunDir::create`] under `parent`.
    pub fn create_in(parent: &Path) -> Result<Self> {
        cleanup_stale_runs(parent);
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

/// Where a guardian writes its program's exit status: beside its log.
fn status_path(log: &Path) -> PathBuf {
    log.with_extension("status")
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

/// Removes from `command`'s environment what cargo sets for the package
/// whose binary or test is running (`CARGO_PKG_*`, `CARGO_MANIFEST_*`,
/// `CARGO_CRATE_NAME`, `OUT_DIR`, ...). A build started with them differs
/// from one started without: ring's build script reruns when
/// `CARGO_PKG_NAME` changes (it lists it in `rerun-if-env-changed`), and
/// with it rustls, the SDK's HTTP client and everything above them. So
/// `cargo xtask bench` rebuilt them twice per run (its own `cargo run`, then
/// the bench's build of the binaries), and `cargo lambda watch` started from
/// a test (as `integration-tests`) rebuilt what xtask had just built (as
/// `xtask`). Seen with `cargo build -v`: "Dirty ring: the env variable
/// CARGO_PKG_NAME changed".
pub fn without_package_env(command: &mut Command) -> &mut Command {
    const EXACT: [&str; 6] = [
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "OUT_DIR",
        "CARGO_BIN_EXE",
    ];
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || name.starts_with("CARGO_BIN_EXE_")
            || EXACT.contains(&name)
        {
            command.env_remove(name);
        }
    }
    command
}

/// A program running in its own process group under a guardian.
#[derive(Debug)]
pub struct ChildGroup {
    name: String,
    child: Child,
    log: PathBuf,
}

impl ChildGroup {
    /// Starts `program args` with our environment plus `envs`, output
    /// appended to `<run>/<name>.log`.
    pub fn spawn(
        run: &RunDir,
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(String, String)],
        cwd: &Path,
    ) -> Result<Self> {
        Self::spawn_inner(run, name, program, args, envs, false, cwd)
    }

    /// Starts `program args` with exactly the environment `envs` (which must
    /// hold a `PATH` for the guardian's `sleep`).
    pub fn spawn_with_exact_env(
        run: &RunDir,
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(String, String)],
        cwd: &Path,
    ) -> Result<Self> {
        Self::spawn_inner(run, name, program, args, envs, true, cwd)
    }

    fn spawn_inner(
        run: &RunDir,
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(String, String)],
        clear_env: bool,
        cwd: &Path,
    ) -> Result<Self> {
        let log = run.path().join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating a log file handle")?;
        let owner = std::process::id();
        // The guardian: `$0` carries the owner marker (visible in
        // /proc/<pid>/cmdline); the program runs in the background so the
        // shell can watch the owner; `kill 0` ends the whole group.
        // When the program ends first, its exit status goes to
        // `<name>.status` (a process killed by signal N shows as 128 + N).
        let status_file = status_path(&log);
        let status_file = status_file.to_string_lossy().replace('\'', r"'\''");
        let script = format!(
            r#""$@" & child=$!
while kill -0 {owner} 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep {GUARDIAN_PERIOD_SECONDS}; done
if ! kill -0 "$child" 2>/dev/null; then wait "$child"; echo $? > '{status_file}'; fi
kill -TERM 0"#
        );
        let mut command = Command::new("sh");
        if clear_env {
            command.env_clear();
        }
        // A child that runs cargo: with our package's variables it would
        // rebuild what the other builds made.
        without_package_env(&mut command);
        let child = command
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

    /// How the program ended, once its guardian has seen it end by itself:
    /// `exit status 1`, `killed by signal 9`. `None` while it runs (and when
    /// it was stopped with its group).
    pub fn exit_status(&self) -> Option<String> {
        let code: i32 = fs::read_to_string(status_path(&self.log)).ok()?.trim().parse().ok()?;
        Some(if (129..160).contains(&code) {
            format!("killed by signal {}", code - 128)
        } else {
            format!("exit status {code}")
        })
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

    /// The guardian's pid: every process the program starts descends from it.
    pub fn pid(&self) -> u32 {
        self.child.id()
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

/// A running process as Linux's `/proc` shows it.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    pub pid: u32,
    pub exe: PathBuf,
    pub cwd: PathBuf,
    /// `KEY=VALUE` pairs, in order.
    pub env: Vec<(String, String)>,
}

/// The pids of the processes descending from `ancestor`, ascending.
pub fn descendants(ancestor: u32) -> Vec<u32> {
    let mut parent_of = std::collections::HashMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(ppid) = fs::read_to_string(entry.path().join("stat")).ok().as_deref().and_then(parent_pid) {
            parent_of.insert(pid, ppid);
        }
    }
    let descends = |mut pid: u32| {
        // Bounded: a pid cycle cannot happen, but a racing /proc read is no
        // reason to loop forever.
        for _ in 0..64 {
            match parent_of.get(&pid) {
                Some(&p) if p == ancestor => return true,
                Some(&p) if p > 1 => pid = p,
                _ => return false,
            }
        }
        false
    };
    let mut found: Vec<u32> = parent_of.keys().copied().filter(|pid| descends(*pid)).collect();
    found.sort_unstable();
    found
}

/// Processes descending from `ancestor` whose executable's file name is
/// `name` (zombies excluded: they have no executable).
pub fn descendants_named(ancestor: u32, name: &str) -> Vec<ProcessInfo> {
    descendants(ancestor)
        .into_iter()
        .filter_map(|pid| {
            let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
            (exe.file_name()? == name).then_some(())?;
            let cwd = fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
            let env = fs::read(format!("/proc/{pid}/environ")).ok()?;
            let env = env
                .split(|b| *b == 0)
                .filter_map(|kv| {
                    let kv = String::from_utf8_lossy(kv);
                    kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))
                })
                .collect();
            Some(ProcessInfo { pid, exe, cwd, env })
        })
        .collect()
}

/// Memory of one process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub pid: u32,
    /// `VmHWM`: the peak resident set, KiB.
    pub peak_kib: u64,
    /// `VmRSS`: the resident set now, KiB.
    pub rss_kib: u64,
}

/// The memory of the largest process (by peak) under a child group's
/// guardian: the emulator itself (the guardian's `sh` and `sleep` are tiny).
pub fn largest_descendant_memory(guardian: u32) -> Option<Memory> {
    descendants(guardian)
        .into_iter()
        .filter_map(|pid| {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            Some(Memory { pid, peak_kib: status_kib(&status, "VmHWM")?, rss_kib: status_kib(&status, "VmRSS")? })
        })
        .max_by_key(|m| m.peak_kib)
}

/// A `Name:   1234 kB` field of `/proc/<pid>/status`, in KiB.
fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
}

/// The parent pid from the text of `/proc/<pid>/stat` (the command name, in
/// parentheses, may itself hold spaces and parentheses).
fn parent_pid(stat: &str) -> Option<u32> {
    stat_fields(stat)?.nth(1)?.parse().ok()
}

/// The fields of `/proc/<pid>/stat` after the command name: state, ppid, ...
fn stat_fields(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat.rsplit_once(')')?.1.split_whitespace())
}

/// Sends SIGKILL to `pid` and waits until it has died (gone, or a zombie its
/// parent has not reaped yet).
pub fn kill_and_wait(pid: u32, timeout: Duration) -> Result<()> {
    let status = Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    anyhow::ensure!(status.success(), "kill -KILL {pid} failed ({status})");
    let deadline = Instant::now() + timeout;
    loop {
        let state = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| stat_fields(&s)?.next().map(str::to_owned));
        if state.as_deref().is_none_or(|s| s == "Z" || s == "X") {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "process {pid} still alive {timeout:?} after SIGKILL");
        std::thread::sleep(Duration::from_millis(5));
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

    #[test]
    fn status_fields_are_read_in_kib() {
        let status = "Name:\tjava\nVmHWM:\t  123456 kB\nVmRSS:\t   99 kB\n";
        assert_eq!(status_kib(status, "VmHWM"), Some(123_456));
        assert_eq!(status_kib(status, "VmRSS"), Some(99));
        assert_eq!(status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn parent_pid_reads_past_a_command_name_with_spaces_and_parentheses() {
        assert_eq!(parent_pid("4242 (a b) c)) S 17 4242 4242 0 -1"), Some(17));
        assert_eq!(parent_pid("garbage"), None);
    }

    #[test]
    fn a_killed_descendant_is_found_then_dies() {
        let root = std::env::temp_dir().join(format!("xtask-proc-test-{}", std::process::id()));
        let run = RunDir::create_in(&root).unwrap();
        // A copy of sleep under its own name: the guardian runs `sleep` too.
        let sleeper = root.join("xtask-test-sleeper");
        fs::copy("/usr/bin/sleep", &sleeper).unwrap();
        let group = ChildGroup::spawn(&run, "sleeper", &sleeper, &["30".into()], &[], Path::new("/")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let found = loop {
            let found = descendants_named(group.pid(), "xtask-test-sleeper");
            if !found.is_empty() || Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].env.iter().any(|(k, _)| k == "PATH"));
        kill_and_wait(found[0].pid, Duration::from_secs(5)).unwrap();
        assert!(descendants_named(group.pid(), "xtask-test-sleeper").is_empty());
        drop(group);
        drop(run);
        fs::remove_dir_all(&root).unwrap();
    }
}
