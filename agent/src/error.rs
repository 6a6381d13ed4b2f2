//! The agent's one error type. Each variant carries its HTTP status and a
//! static reason, so the API answers every failure with a JSON body a
//! person (or the controller) can act on.

use axum::http::StatusCode;

use crate::libvirt::LibvirtError;

/// Everything that can fail in the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The VM is not on this node.
    #[error("domain {vm} is not defined on node {node}")]
    DomainNotFound {
        /// The VM.
        vm: String,
        /// This node.
        node: String,
    },
    /// The VM is not in a state the mode allows.
    #[error("domain {vm} is {state}; {needed}")]
    DomainState {
        /// The VM.
        vm: String,
        /// Its state.
        state: String,
        /// What the operation needs.
        needed: &'static str,
    },
    /// Another migration of the VM is in flight.
    #[error("domain {vm} is already being migrated by migration {other}")]
    AlreadyMigrating {
        /// The VM.
        vm: String,
        /// The other migration id.
        other: String,
    },
    /// The target is the node the VM runs on.
    #[error("the target node {node} is the source node: nothing to move")]
    SameNode {
        /// The node.
        node: String,
    },
    /// The VM already exists on the target.
    #[error("domain {vm} already exists on node {node}")]
    DomainExists {
        /// The VM.
        vm: String,
        /// This node.
        node: String,
    },
    /// A disk path the move would write is in use on the target (an
    /// existing file, or a disk of another domain defined there).
    #[error("disk {path} is in use on node {node}{}; kvmotion writes only images it created", match domain { Some(d) => format!(" by domain {d}"), None => " (the file exists)".to_string() })]
    DiskPathInUse {
        /// The path.
        path: String,
        /// The domain that uses it, when one does.
        domain: Option<String>,
        /// This node.
        node: String,
    },
    /// The target lacks memory for the guest.
    #[error("node {node} has {free} bytes of free memory, the guest needs {needed}")]
    InsufficientMemory {
        /// This node.
        node: String,
        /// Free bytes.
        free: u64,
        /// Needed bytes.
        needed: u64,
    },
    /// The target's CPU lacks what the guest CPU needs.
    #[error(
        "the guest CPU cannot run on node {node}: libvirt reports it incompatible with the host CPU"
    )]
    CpuIncompatible {
        /// This node.
        node: String,
    },
    /// No migration with that id is known here.
    #[error("no migration {id} on this node")]
    UnknownMigration {
        /// Migration id.
        id: String,
    },
    /// The request cannot be carried out in the job's current state.
    #[error("{0}")]
    Conflict(String),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// No endpoint at that path.
    #[error("no endpoint {0}; see docs/agent.md, Agent API")]
    UnknownEndpoint(String),
    /// The endpoint exists but not for this method.
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The path.
        path: String,
    },
    /// No or an invalid bearer token.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid token of an identity that may not call this.
    #[error("{identity} may not {action}")]
    Forbidden {
        /// Who called.
        identity: String,
        /// What it tried.
        action: &'static str,
    },
    /// Checking a token with the API server failed.
    #[error("reviewing a bearer token with the API server")]
    ReviewToken(#[source] kube::Error),
    /// A libvirt call failed.
    #[error("libvirt")]
    Libvirt(#[source] LibvirtError),
    /// Creating, reading or writing a disk image failed.
    #[error("disk image {path}")]
    DiskImage {
        /// The image.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A call to the peer agent failed.
    #[error("calling the agent at {endpoint}: {message}")]
    CallPeer {
        /// Its endpoint.
        endpoint: String,
        /// What failed.
        message: String,
    },
    /// Publishing the Hypervisor inventory or heartbeat failed.
    #[error("publishing {what}")]
    Publish {
        /// Which object.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The agent's records on disk could not be written or read.
    #[error("recording {what} in the state directory")]
    State {
        /// What was being recorded.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A blocking task panicked or was cancelled.
    #[error("a background task ended abnormally: {0}")]
    Task(String),
    /// Serving the API failed.
    #[error("serving the agent API on {addr}")]
    Serve {
        /// Listen address.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// The HTTP status the API answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::DomainNotFound { .. } | Error::UnknownMigration { .. } => StatusCode::NOT_FOUND,
            Error::DomainState { .. }
            | Error::AlreadyMigrating { .. }
            | Error::DomainExists { .. }
            | Error::DiskPathInUse { .. }
            | Error::Conflict(_) => StatusCode::CONFLICT,
            Error::SameNode { .. }
            | Error::InsufficientMemory { .. }
            | Error::CpuIncompatible { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::UnknownEndpoint(_) => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden { .. } => StatusCode::FORBIDDEN,
            Error::CallPeer { .. } => StatusCode::BAD_GATEWAY,
            Error::ReviewToken(_)
            | Error::Libvirt(_)
            | Error::DiskImage { .. }
            | Error::State { .. }
            | Error::Publish { .. }
            | Error::Task(_)
            | Error::Serve { .. }
            | Error::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A static, CamelCase reason: the `reason` of error bodies, and a
    /// metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::DomainNotFound { .. } => "DomainNotFound",
            Error::DomainState { .. } => "DomainState",
            Error::AlreadyMigrating { .. } => "AlreadyMigrating",
            Error::SameNode { .. } => "SameNode",
            Error::DomainExists { .. } => "DomainExists",
            Error::InsufficientMemory { .. } => "InsufficientMemory",
            Error::CpuIncompatible { .. } => "CPUIncompatible",
            Error::UnknownMigration { .. } => "UnknownMigration",
            Error::Conflict(_) => "Conflict",
            Error::BadRequest(_) => "BadRequest",
            Error::UnknownEndpoint(_) => "UnknownEndpoint",
            Error::MethodNotAllowed { .. } => "MethodNotAllowed",
            Error::Unauthenticated(_) => "Unauthenticated",
            Error::Forbidden { .. } => "Forbidden",
            Error::ReviewToken(_) => "ReviewToken",
            Error::Libvirt(_) => "Libvirt",
            Error::DiskImage { .. } => "DiskImage",
            Error::DiskPathInUse { .. } => "DiskPathInUse",
            Error::State { .. } => "State",
            Error::CallPeer { .. } => "CallPeer",
            Error::Publish { .. } => "Publish",
            Error::Task(_) => "Task",
            Error::Serve { .. } => "Serve",
            Error::Config(_) => "Config",
        }
    }
}

impl From<LibvirtError> for Error {
    fn from(e: LibvirtError) -> Self {
        Error::Libvirt(e)
    }
}

pub use kvmotion_api::error_chain as chain;

/// Runs blocking file work on the blocking pool.
pub async fn blocking_io<T: Send + 'static>(
    what: impl Into<String>,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, Error> {
    let what = what.into();
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task(e.to_string()))?
        .map_err(|source| Error::State { what, source })
}

/// Runs a blocking libvirt call on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LibvirtError> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task(e.to_string()))?
        .map_err(Error::Libvirt)
}
