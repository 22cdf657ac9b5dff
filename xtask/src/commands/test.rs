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
    /// One `cargo build` of every function stack.json declares, as the
    /// local stack builds them.
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
    /// `cargo xtask new` of each trigger in a copy of the workspace, and the
    /// generated crates' and infrastructure's checks there.
    Templates,
}

/// The steps, in order.
const STEPS: [(&str, Action); 12] = [
    ("install the local stack tools (.venv, .dynamodb-local)", Action::Install),
    ("formatting (cargo fmt --check)", Action::Cargo(&["fmt", "--all", "--", "--check"])),
    (
        "lints (cargo clippy -D warnings)",
        Action::Cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]),
    ),
    ("portable core: no AWS, Lambda or tokio in shared-core's dependencies", Action::CoreTree),
    ("portable core builds for wasm32-unknown-unknown", Action::CoreWasm),
    ("docs (cargo doc --no-deps, missing docs denied)", Action::Docs),
    ("build the declared functions (one cargo build, as the local stack builds them)", Action::Functions),
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
        "cargo xtask new, each trigger, in a copy of the workspace: fmt, clippy, tests (unit and through the local \
         stack), cfn-lint, the CDK tests",
        Action::Templates,
    ),
    (
        "Cloudflare Worker: tools, build, wrangler's bundle, tests under workerd (node --test infra/cloudflare/test)",
        Action::Cloudflare,
    ),
];

/// Runs every step, or only the numbered ones of `only` (1-based).
pub fn run(only: &[u8]) -> Result<()> {
    let root = workspace_root();
    let start = Instant::now();
    if let Some(n) = only.iter().find(|n| usize::from(**n) > STEPS.len()) {
        anyhow::bail!("cargo xtask test: there is no step {n}; the steps are 1 to {}", STEPS.len());
    }
    for (i, (name, action)) in STEPS.iter().enumerate() {
        if !only.is_empty() && !only.iter().any(|n| usize::from(*n) == i + 1) {
            continue;
        }
        println!("\n==> [{}/{}] {name}", i + 1, STEPS.len());
        let step_start = Instant::now();
        run_step(&root, action).with_context(|| format!("cargo xtask test: step \"{name}\" failed"))?;
        println!("    ok ({})", elapsed(step_start));
    }
    let which = if only.is_empty() { "all steps" } else { "the chosen steps" };
    println!("\ncargo xtask test: {which} passed in {}", elapsed(start));
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
            let spec = crate::spec::StackSpec::load_from(root)?;
            let functions: Vec<String> = spec.function_names().map(str::to_owned).collect();
            crate::lambda::build_functions_blocking(root, &functions, true).map(drop)
        }
        Action::Infra => crate::infra::check(root),
        Action::Templates => crate::scaffold::check_templates(root, &|command, what| {
            let status = command.status().with_context(|| format!("could not start {what}"))?;
            anyhow::ensure!(status.success(), "{what} failed ({status})");
            Ok(())
        }),
        Action::CoreTree => crate::portable::check_tree(root),
        Action::CoreWasm => crate::portable::check_wasm(root),
        Action::Docs => crate::portable::check_docs(root),
        Action::Cloudflare => {
            let tools = crate::cloudflare::Tools::ensure(root)?;
            // The workspace's clippy sees only the platform-neutral part (the
            // Workers glue is wasm32-only).
            super::cargo_with_venv(
                root,
                &[
                    "clippy",
                    "-p",
                    crate::cloudflare::WORKER,
                    "--target",
                    crate::portable::WASM_TARGET,
                    "--",
                    "-D",
                    "warnings",
                ],
            )?;
            let size = tools.build()?;
            println!("    {}: {size} bytes", crate::cloudflare::wasm_module(root)?.display());
            // The deploy path's own migration runner, on a scratch local database.
            let scratch = crate::cloudflare::out_dir(root)?.join("d1-check");
            let _ = std::fs::remove_dir_all(&scratch);
            let wrangler = "node_modules/wrangler/bin/wrangler.js";
            let scratch = scratch.to_string_lossy().into_owned();
            tools.node_status(&[
                wrangler,
                "d1",
                "migrations",
                "apply",
                "orders-state",
                "--local",
                "--persist-to",
                &scratch,
            ])?;
            tools.node_status(&["--test", "--test-reporter=spec", "test/worker.test.mjs"])
        }
    }
}
