//! The `cargo xtask` commands.

pub mod bench;
pub mod demo;
pub mod infra;
pub mod new;
pub mod soak;
pub mod stack;
pub mod test;
pub mod volume;

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::lambda::cargo_command;
use crate::venv::Venv;

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
/// build's progress is on screen; the stack's own build then finds them
/// built).
pub(crate) async fn build_stack_functions() -> Result<()> {
    let root = crate::workspace::root();
    let spec = crate::spec::StackSpec::load_from(&root)?;
    let functions: Vec<String> = spec.function_names().map(str::to_owned).collect();
    tokio::task::spawn_blocking(move || crate::lambda::build_functions_blocking(&root, &functions, true))
        .await
        .context("build task panicked")?
        .map(drop)
}

/// `cargo xtask build-worker`.
pub fn build_worker() -> Result<()> {
    let root = crate::workspace::root();
    let tools = crate::cloudflare::Tools::ensure(&root)?;
    let size = tools.build()?;
    println!("{}: {size} bytes", crate::cloudflare::wasm_module(&root)?.display());
    Ok(())
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
    /// command the README and the guide (`docs/`) show names a command,
    /// flags, packages and test files that exist (the commands that need the
    /// network or an account are run as far as they go by the infra step, or
    /// not at all).
    #[test]
    fn the_readmes_commands_name_real_commands_flags_packages_and_tests() {
        let root = crate::stack::workspace_root();
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let mut pages = vec![("README.md".to_owned(), readme.clone())];
        for entry in std::fs::read_dir(root.join("docs")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "md") {
                let name = format!("docs/{}", path.file_name().unwrap().to_string_lossy());
                pages.push((name, std::fs::read_to_string(&path).unwrap()));
            }
        }
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
        let shown = readme_commands(&readme);
        for top in ["cargo xtask demo", "cargo xtask test"] {
            assert!(shown.iter().any(|c| c == top), "the README shows {top}");
        }
        let commands: Vec<(String, String)> = pages
            .iter()
            .flat_map(|(page, text)| readme_commands(text).into_iter().map(move |c| (page.clone(), c)))
            .collect();
        // Packages the README's own `cargo xtask new <name>` creates.
        let mut packages = packages;
        packages.extend(commands.iter().filter_map(|(_, c)| {
            let words: Vec<&str> = c.split_whitespace().collect();
            match words.as_slice() {
                ["cargo", "xtask", "new", name, ..] => Some((*name).to_owned()),
                _ => None,
            }
        }));
        let mut checked = 0;
        for (page, command) in &commands {
            let command = format!("{page}: {command}");
            let words: Vec<&str> = command.split_whitespace().collect();
            let Some(start) = words.iter().position(|w| *w == "cargo") else { continue };
            let words = &words[start + 1..];
            match words {
                ["xtask", sub, rest @ ..] => {
                    let known = crate::cli::subcommands();
                    assert!(known.iter().any(|k| k == sub), "{command}: no xtask command {sub}");
                    let flags = crate::cli::flags_of(sub);
                    for flag in rest.iter().filter(|w| w.starts_with("--")) {
                        assert!(flags.iter().any(|f| f == flag), "{command}: {sub} takes no {flag}");
                    }
                }
                [_, rest @ ..] => {
                    for pair in rest.windows(2) {
                        match pair {
                            ["-p", package] => {
                                assert!(packages.iter().any(|p| p == package), "{command}: no package {package}")
                            }
                            ["--test", file] => assert!(
                                Path::new(&root).join("tests/tests").join(format!("{file}.rs")).is_file(),
                                "{command}: no test file tests/tests/{file}.rs"
                            ),
                            _ => {}
                        }
                    }
                }
                [] => {}
            }
            checked += 1;
        }
        assert!(checked >= 10, "only {checked} cargo commands found in the README and the guide");
    }
}
