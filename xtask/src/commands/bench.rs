//! `cargo xtask bench`: the benchmark suite of `bench/` (see bench/README.md),
//! in a release build, with the local stack tools it starts (moto, DynamoDB
//! Local) and its peer (Powertools for AWS Lambda, Python) installed first. Arguments are passed on: `cargo xtask bench --smoke`.

use anyhow::Result;

use crate::stack::workspace_root;
use crate::venv::Venv;

pub fn run(args: &[String]) -> Result<()> {
    let root = workspace_root();
    let venv = Venv::at(&root);
    venv.ensure()?;
    venv.ensure_bench_peer()?;
    crate::dynamodb_local::Install::at(&root).ensure()?;
    let command: Vec<&str> =
        ["run", "--release", "-p", "bench", "--"].into_iter().chain(args.iter().map(String::as_str)).collect();
    super::cargo_with_venv(&root, &command)
}
