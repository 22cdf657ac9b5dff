//! A DynamoDB endpoint that accepts every request at once and answers `{}`:
//! every write succeeds, every read finds nothing. Against it the functions'
//! own cost shows (the real SDK, request building, signing, serialisation),
//! with the database's cost at zero: their ceiling, and their memory on large
//! batches without an emulator whose own time grows with the table.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The running endpoint; it lives as long as the process.
pub struct NullDynamo {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
}

impl NullDynamo {
    pub fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &counter);
                });
            }
        });
        Ok(Self { addr, requests })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn serve(stream: TcpStream, requests: &AtomicU64) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while crate::runtime_api::read_request(&mut reader)?.is_some() {
        requests.fetch_add(1, Ordering::Relaxed);
        writer.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\nx-amzn-RequestId: bench\r\nContent-Length: 2\r\n\r\n{}",
        )?;
        writer.flush()?;
    }
    Ok(())
}
