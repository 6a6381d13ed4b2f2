//! Command-line and environment configuration of the controller.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Flags of `kvmotion-controller`; each can also come from the environment.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "kvmotion-controller",
    version,
    about = "Reconciles kvmotion VirtualMachineMigrations"
)]
pub struct Args {
    /// kubeconfig file; in-cluster configuration or $KUBECONFIG when unset.
    #[arg(long, env = "KVMOTION_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Address of the /healthz, /readyz and /metrics endpoint.
    #[arg(long, env = "KVMOTION_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kvmotion-system")]
    pub lease_namespace: String,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "KVMOTION_LEASE_NAME",
        default_value = "kvmotion-controller"
    )]
    pub lease_name: String,

    /// How long a leader's Lease stays valid without renewal, in seconds.
    #[arg(long, env = "KVMOTION_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,

    /// How long before expiry the leader renews, in seconds.
    #[arg(long, env = "KVMOTION_LEASE_GRACE_SECONDS", default_value_t = 5)]
    pub lease_grace_seconds: u64,

    /// This replica's identity in the Lease; the pod name in a cluster.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// File holding the token presented to agents (a projected
    /// service-account token with the agents' audience); re-read on every
    /// call, as projected tokens rotate.
    #[arg(long, env = "KVMOTION_AGENT_TOKEN_FILE")]
    pub agent_token_file: Option<PathBuf>,

    /// CA bundle (PEM) trusted for agents' `https://` endpoints.
    #[arg(long, env = "KVMOTION_AGENT_CA_FILE")]
    pub agent_ca_file: Option<PathBuf>,

    /// Namespace of the agents' heartbeat Leases.
    #[arg(
        long,
        env = "KVMOTION_AGENT_NAMESPACE",
        default_value = "kvmotion-system"
    )]
    pub agent_namespace: String,

    /// An agent heartbeat older than this, in seconds, makes its node
    /// unavailable for new migrations.
    #[arg(long, env = "KVMOTION_HEARTBEAT_MAX_AGE_SECONDS", default_value_t = 40)]
    pub heartbeat_max_age_seconds: u64,

    /// How long, in seconds, an agent may stay silent mid-migration before
    /// the migration fails with AgentUnreachable.
    #[arg(long, env = "KVMOTION_AGENT_TIMEOUT_SECONDS", default_value_t = 60)]
    pub agent_timeout_seconds: u64,

    /// Cordoning a Node labelled `kvmotion.io/evacuate-on-cordon=true`
    /// creates its NodeEvacuation (`cordon-<node>`); uncordoning deletes it.
    #[arg(long, env = "KVMOTION_EVACUATE_ON_CORDON")]
    pub evacuate_on_cordon: bool,

    /// What the evacuations a cordon creates do with a VM that cannot move
    /// live: Fail (block, listing it) or Offline (move it offline).
    #[arg(long, env = "KVMOTION_CORDON_LIVE_IMPOSSIBLE", value_enum, default_value_t = CordonLiveImpossible::Fail)]
    pub cordon_live_impossible: CordonLiveImpossible,

    /// The MigrationPolicy of the evacuations a cordon creates (empty: the
    /// default policy).
    #[arg(long, env = "KVMOTION_CORDON_POLICY")]
    pub cordon_policy: Option<String>,

    /// Guard hypervisor nodes against `kubectl drain` while VMs run there:
    /// a pod on each node (owned by `--drain-guard-owner`) whose
    /// PodDisruptionBudget refuses its eviction, deleted by the controller
    /// once the cordoned node runs no VM.
    #[arg(long, env = "KVMOTION_DRAIN_GUARD",
          requires_all = ["drain_guard_owner", "drain_guard_image"])]
    pub drain_guard: bool,

    /// The controller's Deployment (in `--lease-namespace`), owner of the
    /// guard pods.
    #[arg(long, env = "KVMOTION_DRAIN_GUARD_OWNER")]
    pub drain_guard_owner: Option<String>,

    /// Image of the guard pods: the controller's own.
    #[arg(long, env = "KVMOTION_DRAIN_GUARD_IMAGE")]
    pub drain_guard_image: Option<String>,

    /// Pull policy of the guard pods' image.
    #[arg(
        long,
        env = "KVMOTION_DRAIN_GUARD_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    pub drain_guard_pull_policy: String,

    /// Image pull secrets of the guard pods (comma-separated).
    #[arg(long, env = "KVMOTION_DRAIN_GUARD_PULL_SECRETS", value_delimiter = ',')]
    pub drain_guard_pull_secrets: Vec<String>,

    /// Run as a drain guard pod: hold the place until SIGTERM, nothing else
    /// (no API access).
    #[arg(long)]
    pub guard: bool,

    /// Only reconcile migrations and evacuations whose labels match this
    /// selector (to shard them across controllers, or to test in
    /// isolation). Evacuations a cordon creates carry its `key=value` terms.
    #[arg(long, env = "KVMOTION_MIGRATION_SELECTOR")]
    pub migration_selector: Option<String>,

    /// Reconciles run at once, at most. A reconcile spends most of its time
    /// waiting on the API server, and more of them at once only queue
    /// there: throughput does not grow while each takes longer (see the
    /// docs/benchmarks.md). Raise it when agents answer slowly; a running
    /// job is watched outside this bound.
    #[arg(long, env = "KVMOTION_MAX_CONCURRENT_RECONCILES", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_reconciles: u16,

    /// Log format.
    #[arg(long, env = "KVMOTION_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `--cordon-live-impossible`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CordonLiveImpossible {
    /// Block the evacuation, listing the VM.
    Fail,
    /// Move the VM offline.
    Offline,
}

impl From<CordonLiveImpossible> for kvmotion_api::evacuation::LiveImpossible {
    fn from(c: CordonLiveImpossible) -> Self {
        match c {
            CordonLiveImpossible::Fail => Self::Fail,
            CordonLiveImpossible::Offline => Self::Offline,
        }
    }
}

/// How logs are written.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl Args {
    /// The reconciler's timing from the flags.
    pub fn settings(&self) -> crate::reconcile::decide::Settings {
        crate::reconcile::decide::Settings {
            heartbeat_max_age: std::time::Duration::from_secs(self.heartbeat_max_age_seconds),
            agent_timeout: std::time::Duration::from_secs(self.agent_timeout_seconds),
            ..Default::default()
        }
    }

    /// The Lease identity: the given one, else host name and process id.
    pub fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "controller".into());
            format!("{host}-{}", std::process::id())
        })
    }
}
