//! The project-local Python virtual environment `.venv/` with the local
//! stack's tools (`moto_server`, `cargo-lambda`, `cfn-lint`), created from
//! `xtask/requirements.txt` when missing or out of date.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The pinned requirements, compiled in so a change triggers a reinstall.
const REQUIREMENTS: &str = include_str!("../requirements.txt");

/// Written into the venv after a successful install: the requirements it
/// holds. A venv without it (or with other requirements) is (re)installed.
const STAMP_FILE: &str = "xtask-requirements.txt";

/// The tools the stack needs, each checked after install.
const TOOLS: [&str; 3] = ["moto_server", "cargo-lambda", "cfn-lint"];

/// Serialises installs within this process.
static INSTALL_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The venv of the workspace at `root`.
#[derive(Debug, Clone)]
pub struct Venv {
    dir: PathBuf,
}

impl Venv {
    pub fn at(root: &Path) -> Self {
        Self { dir: root.join(".venv") }
    }

    /// The venv's `bin/`.
    pub fn bin(&self) -> PathBuf {
        self.dir.join("bin")
    }

    /// A tool in the venv.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin().join(name)
    }

    /// `PATH` with the venv's `bin/` first (`cargo lambda` finds
    /// `cargo-lambda` there, and cargo-lambda finds zig).
    pub fn path_env(&self) -> OsString {
        let mut paths = vec![self.bin()];
        if let Some(path) = std::env::var_os("PATH") {
            paths.extend(std::env::split_paths(&path));
        }
        std::env::join_paths(paths).unwrap_or_default()
    }

    /// Whether the venv holds exactly the pinned requirements.
    pub fn is_current(&self) -> bool {
        let stamp = fs::read_to_string(self.dir.join(STAMP_FILE)).unwrap_or_default();
        stamp == REQUIREMENTS && TOOLS.iter().all(|t| self.tool(t).exists())
    }

    /// Creates or updates the venv when needed. Prints what it does: the first
    /// install downloads about 100 MB.
    pub fn ensure(&self) -> Result<()> {
        // Tests of one binary start stacks in parallel: one installs, the
        // others wait and find the venv current.
        let _guard = INSTALL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_current() {
            return Ok(());
        }
        let python = self.bin().join("python");
        if !python.exists() {
            eprintln!("==> creating {} (python3 -m venv)", self.dir.display());
            run(Command::new("python3").arg("-m").arg("venv").arg(&self.dir))
                .context("creating the Python virtual environment needs `python3` with the venv module (Debian/Ubuntu: apt-get install python3-venv)")?;
        }
        eprintln!("==> installing the local stack tools (moto, cargo-lambda, cfn-lint) into .venv");
        let requirements = self.dir.join("xtask-requirements.in");
        fs::write(&requirements, REQUIREMENTS).context("writing the requirements file")?;
        run(Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-cache-dir", "-r"])
            .arg(&requirements))
        .context("pip install of xtask/requirements.txt failed (network or PyPI problem?)")?;
        for tool in TOOLS {
            if !self.tool(tool).exists() {
                bail!("{tool} is missing from .venv/bin after pip install");
            }
        }
        fs::write(self.dir.join(STAMP_FILE), REQUIREMENTS).context("writing the venv stamp")?;
        Ok(())
    }
}

/// The bench's peer (Powertools for AWS Lambda, Python), pinned in
/// `bench/peer/requirements.txt`; installed by `cargo xtask bench` only, so
/// the test commands do not pay for it.
const BENCH_REQUIREMENTS: &str = include_str!("../../bench/peer/requirements.txt");
const BENCH_STAMP_FILE: &str = "xtask-bench-requirements.txt";

impl Venv {
    /// Installs the bench's peer into the venv (after [`Venv::ensure`]) when
    /// its pinned requirements are not there yet.
    pub fn ensure_bench_peer(&self) -> Result<()> {
        let _guard = INSTALL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let stamp = fs::read_to_string(self.dir.join(BENCH_STAMP_FILE)).unwrap_or_default();
        if stamp == BENCH_REQUIREMENTS {
            return Ok(());
        }
        eprintln!("==> installing the bench's peer (aws-lambda-powertools) into .venv");
        let requirements = self.dir.join("xtask-bench-requirements.in");
        fs::write(&requirements, BENCH_REQUIREMENTS).context("writing the bench requirements file")?;
        run(Command::new(self.bin().join("python"))
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-cache-dir", "-r"])
            .arg(&requirements))
        .context("pip install of bench/peer/requirements.txt failed (network or PyPI problem?)")?;
        fs::write(self.dir.join(BENCH_STAMP_FILE), BENCH_REQUIREMENTS).context("writing the bench venv stamp")?;
        Ok(())
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("could not start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} exited with {status}", cmd.get_program());
    }
    Ok(())
}
