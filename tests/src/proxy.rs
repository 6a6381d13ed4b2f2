//! A TCP proxy in front of an agent that can be switched, for a while, to
//! answer every request itself with `503 Service Unavailable` and a JSON
//! error body: what an ingress, a restarting sidecar or an agent whose
//! TokenReview fails looks like to the controller. The agent behind it is
//! the real one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy; stopped when dropped.
pub struct FaultProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    failing: Arc<AtomicBool>,
    /// Bumped when failing starts: forwarded connections close, so pooled
    /// keep-alive connections cannot bypass the fault.
    generation: watch::Sender<u64>,
    /// Requests answered with 503.
    pub refused: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on `listen` (port 0 picks one) and forwards to `upstream`.
    pub async fn start(listen: &str, upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind(listen).await.expect("proxy listen");
        let addr = listener.local_addr().expect("proxy address");
        let failing = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicU64::new(0));
        let (generation, _) = watch::channel(0u64);
        let task = tokio::spawn({
            let (failing, refused, generation) =
                (failing.clone(), refused.clone(), generation.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let (failing, refused) = (failing.clone(), refused.clone());
                    let mut gen_rx = generation.subscribe();
                    tokio::spawn(async move {
                        if failing.load(Ordering::SeqCst) {
                            refuse(client, &refused).await;
                            return;
                        }
                        let Ok(server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let (mut c, mut s) = (client, server);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut c, &mut s) => {}
                            _ = gen_rx.changed() => {}
                        }
                    });
                }
            }
        });
        FaultProxy {
            addr,
            failing,
            generation,
            refused,
            task,
        }
    }

    /// Answers 503 to every request from now on, closing forwarded
    /// connections.
    pub fn fail(&self) {
        self.failing.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Forwards again.
    pub fn heal(&self) {
        self.failing.store(false, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads requests off one connection and answers each with a 503.
async fn refuse(mut client: TcpStream, refused: &AtomicU64) {
    let body =
        r#"{"reason":"ServiceUnavailable","message":"the agent cannot serve requests right now"}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen = Vec::new();
    // One request: headers, then as much body as content-length says.
    loop {
        let Ok(n) = client.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        seen.extend_from_slice(&buf[..n]);
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if seen.len() >= end + 4 + length {
                break;
            }
        }
    }
    refused.fetch_add(1, Ordering::SeqCst);
    let _ = client.write_all(answer.as_bytes()).await;
    let _ = client.shutdown().await;
}
