//! `NodeEvacuation`: empty one hypervisor node of its VMs, planned as a
//! whole before anything moves.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::migration::{MigrationMode, PolicyRef};
use crate::phase::Phase;
use crate::schema::DNS1123_SUBDOMAIN;

/// Label on the migrations an evacuation creates: its name.
pub const EVACUATION_LABEL: &str = "kvmotion.io/evacuation";

/// Moves every VM off one node through ordinary VirtualMachineMigrations.
/// The controller first places all of them against the free capacity of
/// the other nodes (the plan, in status); nothing moves unless every VM has
/// a place. Deleting the evacuation cancels the moves that have not started.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kvmotion.io",
    version = "v1alpha1",
    kind = "NodeEvacuation",
    plural = "nodeevacuations",
    shortname = "nevac",
    category = "kvmotion",
    status = "NodeEvacuationStatus",
    derive = "PartialEq",
    doc = "Empties one hypervisor node of its VMs: a plan for all of them first, then one migration per VM.",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.nodeName"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Moved", type_ = "integer", json_path = ".status.counts.moved"),
    printcolumn(name = "Total", type_ = "integer", json_path = ".status.counts.total"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::evacuation_spec_immutable)]
#[schemars(transform = evacuation_spec_rules)]
pub struct NodeEvacuationSpec {
    /// The node to empty: its Kubernetes Node and Hypervisor name.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS1123_SUBDOMAIN))]
    pub node_name: String,

    /// Plan only: the evacuation stops at Planned and moves nothing. May be
    /// turned off later to carry the plan out (re-planned at that moment);
    /// it cannot be turned on again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,

    /// The MigrationPolicy every move runs under. When empty, the policy
    /// marked isDefault applies, else kvmotion's built-in defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_ref: Option<PolicyRef>,

    /// Restricts the targets to Hypervisors whose labels match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_selector: Option<LabelSelector>,

    /// What to do with a VM that cannot move live (a shut-off VM, or one
    /// whose state live migration refuses): Fail blocks the evacuation
    /// listing it; Offline moves it with an offline migration.
    #[serde(default)]
    pub live_impossible: LiveImpossible,

    /// The most of this evacuation's moves in flight at once. The policy's
    /// cluster, outbound and inbound limits still apply; this only lowers
    /// them. Unset: as many as those limits allow.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub max_parallel: Option<u32>,
}

fn evacuation_spec_rules(schema: &mut schemars::Schema) {
    crate::schema::push_rule(
        schema,
        "!(has(self.dryRun) && self.dryRun) || (has(oldSelf.dryRun) && oldSelf.dryRun)",
        "spec.dryRun cannot be turned on once the evacuation may move VMs; delete it and create a dry run",
        Some(".dryRun"),
    );
}

/// What an evacuation does with a VM that cannot move live.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum LiveImpossible {
    /// The VM cannot be placed: the evacuation is Blocked, naming it.
    #[default]
    Fail,
    /// The VM moves offline (a running one is paused for its move).
    Offline,
}

/// Where an evacuation stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum EvacuationPhase {
    /// Placing every VM of the node.
    Planning,
    /// A dry run's plan is ready; nothing moves.
    Planned,
    /// The moves run.
    Evacuating,
    /// The node's inventory lists no running VM.
    Completed,
    /// A VM cannot be placed (listed in status.unplaceable); nothing was
    /// started. Re-planned when the cluster changes.
    Blocked,
    /// Moves failed past their retries; status lists what is left.
    Failed,
    /// Deleted, or the node uncordoned, before it finished.
    Cancelled,
}

impl EvacuationPhase {
    /// The name as written in status (and used as a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            EvacuationPhase::Planning => "Planning",
            EvacuationPhase::Planned => "Planned",
            EvacuationPhase::Evacuating => "Evacuating",
            EvacuationPhase::Completed => "Completed",
            EvacuationPhase::Blocked => "Blocked",
            EvacuationPhase::Failed => "Failed",
            EvacuationPhase::Cancelled => "Cancelled",
        }
    }

    /// True once the evacuation can no longer change.
    pub fn is_terminal(self) -> bool {
        match self {
            EvacuationPhase::Completed | EvacuationPhase::Failed | EvacuationPhase::Cancelled => {
                true
            }
            EvacuationPhase::Planning
            | EvacuationPhase::Planned
            | EvacuationPhase::Evacuating
            | EvacuationPhase::Blocked => false,
        }
    }
}

/// What the controller planned and did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeEvacuationStatus {
    /// Where the evacuation stands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<EvacuationPhase>,
    /// One entry per VM of the node, largest first: where it goes and how
    /// its move stands.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<PlannedMove>,
    /// The VMs no target can take, each with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unplaceable: Vec<UnplaceableVm>,
    /// Tallies of the plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counts: Option<EvacuationCounts>,
    /// When the moves started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When a terminal phase was reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The spec generation this status describes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions, one per type; reasons are listed in docs/api.md.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// One VM's place in the plan.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedMove {
    /// The libvirt domain name.
    pub vm: String,
    /// The libvirt domain UUID.
    pub uuid: String,
    /// Its memory, bytes.
    pub memory_bytes: u64,
    /// How it moves.
    pub mode: MigrationMode,
    /// The node it goes to.
    pub target_node: String,
    /// Its VirtualMachineMigration, once created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration: Option<String>,
    /// That migration's phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration_phase: Option<Phase>,
    /// Moves tried for this VM (a failed one is re-planned a bounded
    /// number of times).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// Why its last move failed, or why it could not be dispatched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A VM that no target can take.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnplaceableVm {
    /// The libvirt domain name.
    pub vm: String,
    /// The libvirt domain UUID.
    pub uuid: String,
    /// A condition reason (InsufficientMemory, VMNotRunning, ...).
    pub reason: String,
    /// What stops it, node by node.
    pub message: String,
}

/// Tallies of an evacuation's plan.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EvacuationCounts {
    /// VMs on the node when planned.
    pub total: u32,
    /// Moved off (their migration Succeeded).
    pub moved: u32,
    /// Moves in flight.
    pub moving: u32,
    /// Waiting for their move to start.
    pub pending: u32,
    /// Failed past their retries.
    pub failed: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_phase_is_written_as_its_name() {
        use EvacuationPhase::*;
        for phase in [
            Planning, Planned, Evacuating, Completed, Blocked, Failed, Cancelled,
        ] {
            assert_eq!(serde_json::to_value(phase).unwrap(), phase.as_str());
        }
    }
}
