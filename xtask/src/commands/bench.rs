//! `cargo xtask bench`: the benchmark suite of `bench/` (see bench/README.md),
//! in a release build, with the local stack tools it starts (moto) installed
//! first. Arguments are passed on: `cargo xtask bench --smoke`.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::lambda::cargo;
use crate::stack::workspace_root;
use crate::venv::Venv;

pub fn run(args: &[&str]) -> Result<()> {
    let root = workspace_root();
    let venv = Venv::at(&root);
    venv.ensure()?;
    let status = Command::new(cargo())
        .args(["run", "--release", "-p", "bench", "--"])
        .args(args)
        .current_dir(&root)
        .env("PATH", venv.path_env())
        .status()
        .context("could not run cargo run -p bench")?;
    if !status.success() {
        bail!("the benchmark suite exited with {status}");
    }
    Ok(())
}
