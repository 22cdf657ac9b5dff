//! `cargo xtask test`: everything CI checks, in order, stopping at the first
//! failing step with a message that names it.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use super::elapsed;
use crate::dynamodb_local::{self, Engine};
use crate::stack::workspace_root;
use crate::venv::Venv;

/// What a step runs.
enum Action {
    Cargo(&'static [&'static str]),
    /// `cargo build -p <function>` for each function of stack.json.
    Functions,
    /// The venv, and DynamoDB Local with a Java check unless
    /// `LOCAL_STACK_DYNAMODB=moto`.
    Install,
    Infra,
}

/// The steps, in order.
const STEPS: [(&str, Action); 6] = [
    ("install the local stack tools (.venv, .dynamodb-local)", Action::Install),
    ("formatting (cargo fmt --check)", Action::Cargo(&["fmt", "--all", "--", "--check"])),
    (
        "lints (cargo clippy -D warnings)",
        Action::Cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]),
    ),
    ("build the functions (one cargo build each, as cargo lambda watch runs them)", Action::Functions),
    (
        "unit, integration and end-to-end tests (cargo test --workspace)",
        Action::Cargo(&["test", "--workspace", "--no-fail-fast"]),
    ),
    ("infra checks", Action::Infra),
];

pub fn run() -> Result<()> {
    let root = workspace_root();
    let start = Instant::now();
    for (i, (name, action)) in STEPS.iter().enumerate() {
        println!("\n==> [{}/{}] {name}", i + 1, STEPS.len());
        let step_start = Instant::now();
        run_step(&root, action).with_context(|| format!("cargo xtask test: step \"{name}\" failed"))?;
        println!("    ok ({})", elapsed(step_start));
    }
    println!("\ncargo xtask test: all steps passed in {}", elapsed(start));
    Ok(())
}

fn run_step(root: &Path, action: &Action) -> Result<()> {
    match action {
        Action::Install => {
            Venv::at(root).ensure()?;
            match Engine::from_env()? {
                Engine::Local => dynamodb_local::Install::at(root).ensure(),
                Engine::Moto => {
                    println!("    {}=moto: DynamoDB on moto, DynamoDB Local not needed", dynamodb_local::ENGINE_ENV);
                    Ok(())
                }
            }
        }
        Action::Cargo(args) => super::cargo_with_venv(root, args),
        Action::Functions => {
            let spec = crate::spec::StackSpec::load()?;
            let functions: Vec<String> = spec.function_names().map(str::to_owned).collect();
            crate::lambda::build_functions_visibly(root, &functions)
        }
        Action::Infra => crate::infra::check(root),
    }
}
