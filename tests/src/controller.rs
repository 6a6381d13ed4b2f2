//! Runs the real `kvmotion-controller` binary as a process against the test
//! control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;

use tokio::process::{Child, Command};

use crate::control_plane::ControlPlane;

/// A controller process, killed when dropped.
pub struct ControllerProcess {
    child: Child,
    /// Where it serves /healthz, /readyz and /metrics.
    pub http_addr: SocketAddr,
    /// Its log file.
    pub log: PathBuf,
}

/// Builds the controller binary once per test binary and returns its path.
pub fn controller_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_binary("kvmotion-controller", "kvmotion-controller"))
        .clone()
}

/// Builds binary `bin` of workspace package `package` in the profile the
/// caller was built in (tests: debug; benchmarks: release) and returns its
/// path.
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    // Test binaries live in <target>/<profile>/deps, other binaries in
    // <target>/<profile>.
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let mut args = vec!["build", "--quiet", "-p", package, "--bin", bin];
    if dir.file_name().is_some_and(|n| n == "release") {
        args.push("--release");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(&args)
        .current_dir(crate::repo_root())
        .status()
        .expect("running cargo build");
    assert!(status.success(), "building {bin} failed");
    dir.join(bin)
}

/// A free local port (bound, then released for the child to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl ControllerProcess {
    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Starts a controller with its own Lease `lease` and identity; `extra`
    /// flags are appended.
    pub fn start(
        cp: &ControlPlane,
        lease_namespace: &str,
        lease: &str,
        identity: &str,
        extra: &[&str],
    ) -> Self {
        Self::start_as(&cp.kubeconfig, lease_namespace, lease, identity, extra)
    }

    /// Starts a controller with the credentials in `kubeconfig`.
    pub fn start_as(
        kubeconfig: &std::path::Path,
        lease_namespace: &str,
        lease: &str,
        identity: &str,
        extra: &[&str],
    ) -> Self {
        let http_addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("address");
        let log_dir = crate::repo_root().join("target/test-logs");
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let log = log_dir.join(format!("{identity}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(controller_binary())
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--http-addr", &http_addr.to_string()])
            .args([
                "--lease-namespace",
                lease_namespace,
                "--lease-name",
                lease,
                "--identity",
                identity,
            ])
            .args(extra)
            .env("RUST_LOG", "info,kvmotion_controller=debug")
            .stdout(Stdio::from(file.try_clone().expect("log file")))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .expect("starting kvmotion-controller");
        ControllerProcess {
            child,
            http_addr,
            log,
        }
    }

    /// GETs one of its HTTP endpoints.
    pub async fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        crate::http::get(self.http_addr, path).await
    }

    /// The value of an unlabelled metric, or of the first series starting
    /// with `series` (which may include labels).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").await.ok()?;
        metric_value(&body, series)
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit code.
    pub async fn terminate(&mut self) -> Option<i32> {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        self.child.wait().await.ok().and_then(|s| s.code())
    }

    /// Kills the process at once (SIGKILL), like a crashed node.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Peak resident memory so far (VmHWM), in bytes.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    }

    /// CPU time used so far, user plus system.
    pub fn cpu_time(&self) -> Option<std::time::Duration> {
        let pid = self.child.id()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which may hold spaces.
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        // USER_HZ is 100 on Linux.
        Some(std::time::Duration::from_millis(ticks * 10))
    }

    /// The metrics page, or an empty string when it does not answer.
    pub async fn metrics_text(&self) -> String {
        self.get("/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// The log so far, for assertion messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The value of `series` (name and labels, exactly) on a Prometheus text
/// page.
pub fn metric_value(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

impl ControllerProcess {
    /// Waits until the process serves /readyz with 200.
    pub async fn wait_ready(&self) {
        crate::eventually(
            std::time::Duration::from_secs(30),
            "/readyz to answer 200",
            || async { matches!(self.get("/readyz").await, Ok((200, _))).then_some(()) },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.log_text()));
    }

    /// Waits until the process reports holding the leader Lease.
    pub async fn wait_leading(&self, within: std::time::Duration) {
        crate::eventually(within, "the leader gauge to read 1", || async {
            (self.metric("kvmotion_controller_leader").await == Some(1.0)).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.log_text()));
    }
}
