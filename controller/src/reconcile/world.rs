//! The cluster as one reconcile sees it: inventories, policies, agent
//! heartbeats and a summary of every other migration, taken from the
//! controller's watch caches. Built without I/O, so decisions stay pure.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::DynamicObject;
use kvmotion_api::Phase;
use kvmotion_api::hypervisor::Hypervisor;
use kvmotion_api::policy::MigrationPolicy;
use serde::Deserialize;

/// Prefix of the agents' heartbeat Leases (`kvmotion-agent-<node>`).
pub const AGENT_LEASE_PREFIX: &str = "kvmotion-agent-";

/// Everything outside the migration that decisions depend on.
#[derive(Debug, Clone, Default)]
pub struct World {
    /// Every Hypervisor.
    pub hypervisors: Vec<Arc<Hypervisor>>,
    /// Every MigrationPolicy.
    pub policies: Vec<Arc<MigrationPolicy>>,
    /// Last heartbeat of each node's agent.
    pub heartbeats: BTreeMap<String, Timestamp>,
    /// Every other migration, summarized.
    pub flights: Vec<Arc<Flight>>,
    /// Kubernetes Nodes that are cordoned.
    pub cordoned: BTreeSet<String>,
    /// Nodes an active NodeEvacuation is emptying.
    pub evacuating: BTreeSet<String>,
}

/// What concurrency and uniqueness need to know about one migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flight {
    /// Object UID.
    pub uid: String,
    /// Object name.
    pub name: String,
    /// Creation time (queue order).
    pub created: Timestamp,
    /// Phase (None: not accepted yet).
    pub phase: Option<Phase>,
    /// The VM's name, when known.
    pub vm_name: Option<String>,
    /// The VM's UUID, when known.
    pub vm_uuid: Option<String>,
    /// Source node, when known.
    pub source: Option<String>,
    /// Target node, when known.
    pub target: Option<String>,
    /// The VM's memory, once scheduled: what it will use on the target.
    pub memory_bytes: Option<u64>,
    /// Created by a NodeEvacuation: queued ahead of users' migrations, as
    /// the node is to be emptied for maintenance.
    pub evacuation: bool,
}

impl Flight {
    /// Its place in the queue for capacity: evacuations first, then by
    /// creation, then by name.
    pub fn queue_key(&self) -> (bool, Timestamp, &str) {
        (!self.evacuation, self.created, &self.name)
    }

    /// True while the migration holds capacity (Scheduling to Finalizing).
    pub fn is_active(&self) -> bool {
        match self.phase {
            Some(Phase::Scheduling)
            | Some(Phase::Prechecking)
            | Some(Phase::Preparing)
            | Some(Phase::Migrating)
            | Some(Phase::Finalizing) => true,
            None
            | Some(Phase::Pending)
            | Some(Phase::Succeeded)
            | Some(Phase::Failed)
            | Some(Phase::Cancelled) => false,
        }
    }

    /// True while it waits for capacity.
    pub fn is_waiting(&self) -> bool {
        matches!(self.phase, None | Some(Phase::Pending))
    }

    /// Whether both name the same VM: by UUID when both know it, else by
    /// name (names are unique per node; the source disambiguates).
    pub fn same_vm(&self, other: &Flight) -> bool {
        match (&self.vm_uuid, &other.vm_uuid) {
            (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
            _ => {
                self.vm_name.is_some()
                    && self.vm_name == other.vm_name
                    && (self.source.is_none()
                        || other.source.is_none()
                        || self.source == other.source)
            }
        }
    }

    /// The identity part of the observed migration in `phase`; the VM and
    /// nodes are filled in by the caller.
    pub fn of_observed(obs: &super::observe::Observed, phase: Option<Phase>) -> Flight {
        Flight {
            uid: obs.uid.clone(),
            name: obs.name.clone(),
            created: obs.created,
            phase,
            vm_name: None,
            vm_uuid: None,
            source: None,
            target: None,
            memory_bytes: None,
            evacuation: obs.evacuation,
        }
    }

    /// Summarizes a stored migration. Runs over every migration on every
    /// reconcile, so it reads the few fields it needs in place instead of
    /// deserializing spec and status (conditions, progress) whole.
    pub fn of(obj: &DynamicObject) -> Flight {
        let text = |pointer: &str| {
            obj.data
                .pointer(pointer)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let either = |status: &str, spec: &str| text(status).or_else(|| text(spec));
        Flight {
            uid: obj.metadata.uid.clone().unwrap_or_default(),
            name: obj.metadata.name.clone().unwrap_or_default(),
            created: created(&obj.metadata),
            phase: obj
                .data
                .pointer("/status/phase")
                .and_then(|p| Phase::deserialize(p).ok()),
            vm_name: either("/status/vm/name", "/spec/vm/name"),
            vm_uuid: either("/status/vm/uuid", "/spec/vm/uuid"),
            source: either("/status/sourceNode", "/spec/sourceNode"),
            target: either("/status/targetNode", "/spec/targetNode"),
            memory_bytes: obj
                .data
                .pointer("/status/vm/memoryBytes")
                .and_then(|v| v.as_u64()),
            evacuation: from_evacuation(&obj.metadata),
        }
    }
}

/// Whether a NodeEvacuation created the object (it carries its label).
pub fn from_evacuation(meta: &kube::api::ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .is_some_and(|l| l.contains_key(kvmotion_api::evacuation::EVACUATION_LABEL))
}

/// When an object was created (the epoch when the API server has not said).
pub fn created(meta: &kube::api::ObjectMeta) -> Timestamp {
    meta.creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Whether decisions in `phase` read the other migrations (capacity,
/// inbound counts, another migration of the same VM).
pub fn needs_flights(phase: Option<Phase>) -> bool {
    match phase {
        None
        | Some(Phase::Pending)
        | Some(Phase::Scheduling)
        | Some(Phase::Prechecking)
        | Some(Phase::Preparing) => true,
        Some(Phase::Migrating)
        | Some(Phase::Finalizing)
        | Some(Phase::Succeeded)
        | Some(Phase::Failed)
        | Some(Phase::Cancelled) => false,
    }
}

/// Whether an evacuation can still act: neither ended nor being deleted.
pub fn evacuation_active(e: &kvmotion_api::evacuation::NodeEvacuation) -> bool {
    e.metadata.deletion_timestamp.is_none()
        && e.status
            .as_ref()
            .and_then(|s| s.phase)
            .is_none_or(|p| !p.is_terminal())
}

/// The nodes being emptied: those of every active NodeEvacuation that is
/// not a dry run (a what-if moves nothing, so its node can still take VMs).
pub fn evacuating<'a>(
    evacuations: impl IntoIterator<Item = &'a kvmotion_api::evacuation::NodeEvacuation>,
) -> BTreeSet<String> {
    evacuations
        .into_iter()
        .filter(|e| !e.spec.dry_run && evacuation_active(e))
        .map(|e| e.spec.node_name.clone())
        .collect()
}

/// The Kubernetes Nodes that are cordoned (`spec.unschedulable`).
pub fn cordoned<'a>(
    nodes: impl IntoIterator<Item = &'a k8s_openapi::api::core::v1::Node>,
) -> BTreeSet<String> {
    nodes
        .into_iter()
        .filter(|n| n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true))
        .filter_map(|n| n.metadata.name.clone())
        .collect()
}

/// Heartbeats from the agents' Leases: node → last renewal.
pub fn heartbeats<'a>(leases: impl IntoIterator<Item = &'a Lease>) -> BTreeMap<String, Timestamp> {
    leases
        .into_iter()
        .filter_map(|l| {
            let node = l
                .metadata
                .name
                .as_deref()?
                .strip_prefix(AGENT_LEASE_PREFIX)?;
            let renewed = l.spec.as_ref()?.renew_time.as_ref()?.0;
            Some((node.to_string(), renewed))
        })
        .collect()
}

impl World {
    /// The Hypervisor of `node`.
    pub fn hypervisor(&self, node: &str) -> Option<&Hypervisor> {
        self.hypervisors
            .iter()
            .find(|h| h.metadata.name.as_deref() == Some(node))
            .map(|h| &**h)
    }

    /// The agent endpoint `node` publishes.
    pub fn endpoint(&self, node: &str) -> Option<String> {
        self.hypervisor(node)
            .and_then(|h| h.status.as_ref())
            .and_then(|s| s.agent_endpoint.clone())
            .filter(|e| !e.is_empty())
    }

    /// Active migrations heading to each node.
    pub fn inbound(&self, except_uid: &str) -> BTreeMap<String, u32> {
        let mut counts = BTreeMap::new();
        for f in self
            .flights
            .iter()
            .filter(|f| f.is_active() && f.uid != except_uid)
        {
            if let Some(t) = &f.target {
                *counts.entry(t.clone()).or_insert(0) += 1;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_being_evacuated_while_a_real_evacuation_of_it_is_active() {
        use kvmotion_api::evacuation::{
            EvacuationPhase, LiveImpossible, NodeEvacuation, NodeEvacuationSpec,
            NodeEvacuationStatus,
        };
        let evac = |node: &str, dry_run: bool, phase: Option<EvacuationPhase>, deleted: bool| {
            let mut e = NodeEvacuation::new(
                &format!("drain-{node}"),
                NodeEvacuationSpec {
                    node_name: node.into(),
                    dry_run,
                    policy_ref: None,
                    target_selector: None,
                    live_impossible: LiveImpossible::Fail,
                    max_parallel: None,
                },
            );
            e.status = phase.map(|p| NodeEvacuationStatus {
                phase: Some(p),
                ..Default::default()
            });
            if deleted {
                e.metadata.deletion_timestamp = Some(
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::UNIX_EPOCH),
                );
            }
            e
        };
        use EvacuationPhase as P;
        // (case, evacuation, its node counts as being evacuated)
        let cases = [
            ("new, no status yet", evac("a", false, None, false), true),
            ("planning", evac("a", false, Some(P::Planning), false), true),
            (
                "evacuating",
                evac("a", false, Some(P::Evacuating), false),
                true,
            ),
            (
                "blocked: still to be emptied",
                evac("a", false, Some(P::Blocked), false),
                true,
            ),
            (
                "a dry run moves nothing",
                evac("a", true, Some(P::Planned), false),
                false,
            ),
            (
                "completed",
                evac("a", false, Some(P::Completed), false),
                false,
            ),
            ("failed", evac("a", false, Some(P::Failed), false), false),
            (
                "cancelled",
                evac("a", false, Some(P::Cancelled), false),
                false,
            ),
            (
                "being deleted",
                evac("a", false, Some(P::Evacuating), true),
                false,
            ),
        ];
        for (case, e, want) in cases {
            assert_eq!(evacuating([&e]).contains("a"), want, "{case}");
        }
    }

    fn flight(uuid: Option<&str>, name: Option<&str>, source: Option<&str>) -> Flight {
        Flight {
            uid: "u".into(),
            name: "m".into(),
            created: Timestamp::UNIX_EPOCH,
            phase: Some(Phase::Migrating),
            vm_name: name.map(Into::into),
            vm_uuid: uuid.map(Into::into),
            source: source.map(Into::into),
            target: None,
            memory_bytes: None,
            evacuation: false,
        }
    }

    #[test]
    fn the_same_vm_is_recognized_by_uuid_then_by_name_on_the_same_source() {
        let cases = [
            (
                "uuids agree",
                flight(Some("AB"), None, None),
                flight(Some("ab"), Some("x"), None),
                true,
            ),
            (
                "uuids differ",
                flight(Some("a"), Some("web"), None),
                flight(Some("b"), Some("web"), None),
                false,
            ),
            (
                "names, one source unknown",
                flight(None, Some("web"), None),
                flight(Some("b"), Some("web"), Some("n1")),
                true,
            ),
            (
                "names on different sources",
                flight(None, Some("web"), Some("n1")),
                flight(None, Some("web"), Some("n2")),
                false,
            ),
            (
                "no name",
                flight(None, None, None),
                flight(None, None, None),
                false,
            ),
        ];
        for (name, a, b, want) in cases {
            assert_eq!(a.same_vm(&b), want, "{name}");
        }
    }

    #[test]
    fn only_agent_leases_are_heartbeats() {
        let lease = |name: &str, secs: i64| Lease {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                renew_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                    Timestamp::from_second(secs).unwrap(),
                )),
                ..Default::default()
            }),
        };
        let got = heartbeats(&[
            lease("kvmotion-agent-node-a", 10),
            lease("kvmotion-controller", 20),
        ]);
        assert_eq!(got.len(), 1);
        assert_eq!(got["node-a"], Timestamp::from_second(10).unwrap());
    }
}
