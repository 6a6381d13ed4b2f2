//! Command-line and environment configuration of the agent.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Flags of `kvmotion-agent`; each can also come from the environment.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "kvmotion-agent",
    version,
    about = "kvmotion's node agent: libvirt migrations, inventory, API"
)]
pub struct Args {
    /// This node's name (the Hypervisor object's name).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    /// libvirt connection URI of the local daemon.
    #[arg(long, env = "KVMOTION_LIBVIRT_URI", default_value = "qemu:///system")]
    pub libvirt_uri: String,

    /// Address (IP or host) other nodes' libvirtd and QEMU reach this node
    /// on for migrations: the migration network.
    #[arg(long, env = "KVMOTION_MIGRATION_ADDRESS")]
    pub migration_address: String,

    /// Address the API listens on.
    #[arg(long, env = "KVMOTION_LISTEN", default_value = "0.0.0.0:9443")]
    pub listen: SocketAddr,

    /// URL the controller and peers reach this agent's API on; defaults to
    /// http(s)://<migration address>:<listen port>.
    #[arg(long, env = "KVMOTION_ADVERTISE_ENDPOINT")]
    pub advertise_endpoint: Option<String>,

    /// Directory prefix of storage all nodes share (disks there are not
    /// copied). Repeatable.
    #[arg(
        long = "shared-path",
        env = "KVMOTION_SHARED_PATHS",
        value_delimiter = ','
    )]
    pub shared_paths: Vec<String>,

    /// kubeconfig file; in-cluster configuration or $KUBECONFIG when unset.
    #[arg(long, env = "KVMOTION_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Audience callers' tokens must be issued for.
    #[arg(
        long,
        env = "KVMOTION_TOKEN_AUDIENCE",
        default_value = "kvmotion-agent"
    )]
    pub token_audience: String,

    /// Identities (usernames) allowed to control migrations. Repeatable.
    #[arg(
        long = "controller-identity",
        env = "KVMOTION_CONTROLLER_IDENTITIES",
        value_delimiter = ',',
        default_value = "system:serviceaccount:kvmotion-system:kvmotion-controller"
    )]
    pub controller_identities: Vec<String>,

    /// Identities of peer agents (disk sync, resume). Repeatable.
    #[arg(
        long = "peer-identity",
        env = "KVMOTION_PEER_IDENTITIES",
        value_delimiter = ',',
        default_value = "system:serviceaccount:kvmotion-system:kvmotion-agent"
    )]
    pub peer_identities: Vec<String>,

    /// File holding this agent's token for calling peers (audience as above).
    #[arg(long, env = "KVMOTION_PEER_TOKEN_FILE")]
    pub peer_token_file: Option<PathBuf>,

    /// CA bundle (PEM) trusted for peers' `https://` endpoints.
    #[arg(long, env = "KVMOTION_PEER_CA_FILE")]
    pub peer_ca_file: Option<PathBuf>,

    /// Namespace of the heartbeat Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kvmotion-system")]
    pub lease_namespace: String,

    /// Rewrite the Hypervisor status at least this often, seconds.
    #[arg(long, env = "KVMOTION_RESYNC_SECONDS", default_value_t = 60)]
    pub resync_seconds: u64,

    /// Renew the heartbeat Lease this often, seconds.
    #[arg(long, env = "KVMOTION_HEARTBEAT_SECONDS", default_value_t = 10)]
    pub heartbeat_seconds: u64,

    /// How often a running job is sampled, milliseconds.
    #[arg(long, env = "KVMOTION_POLL_MS", default_value_t = 500)]
    pub poll_ms: u64,

    /// Directory where the agent records its jobs and what prepare created,
    /// so that a restarted agent adopts them. Must outlive the process (a
    /// hostPath in the chart) and belong to this node alone.
    #[arg(
        long,
        env = "KVMOTION_STATE_DIR",
        default_value = "/var/lib/kvmotion-agent"
    )]
    pub state_dir: std::path::PathBuf,

    /// Serve the API over TLS with this certificate (PEM chain)...
    #[arg(long, env = "KVMOTION_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// ...and this private key (PEM).
    #[arg(long, env = "KVMOTION_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Log format: text or json.
    #[arg(long, env = "KVMOTION_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

impl Args {
    /// The endpoint peers and the controller use.
    pub fn endpoint(&self) -> String {
        self.advertise_endpoint.clone().unwrap_or_else(|| {
            let scheme = if self.tls_cert.is_some() {
                "https"
            } else {
                "http"
            };
            format!(
                "{scheme}://{}:{}",
                self.migration_address,
                self.listen.port()
            )
        })
    }
}
