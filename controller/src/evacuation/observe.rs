//! Observe: what one evacuation's decision reads, gathered from the watch
//! caches into `decide::Observed`. Pure over the snapshot it is given, so
//! the gathering is tested without a cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::DynamicObject;
use kvmotion_api::Phase;
use kvmotion_api::evacuation::{NodeEvacuation, UnplaceableVm};
use kvmotion_api::hypervisor::{DomainState, Hypervisor};
use kvmotion_api::policy::MigrationPolicy;
use serde::Deserialize;

use super::decide::{Observed, Owned};
use super::plan::{self, Inputs, Plan};
use crate::policy::{self, PolicyProblem};
use crate::reconcile::world::{self, Flight};

/// The caches, as one reconcile reads them.
pub struct Snapshot<'a> {
    /// Every NodeEvacuation.
    pub evacuations: &'a [Arc<NodeEvacuation>],
    /// Every migration.
    pub migrations: &'a [Arc<DynamicObject>],
    /// Every Hypervisor.
    pub hypervisors: &'a [Arc<Hypervisor>],
    /// Every MigrationPolicy.
    pub policies: &'a [Arc<MigrationPolicy>],
    /// Last heartbeat of each node's agent.
    pub heartbeats: &'a BTreeMap<String, Timestamp>,
    /// Cordoned Kubernetes Nodes.
    pub cordoned: &'a BTreeSet<String>,
}

/// Whether `obj` is owned by the evacuation with `uid`.
fn owned_by(obj: &DynamicObject, uid: &str) -> bool {
    obj.metadata
        .owner_references
        .as_ref()
        .is_some_and(|refs| refs.iter().any(|r| r.uid == uid))
}

/// A migration's phase and, once it ended, its Completed message.
fn owned(obj: &DynamicObject) -> Owned {
    let phase = obj
        .data
        .pointer("/status/phase")
        .and_then(|p| Phase::deserialize(p).ok());
    let message = obj
        .data
        .pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .and_then(|cs| {
            cs.iter()
                .find(|c| c["type"] == "Completed" && c["status"] == "False")
        })
        .and_then(|c| c["message"].as_str())
        .map(str::to_string);
    Owned { phase, message }
}

/// Whether a domain in `state` keeps the node from being maintained: any
/// QEMU process, paused or crashed included.
pub fn occupies(state: DomainState) -> bool {
    match state {
        DomainState::ShutOff => false,
        DomainState::Running
        | DomainState::Blocked
        | DomainState::Paused
        | DomainState::ShuttingDown
        | DomainState::Crashed
        | DomainState::Suspended
        | DomainState::Unknown => true,
    }
}

/// The VMs of a node's inventory that keep it from being maintained.
pub fn occupying(h: &Hypervisor) -> Vec<String> {
    h.status
        .iter()
        .flat_map(|s| s.domains.iter())
        .filter(|d| occupies(d.state))
        .map(|d| d.name.clone())
        .collect()
}

/// Gathers what `decide` needs about `evac`.
pub fn observe(
    evac: &NodeEvacuation,
    deleting: bool,
    snap: &Snapshot,
    heartbeat_max_age: Duration,
    now: Timestamp,
) -> Observed {
    let name = evac.name_any();
    let uid = evac.metadata.uid.clone().unwrap_or_default();
    let node = evac.spec.node_name.as_str();
    let me = (world::created(&evac.metadata), name.clone());
    let older_active = snap
        .evacuations
        .iter()
        .filter(|o| o.spec.node_name == node && o.metadata.uid.as_deref() != Some(&uid))
        .filter(|o| world::evacuation_active(o))
        .filter(|o| (world::created(&o.metadata), o.name_any()) < me)
        .map(|o| o.name_any())
        .min();
    let mine: Vec<&Arc<DynamicObject>> = snap
        .migrations
        .iter()
        .filter(|m| owned_by(m, &uid))
        .collect();
    let migrations: BTreeMap<String, Owned> =
        mine.iter().map(|m| (m.name_any(), owned(m))).collect();
    let source = snap
        .hypervisors
        .iter()
        .find(|h| h.metadata.name.as_deref() == Some(node));
    let running_on_node = source.map(|h| occupying(h));
    let fresh = match source {
        Some(src) => fresh_plan(evac, src, &mine, snap, heartbeat_max_age, now),
        None => Plan::default(),
    };
    Observed {
        name,
        generation: evac.metadata.generation.unwrap_or(0),
        spec: evac.spec.clone(),
        status: evac.status.clone().unwrap_or_default(),
        deleting,
        older_active,
        migrations,
        running_on_node,
        fresh,
    }
}

/// A plan of the node's VMs that none of the evacuation's migrations holds
/// (one moving or one that moved it), against the memory other moves
/// already promised their targets.
fn fresh_plan(
    evac: &NodeEvacuation,
    source: &Hypervisor,
    mine: &[&Arc<DynamicObject>],
    snap: &Snapshot,
    heartbeat_max_age: Duration,
    now: Timestamp,
) -> Plan {
    let held: BTreeSet<String> = mine
        .iter()
        .map(|m| Flight::of(m))
        .filter(|f| f.is_waiting() || f.is_active() || f.phase == Some(Phase::Succeeded))
        .filter_map(|f| f.vm_uuid.or(f.vm_name))
        .map(|id| id.to_ascii_lowercase())
        .collect();
    let mut remaining = source.clone();
    if let Some(s) = remaining.status.as_mut() {
        s.domains.retain(|d| {
            !held.contains(&d.uuid.to_ascii_lowercase())
                && !held.contains(&d.name.to_ascii_lowercase())
        });
    }
    let storage = match policy::resolve(snap.policies, evac.spec.policy_ref.as_ref(), None) {
        Ok(p) => p.tuning.storage,
        Err(problem) => return no_policy(&remaining, &problem),
    };
    let mut reserved: BTreeMap<String, u64> = BTreeMap::new();
    for f in snap.migrations.iter().map(|m| Flight::of(m)) {
        if let (true, Some(target), Some(bytes)) = (f.is_active(), f.target, f.memory_bytes) {
            *reserved.entry(target).or_default() += bytes;
        }
    }
    let mut evacuating = world::evacuating(snap.evacuations.iter().map(|e| &**e));
    evacuating.remove(&evac.spec.node_name);
    plan::plan(&Inputs {
        source: &remaining,
        hypervisors: snap.hypervisors,
        cordoned: snap.cordoned,
        evacuating: &evacuating,
        reserved: &reserved,
        heartbeats: snap.heartbeats,
        selector: evac.spec.target_selector.as_ref(),
        live_impossible: evac.spec.live_impossible,
        storage,
        now,
        heartbeat_max_age,
    })
}

/// Every VM unplaceable: the policy the moves would run under is missing
/// (or cannot be used).
fn no_policy(source: &Hypervisor, problem: &PolicyProblem) -> Plan {
    let unplaceable = source
        .status
        .iter()
        .flat_map(|s| s.domains.iter())
        .filter(|d| occupies(d.state))
        .map(|d| UnplaceableVm {
            vm: d.name.clone(),
            uuid: d.uuid.clone(),
            reason: problem.reason().as_str().into(),
            message: problem.message(),
        })
        .collect();
    Plan {
        unplaceable,
        ..Plan::default()
    }
}

#[cfg(test)]
#[path = "observe_tests.rs"]
mod tests;
