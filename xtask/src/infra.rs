//! Offline checks of `infra/`: the SAM template is what `cargo xtask infra`
//! writes from `infra/stack.json`; cfn-lint on it (and on the template
//! written with the local-only functions deployed too); `cdk synth` with
//! assertion tests and cdk-nag; and the SAM/CDK/stack.json equivalence test,
//! which holds every deployed function to its declared resources and exact
//! permissions.
//!
//! Nothing here needs an AWS account or credentials. The only network use is
//! `npm ci` (from the lockfile) when `infra/cdk/node_modules` is missing or
//! older than the lockfile. The CDK app needs the function binaries as assets;
//! when `cargo lambda build --release` has not produced them in `lambda/` of
//! cargo's target directory, placeholders stand in (synth only hashes and
//! copies them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result, bail};

/// Runs every infra check; fails with a message naming the check that failed.
pub fn check(root: &Path) -> Result<()> {
    let infra = root.join("infra");
    let cdk = infra.join("cdk");
    let started = Instant::now();
    let target = crate::workspace::target_dir(root)?;
    let out = target.join("infra-check");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let spec = crate::spec::StackSpec::load_from(root)?;

    step("infra/template.yaml is what `cargo xtask infra` writes from infra/stack.json", || crate::sam::check(root))?;

    // The examples are local-only: written as if deployed, they exercise the
    // deploy path of functions of other domains (the equivalence test
    // compares this template with the CDK app's synthesis of the same).
    let all_functions = out.join("all-functions.template.yaml");
    step("the SAM template with the local-only functions deployed too", || {
        let text = std::fs::read_to_string(root.join(crate::spec::STACK_JSON))?;
        let mut all = crate::sam::template_spec(&text)?;
        all.deploy_local_only();
        std::fs::write(&all_functions, crate::sam::template(&all)?)
            .with_context(|| format!("writing {}", all_functions.display()))
    })?;

    step("cfn-lint infra/template.yaml", || {
        let cfn_lint = root.join(".venv/bin/cfn-lint");
        if !cfn_lint.exists() {
            bail!("{} is missing: the project venv installs it (xtask/requirements.txt)", cfn_lint.display());
        }
        run(Command::new(&cfn_lint).arg("template.yaml").current_dir(&infra))?;
        run(Command::new(&cfn_lint).arg(&all_functions).current_dir(&infra))
    })?;

    step("npm ci in infra/cdk", || {
        if node_modules_fresh(&cdk) {
            println!("    node_modules is up to date with package-lock.json");
            return Ok(());
        }
        run(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&cdk))
    })?;

    let functions: Vec<&str> = spec.function_names().collect();
    let assets = lambda_assets(&target, &functions)?;
    let deployed = spec.deployed().functions.len();
    step("plain `npx cdk synth` as the README shows it, from a clean dist/", || {
        readme_synth(&out, &cdk, &assets, deployed)
    })?;

    step("tsc (type-check and compile the CDK app and its tests)", || {
        run(node(&cdk).arg("node_modules/typescript/bin/tsc").args(["-p", "."]))
    })?;

    step("cdk synth (with cdk-nag AwsSolutions checks)", || {
        let out = out.join("cdk.out");
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
        run(node(&cdk)
            .arg("--test")
            .args(&tests)
            .env("LAMBDA_ASSET_DIR", &assets)
            .env("SAM_ALL_FUNCTIONS", &all_functions))
    })?;

    println!("infra: all checks passed in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The stack name the README's deploy command passes (`-c stackName=my-orders`).
const README_STACK_NAME: &str = "my-orders";

/// `npx cdk synth -c stackName=my-orders` in `infra/cdk` as on a fresh clone:
/// no `dist/`, no `--app` override, so `cdk.json`'s `app` has to build the
/// TypeScript itself (issue 14: it ran `dist/bin/app.js` and nothing compiled
/// it). The README's `npx cdk deploy` and `npx cdk bootstrap` run the same app
/// first. The binaries come through `LAMBDA_ASSET_DIR`, as the default
/// `lambda/` of the target directory when they are built, so the command line
/// stays the README's. No `-c architecture`: synth packages the binaries
/// without reading them.
fn readme_synth(check_dir: &Path, cdk: &Path, assets: &Path, deployed: usize) -> Result<()> {
    let dist = cdk.join("dist");
    let out = check_dir.join("readme-synth.out");
    for dir in [&dist, &out] {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", dir.display()));
            }
            _ => {}
        }
    }
    // `npx cdk` is `node_modules/.bin/cdk`, which is this script; calling it
    // through node skips npx's lookup (and any chance of it reaching the registry).
    run(node(cdk)
        .arg("node_modules/aws-cdk/bin/cdk")
        .args(["synth", "--quiet", "--no-notices", "-c"])
        .arg(format!("stackName={README_STACK_NAME}"))
        .arg("-o")
        .arg(&out)
        .env("LAMBDA_ASSET_DIR", assets))?;
    let template = out.join(format!("{README_STACK_NAME}.template.json"));
    let text = std::fs::read_to_string(&template)
        .with_context(|| format!("`cdk synth -c stackName={README_STACK_NAME}` wrote no {}", template.display()))?;
    let parsed: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", template.display()))?;
    let functions = parsed["Resources"]
        .as_object()
        .map_or(0, |r| r.values().filter(|v| v["Type"] == "AWS::Lambda::Function").count());
    if functions != deployed {
        bail!("{} declares {functions} Lambda functions, not the {deployed} stack.json deploys", template.display());
    }
    println!("    {} ({functions} functions)", template.display());
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

/// The function binaries for `cdk synth`: `lambda/` of the target directory
/// if `cargo lambda build --release` (`--x86-64` here, `--arm64` for
/// deployment) produced all of them, else placeholder files under
/// `infra-check/` there.
fn lambda_assets(target: &Path, functions: &[&str]) -> Result<PathBuf> {
    let built = target.join("lambda");
    if functions.iter().all(|f| built.join(f).join("bootstrap").is_file()) {
        return Ok(built);
    }
    let dir = target.join("infra-check/placeholder-lambda");
    for f in functions {
        let fn_dir = dir.join(f);
        std::fs::create_dir_all(&fn_dir).with_context(|| format!("creating {}", fn_dir.display()))?;
        std::fs::write(fn_dir.join("bootstrap"), format!("placeholder for {f}: synthesized, never run\n"))
            .with_context(|| format!("writing the placeholder asset in {}", fn_dir.display()))?;
    }
    Ok(dir)
}
