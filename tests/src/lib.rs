//! Helpers for kvmotion's integration and end-to-end tests: a real
//! kube-apiserver (built and started by `tests/control-plane/`), kubectl,
//! per-test scopes that clean up after themselves, and controller processes.

pub mod agent;
pub mod bench;
pub mod capture;
pub mod chart;
pub mod cluster;
pub mod control_plane;
pub mod controller;
pub mod e2e;
pub mod evacuation;
pub mod fleet;
pub mod http;
pub mod lab;
pub mod plugin;
pub mod proxy;
pub mod scale;
pub mod scope;

pub use control_plane::{ControlPlane, Output, control_plane};
pub use controller::ControllerProcess;
pub use scope::Scope;

/// The repository root.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Polls `check` every 200 ms until it yields a value or `timeout` passes.
pub async fn eventually<T, F, Fut>(
    timeout: std::time::Duration,
    what: &str,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A log line (or text) without its colour escapes.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for e in chars.by_ref() {
                if e.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
