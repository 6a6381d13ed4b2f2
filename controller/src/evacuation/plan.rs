//! The evacuation plan: every VM of a node placed against one ledger of the
//! other nodes' free memory before anything moves. Pure: the caller gathers
//! inventories, cordons, heartbeats and in-flight reservations; time is
//! passed in.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kvmotion_api::ConditionReason;
use kvmotion_api::evacuation::{LiveImpossible, PlannedMove, UnplaceableVm};
use kvmotion_api::hypervisor::{DomainInfo, DomainState, Hypervisor};
use kvmotion_api::migration::MigrationMode;
use kvmotion_api::tuning::StorageMode;

use crate::precheck;
use crate::schedule::{self, Exclusion};

/// What a plan is made from.
pub struct Inputs<'a> {
    /// The node being emptied.
    pub source: &'a Hypervisor,
    /// Every Hypervisor.
    pub hypervisors: &'a [Arc<Hypervisor>],
    /// Kubernetes Nodes that are cordoned (`spec.unschedulable`).
    pub cordoned: &'a BTreeSet<String>,
    /// Nodes with an evacuation of their own under way.
    pub evacuating: &'a BTreeSet<String>,
    /// Memory already promised to each node by migrations in flight toward
    /// it (not yet used there, so not yet missing from its free memory).
    pub reserved: &'a BTreeMap<String, u64>,
    /// Last heartbeat of each node's agent.
    pub heartbeats: &'a BTreeMap<String, Timestamp>,
    /// The evacuation's targetSelector.
    pub selector: Option<&'a LabelSelector>,
    /// What to do with a VM that cannot move live.
    pub live_impossible: LiveImpossible,
    /// The policy's storage mode.
    pub storage: StorageMode,
    /// Now.
    pub now: Timestamp,
    /// A heartbeat older than this makes a node ineligible.
    pub heartbeat_max_age: Duration,
}

/// The placement of every VM, or why some cannot be placed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Placed VMs, largest first.
    pub moves: Vec<PlannedMove>,
    /// VMs no target can take.
    pub unplaceable: Vec<UnplaceableVm>,
    /// Shut-off VMs left where they are (they do not run, so the node can
    /// still be maintained), by name.
    pub left: Vec<String>,
}

/// How one VM would travel, or why it cannot.
enum Travel {
    Moves(MigrationMode),
    Stays,
    Refused(ConditionReason, String),
}

fn travel(d: &DomainInfo, live_impossible: LiveImpossible, storage: StorageMode) -> Travel {
    use kvmotion_api::movable::how;
    let mode = match (
        how(MigrationMode::Live, d.state, d.persistent),
        live_impossible,
    ) {
        (Ok(_), _) => MigrationMode::Live,
        (Err(_), LiveImpossible::Offline)
            if how(MigrationMode::Offline, d.state, d.persistent).is_ok() =>
        {
            MigrationMode::Offline
        }
        // A guest that does not run keeps no one from maintaining the node.
        (Err(_), LiveImpossible::Fail) if d.state == DomainState::ShutOff => return Travel::Stays,
        (Err(no), LiveImpossible::Fail | LiveImpossible::Offline) => {
            let reason = if kvmotion_api::movable::settling(d.state) {
                ConditionReason::VMStateSettling
            } else {
                ConditionReason::VMNotRunning
            };
            return Travel::Refused(
                reason,
                format!("{} is {:?}: {}", d.name, d.state, no.needed),
            );
        }
    };
    match precheck::disk_plan(d, storage) {
        Ok(_) => Travel::Moves(mode),
        Err(r) => Travel::Refused(r.reason, r.message),
    }
}

/// Places every VM of the source: largest first, each on the eligible node
/// with the most memory left in the ledger (then by name, for a stable
/// plan).
pub fn plan(inp: &Inputs) -> Plan {
    // Reasons that do not depend on the VM, once per node. Memory is the
    // ledger's, and the inbound limit is for dispatch to wait on.
    let static_inputs = schedule::Inputs {
        vm_memory_bytes: 0,
        source: inp.source,
        hypervisors: inp.hypervisors,
        heartbeats: inp.heartbeats,
        cordoned: inp.cordoned,
        evacuating: inp.evacuating,
        inbound: &BTreeMap::new(),
        inbound_limit: u32::MAX,
        selector: inp.selector,
        now: inp.now,
        heartbeat_max_age: inp.heartbeat_max_age,
    };
    let mut ledger: BTreeMap<String, u64> = BTreeMap::new();
    let mut excluded: Vec<String> = Vec::new();
    for hv in inp.hypervisors {
        let name = hv.metadata.name.clone().unwrap_or_default();
        let why = match schedule::exclusion(&static_inputs, hv) {
            Some(Exclusion::SameNode) => continue,
            Some(e) => Some(e.describe()),
            None => None,
        };
        match why {
            Some(w) => excluded.push(format!("{name}: {w}")),
            None => {
                let free = hv
                    .status
                    .as_ref()
                    .and_then(|s| s.memory.as_ref())
                    .map_or(0, |m| m.free_bytes);
                let promised = inp.reserved.get(&name).copied().unwrap_or(0);
                ledger.insert(name, free.saturating_sub(promised));
            }
        }
    }
    let mut domains: Vec<&DomainInfo> = inp
        .source
        .status
        .iter()
        .flat_map(|s| s.domains.iter())
        .collect();
    domains.sort_by(|a, b| {
        b.memory_bytes
            .cmp(&a.memory_bytes)
            .then(a.name.cmp(&b.name))
    });
    let mut out = Plan::default();
    for d in domains {
        let refuse = |reason: ConditionReason, message: String| UnplaceableVm {
            vm: d.name.clone(),
            uuid: d.uuid.clone(),
            reason: reason.as_str().into(),
            message,
        };
        let mode = match travel(d, inp.live_impossible, inp.storage) {
            Travel::Moves(m) => m,
            Travel::Stays => {
                out.left.push(d.name.clone());
                continue;
            }
            Travel::Refused(r, m) => {
                out.unplaceable.push(refuse(r, m));
                continue;
            }
        };
        let best = ledger
            .iter()
            .filter(|(_, free)| **free >= d.memory_bytes)
            .max_by(|(an, a), (bn, b)| a.cmp(b).then_with(|| bn.cmp(an)))
            .map(|(n, _)| n.clone());
        let Some(target) = best else {
            let mut why: Vec<String> = ledger
                .iter()
                .map(|(n, free)| format!("{n}: only {} MiB left in the plan", free >> 20))
                .collect();
            why.extend(excluded.iter().cloned());
            let why = if why.is_empty() {
                "there is no other Hypervisor".to_string()
            } else {
                why.join("; ")
            };
            let (reason, what) = if ledger.is_empty() {
                (ConditionReason::NoTargetAvailable, "no node can take VMs")
            } else {
                (
                    ConditionReason::InsufficientMemory,
                    "no node has the memory left",
                )
            };
            out.unplaceable.push(refuse(
                reason,
                format!(
                    "{} needs {} MiB and {what}: {why}",
                    d.name,
                    d.memory_bytes >> 20
                ),
            ));
            continue;
        };
        if let Some(free) = ledger.get_mut(&target) {
            *free -= d.memory_bytes;
        }
        out.moves.push(PlannedMove {
            vm: d.name.clone(),
            uuid: d.uuid.clone(),
            memory_bytes: d.memory_bytes,
            mode,
            target_node: target,
            migration: None,
            migration_phase: None,
            attempts: 0,
            message: None,
        });
    }
    out
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
