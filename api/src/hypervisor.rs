//! `Hypervisor`: one per node, the inventory its agent publishes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A hypervisor node as its agent sees it: versions, CPU, memory, the
/// address migrations reach it on, and the domains it runs. Named after the
/// Kubernetes node. The spec belongs to operators, the status to the agent.
// Repeated `type_ = …` inside separate printcolumn(...) entries is not a
// duplicated attribute; clippy cannot see into kube's helper attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kvmotion.io",
    version = "v1alpha1",
    kind = "Hypervisor",
    plural = "hypervisors",
    shortname = "hv",
    category = "kvmotion",
    status = "HypervisorStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "A hypervisor node's libvirt inventory, published by its kvmotion agent.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Unschedulable",
        type_ = "boolean",
        json_path = ".spec.unschedulable"
    ),
    printcolumn(
        name = "Libvirt",
        type_ = "string",
        json_path = ".status.libvirtVersion"
    ),
    printcolumn(name = "CPU", type_ = "string", json_path = ".status.cpu.model"),
    printcolumn(
        name = "FreeMemory",
        type_ = "integer",
        json_path = ".status.memory.freeBytes",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct HypervisorSpec {
    /// Keep new migrations from choosing or targeting this node (running
    /// ones finish). Like cordoning, for migrations only.
    #[serde(default)]
    pub unschedulable: bool,
}

/// What the node's agent reports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HypervisorStatus {
    /// libvirt daemon version, e.g. "11.3.0".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub libvirt_version: Option<String>,
    /// QEMU version, e.g. "10.0.2".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qemu_version: Option<String>,
    /// Host CPU as libvirt describes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<HostCpu>,
    /// Host memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<HostMemory>,
    /// Host name or IP address that other nodes' libvirtd reach this node's
    /// libvirtd on (the migration network).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration_address: Option<String>,
    /// URL of this node's agent API, e.g. "https://10.0.0.5:9443".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_endpoint: Option<String>,
    /// The libvirt domains defined or running on this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["uuid"]))]
    pub domains: Vec<DomainInfo>,
    /// How long this node's live moves took from the agent's call to the
    /// first byte on the wire (libvirt connecting to the target, the
    /// target's QEMU starting), the median of its last five moves as source;
    /// the controller's prediction before a move counts it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration_startup_ms: Option<u64>,
    /// What this node's predicted live moves took beyond their start-up
    /// and the time their prediction counted for their data (the target
    /// taking the guest over, libvirt ending the job, whatever else the
    /// model does not count), the median of its last five such moves as source;
    /// the controller's prediction before a move counts it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration_finish_ms: Option<u64>,
    /// When the agent last checked libvirt, changed or not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// Standard conditions; Ready is True while the agent reaches libvirtd.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

impl HypervisorStatus {
    /// What the node's live moves cost besides their data, as its agent
    /// measured them.
    pub fn move_overheads(&self) -> crate::predict::Overheads {
        let ms = |v: Option<u64>| v.map(std::time::Duration::from_millis);
        crate::predict::Overheads {
            startup: ms(self.migration_startup_ms),
            finish: ms(self.migration_finish_ms),
        }
    }
}

/// The host CPU.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostCpu {
    /// Architecture, e.g. "x86_64".
    pub arch: String,
    /// libvirt CPU model name, e.g. "Skylake-Server-IBRS".
    pub model: String,
    /// Vendor, e.g. "Intel".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// Feature flags beyond the model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// Logical CPUs.
    pub count: u32,
}

/// Host memory, in bytes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostMemory {
    /// Physical memory.
    pub total_bytes: u64,
    /// Memory not in use.
    pub free_bytes: u64,
}

/// One libvirt domain on the node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainInfo {
    /// Domain name.
    pub name: String,
    /// Domain UUID.
    pub uuid: String,
    /// Domain state.
    pub state: DomainState,
    /// Memory assigned to the guest, in bytes.
    pub memory_bytes: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// True when the domain is defined (survives shut-off), false when transient.
    pub persistent: bool,
    /// The guest's disks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskInfo>,
    /// How fast the running guest dirtied its memory when the agent last
    /// sampled it; the controller predicts a live move from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_rate: Option<GuestDirtyRate>,
}

/// A running guest's dirty rate, sampled by its node's agent in the
/// background (libvirt's page sampling over one second, every
/// `--dirty-rate-every-seconds`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuestDirtyRate {
    /// Distinct bytes the guest dirtied per second.
    pub bytes_per_second: u64,
    /// Memory its QEMU holds: what a first pass sends (the rest are zero
    /// pages, nearly free on the wire).
    pub resident_bytes: u64,
    /// When it was measured.
    pub measured_at: Time,
}

/// libvirt's view of a domain's state.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DomainState {
    /// Running.
    Running,
    /// Blocked on a resource.
    Blocked,
    /// Paused.
    Paused,
    /// Shutting down.
    ShuttingDown,
    /// Shut off (defined, not running).
    ShutOff,
    /// Crashed.
    Crashed,
    /// Suspended by guest power management.
    Suspended,
    /// libvirt reports no state.
    #[default]
    Unknown,
}

impl DomainState {
    /// Every state, in declaration order.
    pub const ALL: [DomainState; 8] = [
        DomainState::Running,
        DomainState::Blocked,
        DomainState::Paused,
        DomainState::ShuttingDown,
        DomainState::ShutOff,
        DomainState::Crashed,
        DomainState::Suspended,
        DomainState::Unknown,
    ];

    /// Whether a QEMU process holds the guest here (running, blocked or
    /// paused): the states in which a node "has" the running VM.
    pub fn has_guest(self) -> bool {
        match self {
            DomainState::Running | DomainState::Blocked | DomainState::Paused => true,
            DomainState::ShuttingDown
            | DomainState::ShutOff
            | DomainState::Crashed
            | DomainState::Suspended
            | DomainState::Unknown => false,
        }
    }
}

/// One guest disk.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskInfo {
    /// Target device in the guest, e.g. "vda".
    pub target: String,
    /// Host path (or network source) of the image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Image format, e.g. "qcow2" or "raw".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Virtual size in bytes, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
    /// True when the image lies on storage every node sees (no copy needed).
    pub shared: bool,
    /// True for read-only media (CD-ROMs), which are not copied.
    #[serde(default)]
    pub read_only: bool,
}
