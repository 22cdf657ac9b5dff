//! A fault-injecting HTTP proxy for tests and the soak: sits between the functions and the
//! local stack's DynamoDB engine (`Stack::function_dynamodb_endpoint`, which
//! becomes their `AWS_ENDPOINT_URL_DYNAMODB`; S3 and SQS calls go straight to
//! moto) and, for the requests it selects,
//! answers with DynamoDB throttling errors or 500s, delays the response, or
//! drops the connection without answering.
//!
//! Faults are drawn from a seeded generator, so a run is reproducible; a
//! schedule can instead fault exactly the n-th matching requests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 400 `ProvisionedThroughputExceededException`, as DynamoDB throttles.
    Throttle,
    /// HTTP 500 `InternalServerError`.
    ServerError,
    /// Forward the request, but answer only after this delay.
    Slow(Duration),
    /// Hold the request this long before forwarding it: it reaches the
    /// upstream late (requests sent after it can overtake it).
    Late(Duration),
    /// Close the connection without answering.
    Drop,
}

/// Which requests can be faulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// DynamoDB API calls (`X-Amz-Target: DynamoDB_20120810.*`).
    DynamoDb,
    /// One DynamoDB operation (`X-Amz-Target: DynamoDB_20120810.<name>`), for
    /// example `TransactWriteItems`: a schedule then counts only its calls.
    DynamoDbOperation(&'static str),
    /// Every request.
    All,
}

/// When to fault.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Fault each matching request with probability `rate`, choosing among
    /// `faults` uniformly; `seed` makes the sequence reproducible.
    Rate { rate: f64, faults: Vec<Fault>, seed: u64 },
    /// Fault exactly these (0-based) matching requests.
    Schedule(Vec<(u64, Fault)>),
}

/// What the proxy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub forwarded: u64,
    pub throttled: u64,
    pub server_errors: u64,
    pub slowed: u64,
    pub dropped: u64,
    /// Requests held before forwarding ([`Fault::Late`]).
    pub late: u64,
}

struct State {
    upstream: String,
    target: Target,
    plan: Plan,
    rng: Mutex<u64>,
    matching: AtomicU64,
    stats: tokio::sync::watch::Sender<Stats>,
    /// When set, requests reach the upstream one at a time (see `serializing`).
    one_at_a_time: Option<tokio::sync::Mutex<()>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on a free port of 127.0.0.1 in front of `upstream`
    /// (for example `http://127.0.0.1:5000`).
    pub async fn start(upstream: &str, target: Target, plan: Plan) -> std::io::Result<Self> {
        Self::start_with(upstream, target, plan, false).await
    }

    /// A proxy without faults that forwards one request at a time: in front
    /// of moto's DynamoDB (`LOCAL_STACK_DYNAMODB=moto` only), whose
    /// `TransactWriteItems` is not isolated from a concurrent one (it rolls
    /// back by restoring a copy of every table taken when it started, which
    /// can undo another transaction's commit), it gives each transaction the
    /// isolation DynamoDB guarantees, so tests of concurrent clients test the
    /// clients. DynamoDB Local isolates transactions itself and needs none.
    pub async fn serializing(upstream: &str) -> std::io::Result<Self> {
        Self::start_with(upstream, Target::All, Plan::Schedule(Vec::new()), true).await
    }

    async fn start_with(upstream: &str, target: Target, plan: Plan, serialize: bool) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seed = match &plan {
            Plan::Rate { seed, .. } => *seed | 1,
            Plan::Schedule(_) => 1,
        };
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_owned(),
            target,
            plan,
            rng: Mutex::new(seed),
            matching: AtomicU64::new(0),
            stats: tokio::sync::watch::Sender::new(Stats::default()),
            one_at_a_time: serialize.then(|| tokio::sync::Mutex::new(())),
            client: Client::builder(TokioExecutor::new()).build_http(),
        });
        let serving = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let state = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(state.clone(), request));
                    // A dropped connection ends here with an error: that is the fault.
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Ok(Self { addr, state, task })
    }

    /// The endpoint to give the functions (their DynamoDB endpoint).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> Stats {
        *self.state.stats.borrow()
    }

    /// Waits until the stats satisfy `condition` (for example, a slowed
    /// request: its upstream answer is in and held back), and returns them.
    pub async fn wait_for(&self, condition: impl FnMut(&Stats) -> bool) -> Stats {
        let mut stats = self.state.stats.subscribe();
        // The sender lives in `state`, which `self` keeps alive.
        *stats.wait_for(condition).await.expect("the proxy's state outlives this call")
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The error `handle` returns to make hyper close the connection unanswered.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fault: connection dropped")
    }
}

impl std::error::Error for DropConnection {}

fn choose(state: &State, matches: bool) -> Option<Fault> {
    if !matches {
        return None;
    }
    let n = state.matching.fetch_add(1, Ordering::SeqCst);
    match &state.plan {
        Plan::Schedule(schedule) => schedule.iter().find(|(i, _)| *i == n).map(|(_, f)| *f),
        Plan::Rate { rate, faults, .. } => {
            let mut x = state.rng.lock().unwrap_or_else(|e| e.into_inner());
            // xorshift64: reproducible, good enough to spread faults.
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            let draw = (*x >> 11) as f64 / (1u64 << 53) as f64;
            (draw < *rate && !faults.is_empty()).then(|| faults[(*x % faults.len() as u64) as usize])
        }
    }
}

fn dynamodb_error(status: StatusCode, kind: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "__type": format!("com.amazonaws.dynamodb.v20120810#{kind}"), "message": message });
    Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.0")
        .header("x-amzn-errortype", kind)
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response parts are valid")
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
    let operation = request
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix("DynamoDB_20120810."));
    let matches = match state.target {
        Target::DynamoDb => operation.is_some(),
        Target::DynamoDbOperation(name) => operation == Some(name),
        Target::All => true,
    };
    let fault = choose(&state, matches);
    let bump = |f: fn(&mut Stats)| state.stats.send_modify(f);
    match fault {
        Some(Fault::Throttle) => {
            bump(|s| s.throttled += 1);
            return Ok(dynamodb_error(
                StatusCode::BAD_REQUEST,
                "ProvisionedThroughputExceededException",
                "The level of configured provisioned throughput for the table was exceeded (injected)",
            ));
        }
        Some(Fault::ServerError) => {
            bump(|s| s.server_errors += 1);
            return Ok(dynamodb_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", "injected fault"));
        }
        Some(Fault::Drop) => {
            bump(|s| s.dropped += 1);
            return Err(Box::new(DropConnection));
        }
        Some(Fault::Late(delay)) => {
            bump(|s| s.late += 1);
            tokio::time::sleep(delay).await;
        }
        Some(Fault::Slow(_)) | None => {}
    }
    let (mut parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("{}{path}", state.upstream).parse()?;
    parts.headers.remove("host");
    let (parts, body) = {
        let _turn = match &state.one_at_a_time {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let upstream = state.client.request(Request::from_parts(parts, Full::new(body))).await?;
        let (parts, body) = upstream.into_parts();
        (parts, body.collect().await?.to_bytes())
    };
    if let Some(Fault::Slow(delay)) = fault {
        bump(|s| s.slowed += 1);
        tokio::time::sleep(delay).await;
    } else {
        bump(|s| s.forwarded += 1);
    }
    Ok(Response::from_parts(parts, Full::new(body)))
}
