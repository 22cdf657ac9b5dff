//! The `cargo xtask` commands.

pub mod bench;
pub mod demo;
pub mod soak;
pub mod stack;
pub mod test;
pub mod volume;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::lambda::cargo;
use crate::venv::Venv;

/// Runs `cargo <args>` in the workspace `root` with the project's `.venv`
/// first on `PATH` (the tests and benchmarks start moto and `cargo lambda`
/// from it); fails, naming the command, when it does not succeed.
pub(crate) fn cargo_with_venv(root: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new(cargo())
        .args(args)
        .current_dir(root)
        .env("PATH", Venv::at(root).path_env())
        .status()
        .with_context(|| format!("could not run cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} exited with {status}", args.join(" "));
    }
    Ok(())
}

/// Builds the functions of `infra/stack.json` with cargo's progress on the
/// terminal (the commands that start a stack do this first, so a first
/// build's progress is on screen rather than inside watch's first invoke).
pub(crate) async fn build_stack_functions() -> Result<()> {
    let spec = crate::spec::StackSpec::load()?;
    let functions: Vec<String> = spec.function_names().map(str::to_owned).collect();
    let root = crate::stack::workspace_root();
    tokio::task::spawn_blocking(move || crate::lambda::build_functions_visibly(&root, &functions))
        .await
        .context("build task panicked")?
}

/// Prints a step header.
pub(crate) fn header(text: &str) {
    println!("\n==> {text}");
}

/// `12.3s` since `start`.
pub(crate) fn elapsed(start: Instant) -> String {
    format!("{:.1}s", start.elapsed().as_secs_f64())
}
