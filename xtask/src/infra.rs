//! Offline checks of `infra/`: cfn-lint on the SAM template, `cdk synth` with
//! assertion tests and cdk-nag, and the SAM/CDK/local-stack equivalence test.
//!
//! Nothing here needs an AWS account or credentials. The only network use is
//! `npm ci` (from the lockfile) when `infra/cdk/node_modules` is missing or
//! older than the lockfile. The CDK app needs the function binaries as assets;
//! when `cargo lambda build --release` has not produced them in
//! `target/lambda`, placeholders stand in (synth only hashes and copies them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result, bail};

/// The functions whose binaries the CDK app packages, as in `target/lambda/<name>/bootstrap`.
const FUNCTIONS: [&str; 3] = ["s3-ingest", "sqs-consumer", "stream-aggregator"];

/// Runs every infra check; fails with a message naming the check that failed.
pub fn check(root: &Path) -> Result<()> {
    let infra = root.join("infra");
    let cdk = infra.join("cdk");
    let started = Instant::now();

    step("cfn-lint infra/template.yaml", || {
        let cfn_lint = root.join(".venv/bin/cfn-lint");
        if !cfn_lint.exists() {
            bail!("{} is missing: the project venv installs it (xtask/requirements.txt)", cfn_lint.display());
        }
        run(Command::new(&cfn_lint).arg("template.yaml").current_dir(&infra))
    })?;

    step("npm ci in infra/cdk", || {
        if node_modules_fresh(&cdk) {
            println!("    node_modules is up to date with package-lock.json");
            return Ok(());
        }
        run(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&cdk))
    })?;

    step("tsc (type-check and compile the CDK app and its tests)", || {
        run(node(&cdk).arg("node_modules/typescript/bin/tsc").args(["-p", "."]))
    })?;

    let assets = lambda_assets(root)?;
    step("cdk synth (with cdk-nag AwsSolutions checks)", || {
        let out = root.join("target/infra-check/cdk.out");
        run(node(&cdk)
            .arg("node_modules/aws-cdk/bin/cdk")
            .args(["synth", "--quiet", "--no-notices", "--no-version-reporting"])
            .arg("-c")
            .arg(format!("assetDir={}", assets.display()))
            .arg("-o")
            .arg(&out))
    })?;

    step("CDK assertion, cdk-nag and SAM/CDK/stack.json equivalence tests", || {
        let dir = cdk.join("dist/test");
        let mut tests: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".test.js"))
            .collect();
        tests.sort();
        if tests.is_empty() {
            bail!("no tests in {}", dir.display());
        }
        run(node(&cdk).arg("--test").args(&tests).env("LAMBDA_ASSET_DIR", &assets))
    })?;

    println!("infra: all checks passed in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs one named check, timing it; its failure names it.
fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    println!("infra: {name}");
    let started = Instant::now();
    f().with_context(|| format!("infra check failed: {name}"))?;
    println!("infra: {name}: ok ({:.1}s)", started.elapsed().as_secs_f64());
    Ok(())
}

/// `node` in `dir`, with the CDK CLI kept offline and quiet: no version
/// check against the registry, no telemetry.
fn node(dir: &Path) -> Command {
    let mut cmd = Command::new("node");
    cmd.current_dir(dir).env("CDK_DISABLE_VERSION_CHECK", "1").env("CDK_DISABLE_CLI_TELEMETRY", "1");
    cmd
}

fn run(cmd: &mut Command) -> Result<()> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    let status = cmd.status().with_context(|| {
        format!("could not start {program} (the infra checks need Node.js 20+ with npm, and the project venv)")
    })?;
    if !status.success() {
        bail!("`{program} {}` exited with {status}", args.join(" "));
    }
    Ok(())
}

/// `npm ci` leaves `node_modules/.package-lock.json`; it is stale when the
/// lockfile or package.json changed after it.
fn node_modules_fresh(cdk: &Path) -> bool {
    let modified = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(installed) = modified(cdk.join("node_modules/.package-lock.json")) else {
        return false;
    };
    let newest_manifest: Option<SystemTime> =
        [cdk.join("package-lock.json"), cdk.join("package.json")].into_iter().filter_map(modified).max();
    newest_manifest.is_some_and(|m| m <= installed)
}

/// The function binaries for `cdk synth`: `target/lambda` if `cargo lambda
/// build --release` (`--x86-64` here, `--arm64` for deployment) produced all
/// of them, else placeholder files under `target/infra-check`.
fn lambda_assets(root: &Path) -> Result<PathBuf> {
    let built = root.join("target/lambda");
    if FUNCTIONS.iter().all(|f| built.join(f).join("bootstrap").is_file()) {
        return Ok(built);
    }
    let dir = root.join("target/infra-check/placeholder-lambda");
    for f in FUNCTIONS {
        let fn_dir = dir.join(f);
        std::fs::create_dir_all(&fn_dir).with_context(|| format!("creating {}", fn_dir.display()))?;
        std::fs::write(fn_dir.join("bootstrap"), format!("placeholder for {f}: synthesized, never run\n"))
            .with_context(|| format!("writing the placeholder asset in {}", fn_dir.display()))?;
    }
    Ok(dir)
}
