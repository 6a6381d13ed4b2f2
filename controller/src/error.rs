//! The controller's one error type.

/// Everything that can fail in the controller, named after the operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No kubeconfig or in-cluster configuration could be loaded.
    #[error("loading the Kubernetes client configuration")]
    LoadKubeConfig(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The Kubernetes client could not be built from the configuration.
    #[error("building the Kubernetes client")]
    BuildClient(#[source] kube::Error),
    /// Writing an object's status failed.
    #[error("writing the status of {kind} {name}")]
    WriteStatus {
        /// The object's kind.
        kind: &'static str,
        /// The object.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The leader-election Lease could not be set up or renewed.
    #[error("leader election on Lease {namespace}/{name}")]
    LeaderElection {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// The lease manager's error.
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    /// Adding or removing a finalizer (a migration's or an evacuation's) failed.
    #[error("updating the finalizer of a kvmotion object")]
    Finalizer(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The status changed since it was read: decided again from the new one.
    #[error("the status of {kind} {name} changed since it was read")]
    StatusConflict {
        /// The object's kind.
        kind: &'static str,
        /// The object.
        name: String,
    },
    /// The stored status cannot be read; rewriting it would lose what it
    /// says, so the controller waits for a person.
    #[error(
        "the status of VirtualMachineMigration {name} cannot be read ({message}); fix or remove it (kubectl edit --subresource=status)"
    )]
    StatusUnreadable {
        /// The migration.
        name: String,
        /// The parser's message.
        message: String,
    },
    /// Reading a migration afresh before acting on it failed.
    #[error("reading VirtualMachineMigration {name}")]
    ReadMigration {
        /// The migration.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A deleted migration's job is still stopping; deletion waits.
    #[error("cancelling VirtualMachineMigration {name}: waiting for its job to stop")]
    CancelPending {
        /// The migration.
        name: String,
    },
    /// Creating a migration for an evacuation failed.
    #[error("creating VirtualMachineMigration {name} for NodeEvacuation {evacuation}")]
    CreateMigration {
        /// The evacuation.
        evacuation: String,
        /// The migration.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Deleting (cancelling) an evacuation's migration failed.
    #[error("cancelling VirtualMachineMigration {name} of NodeEvacuation {evacuation}")]
    CancelMigration {
        /// The evacuation.
        evacuation: String,
        /// The migration.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Letting go of a running migration (removing the owner reference) failed.
    #[error("releasing VirtualMachineMigration {name} from NodeEvacuation {evacuation}")]
    ReleaseMigration {
        /// The evacuation.
        evacuation: String,
        /// The migration.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Creating or deleting the evacuation of a cordoned Node failed.
    #[error("creating or deleting the evacuation of cordoned Node {node}")]
    CordonEvacuation {
        /// The Node.
        node: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Reading, placing or releasing the drain guard of a Node failed.
    #[error("{action} the drain guard of Node {node}")]
    DrainGuard {
        /// What was done: "reading", "placing" or "releasing".
        action: &'static str,
        /// The Node.
        node: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The Deployment that owns the drain guards could not be read.
    #[error("reading the drain guards' owner, Deployment {namespace}/{name}")]
    DrainGuardOwner {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The agent-API client could not be built.
    #[error("building the agent client")]
    AgentClient(#[source] kvmotion_api::client::Error),
    /// The health and metrics endpoint could not be served.
    #[error("serving health and metrics on {addr}")]
    ServeHttp {
        /// The listen address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A static label for metrics and logs, never built from `Debug` output.
    pub fn category(&self) -> &'static str {
        match self {
            Error::LoadKubeConfig(_) => "load_kube_config",
            Error::BuildClient(_) => "build_client",
            Error::WriteStatus { .. } => "write_status",
            Error::LeaderElection { .. } => "leader_election",
            Error::ServeHttp { .. } => "serve_http",
            Error::Finalizer(_) => "finalizer",
            Error::CancelPending { .. } => "cancel_pending",
            Error::StatusConflict { .. } => "status_conflict",
            Error::StatusUnreadable { .. } => "status_unreadable",
            Error::ReadMigration { .. } => "read_migration",
            Error::AgentClient(_) => "agent_client",
            Error::CreateMigration { .. } => "create_migration",
            Error::CancelMigration { .. } => "cancel_migration",
            Error::ReleaseMigration { .. } => "release_migration",
            Error::CordonEvacuation { .. } => "cordon_evacuation",
            Error::DrainGuard { .. } => "drain_guard",
            Error::DrainGuardOwner { .. } => "drain_guard_owner",
        }
    }

    /// Whether retrying can help. Errors here come from the API server or the
    /// network, which recover; specs the controller cannot act on are not
    /// errors but a condition on the object.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::WriteStatus { .. }
            | Error::LeaderElection { .. }
            | Error::Finalizer(_)
            | Error::StatusConflict { .. }
            | Error::ReadMigration { .. }
            | Error::CreateMigration { .. }
            | Error::CancelMigration { .. }
            | Error::ReleaseMigration { .. }
            | Error::CordonEvacuation { .. }
            | Error::DrainGuard { .. }
            | Error::DrainGuardOwner { .. }
            | Error::CancelPending { .. } => true,
            Error::StatusUnreadable { .. }
            | Error::LoadKubeConfig(_)
            | Error::BuildClient(_)
            | Error::ServeHttp { .. }
            | Error::AgentClient(_) => false,
        }
    }
}

impl Error {
    /// Unwraps the finalizer's error: the reconcile's own error as is,
    /// the finalizer's API calls as `Finalizer`.
    pub fn from_finalizer(e: kube::runtime::finalizer::Error<Error>) -> Error {
        use kube::runtime::finalizer::Error as F;
        match e {
            F::ApplyFailed(inner) | F::CleanupFailed(inner) => inner,
            other => Error::Finalizer(Box::new(other)),
        }
    }
}

pub use kvmotion_api::error_chain as chain;
