//! Prechecks that need only inventories: find the VM (and its source node)
//! in the Hypervisor objects, and refuse moves that cannot work, each with a
//! reason a person can act on. Pure; the target's own checks (CPU, memory,
//! readiness) come from `schedule::exclusion`.

use kvmotion_api::agent::{DiskPlan, DomainRef};
use kvmotion_api::hypervisor::{DomainInfo, Hypervisor};
use kvmotion_api::tuning::StorageMode;
use kvmotion_api::{ConditionReason, VirtualMachineMigrationSpec, VmRef};
use std::sync::Arc;

/// A failed precheck: the condition reason and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// CamelCase reason (docs/api.md lists them).
    pub reason: ConditionReason,
    /// What is wrong and what to do.
    pub message: String,
}

fn refuse(reason: ConditionReason, message: String) -> Refusal {
    Refusal { reason, message }
}

/// Where the VM was found.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    /// The source node.
    pub node: String,
    /// The domain as that node reports it.
    pub domain: DomainInfo,
}

fn matches(vm: &VmRef, d: &DomainInfo) -> bool {
    let by_uuid = vm
        .uuid
        .as_ref()
        .is_none_or(|u| u.eq_ignore_ascii_case(&d.uuid));
    let by_name = vm.name.as_ref().is_none_or(|n| *n == d.name);
    by_uuid && by_name
}

/// Finds the VM in the inventories. With `source_node` given, the VM must
/// be there; without, it must be on exactly one node.
pub fn locate(
    vm: &VmRef,
    source_node: Option<&str>,
    hypervisors: &[Arc<Hypervisor>],
) -> Result<Located, Refusal> {
    let mut found: Vec<Located> = hypervisors
        .iter()
        .filter(|h| source_node.is_none_or(|s| h.metadata.name.as_deref() == Some(s)))
        .flat_map(|h| {
            let node = h.metadata.name.clone().unwrap_or_default();
            h.status
                .iter()
                .flat_map(|s| s.domains.iter())
                .filter(|d| matches(vm, d))
                .map(move |d| Located {
                    node: node.clone(),
                    domain: d.clone(),
                })
        })
        .collect();
    let what = vm_text(vm);
    match found.len() {
        0 => Err(match source_node {
            Some(s)
                if !hypervisors
                    .iter()
                    .any(|h| h.metadata.name.as_deref() == Some(s)) =>
            {
                refuse(
                    ConditionReason::VMNotFound,
                    format!("spec.sourceNode {s} has no Hypervisor object (is its agent running?)"),
                )
            }
            Some(s) => refuse(
                ConditionReason::VMNotFound,
                format!("{what} is not defined on {s}; check spec.vm and spec.sourceNode"),
            ),
            None => refuse(
                ConditionReason::VMNotFound,
                format!("{what} is not defined on any hypervisor; check spec.vm"),
            ),
        }),
        1 => Ok(found.remove(0)),
        _ if found
            .iter()
            .all(|l| l.domain.uuid.eq_ignore_ascii_case(&found[0].domain.uuid)) =>
        {
            let nodes: Vec<&str> = found.iter().map(|l| l.node.as_str()).collect();
            Err(refuse(
                ConditionReason::VMMoving,
                format!(
                    "{what} ({}) is listed on {}: it is moving, or an inventory has not caught up",
                    found[0].domain.uuid,
                    nodes.join(" and ")
                ),
            ))
        }
        _ => {
            let nodes: Vec<&str> = found.iter().map(|l| l.node.as_str()).collect();
            Err(refuse(
                ConditionReason::VMAmbiguous,
                format!(
                    "{what} matches domains on {}; set spec.vm.uuid or spec.sourceNode",
                    nodes.join(", ")
                ),
            ))
        }
    }
}

fn vm_text(vm: &VmRef) -> String {
    match (&vm.name, &vm.uuid) {
        (Some(n), Some(u)) => format!("VM {n} ({u})"),
        (Some(n), None) => format!("VM {n}"),
        (None, Some(u)) => format!("VM {u}"),
        (None, None) => "the VM".into(),
    }
}

/// Checks the move of the located VM as the spec asks, and returns the disk
/// plan (which disks are copied). `other_active` names another in-flight
/// migration of the same VM, if any.
pub fn check(
    spec: &VirtualMachineMigrationSpec,
    located: &Located,
    target: &str,
    storage: StorageMode,
    other_active: Option<&str>,
) -> Result<Vec<DiskPlan>, Refusal> {
    if let Some(other) = other_active {
        return Err(refuse(
            ConditionReason::AlreadyMigrating,
            format!("migration {other} is already moving this VM; wait for it or delete it"),
        ));
    }
    if target == located.node {
        return Err(refuse(
            ConditionReason::SameNode,
            format!("the VM already runs on {target}; choose another target"),
        ));
    }
    let d = &located.domain;
    if let Err(no) = kvmotion_api::movable::how(spec.mode, d.state, d.persistent) {
        let reason = if kvmotion_api::movable::settling(d.state) {
            ConditionReason::VMStateSettling
        } else {
            ConditionReason::VMNotRunning
        };
        return Err(refuse(
            reason,
            format!("{} is {:?}: {}", d.name, d.state, no.needed),
        ));
    }
    disk_plan(d, storage)
}

/// Which of the domain's disks are copied under `storage`; refused when a
/// local disk would need copying and `storage` forbids it.
pub fn disk_plan(d: &DomainInfo, storage: StorageMode) -> Result<Vec<DiskPlan>, Refusal> {
    let plan: Vec<DiskPlan> = d
        .disks
        .iter()
        .filter(|disk| !disk.read_only)
        .filter_map(|disk| {
            Some(DiskPlan {
                target: disk.target.clone(),
                path: disk.source.clone()?,
                format: disk.format.clone().unwrap_or_else(|| "raw".into()),
                capacity_bytes: disk.capacity_bytes.unwrap_or(0),
                copy: match storage {
                    StorageMode::Auto => !disk.shared,
                    StorageMode::Copy => true,
                    StorageMode::Shared => false,
                },
            })
        })
        .collect();
    if storage == StorageMode::Shared
        && let Some(local) = d.disks.iter().find(|disk| !disk.shared && !disk.read_only)
    {
        return Err(refuse(
            ConditionReason::StorageNotShared,
            format!(
                "disk {} ({}) is not on shared storage and storage is Shared (copying forbidden); allow storage Auto or Copy",
                local.target,
                local.source.as_deref().unwrap_or("?")
            ),
        ));
    }
    Ok(plan)
}

/// The domain as the agents address it.
pub fn domain_ref(d: &DomainInfo) -> DomainRef {
    DomainRef {
        name: Some(d.name.clone()),
        uuid: Some(d.uuid.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmotion_api::MigrationMode;
    use kvmotion_api::hypervisor::{DiskInfo, DomainState, HypervisorSpec, HypervisorStatus};

    fn domain(name: &str, uuid: &str, state: DomainState, disks: Vec<DiskInfo>) -> DomainInfo {
        DomainInfo {
            name: name.into(),
            uuid: uuid.into(),
            state,
            persistent: true,
            disks,
            ..Default::default()
        }
    }

    fn node(name: &str, domains: Vec<DomainInfo>) -> Hypervisor {
        let mut h = Hypervisor::new(name, HypervisorSpec::default());
        h.status = Some(HypervisorStatus {
            domains,
            ..Default::default()
        });
        h
    }

    fn disk(target: &str, shared: bool) -> DiskInfo {
        DiskInfo {
            target: target.into(),
            source: Some(format!("/img/{target}")),
            shared,
            ..Default::default()
        }
    }

    fn vm(name: Option<&str>, uuid: Option<&str>) -> VmRef {
        VmRef {
            name: name.map(String::from),
            uuid: uuid.map(String::from),
        }
    }

    #[test]
    fn the_vm_is_located_or_refused_with_a_reason() {
        let nodes: Vec<Arc<Hypervisor>> = [
            node(
                "a",
                vec![
                    domain("web", "u1", DomainState::Running, vec![]),
                    domain("api", "u4", DomainState::Running, vec![]),
                ],
            ),
            node(
                "b",
                vec![
                    domain("web", "u2", DomainState::ShutOff, vec![]),
                    domain("db", "u3", DomainState::Running, vec![]),
                    domain("api", "u4", DomainState::Running, vec![]),
                ],
            ),
        ]
        .into_iter()
        .map(Arc::new)
        .collect();
        // (case, vm, sourceNode) → Ok(source node) or Err(reason)
        type Case<'a> = (&'a str, VmRef, Option<&'a str>, Result<&'a str, &'a str>);
        let cases: Vec<Case> = vec![
            ("unique name", vm(Some("db"), None), None, Ok("b")),
            (
                "one VM listed on two nodes",
                vm(Some("api"), None),
                None,
                Err("VMMoving"),
            ),
            (
                "name on two nodes",
                vm(Some("web"), None),
                None,
                Err("VMAmbiguous"),
            ),
            (
                "name narrowed by node",
                vm(Some("web"), None),
                Some("a"),
                Ok("a"),
            ),
            (
                "name narrowed by uuid",
                vm(Some("web"), Some("U2")),
                None,
                Ok("b"),
            ),
            ("unknown", vm(Some("nope"), None), None, Err("VMNotFound")),
            (
                "not on the given node",
                vm(Some("db"), None),
                Some("a"),
                Err("VMNotFound"),
            ),
            (
                "node without Hypervisor",
                vm(Some("db"), None),
                Some("zz"),
                Err("VMNotFound"),
            ),
        ];
        for (name, r, source, want) in cases {
            let got = locate(&r, source, &nodes)
                .map(|l| l.node)
                .map_err(|e| e.reason.as_str());
            assert_eq!(got.as_deref().map_err(|e| *e), want, "{name}");
        }
        let err = locate(&vm(Some("web"), None), None, &nodes).unwrap_err();
        assert_eq!(
            err.message,
            "VM web matches domains on a, b; set spec.vm.uuid or spec.sourceNode"
        );
    }

    fn spec(mode: MigrationMode) -> VirtualMachineMigrationSpec {
        VirtualMachineMigrationSpec {
            vm: vm(Some("web"), None),
            source_node: None,
            target_node: None,
            target_selector: None,
            mode,
            policy_ref: None,
            overrides: None,
            force_complete: false,
        }
    }

    #[test]
    fn moves_that_cannot_work_are_refused_and_the_disk_plan_follows_the_storage_mode() {
        let at = |state, disks| Located {
            node: "a".into(),
            domain: domain("web", "u1", state, disks),
        };
        let mixed = vec![disk("vda", true), disk("vdb", false)];
        use DomainState::*;
        use MigrationMode::*;
        // (case, mode, located VM, target, storage, other migration) → copy flags or reason
        type Case<'a> = (
            &'a str,
            MigrationMode,
            Located,
            &'a str,
            StorageMode,
            Option<&'a str>,
            Result<Vec<bool>, &'a str>,
        );
        let cases: Vec<Case> = vec![
            (
                "live, running, auto storage",
                Live,
                at(Running, mixed.clone()),
                "b",
                StorageMode::Auto,
                None,
                Ok(vec![false, true]),
            ),
            (
                "copy everything",
                Live,
                at(Running, mixed.clone()),
                "b",
                StorageMode::Copy,
                None,
                Ok(vec![true, true]),
            ),
            (
                "shared required but a disk is local",
                Live,
                at(Running, mixed.clone()),
                "b",
                StorageMode::Shared,
                None,
                Err("StorageNotShared"),
            ),
            (
                "live but shut off",
                Live,
                at(ShutOff, vec![]),
                "b",
                StorageMode::Auto,
                None,
                Err("VMNotRunning"),
            ),
            (
                "live and paused",
                Live,
                at(Paused, vec![]),
                "b",
                StorageMode::Auto,
                None,
                Ok(vec![]),
            ),
            (
                "offline but crashed",
                Offline,
                at(Crashed, vec![]),
                "b",
                StorageMode::Auto,
                None,
                Err("VMNotRunning"),
            ),
            (
                "offline and shut off",
                Offline,
                at(ShutOff, vec![]),
                "b",
                StorageMode::Auto,
                None,
                Ok(vec![]),
            ),
            (
                "target is the source",
                Live,
                at(Running, vec![]),
                "a",
                StorageMode::Auto,
                None,
                Err("SameNode"),
            ),
            (
                "another migration in flight",
                Live,
                at(Running, vec![]),
                "b",
                StorageMode::Auto,
                Some("m0"),
                Err("AlreadyMigrating"),
            ),
        ];
        for (name, mode, located, target, storage, other, want) in cases {
            let got = check(&spec(mode), &located, target, storage, other)
                .map(|plan| plan.iter().map(|d| d.copy).collect::<Vec<bool>>())
                .map_err(|e| e.reason.as_str());
            assert_eq!(got, want, "{name}");
        }
    }
}
