//! The shared test control plane: started (or reused) once per test binary
//! by `tests/control-plane/up.sh`, with kvmotion's CRDs installed.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use kube::{Client, Config};

/// A running kube-apiserver with kvmotion's CRDs.
pub struct ControlPlane {
    /// Admin kubeconfig (client certificate in system:masters).
    pub kubeconfig: PathBuf,
    /// Directories with the built kubectl and helm, to put first on PATH.
    pub bin_path: String,
}

/// What a kubectl run printed.
#[derive(Debug)]
pub struct Output {
    /// Exit status was zero.
    pub ok: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

static CONTROL_PLANE: OnceLock<ControlPlane> = OnceLock::new();

/// The control plane, started on first use. Panics with the scripts' output
/// when it cannot start: every test that calls this needs it.
pub fn control_plane() -> &'static ControlPlane {
    CONTROL_PLANE.get_or_init(|| {
        let root = crate::repo_root();
        let up = root.join("tests/control-plane/up.sh");
        let out = Command::new("bash")
            .arg(&up)
            .output()
            .expect("running up.sh");
        assert!(
            out.status.success(),
            "tests/control-plane/up.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(root.join("target/control-plane/env"))
            .expect("reading the env file");
        let value = |key: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {key}=")))
                .unwrap_or_else(|| panic!("{key} missing from target/control-plane/env"))
                .to_string()
        };
        let cp = ControlPlane {
            kubeconfig: PathBuf::from(value("KUBECONFIG")),
            bin_path: value("PATH").trim_end_matches(":$PATH").to_string(),
        };
        cp.install_crds();
        cp
    })
}

impl ControlPlane {
    /// A client with admin rights. Make one per test: a client is bound to
    /// the runtime it was first used on.
    pub async fn client(&self) -> Client {
        let kubeconfig =
            kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("reading kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("kubeconfig is usable");
        Client::try_from(config).expect("building a client")
    }

    /// PATH with the built kubectl and helm first.
    pub fn path(&self) -> String {
        format!(
            "{}:{}",
            self.bin_path,
            std::env::var("PATH").unwrap_or_default()
        )
    }

    /// Runs kubectl against the control plane, feeding `stdin` when given.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.run("kubectl", args, stdin).1
    }

    /// Runs a tool (kubectl, helm, a script) from the repository root with
    /// the built kubectl and helm first on PATH and this control plane's
    /// kubeconfig, feeding `stdin` when given; returns its exit code too.
    pub fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> (Option<i32>, Output) {
        let mut child = Command::new(program)
            .current_dir(crate::repo_root())
            .env("PATH", self.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .unwrap_or_else(|e| panic!("writing {program}'s stdin: {e}"));
        }
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for {program}: {e}"));
        (
            out.status.code(),
            Output {
                ok: out.status.success(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            },
        )
    }

    /// Applies the committed CRDs and waits until they are Established.
    fn install_crds(&self) {
        let crds = crate::repo_root().join("crds");
        let crds = crds.to_string_lossy();
        let out = self.kubectl(
            &["apply", "--server-side", "--force-conflicts", "-f", &crds],
            None,
        );
        assert!(out.ok, "installing the CRDs failed: {}", out.stderr);
        let out = self.kubectl(
            &[
                "wait",
                "--for",
                "condition=Established",
                "--timeout=60s",
                "-f",
                &crds,
            ],
            None,
        );
        assert!(
            out.ok,
            "the CRDs did not become Established: {}",
            out.stderr
        );
    }
}

impl ControlPlane {
    /// Creates namespace `name` unless it exists (namespaces are never
    /// deleted here: the test control plane runs no namespace controller).
    pub fn ensure_namespace(&self, name: &str) {
        let exists = self.kubectl(&["get", "namespace", name, "-o", "name"], None);
        if exists.ok {
            return;
        }
        let out = self.kubectl(&["create", "namespace", name], None);
        assert!(
            out.ok || out.stderr.contains("AlreadyExists") || out.stderr.contains("already exists"),
            "creating namespace {name}: {}",
            out.stderr
        );
    }
}
