//! Lambda, played by `cargo lambda watch`: the real function binaries behind
//! the Lambda Invoke API on 127.0.0.1, configured against the local stack.
//!
//! How `cargo lambda watch` 1.9 reports a function error (verified): HTTP 500
//! with the runtime's `{"errorType", "errorMessage"}` body and no
//! `X-Amz-Function-Error` header (AWS answers 200 with that header). Both are
//! read as a function error here.
//!
//! A crashed function ([`Lambda::kill_function`]): watch 1.9 neither answers
//! the invocation the dead process held nor starts a new process for the
//! next one (verified: the next invoke hangs). So the kill plays Lambda: the
//! invocation in flight fails with `Runtime.ExitError`, and a new process of
//! the same binary, with the environment watch gave the dead one, takes the
//! next invocations from watch's runtime API (a fresh execution environment,
//! cold start included).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::process::{ChildGroup, RunDir, descendants_named, kill_and_wait};
use crate::stack::{Stack, free_port, wait_ready};

/// Attempts at binding a fresh free port.
const START_ATTEMPTS: u32 = 5;
/// `cargo lambda watch` starts its server within a second or two.
const WATCH_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// watch logs this line when its server starts.
const WATCH_READY_LINE: &str = "starting Runtime server";
/// On top of a function's own timeout: the first invocation of a function
/// starts it with `cargo run`, which checks (and, if a source changed,
/// rebuilds) the binary; other cargo commands may hold the build lock.
const FIRST_START_ALLOWANCE: Duration = Duration::from_secs(300);
/// AWS's header for function errors.
const FUNCTION_ERROR_HEADER: &str = "x-amz-function-error";
/// Lambda's error type for an invocation whose runtime process died.
pub const RUNTIME_EXIT_ERROR: &str = "Runtime.ExitError";
/// How long a SIGKILLed process may take to die.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// The outcome of one synchronous invocation.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    /// The function returned this payload.
    Ok(Value),
    /// The function failed (error returned, crash, or timeout).
    FunctionError { error_type: String, message: String },
}

/// A running `cargo lambda watch`.
#[derive(Debug)]
pub struct Lambda {
    port: u16,
    http: reqwest::Client,
    child: ChildGroup,
    env_file: PathBuf,
    /// Function processes started in place of killed ones.
    respawned: Mutex<Vec<ChildGroup>>,
    /// The last killed function, with a count of kills: wakes its invocations
    /// in flight.
    crashes: tokio::sync::watch::Sender<(u64, String)>,
}

impl Lambda {
    /// Builds the function binaries, then starts watch and waits until it
    /// answers.
    pub(crate) async fn start(stack: &Stack) -> Result<Self> {
        let functions: Vec<String> = stack.spec.function_names().map(str::to_owned).collect();
        Self::start_for(stack, &functions, "functions", &[]).await
    }

    /// Serves other binaries of the workspace against `stack` (the examples
    /// of other domains): builds `packages`, then starts a watch of its own
    /// whose functions get the stack's environment plus `extra_env`. `name`
    /// names its env file and log in the stack's run directory.
    pub async fn start_for(
        stack: &Stack,
        packages: &[String],
        name: &str,
        extra_env: &[(String, String)],
    ) -> Result<Self> {
        let functions = packages;
        build_functions(&stack.root, functions).await?;
        let env_file = stack.run_dir().join(format!("{name}.env"));
        let mut env = stack.function_env()?;
        env.extend(extra_env.iter().cloned());
        let env: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(&env_file, env).context("writing the functions' env file")?;
        let longest = stack.spec.functions.values().map(|f| f.timeout_seconds).max().unwrap_or(60);
        let timeout = Duration::from_secs(longest) + FIRST_START_ALLOWANCE;
        let http = reqwest::Client::builder().timeout(timeout).build().context("building the HTTP client")?;
        let mut last_log = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port()?;
            let args = vec![
                "lambda".into(),
                "watch".into(),
                // No hot reload: tests and the demo run the binaries as built.
                "--ignore-changes".into(),
                "--invoke-address".into(),
                "127.0.0.1".into(),
                "--invoke-port".into(),
                port.to_string(),
                "--timeout".into(),
                timeout.as_secs().to_string(),
                "--env-file".into(),
                env_file.display().to_string(),
                "--concurrency".into(),
                stack.function_concurrency.max(1).to_string(),
            ];
            let path = stack.venv.path_env().to_string_lossy().into_owned();
            let mut child = ChildGroup::spawn(
                stack.run(),
                &if name == "functions" { format!("lambda-{attempt}") } else { format!("lambda-{name}-{attempt}") },
                std::path::Path::new(&cargo()),
                &args,
                &[("PATH".into(), path)],
                &stack.root,
            )?;
            let url = format!("http://127.0.0.1:{port}/");
            let ready = wait_ready(&mut child, WATCH_READY_TIMEOUT, |log| {
                let http = http.clone();
                let url = url.clone();
                let started = log.contains(WATCH_READY_LINE);
                // Any HTTP answer (404 on `/`) means the server is up.
                async move { started && http.get(&url).send().await.is_ok() }
            })
            .await?;
            if ready && !child.exited() {
                return Ok(Self {
                    port,
                    http,
                    child,
                    env_file,
                    respawned: Mutex::new(Vec::new()),
                    crashes: tokio::sync::watch::Sender::new((0, String::new())),
                });
            }
            last_log = child.log_tail(20);
        }
        bail!("cargo lambda watch did not start after {START_ATTEMPTS} attempts; last log:\n{last_log}")
    }

    /// The invoke port (`cargo lambda invoke --invoke-port`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The env file the functions read (`KEY=VALUE` lines).
    pub fn env_file(&self) -> &std::path::Path {
        &self.env_file
    }

    /// watch's output so far, including the functions' logs (and those of
    /// processes started after a kill).
    pub fn log_text(&self) -> String {
        let mut text = self.child.log_text();
        for group in self.respawned.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            text.push_str(&group.log_text());
        }
        text
    }

    /// Kills `function`'s process with SIGKILL, as a crash or an
    /// out-of-memory kill would, and plays Lambda's part (see the module
    /// documentation): its invocation in flight fails with
    /// [`RUNTIME_EXIT_ERROR`], and a new process serves the next ones.
    /// `pick`: `None` expects exactly one process and fails if the function
    /// has none (not invoked yet) or several; `Some(i)` kills the `i`-th
    /// (modulo their number) and returns false when none runs. Every
    /// invocation of the function in flight then fails, including those of
    /// its other processes (they may still commit: their records come back
    /// as duplicates).
    pub(crate) async fn kill_function(&self, run: &RunDir, function: &str, pick: Option<usize>) -> Result<bool> {
        let mut ancestors = vec![self.child.pid()];
        ancestors.extend(self.respawned.lock().unwrap_or_else(|e| e.into_inner()).iter().map(ChildGroup::pid));
        let found: Vec<_> = ancestors.iter().flat_map(|a| descendants_named(*a, function)).collect();
        let process = match (pick, found.as_slice()) {
            (None, [process]) => process,
            (None, _) => bail!("expected one running process of {function}, found {}: {found:?}", found.len()),
            (Some(_), []) => return Ok(false),
            (Some(i), several) => &several[i % several.len()],
        };
        let pid = process.pid;
        tokio::task::spawn_blocking(move || kill_and_wait(pid, KILL_TIMEOUT)).await.context("kill task panicked")??;
        self.crashes.send_modify(|(count, name)| {
            *count += 1;
            function.clone_into(name);
        });
        let mut respawned = self.respawned.lock().unwrap_or_else(|e| e.into_inner());
        let name = format!("{function}-restart-{}", respawned.len() + 1);
        let group = ChildGroup::spawn_with_exact_env(run, &name, &process.exe, &[], &process.env, &process.cwd)?;
        respawned.push(group);
        Ok(true)
    }

    /// Resolves once `function` is killed after this call.
    async fn killed(mut crashes: tokio::sync::watch::Receiver<(u64, String)>, function: &str) {
        while crashes.changed().await.is_ok() {
            if crashes.borrow_and_update().1 == function {
                return;
            }
        }
        // The sender is gone with the Lambda: never a crash.
        std::future::pending::<()>().await;
    }

    pub fn log_path(&self) -> &std::path::Path {
        self.child.log_path()
    }

    /// Invokes `function` synchronously with `payload` (Lambda Invoke API,
    /// `RequestResponse`).
    pub async fn invoke(&self, function: &str, payload: &Value) -> Result<Invocation> {
        let crashes = self.crashes.subscribe();
        tokio::select! {
            result = self.invoke_http(function, payload) => result,
            () = Self::killed(crashes, function) => Ok(Invocation::FunctionError {
                error_type: RUNTIME_EXIT_ERROR.into(),
                message: format!("{function}: Runtime exited with error: signal: killed"),
            }),
        }
    }

    async fn invoke_http(&self, function: &str, payload: &Value) -> Result<Invocation> {
        let url = format!("http://127.0.0.1:{}/2015-03-31/functions/{function}/invocations", self.port);
        let response = match self.http.post(&url).json(payload).send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return Ok(Invocation::FunctionError {
                    error_type: "Timeout".into(),
                    message: format!("{function} did not answer in time: {e}"),
                });
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("invoking {function} at {url}; watch log ends:\n{}", self.child.log_tail(20))
                });
            }
        };
        let status = response.status();
        let error_header =
            response.headers().get(FUNCTION_ERROR_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = response.text().await.with_context(|| format!("reading the response of {function}"))?;
        let json: Option<Value> = serde_json::from_str(&body).ok();
        // A 5xx without the runtime's error body is a crash or a timeout
        // inside watch: to the mapping, an unhandled function error too.
        if error_header.is_some() || status.is_server_error() {
            let field = |name: &str| {
                json.as_ref().and_then(|j| j.get(name)).and_then(Value::as_str).unwrap_or_default().to_owned()
            };
            return Ok(Invocation::FunctionError {
                error_type: error_header.map_or_else(
                    || field("errorType"),
                    |h| {
                        let t = field("errorType");
                        if t.is_empty() { h } else { t }
                    },
                ),
                message: if is_empty(&field("errorMessage")) {
                    format!("HTTP {status}: {body}")
                } else {
                    field("errorMessage")
                },
            });
        }
        if !status.is_success() {
            bail!("invoking {function}: HTTP {status}: {body}");
        }
        // A function may return nothing (`null`): that is a success.
        Ok(Invocation::Ok(json.unwrap_or(Value::Null)))
    }
}

fn is_empty(s: &str) -> bool {
    s.trim().is_empty()
}

/// The cargo that runs us (set by cargo for `cargo run`/`cargo test`).
pub(crate) fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// A `cargo` command without the variables cargo set for the package that
/// runs us (see [`crate::process::without_package_env`]).
pub fn cargo_command() -> Command {
    let mut command = Command::new(cargo());
    crate::process::without_package_env(&mut command);
    command
}

/// `cargo build` of the function binaries, so watch does not compile them
/// lazily inside the first invocation's timeout. Output is captured (and shown
/// on failure); the commands call [`build_functions_visibly`] first so a
/// first build's progress is on screen.
///
/// One `cargo build -p <function>` per function, as watch's `cargo run` of
/// one binary builds it: one build of all three unifies their dependencies'
/// features, so watch's first start of `s3-ingest` then rebuilt
/// aws-sdk-dynamodb, shared and the binary (seen on a fresh clone: minutes on
/// a busy 2-core machine, inside the crash tests' wait for the first commit).
pub async fn build_functions(root: &std::path::Path, functions: &[String]) -> Result<()> {
    for function in functions {
        let mut cmd = build_command(root, function);
        let output = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .context("build task panicked")?
            .context("running cargo build")?;
        if !output.status.success() {
            bail!("cargo build of {function} failed:\n{}", String::from_utf8_lossy(&output.stderr));
        }
    }
    Ok(())
}

/// `cargo build` of the function binaries (one per function, see
/// [`build_functions`]) with cargo's progress on the terminal.
pub fn build_functions_visibly(root: &std::path::Path, functions: &[String]) -> Result<()> {
    for function in functions {
        let status = build_command(root, function).status().context("running cargo build")?;
        if !status.success() {
            bail!("cargo build of {function} failed ({status})");
        }
    }
    Ok(())
}

fn build_command(root: &std::path::Path, function: &str) -> Command {
    let mut cmd = cargo_command();
    cmd.arg("build").arg("-p").arg(function).current_dir(root);
    cmd
}
