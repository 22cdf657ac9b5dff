//! `cargo xtask new <name> --trigger <trigger>`: a function crate from the
//! templates of `xtask/templates/`, a member of the workspace, declared in
//! `infra/stack.json` with its source (a queue with its dead-letter queue, a
//! table's stream, or a bucket prefix), its table, its environment and its
//! mapping settings, and the SAM template written again from the
//! declaration. Everything else (the local stack, `cargo xtask stack`, the
//! tests, the CDK app) takes the function from the declaration.
//!
//! The crate goes to `functions/<name>`: beside the pipeline's functions,
//! where the workspace keeps the functions it deploys (`examples/` holds
//! the toolkit's local-only demonstrations).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;

use crate::cli::Trigger;
use crate::json::Json;
use crate::spec::{STACK_JSON, StackSpec, check_function_name};

/// Where the templates are, relative to the workspace root.
pub const TEMPLATES: &str = "xtask/templates";

/// Names cargo refuses for a package, or that would shadow a crate every
/// function uses.
const RESERVED: [&str; 58] = [
    "as",
    "async",
    "await",
    "break",
    "const",
    "continue",
    "crate",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "fn",
    "for",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "type",
    "unsafe",
    "use",
    "where",
    "while",
    "abstract",
    "become",
    "box",
    "do",
    "final",
    "macro",
    "override",
    "priv",
    "typeof",
    "unsized",
    "virtual",
    "yield",
    "try",
    "gen",
    "std",
    "core",
    "alloc",
    "test",
    "proc-macro",
    "shared",
    "xtask",
];

/// The names a new function's files and declaration use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// `order-events`: the function, package, binary, resource names.
    pub name: String,
    /// `order_events`: the library crate.
    pub krate: String,
    /// `ORDER_EVENTS`: the prefix of its variables.
    pub env: String,
    /// `orderEvents`: its queue's and table's key in the declaration.
    pub key: String,
}

impl Names {
    pub fn of(name: &str) -> Self {
        let mut key = String::new();
        for (i, part) in name.split('-').enumerate() {
            if i == 0 {
                key.push_str(part);
            } else {
                let mut chars = part.chars();
                if let Some(c) = chars.next() {
                    key.push(c.to_ascii_uppercase());
                    key.push_str(chars.as_str());
                }
            }
        }
        Self {
            name: name.to_owned(),
            krate: name.replace('-', "_"),
            env: name.replace('-', "_").to_ascii_uppercase(),
            key,
        }
    }

    fn render(&self, text: &str) -> String {
        text.replace("{{name}}", &self.name)
            .replace("{{crate}}", &self.krate)
            .replace("{{NAME}}", &self.env)
            .replace("{{key}}", &self.key)
    }
}

/// What `cargo xtask new` did.
#[derive(Debug)]
pub struct Created {
    pub crate_dir: PathBuf,
    pub files: Vec<PathBuf>,
    pub fixtures: Vec<PathBuf>,
}

/// Checks that a function `name` can be added to the workspace at `root`:
/// a valid name, not taken by a function, a package, a directory or a
/// resource of the declaration. The error says which.
pub fn check_new_name(root: &Path, spec: &StackSpec, name: &str) -> Result<()> {
    check_function_name(name, &spec.stack_name)?;
    if RESERVED.contains(&name) || RESERVED.contains(&name.replace('-', "_").as_str()) {
        bail!("{name:?} is not a valid function name: it is a Rust keyword or a crate name the workspace relies on");
    }
    if spec.functions.contains_key(name) {
        bail!("a function named {name} is declared already in {STACK_JSON}");
    }
    let dir = root.join("functions").join(name);
    if dir.exists() {
        bail!("{} exists already: pick another name, or remove it first", dir.display());
    }
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).context("reading Cargo.toml")?;
    let packages = workspace_packages(root, &manifest);
    if packages.iter().any(|p| p == name) {
        bail!("the workspace has a package named {name} already");
    }
    let names = Names::of(name);
    let failures = format!("{}Failures", names.key);
    let taken_key =
        [&names.key, &failures].into_iter().find(|k| spec.queues.contains_key(*k) || spec.tables.contains_key(*k));
    if let Some(key) = taken_key {
        bail!("{STACK_JSON} declares a queue or table with the key {key} already: pick another name");
    }
    let resource = format!("{}-{name}", spec.stack_name);
    let names_taken = spec
        .queues
        .values()
        .flat_map(|q| [Some(q.name.as_str()), q.dead_letter_queue.as_deref()])
        .flatten()
        .chain(spec.tables.values().map(|t| t.name.as_str()))
        .any(|n| n == resource || n.starts_with(&format!("{resource}-")) || n == format!("{resource}.fifo"));
    if names_taken {
        bail!("{STACK_JSON} declares a resource named {resource}... already: pick another name");
    }
    if spec
        .bucket
        .notifications
        .iter()
        .any(|n| n.prefix.starts_with(&format!("{name}/")) || format!("{name}/").starts_with(&n.prefix))
    {
        bail!("the uploads bucket notifies objects under a prefix that overlaps {name}/ already: pick another name");
    }
    Ok(())
}

/// The package names of the workspace's members (from their manifests).
fn workspace_packages(root: &Path, manifest: &str) -> Vec<String> {
    members(manifest)
        .into_iter()
        .filter_map(|dir| {
            let toml = std::fs::read_to_string(root.join(&dir).join("Cargo.toml")).ok()?;
            let name = toml.lines().find_map(|l| l.trim().strip_prefix("name = \""))?.trim_end_matches('"').to_owned();
            Some(name)
        })
        .collect()
}

/// The `members` of the root manifest, as written.
fn members(manifest: &str) -> Vec<String> {
    let Some(start) = manifest.find("members = [") else { return Vec::new() };
    let rest = &manifest[start + "members = [".len()..];
    let end = rest.find(']').unwrap_or(rest.len());
    rest[..end].split(',').map(|m| m.trim().trim_matches('"').to_owned()).filter(|m| !m.is_empty()).collect()
}

/// The root manifest with `member` added to `members`, after the last
/// `functions/` member (else at the end).
pub fn add_member(manifest: &str, member: &str) -> Result<String> {
    let start = manifest.find("members = [").context("Cargo.toml has no `members = [`")?;
    let end = start + manifest[start..].find(']').context("Cargo.toml's members list is not closed")?;
    let list = &manifest[start..end];
    let line = format!("    \"{member}\",\n");
    let at = match list.rfind("\"functions/") {
        Some(i) => start + i + list[i..].find('\n').context("a members line without its newline")? + 1,
        None => start + list.rfind('\n').context("members on one line: put one per line")? + 1,
    };
    Ok(format!("{}{line}{}", &manifest[..at], &manifest[at..]))
}

/// The declaration of a new function and its resources, added to the
/// stack.json document `doc`.
pub fn declare(doc: &mut Json, names: &Names, trigger: Trigger) -> Result<()> {
    let (name, key, env) = (&names.name, &names.key, &names.env);
    let table_var = format!("{env}_TABLE");
    let description = match trigger {
        Trigger::Sqs | Trigger::SqsFifo => format!("TODO: what {name} does (its queue's messages -> the {name} table)"),
        Trigger::DynamodbStream => format!("TODO: what {name} does (the {name} table's stream -> its summary)"),
        Trigger::S3 => {
            format!("TODO: what {name} does (objects under {name}/ of the uploads bucket -> the {name} table)")
        }
    };
    let mut function = vec![
        ("description", json!(description)),
        ("path", json!(format!("functions/{name}"))),
        ("fixtures", json!(format!("functions/{name}/events/"))),
        ("timeoutSeconds", json!(30)),
        ("memoryMiB", json!(256)),
        (
            "environment",
            json!({
                (table_var.clone()): { "table": key },
                "IDEMPOTENCY_TABLE": { "table": "idempotency" },
                "QUARANTINE_TABLE": { "table": key },
            }),
        ),
        ("tables", json!({ (key.clone()): "readWrite", "idempotency": "idempotency" })),
    ];
    if trigger == Trigger::S3 {
        function.push(("bucket", json!({ "read": [format!("{name}/")] })));
    }
    // serde_json sorts keys: lay the variables out in the order written.
    let mut function = Json::object(function);
    if let Some(Json::Object(vars)) = function.get_mut("environment") {
        let order = [table_var.as_str(), "IDEMPOTENCY_TABLE", "QUARANTINE_TABLE"];
        vars.sort_by_key(|(k, _)| order.iter().position(|o| o == k));
    }
    if let Some(Json::Object(tables)) = function.get_mut("tables") {
        tables.sort_by_key(|(k, _)| k != key);
    }
    let mut table =
        vec![("name", json!(format!("{{stack}}-{name}"))), ("hashKey", json!("pk")), ("rangeKey", json!("sk"))];
    // Its data: restorable to a point in time (cdk-nag's DDB3 wants it).
    table.push(("pointInTimeRecovery", json!(true)));
    let mut queues = Vec::new();
    let mapping = match trigger {
        Trigger::Sqs | Trigger::S3 => {
            queues.push((
                key.clone(),
                Json::object([
                    ("name", json!(format!("{{stack}}-{name}"))),
                    ("fifo", json!(false)),
                    // Six times the function's timeout (AWS advice for Lambda event sources).
                    ("visibilityTimeoutSeconds", json!(180)),
                    ("deadLetterQueue", json!(format!("{{stack}}-{name}-dlq"))),
                    ("maxReceiveCount", json!(5)),
                ]),
            ));
            Json::object([
                ("function", json!(name)),
                ("source", json!({ "queue": key })),
                ("batchSize", json!(10)),
                ("maximumBatchingWindowSeconds", json!(0)),
                ("reportBatchItemFailures", json!(true)),
                ("maximumConcurrency", json!(5)),
            ])
        }
        Trigger::SqsFifo => {
            queues.push((
                key.clone(),
                Json::object([
                    ("name", json!(format!("{{stack}}-{name}.fifo"))),
                    ("fifo", json!(true)),
                    ("contentBasedDeduplication", json!(true)),
                    ("visibilityTimeoutSeconds", json!(180)),
                    ("deadLetterQueue", json!(format!("{{stack}}-{name}-dlq.fifo"))),
                    ("maxReceiveCount", json!(5)),
                ]),
            ));
            // No batching window: Lambda rejects one on a FIFO queue.
            Json::object([
                ("function", json!(name)),
                ("source", json!({ "queue": key })),
                ("batchSize", json!(10)),
                ("reportBatchItemFailures", json!(true)),
                ("maximumConcurrency", json!(5)),
            ])
        }
        Trigger::DynamodbStream => {
            table.push(("streamViewType", json!("NEW_AND_OLD_IMAGES")));
            let failures = format!("{key}Failures");
            queues.push((
                failures.clone(),
                Json::object([
                    ("name", json!(format!("{{stack}}-{name}-failures"))),
                    ("fifo", json!(false)),
                    ("visibilityTimeoutSeconds", json!(30)),
                ]),
            ));
            Json::object([
                ("function", json!(name)),
                ("source", json!({ "table": key })),
                ("batchSize", json!(100)),
                ("maximumBatchingWindowSeconds", json!(0)),
                ("startingPosition", json!("TRIM_HORIZON")),
                ("reportBatchItemFailures", json!(true)),
                ("bisectBatchOnFunctionError", json!(true)),
                ("maximumRetryAttempts", json!(3)),
                ("parallelizationFactor", json!(1)),
                ("onFailure", json!({ "queue": failures })),
                // Only items reach it: its own summary (and quarantine) writes
                // to the same table are filtered out.
                ("filterPatterns", json!([r#"{"dynamodb":{"Keys":{"sk":{"S":["ITEM"]}}}}"#])),
            ])
        }
    };
    let section = |doc: &mut Json, name: &str| -> Result<()> {
        ensure!(matches!(doc.get(name), Some(Json::Object(_))), "{STACK_JSON} has no {name} object");
        Ok(())
    };
    for s in ["functions", "queues", "tables"] {
        section(doc, s)?;
    }
    push_member(doc, "functions", name, function)?;
    for (k, q) in queues {
        push_member(doc, "queues", &k, q)?;
    }
    push_member(doc, "tables", key, Json::object(table))?;
    match doc.get_mut("mappings") {
        Some(Json::Array(mappings)) => mappings.push(mapping),
        _ => bail!("{STACK_JSON} has no mappings array"),
    }
    if trigger == Trigger::S3 {
        let notification = Json::object([
            ("queue", json!(key)),
            ("events", json!(["s3:ObjectCreated:*"])),
            ("prefix", json!(format!("{name}/"))),
        ]);
        match doc.get_mut("bucket").and_then(|b| b.get_mut("notifications")) {
            Some(Json::Array(notifications)) => notifications.push(notification),
            _ => bail!("{STACK_JSON} has no bucket.notifications array"),
        }
    }
    Ok(())
}

fn push_member(doc: &mut Json, section: &str, key: &str, value: Json) -> Result<()> {
    match doc.get_mut(section) {
        Some(Json::Object(members)) => {
            ensure!(!members.iter().any(|(k, _)| k == key), "{STACK_JSON}: {section} has {key} already");
            members.push((key.to_owned(), value));
            Ok(())
        }
        _ => bail!("{STACK_JSON} has no {section} object"),
    }
}

/// The template files of `trigger`, as (path relative to the crate, text):
/// `sqs-fifo` is `sqs` with its own fixture.
pub fn template_files(root: &Path, trigger: Trigger) -> Result<Vec<(PathBuf, String)>> {
    let layers: &[&str] = match trigger {
        Trigger::Sqs => &["sqs"],
        Trigger::SqsFifo => &["sqs", "sqs-fifo"],
        Trigger::DynamodbStream => &["dynamodb-stream"],
        Trigger::S3 => &["s3"],
    };
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    for layer in layers {
        let dir = root.join(TEMPLATES).join(layer);
        for (path, text) in read_tree(&dir)? {
            let path = if path == Path::new("Cargo.toml.template") { PathBuf::from("Cargo.toml") } else { path };
            files.retain(|(p, _)| *p != path);
            files.push((path, text));
        }
    }
    ensure!(
        files.iter().any(|(p, _)| p == Path::new("Cargo.toml")),
        "the {layers:?} templates have no Cargo.toml.template"
    );
    Ok(files)
}

fn read_tree(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let here = dir.join(&relative);
        for entry in std::fs::read_dir(&here).with_context(|| format!("reading {}", here.display()))? {
            let entry = entry?;
            let path = relative.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                pending.push(path);
            } else {
                let text = std::fs::read_to_string(entry.path())
                    .with_context(|| format!("reading {}", entry.path().display()))?;
                out.push((path, text));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Creates the function `name` in the workspace at `root`: its crate, the
/// member, the declaration, the SAM template. Refuses, changing nothing, a
/// name that is taken or invalid.
pub fn create(root: &Path, name: &str, trigger: Trigger) -> Result<Created> {
    let spec = StackSpec::load_from(root)?;
    check_new_name(root, &spec, name)?;
    let names = Names::of(name);
    let files = template_files(root, trigger)?;

    // Everything is computed before anything is written.
    let spec_path = root.join(STACK_JSON);
    let mut doc = Json::parse(&std::fs::read_to_string(&spec_path)?)?;
    declare(&mut doc, &names, trigger)?;
    let declared = doc.pretty();
    StackSpec::parse(&declared).context("the declaration with the new function")?;
    let manifest_path = root.join("Cargo.toml");
    let manifest = add_member(&std::fs::read_to_string(&manifest_path)?, &format!("functions/{name}"))?;

    let crate_dir = root.join("functions").join(name);
    let mut written = Vec::new();
    for (path, text) in files {
        let target = crate_dir.join(&path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&target, names.render(&text)).with_context(|| format!("writing {}", target.display()))?;
        written.push(target);
    }
    std::fs::write(&manifest_path, manifest).context("writing Cargo.toml")?;
    std::fs::write(&spec_path, declared).with_context(|| format!("writing {}", spec_path.display()))?;
    crate::sam::write(root)?;
    let spec = StackSpec::load_from(root)?;
    let fixtures = spec.fixtures_of(root, name)?;
    Ok(Created { crate_dir, files: written, fixtures })
}

/// The names `cargo xtask test` generates, one per trigger.
pub const CHECKED: [(&str, Trigger); 4] = [
    ("template-sqs", Trigger::Sqs),
    ("template-fifo", Trigger::SqsFifo),
    ("template-stream", Trigger::DynamodbStream),
    ("template-s3", Trigger::S3),
];

/// `root`'s manifest with `members` listing exactly `members`.
fn with_members(manifest: &str, members: &[&str]) -> Result<String> {
    let start = manifest.find("members = [").context("Cargo.toml has no `members = [`")?;
    let end = start + manifest[start..].find(']').context("Cargo.toml's members list is not closed")?;
    let list: String = members.iter().map(|m| format!("    \"{m}\",\n")).collect();
    Ok(format!("{}members = [\n{list}{}", &manifest[..start], &manifest[end..]))
}

/// `cargo xtask test`'s check of the templates: a copy of the workspace
/// (its files as git sees them, in the target directory) gets one function
/// of each trigger from `cargo xtask new`'s code, then their formatting,
/// lints and tests (unit, and through the local stack) run there, with the
/// local stack's tools linked rather than installed again; then its SAM
/// template is cfn-lint'ed and its CDK app's tests (equivalence, least
/// privilege, cdk-nag) run with the four functions declared. The copy's
/// members are the toolkit, xtask and the generated crates only: what they
/// need.
pub fn check_templates(root: &Path, run: &dyn Fn(&mut std::process::Command, &str) -> Result<()>) -> Result<()> {
    let target = crate::workspace::target_dir(root)?;
    let scratch = target.join("template-check").join("workspace");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).with_context(|| format!("removing {}", scratch.display()))?;
    }
    std::fs::create_dir_all(&scratch)?;
    let listed = std::process::Command::new("git")
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .current_dir(root)
        .output()
        .context("running git ls-files (the check copies the workspace's files as git sees them)")?;
    ensure!(listed.status.success(), "git ls-files failed: {}", String::from_utf8_lossy(&listed.stderr));
    for path in listed.stdout.split(|b| *b == 0).filter(|p| !p.is_empty()) {
        let path = Path::new(std::str::from_utf8(path).context("a path that is not UTF-8")?);
        let (from, to) = (root.join(path), scratch.join(path));
        if !from.is_file() {
            continue;
        }
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
    }
    for tools in [".venv", ".dynamodb-local", "infra/cdk/node_modules"] {
        if root.join(tools).exists() {
            std::os::unix::fs::symlink(root.join(tools), scratch.join(tools))
                .with_context(|| format!("linking {tools} into {}", scratch.display()))?;
        }
    }
    let members = ["shared", "shared/core", "xtask"];
    let manifest = std::fs::read_to_string(scratch.join("Cargo.toml"))?;
    std::fs::write(scratch.join("Cargo.toml"), with_members(&manifest, &members)?)?;
    // Cargo names a path package's build by its path from the workspace
    // root: the copy's `shared` would share the workspace's artefacts, and
    // each build would undo the other's. A build-metadata version keeps them
    // apart (dependents ask for the path, not a version).
    for member in members {
        let path = scratch.join(member).join("Cargo.toml");
        let text = std::fs::read_to_string(&path)?;
        ensure!(text.contains("\nversion = \"0.1.0\"\n"), "{}: no `version = \"0.1.0\"` line", path.display());
        std::fs::write(&path, text.replacen("\nversion = \"0.1.0\"\n", "\nversion = \"0.1.0+template-check\"\n", 1))?;
    }
    let mut packages = Vec::new();
    for (name, trigger) in CHECKED {
        create(&scratch, name, trigger).with_context(|| format!("cargo xtask new {name} in {}", scratch.display()))?;
        packages.extend(["-p", name]);
    }
    let cargo = |args: &[&str]| {
        let mut command = crate::workspace::cargo_command();
        command
            .args(args)
            .current_dir(&scratch)
            .env("CARGO_TARGET_DIR", &target)
            .env("PATH", crate::venv::Venv::at(&scratch).path_env());
        command
    };
    let with = |first: &[&str], last: &[&str]| -> Vec<String> {
        first.iter().chain(&packages).chain(last).map(|s| (*s).to_owned()).collect()
    };
    for args in [
        with(&["fmt"], &[]),
        with(&["fmt", "--check"], &[]),
        with(&["clippy", "--all-targets"], &["--", "-D", "warnings"]),
        with(&["test", "--no-fail-fast"], &[]),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&mut cargo(&args), &format!("cargo {}", args.join(" ")))?;
    }
    // And the template with the local-only functions deployed too, for the
    // equivalence test's comparison of them (as the infra check does).
    let all_functions = scratch.join("all-functions.template.yaml");
    let mut all = crate::sam::template_spec(&std::fs::read_to_string(scratch.join(STACK_JSON))?)?;
    all.deploy_local_only();
    std::fs::write(&all_functions, crate::sam::template(&all)?)?;
    let cfn_lint = root.join(".venv/bin/cfn-lint");
    run(
        std::process::Command::new(cfn_lint)
            .arg("template.yaml")
            .arg(&all_functions)
            .current_dir(scratch.join("infra")),
        "cfn-lint",
    )?;
    let cdk = scratch.join("infra/cdk");
    run(
        std::process::Command::new("node").args(["node_modules/typescript/bin/tsc", "-p", "."]).current_dir(&cdk),
        "tsc",
    )?;
    let mut tests: Vec<PathBuf> = std::fs::read_dir(cdk.join("dist/test"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".test.js"))
        .collect();
    tests.sort();
    run(
        std::process::Command::new("node")
            .arg("--test")
            .args(&tests)
            .current_dir(&cdk)
            .env("CDK_DISABLE_VERSION_CHECK", "1")
            .env("SAM_ALL_FUNCTIONS", &all_functions),
        "the CDK tests with the four functions declared",
    )?;
    std::fs::remove_dir_all(&scratch).with_context(|| format!("removing {}", scratch.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_for_every_use() {
        let n = Names::of("order-events-2");
        assert_eq!(
            (n.krate.as_str(), n.env.as_str(), n.key.as_str()),
            ("order_events_2", "ORDER_EVENTS_2", "orderEvents2")
        );
        assert_eq!(
            n.render("{{name}} {{crate}} {{NAME}}_TABLE {{key}}"),
            "order-events-2 order_events_2 ORDER_EVENTS_2_TABLE orderEvents2"
        );
    }

    #[test]
    fn a_member_goes_after_the_functions() {
        let manifest = "[workspace]\nmembers = [\n    \"shared\",\n    \"functions/a\",\n    \"functions/b\",\n    \"tests\",\n]\n";
        assert_eq!(
            add_member(manifest, "functions/new").unwrap(),
            "[workspace]\nmembers = [\n    \"shared\",\n    \"functions/a\",\n    \"functions/b\",\n    \"functions/new\",\n    \"tests\",\n]\n"
        );
    }

    #[test]
    fn taken_and_invalid_names_are_refused_naming_why() {
        let root = crate::workspace::root();
        let spec = StackSpec::load_from(&root).unwrap();
        for (name, why) in [
            ("sqs-consumer", "declared already"),
            ("shared", "crate name the workspace relies on"),
            ("match", "Rust keyword"),
            ("Payments", "lower-case letter"),
            ("pay_ments", "not allowed"),
            ("cf-worker", "exists already"),
            ("inventory", "key inventory already"),
        ] {
            let err = check_new_name(&root, &spec, name).unwrap_err().to_string();
            assert!(err.contains(why), "{name}: {err}");
        }
        check_new_name(&root, &spec, "zz-scaffold-check").unwrap();
    }

    #[test]
    fn every_trigger_declares_a_valid_stack() {
        let root = crate::workspace::root();
        let text = std::fs::read_to_string(root.join(STACK_JSON)).unwrap();
        for (name, trigger) in [
            ("t-sqs", Trigger::Sqs),
            ("t-fifo", Trigger::SqsFifo),
            ("t-stream", Trigger::DynamodbStream),
            ("t-s3", Trigger::S3),
        ] {
            let mut doc = Json::parse(&text).unwrap();
            declare(&mut doc, &Names::of(name), trigger).unwrap();
            let spec = StackSpec::parse(&doc.pretty()).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            let f = spec.function(name).unwrap();
            assert!(f.deploy);
            assert_eq!(spec.mappings_of(name).count(), 1, "{name}");
            let permissions = spec.permissions(name).unwrap();
            assert!(permissions.iter().any(|p| p.sid == "IdempotencyTable"), "{name}: {permissions:?}");
            assert!(!template_files(&root, trigger).unwrap().is_empty());
        }
    }
}
