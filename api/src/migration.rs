//! `VirtualMachineMigration`: one request to move one VM, and its status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::phase::Phase;
use crate::schema::DNS1123_SUBDOMAIN;
use crate::tuning::MigrationTuning;

/// Moves one libvirt VM from its node to another. The spec is fixed once
/// created (except `forceComplete`); the controller reports every step in
/// status. Deleting an in-flight migration cancels it.
// Repeated `type_ = …` inside separate printcolumn(...) entries is not a
// duplicated attribute; clippy cannot see into kube's helper attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kvmotion.io",
    version = "v1alpha1",
    kind = "VirtualMachineMigration",
    plural = "virtualmachinemigrations",
    shortname = "vmm",
    category = "kvmotion",
    status = "VirtualMachineMigrationStatus",
    derive = "PartialEq",
    doc = "Moves one libvirt VM from its hypervisor node to another, live or offline.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "VM", type_ = "string", json_path = ".spec.vm.name"),
    printcolumn(name = "Source", type_ = "string", json_path = ".status.sourceNode"),
    printcolumn(name = "Target", type_ = "string", json_path = ".status.targetNode"),
    printcolumn(
        name = "Progress",
        type_ = "integer",
        json_path = ".status.progress.percent"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::migration_spec_immutable)]
#[schemars(transform = migration_spec_rules)]
pub struct VirtualMachineMigrationSpec {
    /// The VM to move: its libvirt domain name, or uuid, or both (they must agree).
    pub vm: VmRef,

    /// The node the VM runs on. Optional: found from the Hypervisor
    /// inventories when empty; when given, the VM must run there.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), regex(pattern = DNS1123_SUBDOMAIN))]
    pub source_node: Option<String>,

    /// The node to move the VM to. Optional: the controller chooses one
    /// (see targetSelector) when empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), regex(pattern = DNS1123_SUBDOMAIN))]
    pub target_node: Option<String>,

    /// Restricts the automatic choice of target to Hypervisors whose labels
    /// match. Only used when targetNode is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_selector: Option<LabelSelector>,

    /// Live (the guest keeps running while its memory is copied) or Offline
    /// (the guest does not run during the move; a running guest is paused
    /// and resumed on the target, a shut-off one has its definition and
    /// local disks moved).
    #[serde(default)]
    pub mode: MigrationMode,

    /// The MigrationPolicy to start from. When empty, the policy marked
    /// isDefault applies, else kvmotion's built-in defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_ref: Option<PolicyRef>,

    /// Per-migration overrides of the policy; each set field wins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overrides: Option<MigrationTuning>,

    /// Request to finish now: switch a running live migration to post-copy
    /// (when allowed) or pause the guest so it completes. May be set at any
    /// time; the only spec field that may change after creation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force_complete: bool,
}

fn migration_spec_rules(schema: &mut schemars::Schema) {
    use crate::schema::push_rule;
    push_rule(
        schema,
        "!has(self.sourceNode) || !has(self.targetNode) || self.sourceNode != self.targetNode",
        "spec.targetNode must differ from spec.sourceNode",
        Some(".targetNode"),
    );
    push_rule(
        schema,
        "!has(self.targetNode) || !has(self.targetSelector)",
        "spec.targetSelector cannot be combined with spec.targetNode: give one or the other",
        Some(".targetSelector"),
    );
}

/// Identifies a libvirt domain.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = vm_ref_rules)]
pub struct VmRef {
    /// The libvirt domain name.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
    /// The libvirt domain UUID (8-4-4-4-12 hex digits).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    ))]
    pub uuid: Option<String>,
}

fn vm_ref_rules(schema: &mut schemars::Schema) {
    crate::schema::push_rule(
        schema,
        "has(self.name) || has(self.uuid)",
        "spec.vm needs a name or a uuid",
        None,
    );
}

/// Names a MigrationPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct PolicyRef {
    /// Name of the MigrationPolicy.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS1123_SUBDOMAIN))]
    pub name: String,
}

/// How the VM travels.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MigrationMode {
    /// The guest keeps running while its memory is copied.
    #[default]
    Live,
    /// The guest does not run during the move.
    Offline,
}

/// What the controller has observed and done.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineMigrationStatus {
    /// Where the migration stands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The node the VM was found on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_node: Option<String>,
    /// The node the VM moves to (given or chosen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_node: Option<String>,
    /// When the libvirt job started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When a terminal phase was reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The VM as found in the source's inventory when scheduled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<ScheduledVm>,
    /// The policy the migration runs under: every tuning value, resolved
    /// from kvmotion's defaults, the MigrationPolicy and spec.overrides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<AppliedPolicy>,
    /// The spec generation this status describes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When each phase was entered, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phase_transition_times: Vec<PhaseTransition>,
    /// Standard conditions, one per type; reasons are listed in docs/api.md.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Live progress of the memory and disk transfer, updated about once a
    /// second while Migrating.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<MigrationProgress>,
    /// Figures of a finished migration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<MigrationResult>,
    /// How the source agent predicted the move would go, from the guest's
    /// dirty rate and the link's rate, and the strategy it chose; compare
    /// with `result` once it ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction: Option<MigrationPrediction>,
}

/// The VM a migration moves, as found when it was scheduled.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledVm {
    /// The libvirt domain name.
    pub name: String,
    /// The libvirt domain UUID.
    pub uuid: String,
    /// Guest memory, in bytes.
    pub memory_bytes: u64,
}

/// The resolved policy of a migration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppliedPolicy {
    /// The MigrationPolicy used (named, or the default one); empty when
    /// only kvmotion's built-in defaults apply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Every tuning value the agents apply.
    pub tuning: crate::agent::ResolvedTuning,
    /// Concurrency limits of that policy.
    pub concurrency: crate::policy::ConcurrencyLimits,
}

/// The time a phase was entered.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhaseTransition {
    /// The phase entered.
    pub phase: Phase,
    /// When it was entered.
    pub time: Time,
}

/// Progress of the running libvirt job.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationProgress {
    /// Percent done (0-100); never goes backwards.
    #[schemars(range(min = 0, max = 100))]
    pub percent: u8,
    /// Bytes to transfer in total (memory plus copied disks), as libvirt currently estimates.
    pub data_total_bytes: u64,
    /// Bytes transferred so far.
    pub data_processed_bytes: u64,
    /// Bytes still to transfer.
    pub data_remaining_bytes: u64,
    /// Pre-copy pass over guest memory (1 is the first full pass).
    pub memory_iteration: u64,
    /// Rate at which the guest dirties memory, in bytes per second.
    pub dirty_rate_bytes_per_second: u64,
    /// Current transfer rate, in bytes per second.
    pub throughput_bytes_per_second: u64,
    /// Transfer mode right now.
    pub mode: TransferMode,
    /// How much auto-converge throttles the guest's vCPUs, in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub auto_converge_throttle: Option<u8>,
    /// Estimated seconds to completion, when it can be estimated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
}

/// How memory is being moved.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TransferMode {
    /// The guest runs on the source while memory is copied.
    #[default]
    PreCopy,
    /// The guest runs on the target and pulls the remaining pages.
    PostCopy,
    /// The guest is paused while the rest is copied.
    Paused,
    /// Post-copy lost its link: the guest is paused, its newest memory
    /// split between the two nodes until the move resumes.
    PostCopyPaused,
}

/// Figures of a finished migration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationResult {
    /// Wall time of the libvirt job, in milliseconds.
    pub duration_ms: u64,
    /// How long the guest was paused at switch-over, in milliseconds.
    pub downtime_ms: u64,
    /// Bytes sent over the network.
    pub data_transferred_bytes: u64,
    /// How many times post-copy lost its link and the move was resumed
    /// (by the agent, or by QEMU's own stream once the link returned).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub post_copy_recoveries: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// How a live move was predicted to go and what was chosen from it: by the
/// controller in Prechecking, from the dirty rate the source agent sampled
/// in the background and the link's rate, or else by the source agent a
/// second into the move, from the rate it measured as the move started and
/// the link's rate seen in that second; see docs/prediction.md.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationPrediction {
    /// What was chosen.
    pub strategy: Strategy,
    /// Why, for a person: the rates and what they imply.
    pub reason: String,
    /// How fast the guest dirtied its memory, in bytes per second.
    pub dirty_rate_bytes_per_second: u64,
    /// How fast the link moved the data, in bytes per second.
    pub link_bytes_per_second: u64,
    /// Passes plain pre-copy would take; absent when it would not converge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_copy_passes: Option<u32>,
    /// Predicted wall time of the libvirt job under the chosen strategy, in
    /// milliseconds (compare `result.durationMs`); absent when refused,
    /// or when a move that cannot converge has no timeout to end it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Predicted downtime under the chosen strategy, in milliseconds;
    /// absent when refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// Of `durationMs`, what the source node's moves cost besides their
    /// data, as its agent measured them (start-up and finish), in
    /// milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_ms: Option<u64>,
    /// Milliseconds into the job when the prediction was made (0 when
    /// made before the move).
    pub made_after_ms: u64,
    /// Made in Prechecking, before the move, from the dirty rate the
    /// source agent sampled in the background and the link's rate; the
    /// move then follows the strategy from its start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub before_move: bool,
}

impl MigrationPrediction {
    /// What the prediction counted for the data: its duration less the
    /// node's start-up and finish, in milliseconds; the source agent
    /// measures its node's finish against it.
    pub fn transfer_ms(&self) -> Option<u64> {
        Some(self.duration_ms?.saturating_sub(self.setup_ms?))
    }
}

/// How a live move converges, as chosen from the prediction.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Strategy {
    /// Pre-copy converges by itself.
    PreCopy,
    /// Pre-copy cannot converge: switch to post-copy at once instead of
    /// sending a first pass only to send it again.
    PostCopyAtOnce,
    /// Pre-copy cannot converge and post-copy is not allowed: auto-converge
    /// throttles the guest until it does.
    AutoConverge,
    /// Pre-copy cannot converge and the policy pauses the guest at its
    /// timeout: the move pauses it once the first pass is sent.
    PauseAfterFirstPass,
    /// Nothing the policy allows converges: the move is aborted at once,
    /// the VM keeps running on the source.
    Refuse,
}

impl Strategy {
    /// Its name in status, events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::PreCopy => "PreCopy",
            Strategy::PostCopyAtOnce => "PostCopyAtOnce",
            Strategy::AutoConverge => "AutoConverge",
            Strategy::PauseAfterFirstPass => "PauseAfterFirstPass",
            Strategy::Refuse => "Refuse",
        }
    }
}
