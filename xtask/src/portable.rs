//! Checks that the toolkit's core stays portable: `shared-core` depends on
//! no AWS SDK crate, no Lambda runtime and no tokio, and builds for
//! `wasm32-unknown-unknown` (Cloudflare Workers' target).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::lambda::cargo_command;

/// The portable crate.
pub const CORE: &str = "shared-core";
/// The Workers target.
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// Crates the core must never depend on, by name prefix.
const FORBIDDEN: [&str; 5] = ["aws-", "aws_", "lambda_runtime", "lambda-runtime", "tokio"];

/// The forbidden crates among `tree`'s lines (`cargo tree --prefix none`).
pub fn forbidden_dependencies(tree: &str) -> Vec<String> {
    let mut found: Vec<String> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| FORBIDDEN.iter().any(|f| name.starts_with(f)))
        .map(str::to_owned)
        .collect();
    found.sort();
    found.dedup();
    found
}

/// `cargo tree` of the core's normal dependencies holds no forbidden crate.
pub fn check_tree(root: &Path) -> Result<()> {
    let output = cargo_command()
        .args(["tree", "-p", CORE, "-e", "normal", "--prefix", "none"])
        .current_dir(root)
        .output()
        .context("running cargo tree")?;
    if !output.status.success() {
        bail!("cargo tree -p {CORE} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    let tree = String::from_utf8_lossy(&output.stdout);
    let found = forbidden_dependencies(&tree);
    if !found.is_empty() {
        bail!("{CORE} must not depend on AWS, Lambda or tokio crates, but its tree has: {}", found.join(", "));
    }
    println!("    {CORE}: {} crates in its tree, none of AWS, Lambda or tokio", tree.lines().count());
    Ok(())
}

/// Builds the core for wasm32, adding the target with rustup when it is
/// missing. Where neither is possible (no rustup, or its server out of
/// reach) the step says so loudly and names the command, rather than
/// failing the other checks.
pub fn check_wasm(root: &Path) -> Result<()> {
    if !crate::cloudflare::wasm_target_installed() {
        println!("    the {WASM_TARGET} standard library is not installed: rustup target add {WASM_TARGET}");
        let added = Command::new("rustup").args(["target", "add", WASM_TARGET]).status();
        if !matches!(added, Ok(s) if s.success()) || !crate::cloudflare::wasm_target_installed() {
            println!(
                "    NOT CHECKED: {CORE} was not built for {WASM_TARGET}: the target could not be installed \
                 (run `rustup target add {WASM_TARGET}`, then `cargo build -p {CORE} --target {WASM_TARGET}`)"
            );
            return Ok(());
        }
    }
    let status = cargo_command()
        .args(["build", "-p", CORE, "--target", WASM_TARGET])
        .current_dir(root)
        .status()
        .context("running cargo build for wasm32")?;
    if !status.success() {
        bail!("cargo build -p {CORE} --target {WASM_TARGET} failed");
    }
    Ok(())
}

/// `cargo doc --no-deps` of the library crates with every warning (missing
/// docs included: both crates deny them) an error.
pub fn check_docs(root: &Path) -> Result<()> {
    let status = cargo_command()
        .args(["doc", "--no-deps", "-p", CORE, "-p", "shared"])
        .env("RUSTDOCFLAGS", "-D warnings")
        .current_dir(root)
        .status()
        .context("running cargo doc")?;
    if !status.success() {
        bail!("cargo doc --no-deps -p {CORE} -p shared has warnings (see above)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_crates_are_found_by_name() {
        let tree = "shared-core v0.1.0 (/w/shared/core)\nserde v1.0.0\ntokio v1.45.0\naws-smithy-types v1.0.0\n";
        assert_eq!(forbidden_dependencies(tree), ["aws-smithy-types", "tokio"]);
        assert!(forbidden_dependencies("serde v1\nfutures-util v0.3\n").is_empty());
    }
}
