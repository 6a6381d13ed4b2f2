//! Runs the `kubectl-migrate` plugin binary against the test control plane,
//! directly or through the built kubectl's plugin lookup.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use crate::control_plane::ControlPlane;
use crate::controller::workspace_binary;

/// Builds the plugin once per test binary and returns its path.
pub fn plugin_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_binary("kubectl-migrate", "kubectl-migrate"))
        .clone()
}

/// What one run printed and how it exited.
#[derive(Debug)]
pub struct Run {
    /// Exit code; None when killed by a signal.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The plugin with `args`, configured by $KUBECONFIG like under kubectl.
pub fn command(cp: &ControlPlane, args: &[&str]) -> Command {
    captured(Command::new(plugin_binary()), cp, args)
}

/// `cmd ARGS` against the control plane, its output captured.
fn captured(mut cmd: Command, cp: &ControlPlane, args: &[&str]) -> Command {
    cmd.args(args)
        .env("KUBECONFIG", &cp.kubeconfig)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// `kubectl ARGS` with the plugin's directory on PATH, so that kubectl's
/// plugin lookup finds `kubectl-migrate`.
pub fn via_kubectl(cp: &ControlPlane, args: &[&str]) -> Command {
    let plugin_dir = plugin_binary()
        .parent()
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut cmd = Command::new("kubectl");
    cmd.env("PATH", format!("{}:{plugin_dir}", cp.path()));
    captured(cmd, cp, args)
}

/// Runs `cmd` to its end; panics when it takes longer than `within`.
pub async fn run(mut cmd: Command, within: Duration) -> Run {
    let out = tokio::time::timeout(within, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} still running after {within:?}"))
        .expect("running the plugin");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A plugin run in the background, e.g. one following a migration.
pub struct Background {
    child: Child,
    stdout: BufReader<ChildStdout>,
    read: String,
}

impl Background {
    /// Starts `cmd`.
    pub fn spawn(mut cmd: Command) -> Background {
        let mut child = cmd.spawn().expect("starting the plugin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Background {
            child,
            stdout,
            read: String::new(),
        }
    }

    /// The next line of standard output (without its newline).
    pub async fn line(&mut self, within: Duration) -> String {
        let mut line = String::new();
        tokio::time::timeout(within, self.stdout.read_line(&mut line))
            .await
            .unwrap_or_else(|_| panic!("no output line within {within:?}"))
            .expect("reading the plugin's output");
        self.read.push_str(&line);
        line.trim_end().to_string()
    }

    /// Waits for the process to exit, collecting the rest of its output.
    pub async fn finish(mut self, within: Duration) -> Run {
        let mut stdout = std::mem::take(&mut self.read);
        let mut stderr = String::new();
        let mut err_pipe = self.child.stderr.take().expect("piped stderr");
        let all = async {
            // Both at once: a full stderr pipe must not stall stdout.
            let (out, err) = tokio::join!(
                self.stdout.read_to_string(&mut stdout),
                err_pipe.read_to_string(&mut stderr)
            );
            out?;
            err?;
            self.child.wait().await
        };
        let status = tokio::time::timeout(within, all)
            .await
            .unwrap_or_else(|_| panic!("the plugin still runs after {within:?}"))
            .expect("waiting for the plugin");
        Run {
            code: status.code(),
            stdout,
            stderr,
        }
    }
}
