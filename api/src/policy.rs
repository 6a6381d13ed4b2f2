//! `MigrationPolicy`: cluster-wide defaults for how migrations run and how
//! many run at once.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::tuning::MigrationTuning;

/// Defaults for migrations that name this policy (or for all of them, when
/// marked isDefault). A migration's own overrides win over these.
// Repeated `type_ = …` inside separate printcolumn(...) entries is not a
// duplicated attribute; clippy cannot see into kube's helper attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kvmotion.io",
    version = "v1alpha1",
    kind = "MigrationPolicy",
    plural = "migrationpolicies",
    shortname = "vmmp",
    category = "kvmotion",
    derive = "PartialEq",
    derive = "Default",
    doc = "Defaults for how VirtualMachineMigrations run and how many run at once.",
    printcolumn(name = "Default", type_ = "boolean", json_path = ".spec.isDefault"),
    printcolumn(
        name = "Bandwidth",
        type_ = "integer",
        json_path = ".spec.tuning.bandwidthMiBps"
    ),
    printcolumn(
        name = "OnTimeout",
        type_ = "string",
        json_path = ".spec.tuning.onTimeout"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MigrationPolicySpec {
    /// Apply this policy to migrations that name no policy. At most one
    /// policy should be the default; when several are, the controller uses
    /// the oldest and says so in an Event.
    #[serde(default)]
    pub is_default: bool,

    /// How migrations run; unset fields take kvmotion's built-in defaults.
    #[serde(default)]
    pub tuning: MigrationTuning,

    /// How many migrations may run at once.
    #[serde(default)]
    pub concurrency: ConcurrencyLimits,
}

/// Limits on migrations in flight (Scheduling through Finalizing).
/// Migrations over a limit wait in Pending and start in queue order
/// (evacuations first, then by creation); one that waits for a full node
/// does not hold back those bound for other nodes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConcurrencyLimits {
    /// In the whole cluster.
    #[serde(default = "default_per_cluster")]
    #[schemars(range(min = 1, max = 10_000))]
    pub per_cluster: u32,
    /// Leaving one node.
    #[serde(default = "default_per_node")]
    #[schemars(range(min = 1, max = 1_000))]
    pub outbound_per_node: u32,
    /// Arriving at one node.
    #[serde(default = "default_per_node")]
    #[schemars(range(min = 1, max = 1_000))]
    pub inbound_per_node: u32,
}

fn default_per_cluster() -> u32 {
    5
}

fn default_per_node() -> u32 {
    2
}

impl ConcurrencyLimits {
    /// No limit at all: what a wake-up uses when any migration may start.
    pub fn unlimited() -> Self {
        Self {
            per_cluster: u32::MAX,
            outbound_per_node: u32::MAX,
            inbound_per_node: u32::MAX,
        }
    }
}

impl Default for ConcurrencyLimits {
    fn default() -> Self {
        Self {
            per_cluster: default_per_cluster(),
            outbound_per_node: default_per_node(),
            inbound_per_node: default_per_node(),
        }
    }
}
