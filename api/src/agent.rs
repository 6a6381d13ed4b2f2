//! The agent's HTTP API: request and response bodies, shared by the agent
//! (server) and the controller and tests (clients). JSON, camelCase.
//!
//! Every call names a migration id (the migration object's UID); calls are
//! idempotent per id: repeating one returns the state it produced.

use serde::{Deserialize, Serialize};

use crate::migration::{MigrationMode, MigrationPrediction, MigrationProgress, MigrationResult};
use crate::tuning::{Compression, StorageMode, TimeoutAction, Transport};

/// Path prefix of the versioned API.
pub const API_PREFIX: &str = "/v1";

/// Identifies a libvirt domain by name or uuid (at least one).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DomainRef {
    /// Domain name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Domain UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}

impl std::fmt::Display for DomainRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.name, &self.uuid) {
            (Some(n), _) => f.write_str(n),
            (None, Some(u)) => f.write_str(u),
            (None, None) => f.write_str("<unnamed>"),
        }
    }
}

/// The resolved tuning of one migration: policy, overrides and built-in
/// defaults merged; every value set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedTuning {
    /// MiB/s; 0 = unlimited.
    #[serde(rename = "bandwidthMiBps")]
    pub bandwidth_mibps: u32,
    /// Largest downtime the ramp may reach, ms.
    pub max_downtime_ms: u32,
    /// Seconds per GiB before the timeout action; 0 = off.
    #[serde(rename = "completionTimeoutPerGiBSeconds")]
    pub completion_timeout_per_gib_seconds: u32,
    /// Seconds without progress before the timeout action; 0 = off.
    pub progress_timeout_seconds: u32,
    /// What a timeout does.
    pub on_timeout: TimeoutAction,
    /// Throttle the guest when it dirties memory too fast.
    pub auto_converge: bool,
    /// Post-copy may be used (stall or timeout).
    pub post_copy: bool,
    /// Seconds the agent keeps resuming a post-copy that lost its link;
    /// 0 = no recovery. Absent from records written before it existed.
    #[serde(default = "default_post_copy_recovery")]
    pub post_copy_recovery_timeout_seconds: u32,
    /// Parallel connections (1 = a single stream).
    pub parallel_connections: u8,
    /// Stream compression.
    pub compression: Compression,
    /// How disks travel.
    pub storage: StorageMode,
    /// libvirt native TLS.
    pub tls: bool,
    /// How the stream travels. Absent from records written before it
    /// existed (they were Direct).
    #[serde(default)]
    pub transport: Transport,
}

impl Default for ResolvedTuning {
    /// kvmotion's built-in defaults (see docs/policies.md).
    fn default() -> Self {
        ResolvedTuning {
            bandwidth_mibps: 0,
            max_downtime_ms: 500,
            completion_timeout_per_gib_seconds: 150,
            progress_timeout_seconds: 30,
            on_timeout: TimeoutAction::PostCopy,
            auto_converge: false,
            post_copy: true,
            post_copy_recovery_timeout_seconds: default_post_copy_recovery(),
            parallel_connections: 1,
            compression: Compression::None,
            storage: StorageMode::Auto,
            tls: false,
            transport: Transport::Direct,
        }
    }
}

/// The built-in post-copy recovery bound: long enough for a link flap or a
/// switch reboot, short enough that a lasting split is reported while the
/// operator can still act.
fn default_post_copy_recovery() -> u32 {
    300
}

/// A disk as the migration plans to move it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DiskPlan {
    /// Guest device, e.g. "vda".
    pub target: String,
    /// Image path (the same on both nodes).
    pub path: String,
    /// Image format ("qcow2", "raw").
    pub format: String,
    /// Virtual size in bytes.
    pub capacity_bytes: u64,
    /// The image must be copied (it is not on shared storage).
    pub copy: bool,
}

/// `POST /v1/migrations/{id}/prepare`, sent to the target agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrepareRequest {
    /// The VM.
    pub vm: DomainRef,
    /// Node the VM comes from (to refuse target == source).
    pub source_node: String,
    /// Live or Offline.
    pub mode: MigrationMode,
    /// Guest memory, bytes (capacity check).
    pub memory_bytes: u64,
    /// The guest's CPU definition (`<cpu>` XML) for libvirt's comparison;
    /// empty to skip.
    #[serde(default)]
    pub cpu_xml: String,
    /// The domain's virtualization type ("kvm", or "qemu" for emulation):
    /// the CPU is compared with what that hypervisor can provide.
    #[serde(default = "default_virt_type")]
    pub virt_type: String,
    /// Disks and whether each is copied.
    #[serde(default)]
    pub disks: Vec<DiskPlan>,
}

fn default_virt_type() -> String {
    "kvm".into()
}

/// Answer to `prepare`: where to send the VM.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PrepareResponse {
    /// libvirt connection URI of the target daemon (peer to peer).
    pub libvirt_uri: String,
    /// Address QEMU sends the migration stream to.
    pub migration_uri: String,
    /// Agent endpoint for disk sync (offline moves).
    pub agent_endpoint: String,
    /// Disk images this call created (removed again by `cleanup`).
    pub created_disks: Vec<String>,
}

/// `POST /v1/migrations/{id}/start`, sent to the source agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StartRequest {
    /// The VM.
    pub vm: DomainRef,
    /// Node name of the target (for reports).
    pub target_node: String,
    /// From the target's `prepare`.
    pub target: PrepareResponse,
    /// Live or Offline.
    pub mode: MigrationMode,
    /// How to run it.
    pub tuning: ResolvedTuning,
    /// Disks and whether each is copied.
    #[serde(default)]
    pub disks: Vec<DiskPlan>,
    /// The strategy predicted before the move (never `Refuse`: such a
    /// move is not started); the source agent follows it from the start
    /// instead of measuring the guest itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned: Option<crate::migration::Strategy>,
    /// What that prediction counted for the data (its duration less the
    /// node's start-up and finish), in milliseconds: the source agent
    /// measures its node's finish against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_transfer_ms: Option<u64>,
}

/// Where a migration job stands, as the source agent reports it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobPhase {
    /// Accepted, not moving data yet (offline: syncing disks while running).
    Starting,
    /// libvirt is moving the VM.
    Running,
    /// The VM runs (or, offline, is defined) on the target.
    Completed,
    /// The job failed; `vmNode` says where the VM is.
    Failed,
    /// Aborted on request; the VM stays on the source.
    Aborted,
}

impl JobPhase {
    /// True once the job can no longer change.
    pub fn is_final(self) -> bool {
        match self {
            JobPhase::Completed | JobPhase::Failed | JobPhase::Aborted => true,
            JobPhase::Starting | JobPhase::Running => false,
        }
    }
}

/// `GET /v1/migrations/{id}`: the job's state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    /// Migration id.
    pub id: String,
    /// Where it stands.
    pub phase: JobPhase,
    /// Live progress.
    pub progress: MigrationProgress,
    /// Figures, once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<MigrationResult>,
    /// Why it failed or was aborted (a sentence for a person).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Static reason of a failure or abort, e.g. "ProgressTimeout".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The node the VM runs on (or is defined on) now, as far as the
    /// source agent can tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_node: Option<String>,
    /// Actions the convergence policy took, in order (e.g.
    /// "SetMaxDowntime(126ms)", "StartPostCopy").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
    /// How the move was predicted to go, once the dirty rate measured as
    /// it started is known (live moves only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<MigrationPrediction>,
}

/// `GET /v1/domains/{name-or-uuid}`: whether this node has the domain.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DomainPresence {
    /// This node.
    pub node: String,
    /// The domain, when defined or running here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<crate::hypervisor::DomainInfo>,
    /// libvirt runs a job on the domain here (a migration, when kvmotion
    /// started one), whether or not an agent record names it.
    #[serde(default)]
    pub migrating: bool,
}

/// `POST /v1/domains/{vm}/dirty-rate?seconds=N`: how fast the guest
/// dirties its memory, measured by libvirt's page sampling over N seconds
/// (1 by default), for predicting how a move will go.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DirtyRate {
    /// Bytes the guest dirtied per second (libvirt reports whole MiB/s).
    pub bytes_per_second: u64,
    /// Memory its QEMU holds: the pages with data a first pass sends.
    pub resident_bytes: u64,
    /// The guest's memory.
    pub memory_bytes: u64,
    /// How long it was measured.
    pub period_seconds: u32,
}

/// The longest dirty-rate measurement the agent API takes, seconds.
pub const DIRTY_RATE_MAX_SECONDS: u32 = 60;

/// `POST /v1/domains/{vm}/abort-job`: what was aborted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AbortedJob {
    /// A job ran on the domain and was asked to stop.
    pub aborted: bool,
    /// The migration id of the agent's job, when one named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<String>,
}

/// The body of every 4xx/5xx answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// Static, CamelCase reason, e.g. "DomainNotFound".
    pub reason: String,
    /// What went wrong and what to do, for a person.
    pub message: String,
}
