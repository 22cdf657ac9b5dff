//! The README and the guide show code that runs. Every Rust block of
//! `README.md` and `docs/*.md` is either a copy of a file of the workspace,
//! marked `<!-- file: <path> -->` on the line before it and checked here to
//! be that file to the byte (the file itself is compiled and tested as part
//! of its crate), or compiled and run as a doctest of this crate
//! (`src/lib.rs` includes the Markdown files).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Markdown files whose code is checked: the README and the guide.
fn documents() -> Result<Vec<PathBuf>> {
    let mut files = vec![root().join("README.md")];
    for entry in std::fs::read_dir(root().join("docs")).context("reading docs/")? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// A fenced block: its info string, its text, and the file it claims to be.
struct Block {
    line: usize,
    info: String,
    text: String,
    file: Option<String>,
}

fn blocks(markdown: &str) -> Result<Vec<Block>> {
    let mut out = Vec::new();
    let mut lines = markdown.lines().enumerate().peekable();
    let mut previous: Option<&str> = None;
    while let Some((number, line)) = lines.next() {
        if let Some(info) = line.strip_prefix("```") {
            let file = previous
                .and_then(|p| p.trim().strip_prefix("<!-- file: "))
                .and_then(|p| p.strip_suffix(" -->"))
                .map(str::to_owned);
            let mut text = String::new();
            loop {
                let Some((_, inner)) = lines.next() else { bail!("the block at line {} is not closed", number + 1) };
                if inner.starts_with("```") {
                    break;
                }
                text.push_str(inner);
                text.push('\n');
            }
            out.push(Block { line: number + 1, info: info.trim().to_owned(), text, file });
            previous = None;
            continue;
        }
        if !line.trim().is_empty() {
            previous = Some(line);
        }
    }
    Ok(out)
}

#[test]
fn every_rust_block_is_a_file_of_the_workspace_or_a_doctest() -> Result<()> {
    let mut copies = 0;
    let mut doctests = 0;
    for document in documents()? {
        let name = document.strip_prefix(root()).unwrap_or(&document).display().to_string();
        let markdown = std::fs::read_to_string(&document).with_context(|| format!("reading {name}"))?;
        for block in blocks(&markdown)?.into_iter().filter(|b| b.info.split(',').next() == Some("rust")) {
            match &block.file {
                Some(file) => {
                    let source = std::fs::read_to_string(root().join(file))
                        .with_context(|| format!("{name}:{}: reading {file}", block.line))?;
                    ensure!(
                        block.text == source,
                        "{name}:{}: the block is not {file} as it is now; copy the file into the block again",
                        block.line
                    );
                    copies += 1;
                }
                None => {
                    ensure!(
                        !block.info.contains("ignore"),
                        "{name}:{}: a block that is not a file's copy must compile (no `ignore`)",
                        block.line
                    );
                    doctests += 1;
                }
            }
        }
    }
    // The README shows the example's whole main.rs and lib.rs, and a test.
    ensure!(copies >= 3 && doctests >= 1, "{copies} copies and {doctests} doctests found");
    Ok(())
}

/// A newcomer's README: the path from what it is to deploying, with the
/// depth in `docs/`.
#[test]
fn the_readme_stays_short() -> Result<()> {
    let lines = std::fs::read_to_string(root().join("README.md"))?.lines().count();
    ensure!(lines <= 420, "README.md has {lines} lines; keep it to about 400 and put the depth in docs/");
    Ok(())
}

/// Every relative link of the README and the guide names a file that exists.
#[test]
fn relative_links_resolve() -> Result<()> {
    for document in documents()? {
        let markdown = std::fs::read_to_string(&document)?;
        let dir = document.parent().context("a document's directory")?;
        let mut rest = markdown.as_str();
        while let Some(start) = rest.find("](") {
            rest = &rest[start + 2..];
            let end = rest.find(')').context("an unclosed link")?;
            let target = &rest[..end];
            rest = &rest[end..];
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let path = target.split('#').next().unwrap_or(target);
            ensure!(dir.join(path).exists(), "{}: link to {target}, which does not exist", document.display());
        }
    }
    Ok(())
}
