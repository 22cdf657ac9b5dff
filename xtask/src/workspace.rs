//! Where the workspace keeps things, as cargo says it: the root, the target
//! directory (`cargo metadata`'s `target_directory`, so `CARGO_TARGET_DIR`
//! and `build.target-dir` are honoured), and the files a build produced
//! (cargo's own JSON messages, so no path to a binary is put together by
//! hand from a profile name).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// The workspace root (the parent of `xtask/`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// The cargo that runs us (set by cargo for `cargo run`/`cargo test`).
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// A `cargo` command without the variables cargo set for the package that
/// runs us (see [`crate::process::without_package_env`]).
pub fn cargo_command() -> Command {
    let mut command = Command::new(cargo());
    crate::process::without_package_env(&mut command);
    command
}

/// The target directories asked for so far, by workspace root: one
/// `cargo metadata` per process and workspace.
static TARGET_DIRS: Mutex<BTreeMap<PathBuf, PathBuf>> = Mutex::new(BTreeMap::new());

/// The workspace's target directory, as `cargo metadata` reports it.
pub fn target_dir(root: &Path) -> Result<PathBuf> {
    let mut known = TARGET_DIRS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(dir) = known.get(root) {
        return Ok(dir.clone());
    }
    #[derive(Deserialize)]
    struct Metadata {
        target_directory: PathBuf,
    }
    let output = cargo_command()
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata in {} exited with {}", root.display(), output.status);
    }
    let metadata: Metadata =
        serde_json::from_slice(&output.stdout).context("cargo metadata printed no target_directory")?;
    known.insert(root.to_path_buf(), metadata.target_directory.clone());
    Ok(metadata.target_directory)
}

/// One `compiler-artifact` message of `cargo build --message-format=json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Artifact {
    /// The target's name (a binary's name, a library's crate name).
    pub target: ArtifactTarget,
    /// Every file the target produced (a wasm module, a library).
    pub filenames: Vec<PathBuf>,
    /// The executable, for a binary.
    pub executable: Option<PathBuf>,
}

/// The target part of an [`Artifact`].
#[derive(Debug, Clone, Deserialize)]
pub struct ArtifactTarget {
    pub name: String,
    pub kind: Vec<String>,
}

/// Runs `cargo build <args> --message-format=json-render-diagnostics` in
/// `root` and returns what it built. `visible`: cargo's progress and
/// diagnostics on the terminal (a first build takes minutes); otherwise they
/// are captured and shown only when the build fails.
pub fn build(root: &Path, args: &[&str], visible: bool) -> Result<Vec<Artifact>> {
    let mut command = cargo_command();
    command
        .arg("build")
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .current_dir(root)
        .stdout(Stdio::piped())
        .stderr(if visible { Stdio::inherit() } else { Stdio::piped() });
    let what = format!("cargo build {}", args.join(" "));
    let mut child = command.spawn().with_context(|| format!("starting {what}"))?;
    let stderr = child.stderr.take().map(|mut err| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut text);
            text
        })
    });
    let mut artifacts = Vec::new();
    let stdout = child.stdout.take().context("cargo's stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's messages")?;
        #[derive(Deserialize)]
        struct Message {
            reason: String,
        }
        if serde_json::from_str::<Message>(&line).is_ok_and(|m| m.reason == "compiler-artifact") {
            artifacts
                .push(serde_json::from_str(&line).with_context(|| format!("a compiler-artifact message: {line}"))?);
        }
    }
    let status = child.wait().with_context(|| format!("waiting for {what}"))?;
    let errors = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    if !status.success() {
        bail!("{what} failed ({status}){}", if errors.is_empty() { String::new() } else { format!(":\n{errors}") });
    }
    Ok(artifacts)
}

/// Builds the binaries of `packages` in one `cargo build` and returns each
/// binary's executable by its name. Fails, naming it, when a package has no
/// binary of its own name (a function's binary is named as its package).
pub fn build_binaries(root: &Path, packages: &[String], visible: bool) -> Result<BTreeMap<String, PathBuf>> {
    let mut args = vec!["--bins"];
    for package in packages {
        args.extend(["-p", package.as_str()]);
    }
    let artifacts = build(root, &args, visible)?;
    let executables: BTreeMap<String, PathBuf> = artifacts
        .into_iter()
        .filter_map(|a| Some((a.target.name, a.executable?)))
        .filter(|(name, _)| packages.contains(name))
        .collect();
    for package in packages {
        if !executables.contains_key(package) {
            bail!(
                "cargo build -p {package} built no binary named {package} (a function's [[bin]] has its package's name)"
            );
        }
    }
    Ok(executables)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_directory_is_cargos_answer() {
        let root = root();
        let dir = target_dir(&root).unwrap();
        // Whatever CARGO_TARGET_DIR says (or `target/` without it): the test
        // binary itself runs from there.
        let exe = std::env::current_exe().unwrap();
        assert!(exe.starts_with(&dir), "{} is not under {}", exe.display(), dir.display());
    }
}
