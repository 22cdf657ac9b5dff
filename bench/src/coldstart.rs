//! Release binaries under the stand-in Runtime API: time from spawn to the
//! first `next` request (cold start), the first invocation's duration, and the
//! process's peak resident memory once that invocation is done.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::runtime_api::{Hit, RuntimeApi};

/// One start of a binary.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    /// Spawn to the first `GET .../invocation/next`.
    pub to_first_next_ms: f64,
    /// Event handed over to result posted.
    pub first_invocation_ms: f64,
    /// `VmHWM` once idle after the invocation.
    pub peak_rss_kib: Option<u64>,
}

/// The Lambda environment of a function on the stand-in runtime API (and the
/// emulator, when `endpoint` is set).
pub fn lambda_env(
    api: &RuntimeApi,
    function: &str,
    endpoint: Option<&str>,
    tables: Option<(&str, &str)>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("AWS_LAMBDA_RUNTIME_API", api.addr.to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME", function.to_owned()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".to_owned()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_owned()),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "2026/11/28/[$LATEST]bench".to_owned()),
        ("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{function}")),
        ("AWS_LAMBDA_LOG_FORMAT", "JSON".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_DEFAULT_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("AWS_SESSION_TOKEN", "testing".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(endpoint) = endpoint {
        env.push(("AWS_ENDPOINT_URL".into(), endpoint.to_owned()));
    }
    if let Some((state, idempotency)) = tables {
        env.push(("STATE_TABLE".into(), state.to_owned()));
        env.push(("IDEMPOTENCY_TABLE".into(), idempotency.to_owned()));
    }
    env
}

/// Starts `exe` with `env` (nothing else from this process's environment),
/// serves it `event`, and stops it once it asks for the next one. Its output
/// goes to `log`.
pub fn run_once(
    api: &RuntimeApi,
    exe: &Path,
    env: &[(String, String)],
    event: Vec<u8>,
    log: &Path,
) -> anyhow::Result<Start> {
    const TIMEOUT: Duration = Duration::from_secs(300);
    api.arm(vec![event]);
    let out = File::create(log)?;
    let spawned = Instant::now();
    let mut child = Command::new(exe)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let pid = child.id().to_string();
    let mut first_next = None;
    let mut served = None;
    let mut result = None;
    let outcome = loop {
        if spawned.elapsed() > TIMEOUT {
            break Err(anyhow::anyhow!("{} did not finish its first invocation in {TIMEOUT:?}", exe.display()));
        }
        match api.hit(Duration::from_millis(50)) {
            Some(Hit::Next { received, served: Some(at) }) if first_next.is_none() => {
                first_next = Some(received - spawned);
                served = Some(at);
            }
            Some(Hit::Result { at, ok, body }) => {
                if !ok {
                    break Err(anyhow::anyhow!(
                        "{} reported an error: {}",
                        exe.display(),
                        String::from_utf8_lossy(&body)
                    ));
                }
                result = served.map(|s| at - s);
            }
            Some(Hit::Next { served: None, .. }) => {
                // Idle after the invocation: its peak memory is final.
                break Ok(crate::rss::vm_of(&pid, "VmHWM"));
            }
            Some(Hit::InitError { body }) => {
                break Err(anyhow::anyhow!("{} failed to start: {}", exe.display(), String::from_utf8_lossy(&body)));
            }
            Some(Hit::Next { .. }) => {}
            None => {
                if let Some(status) = child.try_wait()? {
                    break Err(anyhow::anyhow!("{} exited with {status}; see {}", exe.display(), log.display()));
                }
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let peak_rss_kib = outcome?;
    let (Some(first_next), Some(result)) = (first_next, result) else {
        anyhow::bail!("{} never posted a result; see {}", exe.display(), log.display());
    };
    Ok(Start {
        to_first_next_ms: first_next.as_secs_f64() * 1e3,
        first_invocation_ms: result.as_secs_f64() * 1e3,
        peak_rss_kib,
    })
}

/// Where the release binaries are.
pub fn release_dir(workspace: &Path) -> PathBuf {
    crate::suite::target_dir(workspace).join("release")
}
