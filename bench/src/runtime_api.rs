//! A stand-in for the Lambda Runtime API on 127.0.0.1: just enough of
//! <https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html> for a
//! `lambda_runtime` binary to start, take invocations and post results.
//!
//! Each `GET .../invocation/next` takes the next armed event; when none is
//! left, the request is held unanswered (as Lambda does between invocations)
//! and reported, so the caller knows the function is idle and can read its
//! memory and stop it. Blocking std networking on threads: no runtime of its
//! own to disturb the timings.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// What the server saw.
#[derive(Debug)]
pub enum Hit {
    /// A `next` request: `received` when it arrived; `served` when an event was
    /// written back (`None`: no event was armed; the request is held).
    Next { received: Instant, served: Option<Instant> },
    /// A posted result: `ok` for `/response`, false for `/error`.
    Result { at: Instant, ok: bool, body: Vec<u8> },
    /// `/init/error`: the function failed to start.
    InitError { body: Vec<u8> },
}

/// The running server.
pub struct RuntimeApi {
    pub addr: SocketAddr,
    events: Arc<Mutex<VecDeque<Vec<u8>>>>,
    hits: Receiver<Hit>,
    /// Milliseconds from serving an event to its deadline.
    deadline_ms: Arc<AtomicU64>,
}

/// The deadline given with each event unless [`RuntimeApi::set_deadline`]
/// says otherwise: Lambda's longest timeout.
const DEFAULT_DEADLINE_MS: u64 = 900_000;

impl RuntimeApi {
    /// Starts the server on an ephemeral port. It lives as long as the process.
    pub fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let events: Arc<Mutex<VecDeque<Vec<u8>>>> = Arc::default();
        let (tx, hits) = channel();
        let queue = events.clone();
        let deadline_ms = Arc::new(AtomicU64::new(DEFAULT_DEADLINE_MS));
        let deadline = deadline_ms.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (queue, tx, deadline) = (queue.clone(), tx.clone(), deadline.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &queue, &tx, &deadline);
                });
            }
        });
        Ok(Self { addr, events, hits, deadline_ms })
    }

    /// Gives the events served from now on a deadline `left` after they are
    /// served (`Lambda-Runtime-Deadline-Ms`, epoch milliseconds, as Lambda
    /// sends it).
    pub fn set_deadline(&self, left: std::time::Duration) {
        self.deadline_ms.store(u64::try_from(left.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Arms the events the next `next` requests will get, dropping any left
    /// over and any hits not yet taken.
    pub fn arm(&self, events: Vec<Vec<u8>>) {
        *self.events.lock().unwrap_or_else(|e| e.into_inner()) = events.into();
        while self.hits.try_recv().is_ok() {}
    }

    /// The next hit, waiting at most `timeout`.
    pub fn hit(&self, timeout: std::time::Duration) -> Option<Hit> {
        self.hits.recv_timeout(timeout).ok()
    }
}

fn serve(
    stream: TcpStream,
    queue: &Mutex<VecDeque<Vec<u8>>>,
    tx: &Sender<Hit>,
    deadline_ms: &AtomicU64,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut request_id = 0u64;
    loop {
        let Some((method, path, body)) = read_request(&mut reader)? else {
            return Ok(()); // The function closed the connection (or exited).
        };
        let received = Instant::now();
        if method == "GET" && path.ends_with("/runtime/invocation/next") {
            let event = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
            match event {
                Some(event) => {
                    request_id += 1;
                    let deadline = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()
                        + u128::from(deadline_ms.load(Ordering::SeqCst));
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                         Lambda-Runtime-Aws-Request-Id: bench-{request_id}\r\n\
                         Lambda-Runtime-Deadline-Ms: {deadline}\r\n\
                         Lambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:us-east-1:123456789012:function:bench\r\n\
                         Lambda-Runtime-Trace-Id: Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0\r\n\r\n",
                        event.len()
                    );
                    writer.write_all(head.as_bytes())?;
                    writer.write_all(&event)?;
                    writer.flush()?;
                    let _ = tx.send(Hit::Next { received, served: Some(Instant::now()) });
                }
                None => {
                    // Idle: hold the request; the caller stops the process.
                    let _ = tx.send(Hit::Next { received, served: None });
                }
            }
            continue;
        }
        let hit = if path.ends_with("/init/error") {
            Some(Hit::InitError { body })
        } else if path.ends_with("/response") {
            Some(Hit::Result { at: received, ok: true, body })
        } else if path.ends_with("/error") {
            Some(Hit::Result { at: received, ok: false, body })
        } else {
            None
        };
        writer.write_all(b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"status\":\"OK\"}\n")?;
        writer.flush()?;
        if let Some(hit) = hit {
            let _ = tx.send(hit);
        }
    }
}

/// Reads one HTTP/1.1 request: method, path and body. `None` at the end of the connection.
pub(crate) fn read_request(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<(String, String, Vec<u8>)>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
    let mut length = 0usize;
    let mut chunked = false;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            return Ok(None);
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "content-length" {
                length = value.parse().unwrap_or(0);
            } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    let body = if chunked { read_chunked(reader)? } else { read_exact(reader, length)? };
    Ok(Some((method, path, body)))
}

fn read_exact(reader: &mut impl Read, length: usize) -> std::io::Result<Vec<u8>> {
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(body)
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size)?;
        let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
        let chunk = read_exact(reader, size)?;
        body.extend_from_slice(&chunk);
        let mut crlf = String::new();
        reader.read_line(&mut crlf)?;
        if size == 0 {
            return Ok(body);
        }
    }
}
