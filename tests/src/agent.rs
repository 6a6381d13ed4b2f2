//! Runs real `kvmotion-agent` processes inside the lab's node namespaces,
//! with service-account tokens from TokenRequest and the RBAC in
//! `config/rbac/`, and calls their API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use kvmotion_api::agent::{
    DiskPlan, DomainRef, JobStatus, PrepareRequest, ResolvedTuning, StartRequest,
};
use kvmotion_api::migration::MigrationMode;
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::control_plane::{ControlPlane, control_plane};
use crate::lab::{self, SHARED_DIR};

/// API port of every lab agent.
pub const AGENT_PORT: u16 = 9443;
/// Audience of agent tokens.
pub const AUDIENCE: &str = "kvmotion-agent";

/// Tokens and kubeconfigs for agents and for calling them.
pub struct Credentials {
    /// The agents' kubeconfig (agent service-account token; the apiserver
    /// as the lab nodes reach it).
    pub agent_kubeconfig: PathBuf,
    /// The agents' token for calling each other.
    pub peer_token_file: PathBuf,
    /// The controller's token for calling agents.
    pub controller_token: String,
    /// The same token in a file, as the controller process reads it.
    pub controller_token_file: PathBuf,
    /// The controller's kubeconfig: its service-account token, the
    /// apiserver on localhost.
    pub controller_kubeconfig: PathBuf,
}

fn token(cp: &ControlPlane, sa: &str, audience: Option<&str>) -> String {
    let mut args = vec![
        "create",
        "token",
        sa,
        "-n",
        "kvmotion-system",
        "--duration",
        "6h",
    ];
    if let Some(a) = audience {
        args.extend(["--audience", a]);
    }
    let out = cp.kubectl(&args, None);
    assert!(out.ok, "kubectl create token {sa}: {}", out.stderr);
    out.stdout.trim().to_string()
}

/// Applies the RBAC and mints the tokens, once per test binary.
pub fn credentials() -> &'static Credentials {
    static CREDS: OnceLock<Credentials> = OnceLock::new();
    CREDS.get_or_init(|| {
        let cp = control_plane();
        for f in ["namespace.yaml", "agent.yaml", "controller.yaml"] {
            let path = crate::repo_root().join("config/rbac").join(f);
            let out = cp.kubectl(&["apply", "-f", &path.to_string_lossy()], None);
            assert!(out.ok, "applying {f}: {}", out.stderr);
        }
        let dir = crate::repo_root().join("target/test-credentials");
        std::fs::create_dir_all(&dir).expect("credentials dir");
        let ca = cp.kubectl(
            &["config", "view", "--raw", "--minify", "-o", "jsonpath={.clusters[0].cluster.certificate-authority-data}"],
            None,
        );
        assert!(ca.ok, "{}", ca.stderr);
        let server = cp.kubectl(&["config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}"], None).stdout;
        let port = server.rsplit(':').next().unwrap_or("26443").to_string();
        let kubeconfig_for = |host: &str, token: String| format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: https://{host}:{port}\n    certificate-authority-data: {}\nusers:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: lab\n  context: {{cluster: lab, user: sa}}\ncurrent-context: lab\n",
            ca.stdout.trim(),
        );
        let kubeconfig = kubeconfig_for("10.98.0.254", token(cp, "kvmotion-agent", None));
        let controller_kubeconfig = dir.join("controller-kubeconfig");
        std::fs::write(&controller_kubeconfig, kubeconfig_for("127.0.0.1", token(cp, "kvmotion-controller", None)))
            .expect("writing the controller kubeconfig");
        let agent_kubeconfig = dir.join("agent-kubeconfig");
        std::fs::write(&agent_kubeconfig, kubeconfig).expect("writing kubeconfig");
        let peer_token_file = dir.join("peer-token");
        std::fs::write(&peer_token_file, token(cp, "kvmotion-agent", Some(AUDIENCE))).expect("peer token");
        let controller_token = token(cp, "kvmotion-controller", Some(AUDIENCE));
        let controller_token_file = dir.join("controller-agent-token");
        std::fs::write(&controller_token_file, &controller_token).expect("controller token");
        Credentials {
            agent_kubeconfig,
            peer_token_file,
            controller_token,
            controller_token_file,
            controller_kubeconfig,
        }
    })
}

/// A token of `sa` in kvmotion-system for `audience` (for auth tests).
pub fn token_for(sa: &str, audience: &str) -> String {
    let cp = control_plane();
    let out = cp.kubectl(
        &["create", "serviceaccount", sa, "-n", "kvmotion-system"],
        None,
    );
    assert!(
        out.ok || out.stderr.contains("already exists"),
        "{}",
        out.stderr
    );
    token(cp, sa, Some(audience))
}

/// A running agent on a lab node, killed when dropped.
pub struct AgentProcess {
    child: Child,
    /// Its node.
    pub node: String,
    /// Its API address.
    pub addr: SocketAddr,
    /// Its log file.
    pub log: PathBuf,
}

impl AgentProcess {
    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Starts the agent of `node`, inside the node's namespaces, with an
    /// empty state directory.
    pub async fn start(node: &str, label: &str, extra: &[&str]) -> AgentProcess {
        lab::lab_up();
        let state = lab::agent_state_dir(node);
        let _ = std::fs::remove_dir_all(&state);
        Self::spawn(node, label, extra).await
    }

    /// Starts the agent of `node` again after it died, keeping its state
    /// directory: what a DaemonSet's restarted pod finds.
    pub async fn restart(node: &str, label: &str, extra: &[&str]) -> AgentProcess {
        Self::spawn(node, &format!("{label}-restarted"), extra).await
    }

    async fn spawn(node: &str, label: &str, extra: &[&str]) -> AgentProcess {
        lab::lab_up();
        let creds = credentials();
        let bin = crate::controller::workspace_binary("kvmotion-agent", "kvmotion-agent");
        let log_dir = crate::repo_root().join("target/test-logs");
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let log = log_dir.join(format!("agent-{label}-{node}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let mgmt = lab::management_ip(node);
        let listen = extra
            .iter()
            .position(|a| *a == "--listen")
            .and_then(|i| extra.get(i + 1))
            .map(|l| l.to_string())
            .unwrap_or_else(|| format!("{mgmt}:{AGENT_PORT}"));
        let scheme = if extra.contains(&"--tls-cert") {
            "https"
        } else {
            "http"
        };
        let endpoint = format!("{scheme}://{listen}");
        let child = Command::new("bash")
            .arg(crate::repo_root().join("tests/lab/lab.sh"))
            .args(["exec", node])
            .arg(&bin)
            .args([
                "--node-name",
                node,
                "--migration-address",
                lab::migration_ip(node),
            ])
            .args(if extra.contains(&"--advertise-endpoint") {
                vec![]
            } else {
                vec!["--advertise-endpoint", endpoint.as_str()]
            })
            .args(if extra.contains(&"--listen") {
                vec![]
            } else {
                vec!["--listen", listen.as_str()]
            })
            .arg("--kubeconfig")
            .arg(&creds.agent_kubeconfig)
            .arg("--peer-token-file")
            .arg(&creds.peer_token_file)
            .arg("--state-dir")
            .arg(lab::agent_state_dir(node))
            .args([
                "--shared-path",
                SHARED_DIR,
                "--heartbeat-seconds",
                "2",
                "--resync-seconds",
                "30",
            ])
            .args(extra)
            .env("RUST_LOG", "info,kvmotion_agent=debug")
            .stdout(Stdio::from(file.try_clone().expect("log file")))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .expect("starting kvmotion-agent");
        let agent = AgentProcess {
            child,
            node: node.to_string(),
            addr: listen.parse().expect("address"),
            log,
        };
        // A TLS agent is probed by connecting; a plain one by /readyz.
        let tls = scheme == "https";
        crate::eventually(
            Duration::from_secs(60),
            &format!("the agent on {node} to be ready"),
            || async {
                if tls {
                    tokio::net::TcpStream::connect(agent.addr)
                        .await
                        .ok()
                        .map(|_| ())
                } else {
                    matches!(crate::http::get(agent.addr, "/readyz").await, Ok((200, _)))
                        .then_some(())
                }
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
        agent
    }

    /// The agent's endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Calls the API with `token` (None: no Authorization header).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        let bytes = body.map(|b| b.to_string().into_bytes());
        let (code, text) =
            crate::http::request(self.addr, method, path, &headers, bytes.as_deref())
                .await
                .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", self.node));
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Calls the API as the controller.
    pub async fn as_controller(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        self.call(method, path, Some(&credentials().controller_token), body)
            .await
    }

    /// Freezes the process (SIGSTOP): it holds its connections but answers
    /// nothing, like an agent on a hung or partitioned node.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen process run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("the agent runs");
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    }

    /// Sends SIGKILL (a crashed agent).
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Both lab agents.
pub struct Agents {
    /// Agent of node-a.
    pub a: AgentProcess,
    /// Agent of node-b.
    pub b: AgentProcess,
}

impl Agents {
    /// Starts both agents; `module` and `line` name their log files
    /// (`target/test-logs/agent-<module>-<line>-<node>.log`).
    pub async fn start(module: &str, line: u32) -> Agents {
        Agents::start_with(module, line, &[]).await
    }

    /// Like `start`, with `a_extra` flags for node-a's agent.
    pub async fn start_with(module: &str, line: u32, a_extra: &[&str]) -> Agents {
        Agents::start_each(module, line, a_extra, &[]).await
    }

    /// Like `start`, with extra flags for each node's agent.
    pub async fn start_each(module: &str, line: u32, a_extra: &[&str], b_extra: &[&str]) -> Agents {
        let label = format!("{}-{line}", module.rsplit("::").next().unwrap_or(module));
        Agents {
            a: AgentProcess::start("node-a", &label, a_extra).await,
            b: AgentProcess::start("node-b", &label, b_extra).await,
        }
    }

    /// The agent of `node`.
    pub fn on(&self, node: &str) -> &AgentProcess {
        if node == "node-a" { &self.a } else { &self.b }
    }
}

/// A migration as the tests drive it: prepare on the target, start on the
/// source, poll until the job ends.
pub struct Drive {
    /// Migration id.
    pub id: String,
    /// VM.
    pub vm: DomainRef,
    /// Source node.
    pub source: String,
    /// Live or offline.
    pub mode: MigrationMode,
    /// Tuning.
    pub tuning: ResolvedTuning,
    /// Disks.
    pub disks: Vec<DiskPlan>,
    /// Guest memory, bytes.
    pub memory_bytes: u64,
    /// A strategy predicted before the move, as the controller passes it.
    pub planned: Option<kvmotion_api::migration::Strategy>,
}

impl Drive {
    /// A live move of `guest` from `source` with default tuning.
    pub fn new(id: &str, guest: &lab::Guest, source: &str) -> Drive {
        Drive {
            id: id.to_string(),
            vm: DomainRef {
                name: Some(guest.name.clone()),
                uuid: None,
            },
            source: source.to_string(),
            mode: MigrationMode::Live,
            tuning: ResolvedTuning::default(),
            disks: Vec::new(),
            memory_bytes: 256 << 20,
            planned: None,
        }
    }

    /// Makes a job that cannot finish on its own: capped at `mibps`, no
    /// post-copy, no timeouts (for abort, fault and force tests).
    pub fn held_back(mut self, mibps: u32) -> Drive {
        self.tuning.bandwidth_mibps = mibps;
        self.tuning.post_copy = false;
        self.tuning.progress_timeout_seconds = 0;
        self.tuning.completion_timeout_per_gib_seconds = 0;
        self.tuning.on_timeout = kvmotion_api::tuning::TimeoutAction::Abort;
        self
    }

    /// Copies `disk` of the guest along (a node-local disk).
    pub fn with_copied_disk(mut self, guest: &lab::Guest, capacity_bytes: u64) -> Drive {
        self.disks.push(DiskPlan {
            target: "vda".into(),
            path: guest.disk.clone().expect("the guest has a disk"),
            format: "qcow2".into(),
            capacity_bytes,
            copy: true,
        });
        self
    }

    /// Waits until the running job has moved more than `bytes`.
    pub async fn wait_for_data(&self, agents: &Agents, bytes: u64) {
        let path = format!("/v1/migrations/{}", self.id);
        crate::eventually(Duration::from_secs(30), "data to flow", || async {
            let (_, s) = agents
                .on(&self.source)
                .as_controller("GET", &path, None)
                .await;
            (s["progress"]["dataProcessedBytes"].as_u64().unwrap_or(0) > bytes).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agents.on(&self.source).log_text()));
    }

    /// The prepare request.
    pub fn prepare_request(&self) -> PrepareRequest {
        PrepareRequest {
            vm: self.vm.clone(),
            source_node: self.source.clone(),
            mode: self.mode,
            memory_bytes: self.memory_bytes,
            cpu_xml: String::new(),
            virt_type: "qemu".into(),
            disks: self.disks.clone(),
        }
    }

    /// Calls prepare on the target; returns its answer.
    pub async fn prepare(&self, agents: &Agents) -> (u16, Value) {
        agents
            .on(lab::other(&self.source))
            .as_controller(
                "POST",
                &format!("/v1/migrations/{}/prepare", self.id),
                Some(&serde_json::to_value(self.prepare_request()).expect("json")),
            )
            .await
    }

    /// Calls cleanup on the target; returns its answer.
    pub async fn cleanup(&self, agents: &Agents) -> (u16, Value) {
        agents
            .on(lab::other(&self.source))
            .as_controller("POST", &format!("/v1/migrations/{}/cleanup", self.id), None)
            .await
    }

    /// Prepares the target and starts the job; returns the start answer.
    pub async fn start(&self, agents: &Agents) -> (u16, Value) {
        let (code, prepared) = self.prepare(agents).await;
        assert_eq!(code, 200, "prepare: {prepared}");
        self.start_with(agents, prepared).await
    }

    /// Starts the job with the target's answer to a prepare (this drive's
    /// or another's); returns the start answer.
    pub async fn start_with(&self, agents: &Agents, prepared: Value) -> (u16, Value) {
        let target = lab::other(&self.source);
        let start = StartRequest {
            vm: self.vm.clone(),
            target_node: target.to_string(),
            target: serde_json::from_value(prepared).expect("prepare answer"),
            mode: self.mode,
            tuning: self.tuning.clone(),
            disks: self.disks.clone(),
            planned: self.planned,
            planned_transfer_ms: None,
        };
        agents
            .on(&self.source)
            .as_controller(
                "POST",
                &format!("/v1/migrations/{}/start", self.id),
                Some(&serde_json::to_value(start).expect("json")),
            )
            .await
    }

    /// Long-polls the source agent until the job ends; returns the final
    /// status and every status seen.
    pub async fn wait(&self, agents: &Agents, within: Duration) -> (JobStatus, Vec<JobStatus>) {
        let source = agents.on(&self.source);
        let mut seen: Vec<JobStatus> = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (code, body) = source
                .as_controller(
                    "GET",
                    &format!("/v1/migrations/{}?waitSeconds=5", self.id),
                    None,
                )
                .await;
            assert_eq!(code, 200, "status: {body}");
            let status: JobStatus = serde_json::from_value(body).expect("job status");
            seen.push(status.clone());
            if status.phase.is_final() {
                return (status, seen);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "migration {} still {:?} after {within:?}\n{}",
                self.id,
                status.phase,
                source.log_text()
            );
        }
    }
}
