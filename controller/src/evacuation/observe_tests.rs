//! Tests of what an evacuation observes from the caches.

use super::*;
use crate::fixtures::{GIB, healthy_hypervisor};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kvmotion_api::evacuation::{
    EvacuationPhase, LiveImpossible, NodeEvacuationSpec, NodeEvacuationStatus,
};
use kvmotion_api::hypervisor::DomainInfo;
use kvmotion_api::migration::PolicyRef;
use serde_json::json;

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn vm(name: &str, gib: u64, state: DomainState) -> DomainInfo {
    DomainInfo {
        name: name.into(),
        uuid: format!("{name}-0000-0000-0000-000000000000"),
        state,
        memory_bytes: gib * GIB,
        vcpus: 1,
        persistent: true,
        disks: Vec::new(),
        dirty_rate: None,
    }
}

fn evacuation(name: &str, node: &str, created_s: i64) -> NodeEvacuation {
    let mut e = NodeEvacuation::new(
        name,
        NodeEvacuationSpec {
            node_name: node.into(),
            dry_run: false,
            policy_ref: None,
            target_selector: None,
            live_impossible: LiveImpossible::Fail,
            max_parallel: None,
        },
    );
    e.metadata.uid = Some(format!("uid-{name}"));
    e.metadata.generation = Some(1);
    e.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created_s).unwrap()));
    e
}

fn ended(mut e: NodeEvacuation, phase: EvacuationPhase) -> NodeEvacuation {
    e.status = Some(NodeEvacuationStatus {
        phase: Some(phase),
        ..Default::default()
    });
    e
}

/// A migration of `vm` toward `target` in `phase`, owned by `owner` (a uid).
fn migration(
    name: &str,
    owner: Option<&str>,
    vm: &str,
    target: &str,
    phase: &str,
    gib: u64,
) -> Arc<DynamicObject> {
    let mut obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kvmotion.io/v1alpha1",
        "kind": "VirtualMachineMigration",
        "metadata": {"name": name, "uid": format!("uid-{name}")},
        "spec": {"vm": {"name": vm}, "targetNode": target},
        "status": {
            "phase": phase,
            "targetNode": target,
            "vm": {"name": vm, "uuid": format!("{vm}-0000-0000-0000-000000000000"), "memoryBytes": gib * GIB},
            "conditions": [{"type": "Completed", "status": if phase == "Failed" {"False"} else {"True"},
                "reason": "x", "message": format!("{name} ended {phase}"),
                "lastTransitionTime": "2027-01-15T08:00:00Z"}],
        },
    }))
    .unwrap();
    obj.metadata.owner_references = owner.map(|uid| {
        vec![OwnerReference {
            api_version: "kvmotion.io/v1alpha1".into(),
            kind: "NodeEvacuation".into(),
            name: "e".into(),
            uid: uid.into(),
            ..Default::default()
        }]
    });
    Arc::new(obj)
}

/// The caches, built fluently.
struct Caches {
    evacuations: Vec<Arc<NodeEvacuation>>,
    migrations: Vec<Arc<DynamicObject>>,
    hypervisors: Vec<Arc<Hypervisor>>,
    policies: Vec<Arc<MigrationPolicy>>,
    heartbeats: BTreeMap<String, Timestamp>,
    cordoned: BTreeSet<String>,
}

impl Caches {
    fn node_a_with(vms: Vec<DomainInfo>) -> Caches {
        let mut a = healthy_hypervisor("node-a", 4);
        if let Some(s) = a.status.as_mut() {
            s.domains = vms;
        }
        Caches {
            evacuations: Vec::new(),
            migrations: Vec::new(),
            hypervisors: vec![Arc::new(a)],
            policies: Vec::new(),
            heartbeats: [("node-a".to_string(), now())].into(),
            cordoned: BTreeSet::new(),
        }
    }

    fn target(mut self, name: &str, free_gib: u64) -> Caches {
        self.hypervisors
            .push(Arc::new(healthy_hypervisor(name, free_gib)));
        self.heartbeats.insert(name.into(), now());
        self
    }

    fn evacuation(mut self, e: NodeEvacuation) -> Caches {
        self.evacuations.push(Arc::new(e));
        self
    }

    fn migration(mut self, m: Arc<DynamicObject>) -> Caches {
        self.migrations.push(m);
        self
    }

    fn observe(&self, e: &NodeEvacuation) -> Observed {
        let snap = Snapshot {
            evacuations: &self.evacuations,
            migrations: &self.migrations,
            hypervisors: &self.hypervisors,
            policies: &self.policies,
            heartbeats: &self.heartbeats,
            cordoned: &self.cordoned,
        };
        observe(e, false, &snap, Duration::from_secs(40), now())
    }
}

#[test]
fn an_older_evacuation_of_the_same_node_that_still_works_is_named() {
    let me = evacuation("second", "node-a", 200);
    // (case, other evacuation, expected)
    let cases = [
        (
            "older, working",
            evacuation("first", "node-a", 100),
            Some("first"),
        ),
        ("newer", evacuation("third", "node-a", 300), None),
        (
            "older, ended",
            ended(
                evacuation("first", "node-a", 100),
                EvacuationPhase::Completed,
            ),
            None,
        ),
        ("another node", evacuation("b", "node-b", 100), None),
    ];
    for (case, other, want) in cases {
        let caches = Caches::node_a_with(Vec::new())
            .evacuation(other)
            .evacuation(me.clone());
        assert_eq!(caches.observe(&me).older_active.as_deref(), want, "{case}");
    }
}

#[test]
fn owned_migrations_are_found_by_owner_and_carry_their_failure_message() {
    let me = evacuation("e", "node-a", 100);
    let caches = Caches::node_a_with(vec![vm("web", 1, DomainState::Running)])
        .target("node-b", 8)
        .migration(migration(
            "e-web-1",
            Some("uid-e"),
            "web",
            "node-b",
            "Failed",
            1,
        ))
        .migration(migration("user-move", None, "db", "node-b", "Migrating", 1))
        .migration(migration(
            "other-evac",
            Some("uid-x"),
            "x",
            "node-b",
            "Pending",
            1,
        ));
    let obs = caches.observe(&me);
    assert_eq!(
        obs.migrations.keys().collect::<Vec<_>>(),
        ["e-web-1"],
        "only the evacuation's own"
    );
    let web = &obs.migrations["e-web-1"];
    assert_eq!(web.phase, Some(Phase::Failed));
    assert_eq!(web.message.as_deref(), Some("e-web-1 ended Failed"));
    // A failed move no longer holds its VM: it is planned again.
    assert_eq!(obs.fresh.moves.len(), 1);
    assert_eq!(obs.fresh.moves[0].vm, "web");
}

#[test]
fn vms_that_a_migration_of_the_evacuation_holds_are_not_planned_again() {
    let me = evacuation("e", "node-a", 100);
    let caches = Caches::node_a_with(vec![
        vm("moving", 1, DomainState::Running),
        vm("moved", 1, DomainState::Running),
        vm("free", 1, DomainState::Running),
    ])
    .target("node-b", 8)
    .migration(migration(
        "e-moving-1",
        Some("uid-e"),
        "moving",
        "node-b",
        "Migrating",
        1,
    ))
    .migration(migration(
        "e-moved-1",
        Some("uid-e"),
        "moved",
        "node-b",
        "Succeeded",
        1,
    ));
    let obs = caches.observe(&me);
    let planned: Vec<&str> = obs.fresh.moves.iter().map(|m| m.vm.as_str()).collect();
    assert_eq!(planned, ["free"]);
    // The inventory still lists the moved one (it trails): it occupies.
    let mut running = obs.running_on_node.clone().unwrap();
    running.sort();
    assert_eq!(running, ["free", "moved", "moving"]);
}

#[test]
fn memory_promised_to_a_target_by_moves_in_flight_is_not_planned_twice() {
    let me = evacuation("e", "node-a", 100);
    // node-b has 8 GiB free but a user's 6 GiB move is heading there.
    let caches = Caches::node_a_with(vec![vm("big", 4, DomainState::Running)])
        .target("node-b", 8)
        .target("node-c", 5)
        .migration(migration(
            "user-move",
            None,
            "elsewhere",
            "node-b",
            "Migrating",
            6,
        ));
    let obs = caches.observe(&me);
    assert_eq!(obs.fresh.moves[0].target_node, "node-c");
}

#[test]
fn a_missing_policy_makes_every_running_vm_unplaceable_saying_so() {
    let mut me = evacuation("e", "node-a", 100);
    me.spec.policy_ref = Some(PolicyRef {
        name: "gone".into(),
    });
    let caches = Caches::node_a_with(vec![
        vm("web", 1, DomainState::Running),
        vm("off", 1, DomainState::ShutOff),
    ])
    .target("node-b", 8);
    let obs = caches.observe(&me);
    assert!(obs.fresh.moves.is_empty());
    assert_eq!(obs.fresh.unplaceable.len(), 1);
    assert_eq!(obs.fresh.unplaceable[0].reason, "PolicyNotFound");
    assert!(
        obs.fresh.unplaceable[0].message.contains("gone"),
        "{:?}",
        obs.fresh.unplaceable
    );
}

#[test]
fn a_node_without_a_hypervisor_has_no_inventory() {
    let me = evacuation("e", "node-z", 100);
    let obs = Caches::node_a_with(Vec::new()).observe(&me);
    assert_eq!(obs.running_on_node, None);
    assert_eq!(obs.fresh, Plan::default());
}

#[test]
fn only_shut_off_domains_leave_a_node_free_to_maintain() {
    for state in DomainState::ALL {
        assert_eq!(occupies(state), state != DomainState::ShutOff, "{state:?}");
    }
}
