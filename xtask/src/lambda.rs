//! Lambda, played by the dev tooling: the real function binaries behind the
//! Lambda Invoke API on 127.0.0.1, each process fed through its own Lambda
//! Runtime API (<https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html>).
//!
//! What it does as Lambda does:
//! - each function runs with its own environment (its declared variables,
//!   the emulators' endpoints, Lambda's `AWS_LAMBDA_*`), from the binary
//!   `cargo build` produced when the stack started (hard-linked into the run
//!   directory, so a later build cannot change it mid-run): nothing is
//!   compiled at invoke time;
//! - an execution environment (a process) starts on the first invocation
//!   that finds none idle, up to [`Stack::function_concurrency`] per
//!   function, and then serves one invocation at a time;
//! - `Lambda-Runtime-Deadline-Ms` is the epoch time at which the declared
//!   timeout ends; an invocation still running then fails with
//!   `Sandbox.Timedout` and its process is stopped;
//! - a process that exits (a missing variable at start-up, a panic, SIGKILL)
//!   fails the invocation it held, or the one waiting for it to start, with
//!   `Runtime.ExitError` and the last lines of its log, at once; the next
//!   invocation starts a fresh process (cold start included). A process that
//!   has not asked for an invocation 10 s after it started (Lambda's limit
//!   for the init phase) is reported, and the invocation waiting for it
//!   fails once the function's timeout has passed.
//!
//! Every such event is also a [`Report`] (`cargo xtask stack` prints them as
//! they happen), so a dead function is an answer, not a hang. This replaces
//! `cargo lambda watch`, which served every function with one environment,
//! compiled a function at its first invocation, and left an invocation of a
//! function whose process had died unanswered.
//!
//! The Invoke API (`POST /2015-03-31/functions/<name>/invocations`) answers
//! as AWS does: 200 with the function's payload, or 200 with
//! `X-Amz-Function-Error: Unhandled` and `{"errorType", "errorMessage"}`;
//! 404 `ResourceNotFoundException` for a function the stack does not serve.
//! `cargo lambda invoke --invoke-address 127.0.0.1 --invoke-port <port>`
//! talks to it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast, oneshot};

use crate::process::{ChildGroup, RunDir, descendants_named, kill_and_wait};
use crate::stack::{ACCOUNT_ID, Stack};

pub use crate::workspace::{cargo, cargo_command};

/// Lambda's error type for an invocation whose runtime process died.
pub const RUNTIME_EXIT_ERROR: &str = "Runtime.ExitError";
/// Lambda's error type for an invocation that ran out of time.
pub const TIMEOUT_ERROR: &str = "Sandbox.Timedout";
/// Lambda's limit for the init phase: a process that has not asked for an
/// invocation by then is reported.
pub const INIT_LIMIT: Duration = Duration::from_secs(10);
/// How often the supervisor looks at the processes.
const SUPERVISE_EVERY: Duration = Duration::from_millis(50);
/// Log lines quoted in reports and errors.
const LOG_TAIL_LINES: usize = 20;
/// How long a SIGKILLed process may take to die.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// The Runtime API's path prefix.
const RUNTIME_PREFIX: &str = "/2018-06-01/runtime/";
/// The Invoke API's path prefix.
const INVOKE_PREFIX: &str = "/2015-03-31/functions/";

/// The outcome of one synchronous invocation.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    /// The function returned this payload.
    Ok(Value),
    /// The function failed (error returned, crash, or timeout).
    FunctionError { error_type: String, message: String },
}

/// How one function runs.
#[derive(Debug, Clone)]
pub struct FunctionConfig {
    pub name: String,
    /// The binary to run.
    pub executable: PathBuf,
    /// Its environment: nothing else of ours reaches it but `PATH`.
    pub environment: Vec<(String, String)>,
    pub timeout: Duration,
    pub memory_mib: u64,
}

/// Something that happened to a function's process, as it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub function: String,
    /// What happened, with the last lines of the process's log.
    pub message: String,
}

/// The running Lambda stand-in: the Invoke API and the functions' processes.
pub struct Lambda {
    port: u16,
    host: Arc<Host>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Lambda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lambda").field("port", &self.port).finish_non_exhaustive()
    }
}

impl Drop for Lambda {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.host.stop();
    }
}

struct Host {
    region: String,
    run: Arc<RunDir>,
    cwd: PathBuf,
    concurrency: usize,
    functions: BTreeMap<String, Function>,
    reports: broadcast::Sender<Report>,
    history: Mutex<Vec<Report>>,
    /// Every process's log, in start order.
    logs: Mutex<Vec<PathBuf>>,
    requests: AtomicU64,
}

struct Function {
    config: FunctionConfig,
    state: Mutex<State>,
    /// Woken when an invocation is queued.
    work: Notify,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    instances: Vec<Instance>,
    in_flight: HashMap<String, InFlight>,
    started: u64,
}

struct Job {
    id: String,
    payload: Bytes,
    respond: oneshot::Sender<Invocation>,
}

struct InFlight {
    respond: oneshot::Sender<Invocation>,
    deadline: Instant,
}

/// One process (an execution environment).
struct Instance {
    id: u64,
    group: ChildGroup,
    started: Instant,
    /// It has asked for an invocation at least once (its init is done).
    polled: bool,
    /// The request it is handling.
    busy: Option<String>,
    /// Reported as slow to start.
    reported_slow: bool,
    /// What it posted to `/runtime/init/error`.
    init_error: Option<String>,
    server: tokio::task::JoinHandle<()>,
}

impl Lambda {
    /// Builds `functions` (declared in the stack's declaration; one `cargo
    /// build`) and serves them against `stack`.
    pub(crate) async fn start(stack: &Stack, functions: &[String]) -> Result<Self> {
        for name in functions {
            stack.spec.function(name)?;
        }
        let names = functions.to_vec();
        let root = stack.root.clone();
        let executables = tokio::task::spawn_blocking(move || build_functions_blocking(&root, &names, false))
            .await
            .context("build task panicked")??;
        let bin = stack.run_dir().join("bin");
        std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
        let mut configs = Vec::new();
        for name in functions {
            let f = stack.spec.function(name)?;
            let built = executables.get(name).with_context(|| format!("no binary was built for {name}"))?;
            configs.push(FunctionConfig {
                name: name.clone(),
                executable: snapshot(built, &bin.join(name))?,
                environment: stack.function_env(name)?,
                timeout: Duration::from_secs(f.timeout_seconds),
                memory_mib: f.memory_mi_b,
            });
        }
        Self::serve(configs, stack.run_handle(), &stack.root, &stack.spec.region, stack.function_concurrency).await
    }

    /// Serves `functions` on a free port of 127.0.0.1; their processes'
    /// logs and process groups go to `run`.
    pub async fn serve(
        functions: Vec<FunctionConfig>,
        run: Arc<RunDir>,
        cwd: &Path,
        region: &str,
        concurrency: usize,
    ) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the Invoke API")?;
        let port = listener.local_addr()?.port();
        let host = Arc::new(Host {
            region: region.to_owned(),
            run,
            cwd: cwd.to_path_buf(),
            concurrency: concurrency.max(1),
            functions: functions
                .into_iter()
                .map(|config| (config.name.clone(), Function { config, state: Mutex::default(), work: Notify::new() }))
                .collect(),
            reports: broadcast::channel(256).0,
            history: Mutex::default(),
            logs: Mutex::default(),
            requests: AtomicU64::new(0),
        });
        let server = {
            let host = Arc::downgrade(&host);
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let host = host.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |request| invoke_api(host.clone(), request));
                        let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                    });
                }
            })
        };
        let supervisor = {
            let host = Arc::downgrade(&host);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(SUPERVISE_EVERY).await;
                    let Some(host) = host.upgrade() else { return };
                    host.supervise();
                }
            })
        };
        Ok(Self { port, host, tasks: vec![server, supervisor] })
    }

    /// The Invoke API's port (`cargo lambda invoke --invoke-port`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The functions served.
    pub fn functions(&self) -> impl Iterator<Item = &str> {
        self.host.functions.keys().map(String::as_str)
    }

    /// Whether `function` is served.
    pub fn serves(&self, function: &str) -> bool {
        self.host.functions.contains_key(function)
    }

    /// Every function process's output so far (their JSON log lines), in
    /// the order the processes started.
    pub fn log_text(&self) -> String {
        let logs = self.host.logs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        logs.iter().map(|p| std::fs::read_to_string(p).unwrap_or_default()).collect()
    }

    /// What happened to the functions' processes from now on.
    pub fn reports(&self) -> broadcast::Receiver<Report> {
        self.host.reports.subscribe()
    }

    /// What happened to the functions' processes so far.
    pub fn reported(&self) -> Vec<Report> {
        self.host.history.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The functions with a process running now.
    pub fn running(&self) -> Vec<String> {
        self.host
            .functions
            .iter()
            .filter(|(_, f)| !f.state.lock().unwrap_or_else(|e| e.into_inner()).instances.is_empty())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Invokes `function` synchronously with `payload` (`RequestResponse`).
    /// Fails only when the stack does not serve `function`; everything the
    /// function does wrong is an [`Invocation::FunctionError`].
    pub async fn invoke(&self, function: &str, payload: &Value) -> Result<Invocation> {
        let bytes = Bytes::from(serde_json::to_vec(payload).context("serializing the payload")?);
        self.host.invoke(function, bytes).await
    }

    /// Kills one of `function`'s processes with SIGKILL, as a crash or an
    /// out-of-memory kill would: the invocation it holds fails with
    /// [`RUNTIME_EXIT_ERROR`] and the next one starts a fresh process.
    /// `pick`: `None` expects exactly one process and fails if the function
    /// has none (not invoked yet) or several; `Some(i)` kills the `i`-th
    /// (modulo their number) and returns false when none runs.
    pub(crate) async fn kill_function(&self, function: &str, pick: Option<usize>) -> Result<bool> {
        let f = self.host.function(function)?;
        let (instance, guardian) = {
            let state = f.state.lock().unwrap_or_else(|e| e.into_inner());
            let ids: Vec<(u64, u32)> = state.instances.iter().map(|i| (i.id, i.group.pid())).collect();
            match (pick, ids.as_slice()) {
                (None, [one]) => *one,
                (None, _) => bail!("expected one running process of {function}, found {}", ids.len()),
                (Some(_), []) => return Ok(false),
                (Some(i), several) => several[i % several.len()],
            }
        };
        let name = f.config.executable.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let Some(process) = descendants_named(guardian, &name).into_iter().next() else {
            // It is exiting by itself: the supervisor reports it.
            return Ok(pick.is_none());
        };
        tokio::task::spawn_blocking(move || kill_and_wait(process.pid, KILL_TIMEOUT))
            .await
            .context("kill task panicked")??;
        self.host.exited(f, instance, "killed by signal 9 (SIGKILL)".into());
        Ok(true)
    }
}

impl Host {
    fn function(&self, name: &str) -> Result<&Function> {
        self.functions.get(name).with_context(|| {
            format!(
                "the local stack serves no function {name:?} (it serves {}; declare yours in infra/stack.json)",
                self.functions.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }

    fn report(&self, function: &str, message: String) {
        let report = Report { function: function.to_owned(), message };
        let _ = self.reports.send(report.clone());
        self.history.lock().unwrap_or_else(|e| e.into_inner()).push(report);
    }

    async fn invoke(self: &Arc<Self>, function: &str, payload: Bytes) -> Result<Invocation> {
        let f = self.function(function)?;
        let n = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let id = format!("{:08x}-0000-4000-8000-{n:012x}", std::process::id());
        let (respond, answer) = oneshot::channel();
        {
            let mut state = f.state.lock().unwrap_or_else(|e| e.into_inner());
            state.queue.push_back(Job { id: id.clone(), payload, respond });
            if let Err(e) = self.scale(f, &mut state) {
                state.queue.retain(|j| j.id != id);
                return Err(e);
            }
        }
        f.work.notify_waiters();
        Ok(answer.await.unwrap_or_else(|_| Invocation::FunctionError {
            error_type: "Runtime.Unavailable".into(),
            message: format!("{function}: the local Lambda stopped before answering"),
        }))
    }

    /// Starts a process when invocations wait and no process is free to take
    /// them, up to the concurrency.
    fn scale(self: &Arc<Self>, f: &Function, state: &mut State) -> Result<()> {
        let free = state.instances.iter().filter(|i| i.busy.is_none()).count();
        if state.queue.len() > free && state.instances.len() < self.concurrency {
            self.start_instance(f, state)?;
        }
        Ok(())
    }

    fn start_instance(self: &Arc<Self>, f: &Function, state: &mut State) -> Result<()> {
        let name = &f.config.name;
        state.started += 1;
        let id = state.started;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a Runtime API")?;
        listener.set_nonblocking(true)?;
        let runtime_api = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let mut env = f.config.environment.clone();
        env.extend(
            [
                ("AWS_LAMBDA_RUNTIME_API", runtime_api.to_string()),
                ("AWS_LAMBDA_FUNCTION_NAME", name.clone()),
                ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", f.config.memory_mib.to_string()),
                ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
                ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".into()),
                ("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}")),
                ("AWS_LAMBDA_LOG_STREAM_NAME", format!("local/[$LATEST]{id}")),
                ("_HANDLER", "bootstrap".into()),
                ("TZ", ":UTC".into()),
                // The guardian needs `sleep` and `kill`; nothing else of our
                // environment reaches the function, as on Lambda.
                ("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        let group = ChildGroup::spawn_with_exact_env(
            &self.run,
            &format!("{name}-{id}"),
            &f.config.executable,
            &[],
            &env,
            &self.cwd,
        )
        .with_context(|| format!("starting {}", f.config.executable.display()))?;
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).push(group.log_path().to_path_buf());
        let server = {
            let host = Arc::downgrade(self);
            let name = name.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (host, name) = (host.clone(), name.clone());
                    tokio::spawn(async move {
                        let service =
                            service_fn(move |request| runtime_api_call(host.clone(), name.clone(), id, request));
                        let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                    });
                }
            })
        };
        state.instances.push(Instance {
            id,
            group,
            started: Instant::now(),
            polled: false,
            busy: None,
            reported_slow: false,
            init_error: None,
            server,
        });
        Ok(())
    }

    /// `GET /runtime/invocation/next` of instance `id`: the next queued
    /// invocation, when there is one.
    async fn next(&self, function: &str, id: u64) -> Option<(String, Bytes, SystemTime)> {
        let f = self.functions.get(function)?;
        loop {
            let notified = f.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut guard = f.state.lock().unwrap_or_else(|e| e.into_inner());
                let state = &mut *guard;
                let instance = state.instances.iter_mut().find(|i| i.id == id)?;
                instance.polled = true;
                if instance.busy.is_none()
                    && let Some(job) = state.queue.pop_front()
                {
                    instance.busy = Some(job.id.clone());
                    let deadline = SystemTime::now() + f.config.timeout;
                    state.in_flight.insert(
                        job.id.clone(),
                        InFlight { respond: job.respond, deadline: Instant::now() + f.config.timeout },
                    );
                    return Some((job.id, job.payload, deadline));
                }
            }
            notified.await;
        }
    }

    /// A result posted by instance `id` for `request`.
    fn complete(&self, function: &str, id: u64, request: &str, invocation: Invocation) -> bool {
        let Some(f) = self.functions.get(function) else { return false };
        let mut state = f.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(in_flight) = state.in_flight.remove(request) else { return false };
        if let Some(i) = state.instances.iter_mut().find(|i| i.id == id) {
            i.busy = None;
        }
        let _ = in_flight.respond.send(invocation);
        true
    }

    /// Instance `id` of `f` is gone (`how`: `exit status 1`, `killed by
    /// signal 9`): fails what it held, or the invocation waiting for it to
    /// start, with its log's last lines, reports it, and starts another
    /// process for whatever still waits.
    fn exited(self: &Arc<Self>, f: &Function, id: u64, how: String) {
        let name = &f.config.name;
        let mut state = f.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(index) = state.instances.iter().position(|i| i.id == id) else { return };
        let mut instance = state.instances.remove(index);
        instance.server.abort();
        let tail = instance.group.log_tail(LOG_TAIL_LINES);
        instance.group.stop();
        let init_error = instance.init_error.take().map(|e| format!(" (init error: {e})")).unwrap_or_default();
        let (when, failed) = match (&instance.busy, instance.polled) {
            (Some(request), _) => {
                (format!("while handling request {request}"), state.in_flight.remove(request).map(|f| f.respond))
            }
            (None, false) => ("before asking for an invocation".to_owned(), state.queue.pop_front().map(|j| j.respond)),
            (None, true) => ("while idle".to_owned(), None),
        };
        let message = format!(
            "{name}: process {id} exited ({how}) {when}{init_error}; its log ends:\n{}",
            if tail.is_empty() { "(empty)".to_owned() } else { tail }
        );
        if let Some(respond) = failed {
            let _ = respond
                .send(Invocation::FunctionError { error_type: RUNTIME_EXIT_ERROR.into(), message: message.clone() });
        }
        // A process that died at start-up fails each invocation that finds
        // none: start one for the next in line.
        let _ = self.scale(f, &mut state);
        drop(state);
        self.report(name, message);
    }

    /// Looks at every process: exited ones, invocations past their
    /// deadline, processes slow to start.
    fn supervise(self: &Arc<Self>) {
        let now = Instant::now();
        for f in self.functions.values() {
            let name = &f.config.name;
            let mut gone = Vec::new();
            let mut timed_out = Vec::new();
            let mut slow = Vec::new();
            {
                let mut state = f.state.lock().unwrap_or_else(|e| e.into_inner());
                let State { instances, in_flight, .. } = &mut *state;
                for i in instances.iter_mut() {
                    if i.group.exited() {
                        gone.push((i.id, i.group.exit_status().unwrap_or_else(|| "exited".into())));
                    } else if let Some(request) = &i.busy {
                        if in_flight.get(request).is_some_and(|r| now >= r.deadline) {
                            timed_out.push((i.id, request.clone()));
                        }
                    } else if !i.polled {
                        let age = now - i.started;
                        if age >= INIT_LIMIT && !i.reported_slow {
                            i.reported_slow = true;
                            slow.push((i.id, i.group.log_tail(LOG_TAIL_LINES)));
                        }
                        if age >= f.config.timeout.max(INIT_LIMIT) {
                            timed_out.push((i.id, String::new()));
                        }
                    }
                }
            }
            for (id, tail) in slow {
                self.report(
                    name,
                    format!(
                        "{name}: process {id} has not asked for an invocation {} s after it started (Lambda's init \
                         limit); its log ends:\n{}",
                        INIT_LIMIT.as_secs(),
                        if tail.is_empty() { "(empty)".to_owned() } else { tail }
                    ),
                );
            }
            for (id, request) in timed_out {
                let seconds = f.config.timeout.as_secs_f64();
                let message = if request.is_empty() {
                    let tail = {
                        let state = f.state.lock().unwrap_or_else(|e| e.into_inner());
                        state.instances.iter().find(|i| i.id == id).map(|i| i.group.log_tail(LOG_TAIL_LINES))
                    };
                    format!(
                        "{name}: process {id} did not ask for an invocation within {:.2} seconds of starting; its log \
                         ends:\n{}",
                        f.config.timeout.max(INIT_LIMIT).as_secs_f64(),
                        tail.filter(|t| !t.is_empty()).unwrap_or_else(|| "(empty)".into())
                    )
                } else {
                    format!("{name}: Task timed out after {seconds:.2} seconds (request {request})")
                };
                let mut state = f.state.lock().unwrap_or_else(|e| e.into_inner());
                let respond = if request.is_empty() {
                    state.queue.pop_front().map(|j| j.respond)
                } else {
                    state.in_flight.remove(&request).map(|r| r.respond)
                };
                if let Some(respond) = respond {
                    let _ = respond
                        .send(Invocation::FunctionError { error_type: TIMEOUT_ERROR.into(), message: message.clone() });
                }
                // Lambda stops a runtime that timed out; the next invocation
                // gets a fresh one.
                if let Some(index) = state.instances.iter().position(|i| i.id == id) {
                    let mut instance = state.instances.remove(index);
                    instance.server.abort();
                    instance.group.stop();
                }
                let _ = self.scale(f, &mut state);
                drop(state);
                self.report(name, message);
            }
            for (id, how) in gone {
                self.exited(f, id, how);
            }
        }
    }

    /// Stops every process (the stack is going away).
    fn stop(&self) {
        for f in self.functions.values() {
            let mut state = f.state.lock().unwrap_or_else(|e| e.into_inner());
            for mut i in state.instances.drain(..) {
                i.server.abort();
                i.group.stop();
            }
        }
    }
}

type HttpResult = Result<Response<Full<Bytes>>, Infallible>;

fn answer(status: StatusCode, headers: &[(&str, String)], body: impl Into<Bytes>) -> HttpResult {
    let mut response = Response::builder().status(status);
    for (k, v) in headers {
        response = response.header(*k, v);
    }
    Ok(response.body(Full::new(body.into())).expect("a valid response"))
}

/// The Runtime API of one process.
async fn runtime_api_call(host: Weak<Host>, function: String, id: u64, request: Request<Incoming>) -> HttpResult {
    let Some(host) = host.upgrade() else {
        return answer(StatusCode::SERVICE_UNAVAILABLE, &[], "the local Lambda stopped");
    };
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let Some(rest) = path.strip_prefix(RUNTIME_PREFIX) else {
        return answer(StatusCode::NOT_FOUND, &[], "not a Runtime API path");
    };
    let error_type =
        request.headers().get("lambda-runtime-function-error-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    match (method, rest.split('/').collect::<Vec<_>>().as_slice()) {
        (Method::GET, ["invocation", "next"]) => {
            let Some((request_id, payload, deadline)) = host.next(&function, id).await else {
                return answer(StatusCode::GONE, &[], "this execution environment is gone");
            };
            let deadline_ms = deadline.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
            let arn = format!("arn:aws:lambda:{}:{ACCOUNT_ID}:function:{function}", host.region);
            answer(
                StatusCode::OK,
                &[
                    ("content-type", "application/json".into()),
                    ("lambda-runtime-aws-request-id", request_id.clone()),
                    ("lambda-runtime-deadline-ms", deadline_ms.to_string()),
                    ("lambda-runtime-invoked-function-arn", arn),
                    ("lambda-runtime-trace-id", format!("Root=1-00000000-{request_id}")),
                ],
                payload,
            )
        }
        (Method::POST, ["invocation", request_id, "response"]) => {
            let value = if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()))
            };
            if host.complete(&function, id, request_id, Invocation::Ok(value)) {
                answer(StatusCode::ACCEPTED, &[], r#"{"status":"OK"}"#)
            } else {
                answer(StatusCode::BAD_REQUEST, &[], format!("unknown request id {request_id}"))
            }
        }
        (Method::POST, ["invocation", request_id, "error"]) => {
            let (error_type, message) = function_error(&body, error_type);
            if host.complete(&function, id, request_id, Invocation::FunctionError { error_type, message }) {
                answer(StatusCode::ACCEPTED, &[], r#"{"status":"OK"}"#)
            } else {
                answer(StatusCode::BAD_REQUEST, &[], format!("unknown request id {request_id}"))
            }
        }
        (Method::POST, ["init", "error"]) => {
            let (error_type, message) = function_error(&body, error_type);
            if let Some(f) = host.functions.get(&function) {
                let mut state = f.state.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(i) = state.instances.iter_mut().find(|i| i.id == id) {
                    i.init_error = Some(format!("{error_type}: {message}"));
                }
            }
            answer(StatusCode::ACCEPTED, &[], r#"{"status":"OK"}"#)
        }
        _ => answer(StatusCode::NOT_FOUND, &[], format!("no Runtime API call {path}")),
    }
}

/// The `errorType` and `errorMessage` of a posted error.
fn function_error(body: &[u8], header: Option<String>) -> (String, String) {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| json.as_ref().and_then(|j| j.get(name)).and_then(Value::as_str).map(str::to_owned);
    let error_type = field("errorType").or(header).unwrap_or_else(|| "Unhandled".into());
    let message = field("errorMessage").unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    (error_type, message)
}

/// The Invoke API.
async fn invoke_api(host: Weak<Host>, request: Request<Incoming>) -> HttpResult {
    let Some(host) = host.upgrade() else {
        return answer(StatusCode::SERVICE_UNAVAILABLE, &[], "the local Lambda stopped");
    };
    let path = request.uri().path().to_owned();
    let function =
        match (request.method(), path.strip_prefix(INVOKE_PREFIX).and_then(|p| p.strip_suffix("/invocations"))) {
            (&Method::POST, Some(f)) => f.to_owned(),
            _ => return answer(StatusCode::NOT_FOUND, &[], format!("no Invoke API call {} {path}", request.method())),
        };
    // A name, or an ARN with or without a qualifier.
    let function = percent_decode(&function);
    let function = function.rsplit_once(":function:").map_or(function.as_str(), |(_, f)| f);
    let function = function.split(':').next().unwrap_or_default().to_owned();
    let asynchronous = request.headers().get("x-amz-invocation-type").and_then(|v| v.to_str().ok()) == Some("Event");
    let payload = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if host.function(&function).is_err() {
        let message = format!(
            "Function not found: arn:aws:lambda:{}:{ACCOUNT_ID}:function:{function} (the local stack serves {})",
            host.region,
            host.functions.keys().cloned().collect::<Vec<_>>().join(", ")
        );
        return answer(
            StatusCode::NOT_FOUND,
            &[("x-amzn-errortype", "ResourceNotFoundException".into()), ("content-type", "application/json".into())],
            // AWS's fields, and the runtime's (`cargo lambda invoke` reads those).
            json!({ "Type": "User", "Message": message, "errorType": "ResourceNotFoundException", "errorMessage": message })
                .to_string(),
        );
    }
    if asynchronous {
        tokio::spawn(async move { host.invoke(&function, payload).await });
        return answer(StatusCode::ACCEPTED, &[], "");
    }
    match host.invoke(&function, payload).await {
        Ok(Invocation::Ok(value)) => answer(
            StatusCode::OK,
            &[("content-type", "application/json".into()), ("x-amz-executed-version", "$LATEST".into())],
            value.to_string(),
        ),
        Ok(Invocation::FunctionError { error_type, message }) => answer(
            StatusCode::OK,
            &[
                ("content-type", "application/json".into()),
                ("x-amz-executed-version", "$LATEST".into()),
                ("x-amz-function-error", "Unhandled".into()),
            ],
            json!({ "errorType": error_type, "errorMessage": message }).to_string(),
        ),
        Err(e) => answer(StatusCode::INTERNAL_SERVER_ERROR, &[], format!("{e:#}")),
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A hard link of the built binary at `at` (a copy where linking fails):
/// the run keeps the binary it started with while later builds replace
/// the original.
fn snapshot(built: &Path, at: &Path) -> Result<PathBuf> {
    let _ = std::fs::remove_file(at);
    if std::fs::hard_link(built, at).is_err() {
        std::fs::copy(built, at).with_context(|| format!("copying {} to {}", built.display(), at.display()))?;
    }
    Ok(at.to_path_buf())
}

/// Builds the function binaries in one `cargo build` (their progress on the
/// terminal when `visible`) and returns each executable by function name.
pub fn build_functions_blocking(root: &Path, functions: &[String], visible: bool) -> Result<BTreeMap<String, PathBuf>> {
    crate::workspace::build_binaries(root, functions, visible)
}

/// [`build_functions_blocking`] off the async runtime, output captured.
pub async fn build_functions(root: &Path, functions: &[String]) -> Result<BTreeMap<String, PathBuf>> {
    let (root, functions) = (root.to_path_buf(), functions.to_vec());
    tokio::task::spawn_blocking(move || build_functions_blocking(&root, &functions, false))
        .await
        .context("build task panicked")?
}

/// Every function `infra/stack.json` declares, built as the local stack
/// builds them (one `cargo build`, so the binaries are the ones it runs),
/// by function name.
pub async fn build_declared_functions(root: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let spec = crate::spec::StackSpec::load_from(root)?;
    let functions: Vec<String> = spec.function_names().map(str::to_owned).collect();
    build_functions(root, &functions).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_errors_read_the_runtime_body_or_the_header() {
        let body = br#"{"errorType":"Config","errorMessage":"environment variable X is required but not set"}"#;
        assert_eq!(
            function_error(body, None),
            ("Config".into(), "environment variable X is required but not set".into())
        );
        assert_eq!(function_error(b"boom", Some("Runtime.Panic".into())), ("Runtime.Panic".into(), "boom".into()));
    }

    #[test]
    fn invoke_paths_take_names_and_arns() {
        assert_eq!(percent_decode("arn%3Aaws%3Alambda"), "arn:aws:lambda");
        assert_eq!(percent_decode("plain-name"), "plain-name");
    }
}
