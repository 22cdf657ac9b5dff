//! The `cargo xtask` commands.

pub mod bench;
pub mod demo;
pub mod soak;
pub mod soak_cloudflare;
pub mod stack;
pub mod test;
pub mod volume;

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::lambda::cargo_command;
use crate::venv::Venv;

/// The flags each stack command takes (`main.rs` parses them; the README's
/// commands are checked against them).
pub const FLAGS: &[(&str, &[&str])] = &[
    ("demo", &["--dynamodb", "--cloudflare"]),
    ("stack", &["--dynamodb", "--no-driver"]),
    ("volume", &["--dynamodb", "--lines", "--messages", "--cloudflare"]),
    ("soak", &["--dynamodb", "--minutes", "--concurrency", "--seed", "--cloudflare"]),
];

/// The flags of `command` (empty for a command without flags).
pub fn flags_of(command: &str) -> &'static [&'static str] {
    FLAGS.iter().find(|(c, _)| *c == command).map_or(&[], |(_, f)| f)
}

/// Runs `cargo <args>` in the workspace `root` with the project's `.venv`
/// first on `PATH` (the tests and benchmarks start moto and `cargo lambda`
/// from it); fails, naming the command, when it does not succeed.
pub(crate) fn cargo_with_venv(root: &Path, args: &[&str]) -> Result<()> {
    let status = cargo_command()
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The shell lines of the README's `sh` blocks, comments cut.
    fn readme_commands(readme: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut in_sh = false;
        for line in readme.lines() {
            if line.starts_with("```") {
                in_sh = !in_sh && line.trim() == "```sh";
                continue;
            }
            if in_sh {
                let command = line.split(" #").next().unwrap_or("").trim();
                if !command.is_empty() {
                    out.push(command.to_owned());
                }
            }
        }
        out
    }

    /// Every `cargo xtask`, `cargo test/bench/build/tree -p` and `cargo run -p`
    /// command the README shows names a command, flags, packages and test
    /// files that exist (the commands that need the network or an account
    /// are run as far as they go by the infra step, or not at all).
    #[test]
    fn the_readmes_commands_name_real_commands_flags_packages_and_tests() {
        let root = crate::stack::workspace_root();
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        let packages: Vec<String> = manifest
            .lines()
            .filter_map(|l| l.trim().strip_prefix('"')?.strip_suffix("\",")?.to_owned().into())
            .filter_map(|dir: String| {
                let toml = std::fs::read_to_string(root.join(&dir).join("Cargo.toml")).ok()?;
                let name = toml.lines().find_map(|l| l.strip_prefix("name = \""))?.trim_end_matches('"').to_owned();
                Some(name)
            })
            .collect();
        assert!(packages.iter().any(|p| p == "integration-tests"), "{packages:?}");
        let commands = readme_commands(&readme);
        assert!(commands.iter().any(|c| c == "cargo xtask test"), "the README shows its test command");
        let mut checked = 0;
        for command in &commands {
            let words: Vec<&str> = command.split_whitespace().collect();
            let Some(start) = words.iter().position(|w| *w == "cargo") else { continue };
            let words = &words[start + 1..];
            match words {
                ["xtask", sub, rest @ ..] => {
                    let known = ["bench", "build-worker", "demo", "stack", "test", "volume", "soak", "help"];
                    assert!(known.contains(sub), "README: {command}: no xtask command {sub}");
                    if *sub != "bench" {
                        for flag in rest.iter().filter(|w| w.starts_with("--")) {
                            assert!(super::flags_of(sub).contains(flag), "README: {command}: {sub} takes no {flag}");
                        }
                    }
                }
                [_, rest @ ..] => {
                    for pair in rest.windows(2) {
                        match pair {
                            ["-p", package] => {
                                assert!(
                                    packages.iter().any(|p| p == package),
                                    "README: {command}: no package {package}"
                                )
                            }
                            ["--test", file] => assert!(
                                Path::new(&root).join("tests/tests").join(format!("{file}.rs")).is_file(),
                                "README: {command}: no test file tests/tests/{file}.rs"
                            ),
                            _ => {}
                        }
                    }
                }
                [] => {}
            }
            checked += 1;
        }
        assert!(checked >= 10, "only {checked} cargo commands found in the README");
    }
}
