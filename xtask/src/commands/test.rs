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
    CoreTree,
    CoreWasm,
    Docs,
    /// The Worker's tools, build (wasm32, wasm-bindgen, wrangler's bundle),
    /// and its tests under workerd.
    Cloudflare,
}

/// The steps, in order.
const STEPS: [(&str, Action); 11] = [
    ("install the local stack tools (.venv, .dynamodb-local)", Action::Install),
    ("formatting (cargo fmt --check)", Action::Cargo(&["fmt", "--all", "--", "--check"])),
    (
        "lints (cargo clippy -D warnings)",
        Action::Cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]),
    ),
    ("portable core: no AWS, Lambda or tokio in shared-core's dependencies", Action::CoreTree),
    ("portable core builds for wasm32-unknown-unknown", Action::CoreWasm),
    ("docs (cargo doc --no-deps, missing docs denied)", Action::Docs),
    ("build the functions and the examples (one cargo build each, as cargo lambda watch runs them)", Action::Functions),
    (
        "unit, integration and end-to-end tests (cargo test --workspace)",
        Action::Cargo(&["test", "--workspace", "--no-fail-fast"]),
    ),
    (
        "soak: 2 minutes of traffic, concurrency 4, DynamoDB faults and SIGKILLs (cargo xtask soak --seed 1)",
        Action::Cargo(&["xtask", "soak", "--minutes", "2", "--concurrency", "4", "--seed", "1"]),
    ),
    ("infra checks", Action::Infra),
    (
        "Cloudflare Workers: tools, build, wrangler's bundles, migrations, tests under workerd (node --test infra/cloudflare/test), a 1-minute soak",
        Action::Cloudflare,
    ),
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
            let mut functions: Vec<String> = spec.function_names().map(str::to_owned).collect();
            // The examples of other domains, which their tests serve the same way.
            functions.extend(["inventory-reservations", "ledger-notifier"].map(str::to_owned));
            crate::lambda::build_functions_visibly(root, &functions)
        }
        Action::Infra => crate::infra::check(root),
        Action::CoreTree => crate::portable::check_tree(root),
        Action::CoreWasm => crate::portable::check_wasm(root),
        Action::Docs => crate::portable::check_docs(root),
        Action::Cloudflare => crate::cloudflare::Tools::ensure(root)?.test(),
    }
}
