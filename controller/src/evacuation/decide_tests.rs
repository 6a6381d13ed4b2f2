//! Table-driven tests of the evacuation's decisions.

use super::*;
use kvmotion_api::evacuation::{LiveImpossible, UnplaceableVm};
use kvmotion_api::migration::MigrationMode;

const GIB: u64 = 1 << 30;

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn mv(vm: &str, target: &str) -> PlannedMove {
    PlannedMove {
        vm: vm.into(),
        uuid: format!("{vm}-0000-0000-0000-000000000000"),
        memory_bytes: GIB,
        mode: MigrationMode::Live,
        target_node: target.into(),
        migration: None,
        migration_phase: None,
        attempts: 0,
        message: None,
    }
}

fn unplaceable(vm: &str) -> UnplaceableVm {
    UnplaceableVm {
        vm: vm.into(),
        uuid: format!("{vm}-0000-0000-0000-000000000000"),
        reason: "InsufficientMemory".into(),
        message: format!("{vm} needs 1024 MiB and no node has the memory left"),
    }
}

/// An evacuation of node-a, built fluently.
struct Obs(Observed);

impl Obs {
    fn new(phase: Option<EvacuationPhase>) -> Obs {
        Obs(Observed {
            name: "evac".into(),
            generation: 1,
            spec: NodeEvacuationSpec {
                node_name: "node-a".into(),
                dry_run: false,
                policy_ref: None,
                target_selector: None,
                live_impossible: LiveImpossible::Fail,
                max_parallel: None,
            },
            status: NodeEvacuationStatus {
                phase,
                ..Default::default()
            },
            deleting: false,
            older_active: None,
            migrations: BTreeMap::new(),
            running_on_node: Some(Vec::new()),
            fresh: Plan::default(),
        })
    }
    fn dry_run(mut self) -> Obs {
        self.0.spec.dry_run = true;
        self
    }
    fn cap(mut self, n: u32) -> Obs {
        self.0.spec.max_parallel = Some(n);
        self
    }
    fn running(mut self, vms: &[&str]) -> Obs {
        self.0.running_on_node = Some(vms.iter().map(|v| v.to_string()).collect());
        self
    }
    fn no_hypervisor(mut self) -> Obs {
        self.0.running_on_node = None;
        self
    }
    fn fresh(mut self, moves: Vec<PlannedMove>, refused: Vec<UnplaceableVm>) -> Obs {
        self.0.fresh = Plan {
            moves,
            unplaceable: refused,
            left: Vec::new(),
        };
        self
    }
    /// A plan entry whose migration `name` (attempt `n`) is in `phase`.
    fn moving(mut self, vm: &str, n: u32, phase: Option<Phase>) -> Obs {
        let mut m = mv(vm, "node-b");
        m.attempts = n;
        let name = migration_name("evac", &m, n);
        m.migration = Some(name.clone());
        self.0.status.plan.push(m);
        self.0.migrations.insert(
            name,
            Owned {
                phase,
                message: Some("libvirt said no".into()),
            },
        );
        self
    }
    /// A plan entry not dispatched yet.
    fn planned(mut self, vm: &str) -> Obs {
        self.0.status.plan.push(mv(vm, "node-b"));
        self
    }
    /// A plan entry whose migration was recorded but has not been seen.
    fn recorded(mut self, vm: &str) -> Obs {
        let mut m = mv(vm, "node-b");
        m.attempts = 1;
        m.migration = Some(migration_name("evac", &m, 1));
        self.0.status.plan.push(m);
        self
    }
    /// A plan entry whose migration was seen in `phase` and is gone now.
    fn vanished(mut self, vm: &str, phase: Phase) -> Obs {
        let mut m = mv(vm, "node-b");
        m.attempts = 1;
        m.migration = Some(migration_name("evac", &m, 1));
        m.migration_phase = Some(phase);
        self.0.status.plan.push(m);
        self
    }
    fn older(mut self, name: &str) -> Obs {
        self.0.older_active = Some(name.into());
        self
    }
    fn deleting(mut self) -> Obs {
        self.0.deleting = true;
        self
    }
}

/// The decision in short: the phase, the migrations created (vm→target),
/// cancelled and released.
fn short(
    d: &Decision,
) -> (
    Option<EvacuationPhase>,
    Vec<String>,
    Vec<String>,
    Vec<String>,
) {
    let created = d
        .create
        .iter()
        .map(|c| format!("{}→{}", c.planned.vm, c.planned.target_node))
        .collect();
    let vm_of = |n: &String| n.split('-').nth(1).unwrap_or_default().to_string();
    (
        d.status.phase,
        created,
        d.cancel.iter().map(vm_of).collect(),
        d.release.iter().map(vm_of).collect(),
    )
}

#[test]
#[allow(clippy::type_complexity)]
fn each_phase_leads_to_its_decision() {
    use EvacuationPhase as E;
    use Phase as P;
    let none: Vec<&str> = Vec::new();
    let cases: Vec<(&str, Obs, Option<E>, Vec<&str>, Vec<&str>, Vec<&str>)> = vec![
        (
            "new, all placed: starts every move",
            Obs::new(None)
                .running(&["x", "y"])
                .fresh(vec![mv("x", "node-b"), mv("y", "node-c")], vec![]),
            Some(E::Evacuating),
            vec!["x→node-b", "y→node-c"],
            none.clone(),
            none.clone(),
        ),
        (
            "new, one VM has no place: blocked, nothing moves",
            Obs::new(None)
                .running(&["x", "y"])
                .fresh(vec![mv("x", "node-b")], vec![unplaceable("y")]),
            Some(E::Blocked),
            none.clone(),
            none.clone(),
            none.clone(),
        ),
        (
            "blocked, the cluster changed: starts",
            Obs::new(Some(E::Blocked))
                .running(&["y"])
                .fresh(vec![mv("y", "node-c")], vec![]),
            Some(E::Evacuating),
            vec!["y→node-c"],
            none.clone(),
            none.clone(),
        ),
        (
            "a dry run stops at Planned",
            Obs::new(None)
                .dry_run()
                .running(&["x"])
                .fresh(vec![mv("x", "node-b")], vec![]),
            Some(E::Planned),
            none.clone(),
            none.clone(),
            none.clone(),
        ),
        (
            "a dry run turned off starts",
            Obs::new(Some(E::Planned))
                .running(&["x"])
                .fresh(vec![mv("x", "node-b")], vec![]),
            Some(E::Evacuating),
            vec!["x→node-b"],
            none.clone(),
            none.clone(),
        ),
        (
            "no Hypervisor for the node: blocked",
            Obs::new(None).no_hypervisor(),
            Some(E::Blocked),
            none.clone(),
            none.clone(),
            none.clone(),
        ),
        (
            "an older evacuation of the node is active: failed",
            Obs::new(None).older("first"),
            Some(E::Failed),
            none.clone(),
            none.clone(),
            none.clone(),
        ),
        (
            "an empty node completes at once",
            Obs::new(None),
            Some(E::Completed),
            none.clone(),
            none.clone(),
            none.clone(),
        ),
        (
            "the cap holds the rest back",
            Obs::new(None)
                .cap(1)
                .running(&["x", "y"])
                .fresh(vec![mv("x", "node-b"), mv("y", "node-c")], vec![]),
            Some(E::Evacuating),
            vec!["x→node-b"],
            none.clone(),
            none.clone(),
        ),
        (
            "a finished move frees its slot under the cap",
            Obs::new(Some(E::Evacuating))
                .cap(1)
                .running(&["y"])
                .moving("x", 1, Some(P::Succeeded))
                .fresh(vec![mv("y", "node-c")], vec![]),
            Some(E::Evacuating),
            vec!["y→node-c"],
            none.clone(),
            none.clone(),
        ),
        (
            "a failed move is re-planned to the fresh target",
            Obs::new(Some(E::Evacuating))
                .running(&["x"])
                .moving("x", 1, Some(P::Failed))
                .fresh(vec![mv("x", "node-c")], vec![]),
            Some(E::Evacuating),
            vec!["x→node-c"],
            none.clone(),
            none.clone(),
        ),
        (
            "a move failed its last attempt: the evacuation fails",
            Obs::new(Some(E::Evacuating))
                .running(&["x"])
                .moving("x", MAX_ATTEMPTS, Some(P::Failed))
                .fresh(vec![mv("x", "node-c")], vec![]),
            Some(E::Failed),
            none.clone(),
            none.clone(),
            none.clone(),
        ),
        (
            "one VM's failure does not stop the others",
            Obs::new(Some(E::Evacuating))
                .running(&["x", "y"])
                .moving("x", MAX_ATTEMPTS, Some(P::Failed))
                .moving("y", 1, Some(P::Migrating)),
            Some(E::Evacuating),
            none.clone(),
            none.clone(),
            none.clone(),
        ),
        (
            "all moved, the inventory trails: waits",
            Obs::new(Some(E::Evacuating))
                .running(&["x"])
                .moving("x", 1, Some(P::Succeeded)),
            Some(E::Evacuating),
            none.clone(),
            none.clone(),
            none.clone(),
        ),
        (
            "all moved and the node empty: completed",
            Obs::new(Some(E::Evacuating)).moving("x", 1, Some(P::Succeeded)),
            Some(E::Completed),
            none.clone(),
            none.clone(),
            none.clone(),
        ),
        (
            "a VM started on the node meanwhile is planned too",
            Obs::new(Some(E::Evacuating))
                .running(&["z"])
                .moving("x", 1, Some(P::Succeeded))
                .fresh(vec![mv("z", "node-b")], vec![]),
            Some(E::Evacuating),
            vec!["z→node-b"],
            none.clone(),
            none.clone(),
        ),
        (
            "no place left at dispatch: that VM fails, the rest go on",
            Obs::new(Some(E::Evacuating))
                .running(&["x", "y"])
                .moving("x", 1, Some(P::Failed))
                .moving("y", 1, Some(P::Migrating))
                .fresh(vec![], vec![unplaceable("x")]),
            Some(E::Evacuating),
            none.clone(),
            none.clone(),
            none.clone(),
        ),
        (
            "a planned VM that left the node by other means is dropped",
            Obs::new(Some(E::Evacuating))
                .running(&["y"])
                .planned("x")
                .moving("y", 1, Some(P::Migrating)),
            Some(E::Evacuating),
            none.clone(),
            none.clone(),
            none.clone(),
        ),
        (
            "recorded, not yet seen: created again (idempotent)",
            Obs::new(Some(E::Evacuating)).running(&["x"]).recorded("x"),
            Some(E::Evacuating),
            vec!["x→node-b"],
            none.clone(),
            none.clone(),
        ),
        (
            "seen, then deleted by someone: re-planned as a failure",
            Obs::new(Some(E::Evacuating))
                .running(&["x"])
                .vanished("x", P::Migrating)
                .fresh(vec![mv("x", "node-c")], vec![]),
            Some(E::Evacuating),
            vec!["x→node-c"],
            none.clone(),
            none.clone(),
        ),
        (
            "deleted: unstarted moves cancelled, started ones released",
            Obs::new(Some(E::Evacuating))
                .moving("x", 1, Some(P::Pending))
                .moving("y", 1, Some(P::Migrating))
                .moving("z", 1, Some(P::Succeeded))
                .deleting(),
            Some(E::Cancelled),
            none.clone(),
            vec!["x"],
            vec!["y"],
        ),
        (
            "completed stays completed",
            Obs::new(Some(E::Completed)).running(&["late"]),
            Some(E::Completed),
            none.clone(),
            none.clone(),
            none.clone(),
        ),
        (
            "failed stays failed",
            Obs::new(Some(E::Failed)),
            Some(E::Failed),
            none.clone(),
            none.clone(),
            none.clone(),
        ),
        (
            "cancelled stays cancelled",
            Obs::new(Some(E::Cancelled)),
            Some(E::Cancelled),
            none.clone(),
            none.clone(),
            none.clone(),
        ),
    ];
    for (what, obs, phase, created, cancelled, released) in cases {
        let got = short(&decide(&obs.0, now()));
        let want = (
            phase,
            created.iter().map(|s| s.to_string()).collect(),
            cancelled.iter().map(|s| s.to_string()).collect(),
            released.iter().map(|s| s.to_string()).collect(),
        );
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn a_blocked_plan_names_each_vm_without_a_place() {
    let d = decide(
        &Obs::new(None)
            .running(&["x", "y"])
            .fresh(vec![mv("x", "node-b")], vec![unplaceable("y")])
            .0,
        now(),
    );
    let c = &d.status.conditions[0];
    assert_eq!((c.type_.as_str(), c.status.as_str()), (PLANNED, "False"));
    assert!(
        c.message.contains("y (InsufficientMemory)"),
        "{}",
        c.message
    );
    assert_eq!(d.status.unplaceable[0].vm, "y");
    assert_eq!(d.status.counts.as_ref().map(|c| c.total), Some(2));
}

#[test]
fn a_failed_evacuation_says_what_is_left_and_why() {
    let d = decide(
        &Obs::new(Some(EvacuationPhase::Evacuating))
            .running(&["x"])
            .moving("x", MAX_ATTEMPTS, Some(Phase::Failed))
            .0,
        now(),
    );
    let c = d
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == COMPLETED)
        .expect("Completed condition");
    assert_eq!(c.reason, "MovesFailed");
    assert!(c.message.contains("node-a still runs x"), "{}", c.message);
    assert!(c.message.contains("libvirt said no"), "{}", c.message);
    assert_eq!(d.status.counts.as_ref().map(|c| c.failed), Some(1));
    assert!(d.status.completion_time.is_some());
}

#[test]
fn migration_names_are_valid_and_unique_per_attempt() {
    let mut m = mv("Web_Server.01", "node-b");
    m.uuid = "ABCDEF12-0000-0000-0000-000000000000".into();
    assert_eq!(
        migration_name("evac", &m, 1),
        "evac-web-server-01-abcdef12-1"
    );
    assert_ne!(migration_name("evac", &m, 1), migration_name("evac", &m, 2));
    let long = "x".repeat(300);
    let name = migration_name(&long, &m, 3);
    assert!(name.len() <= 253, "{}", name.len());
    assert!(name.ends_with("-abcdef12-3"), "{name}");
}

#[test]
fn a_planned_vm_gone_from_the_node_leaves_the_plan_and_the_rest_completes() {
    let obs = Obs::new(Some(EvacuationPhase::Evacuating))
        .planned("x")
        .moving("y", 1, Some(Phase::Succeeded));
    let d = decide(&obs.0, now());
    let vms: Vec<&str> = d.status.plan.iter().map(|m| m.vm.as_str()).collect();
    assert_eq!(vms, ["y"]);
    assert_eq!(d.status.phase, Some(EvacuationPhase::Completed));
    assert_eq!(d.status.counts.as_ref().map(|c| c.total), Some(1));
}

#[test]
fn an_evacuation_whose_moves_all_succeeded_looks_again_soon_while_the_inventory_trails() {
    let trailing = Obs::new(Some(EvacuationPhase::Evacuating))
        .running(&["x"])
        .moving("x", 1, Some(Phase::Succeeded));
    assert_eq!(
        decide(&trailing.0, now()).next,
        Next::RequeueAfter(CATCH_UP_EVERY)
    );
    let moving = Obs::new(Some(EvacuationPhase::Evacuating))
        .running(&["x"])
        .moving("x", 1, Some(Phase::Migrating));
    assert_eq!(
        decide(&moving.0, now()).next,
        Next::RequeueAfter(LOOK_EVERY)
    );
}
