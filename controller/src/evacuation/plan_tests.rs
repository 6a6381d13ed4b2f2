//! Table-driven tests of the evacuation plan.

use super::*;
use crate::fixtures::{GIB, healthy_hypervisor};
use kvmotion_api::hypervisor::DiskInfo;

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn vm(name: &str, gib: u64, state: DomainState) -> DomainInfo {
    DomainInfo {
        name: name.into(),
        uuid: format!("00000000-0000-0000-0000-{:012}", gib),
        state,
        memory_bytes: gib * GIB,
        vcpus: 1,
        persistent: true,
        disks: Vec::new(),
        dirty_rate: None,
    }
}

fn local_disk(mut d: DomainInfo) -> DomainInfo {
    d.disks.push(DiskInfo {
        target: "vda".into(),
        source: Some(format!("/var/lib/vms/{}.qcow2", d.name)),
        format: Some("qcow2".into()),
        capacity_bytes: Some(GIB),
        shared: false,
        read_only: false,
    });
    d
}

/// The world a plan is made in, built fluently.
struct World {
    source: Hypervisor,
    others: Vec<Hypervisor>,
    cordoned: BTreeSet<String>,
    evacuating: BTreeSet<String>,
    reserved: BTreeMap<String, u64>,
    live_impossible: LiveImpossible,
    storage: StorageMode,
}

impl World {
    fn node_a_with(vms: Vec<DomainInfo>) -> World {
        let mut source = healthy_hypervisor("node-a", 4);
        if let Some(s) = source.status.as_mut() {
            s.domains = vms;
        }
        World {
            source,
            others: Vec::new(),
            cordoned: BTreeSet::new(),
            evacuating: BTreeSet::new(),
            reserved: BTreeMap::new(),
            live_impossible: LiveImpossible::Fail,
            storage: StorageMode::Auto,
        }
    }
    fn target(mut self, name: &str, free_gib: u64) -> World {
        self.others.push(healthy_hypervisor(name, free_gib));
        self
    }
    fn cordoned(mut self, name: &str) -> World {
        self.cordoned.insert(name.into());
        self
    }
    fn evacuating(mut self, name: &str) -> World {
        self.evacuating.insert(name.into());
        self
    }
    fn reserved(mut self, name: &str, gib: u64) -> World {
        self.reserved.insert(name.into(), gib * GIB);
        self
    }
    fn offline_allowed(mut self) -> World {
        self.live_impossible = LiveImpossible::Offline;
        self
    }
    fn storage(mut self, s: StorageMode) -> World {
        self.storage = s;
        self
    }
    fn plan(&self) -> Plan {
        let mut all = vec![Arc::new(self.source.clone())];
        all.extend(self.others.iter().cloned().map(Arc::new));
        let heartbeats = all
            .iter()
            .map(|h| (h.metadata.name.clone().unwrap_or_default(), now()))
            .collect();
        plan(&Inputs {
            source: &self.source,
            hypervisors: &all,
            cordoned: &self.cordoned,
            evacuating: &self.evacuating,
            reserved: &self.reserved,
            heartbeats: &heartbeats,
            selector: None,
            live_impossible: self.live_impossible,
            storage: self.storage,
            now: now(),
            heartbeat_max_age: Duration::from_secs(40),
        })
    }
}

/// The plan in short: "vm→target/mode" for moves, "vm!reason" for refusals,
/// "vm=" for VMs left in place.
fn short(p: &Plan) -> Vec<String> {
    let mut out: Vec<String> = p
        .moves
        .iter()
        .map(|m| format!("{}→{}/{:?}", m.vm, m.target_node, m.mode))
        .collect();
    out.extend(
        p.unplaceable
            .iter()
            .map(|u| format!("{}!{}", u.vm, u.reason)),
    );
    out.extend(p.left.iter().map(|v| format!("{v}=")));
    out
}

#[test]
fn each_world_gets_its_plan() {
    use DomainState::{Crashed, Paused, Running, ShutOff, ShuttingDown};
    let cases: Vec<(&str, World, Vec<&str>)> = vec![
        (
            "largest first, each on the node with the most memory left",
            World::node_a_with(vec![
                vm("s", 1, Running),
                vm("l", 4, Running),
                vm("m", 2, Running),
            ])
            .target("node-b", 5)
            .target("node-c", 4),
            vec!["l→node-b/Live", "m→node-c/Live", "s→node-c/Live"],
        ),
        (
            "the ledger runs out: the one that fits nowhere is named",
            World::node_a_with(vec![vm("a", 3, Running), vm("b", 3, Running)]).target("node-b", 4),
            vec!["a→node-b/Live", "b!InsufficientMemory"],
        ),
        (
            "memory promised to moves in flight is not free",
            World::node_a_with(vec![vm("a", 3, Running)])
                .target("node-b", 8)
                .reserved("node-b", 6)
                .target("node-c", 4),
            vec!["a→node-c/Live"],
        ),
        (
            "a cordoned node is never a target",
            World::node_a_with(vec![vm("a", 1, Running)])
                .target("node-b", 8)
                .cordoned("node-b")
                .target("node-c", 2),
            vec!["a→node-c/Live"],
        ),
        (
            "a node being evacuated itself is never a target",
            World::node_a_with(vec![vm("a", 1, Running)])
                .target("node-b", 8)
                .evacuating("node-b"),
            vec!["a!NoTargetAvailable"],
        ),
        (
            "no other node at all",
            World::node_a_with(vec![vm("a", 1, Running)]),
            vec!["a!NoTargetAvailable"],
        ),
        (
            "a paused VM moves live and arrives paused",
            World::node_a_with(vec![vm("p", 1, Paused)]).target("node-b", 8),
            vec!["p→node-b/Live"],
        ),
        (
            "a shut-off VM stays when offline moves are not allowed",
            World::node_a_with(vec![vm("off", 1, ShutOff)]).target("node-b", 8),
            vec!["off="],
        ),
        (
            "a shut-off VM moves offline when allowed",
            World::node_a_with(vec![vm("off", 1, ShutOff)])
                .target("node-b", 8)
                .offline_allowed(),
            vec!["off→node-b/Offline"],
        ),
        (
            "a crashed VM cannot move either way",
            World::node_a_with(vec![vm("c", 1, Crashed)])
                .target("node-b", 8)
                .offline_allowed(),
            vec!["c!VMNotRunning"],
        ),
        (
            "a VM shutting down is told to settle first",
            World::node_a_with(vec![vm("d", 1, ShuttingDown)]).target("node-b", 8),
            vec!["d!VMStateSettling"],
        ),
        (
            "a local disk with copying forbidden",
            World::node_a_with(vec![local_disk(vm("a", 1, Running))])
                .target("node-b", 8)
                .storage(StorageMode::Shared),
            vec!["a!StorageNotShared"],
        ),
        (
            "a local disk is copied under Auto",
            World::node_a_with(vec![local_disk(vm("a", 1, Running))]).target("node-b", 8),
            vec!["a→node-b/Live"],
        ),
        (
            "ties go to the first node by name",
            World::node_a_with(vec![vm("a", 1, Running)])
                .target("node-c", 4)
                .target("node-b", 4),
            vec!["a→node-b/Live"],
        ),
    ];
    for (what, world, want) in cases {
        assert_eq!(short(&world.plan()), want, "{what}");
    }
}

#[test]
fn an_unplaceable_vm_says_what_each_node_lacks() {
    let p = World::node_a_with(vec![vm("big", 6, DomainState::Running)])
        .target("node-b", 4)
        .target("node-c", 8)
        .cordoned("node-c")
        .plan();
    let u = &p.unplaceable[0];
    assert_eq!(u.reason, "InsufficientMemory");
    assert!(u.message.starts_with("big needs 6144 MiB"), "{}", u.message);
    assert!(
        u.message.contains("node-b: only 4096 MiB left"),
        "{}",
        u.message
    );
    assert!(
        u.message.contains("node-c: its Node is cordoned"),
        "{}",
        u.message
    );
}

#[test]
fn a_fleet_node_is_spread_within_every_targets_memory() {
    let vms = (0..20)
        .map(|i| vm(&format!("vm-{i:02}"), 1 + i % 4, DomainState::Running))
        .collect();
    let mut world = World::node_a_with(vms);
    for n in 0..9 {
        world = world.target(&format!("node-{n}"), 6);
    }
    let p = world.plan();
    assert_eq!(p.moves.len(), 20, "{:?}", short(&p));
    assert!(p.unplaceable.is_empty(), "{:?}", short(&p));
    let mut used: BTreeMap<&str, u64> = BTreeMap::new();
    for m in &p.moves {
        *used.entry(m.target_node.as_str()).or_default() += m.memory_bytes;
    }
    assert!(used.values().all(|u| *u <= 6 * GIB), "{used:?}");
    assert_eq!(used.len(), 9, "every node takes a share: {used:?}");
}
