//! Choosing a target: filter the Hypervisors that can take the VM, then
//! weigh the rest. Pure: the caller gathers inventories, heartbeats and
//! in-flight counts; time is passed in. The same filter checks a target
//! the user named, so both paths give the same reasons.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kvmotion_api::ConditionReason;
use kvmotion_api::hypervisor::Hypervisor;

use crate::reconcile::selector;

/// What the choice is made from.
pub struct Inputs<'a> {
    /// The VM's memory, bytes.
    pub vm_memory_bytes: u64,
    /// The node the VM runs on.
    pub source: &'a Hypervisor,
    /// Every Hypervisor.
    pub hypervisors: &'a [Arc<Hypervisor>],
    /// Last heartbeat of each node's agent.
    pub heartbeats: &'a BTreeMap<String, Timestamp>,
    /// Kubernetes Nodes that are cordoned (`spec.unschedulable`): a node
    /// being drained takes no VM.
    pub cordoned: &'a BTreeSet<String>,
    /// Nodes a NodeEvacuation is emptying: what moves there would have to
    /// move again.
    pub evacuating: &'a BTreeSet<String>,
    /// Migrations in flight toward each node.
    pub inbound: &'a BTreeMap<String, u32>,
    /// Most migrations in flight toward one node (the policy's limit).
    pub inbound_limit: u32,
    /// The migration's targetSelector.
    pub selector: Option<&'a LabelSelector>,
    /// Now.
    pub now: Timestamp,
    /// A heartbeat older than this makes a node ineligible.
    pub heartbeat_max_age: Duration,
}

/// Why a node cannot take the VM. Each maps to a condition reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exclusion {
    /// It is the source.
    SameNode,
    /// Its Hypervisor is not Ready (libvirt unreachable, or no status).
    NotReady,
    /// Cordoned for migrations (`spec.unschedulable`).
    Unschedulable,
    /// Its Kubernetes Node is cordoned (`kubectl cordon`, a drain).
    NodeCordoned,
    /// A NodeEvacuation is emptying it.
    BeingEvacuated,
    /// Its agent's heartbeat is missing or stale.
    AgentUnavailable,
    /// Not enough free memory.
    InsufficientMemory {
        /// Free bytes there.
        free: u64,
    },
    /// Another CPU architecture.
    CpuIncompatible {
        /// Its architecture.
        arch: String,
    },
    /// Its libvirt is older than the source's.
    OlderLibvirt {
        /// Its version.
        version: String,
    },
    /// Does not match the targetSelector.
    SelectorMismatch,
    /// As many migrations already head there as the policy allows.
    AtInboundLimit {
        /// Migrations heading there.
        inbound: u32,
    },
}

impl Exclusion {
    /// The condition reason a failed precheck reports.
    pub fn reason(&self) -> ConditionReason {
        match self {
            Exclusion::SameNode => ConditionReason::SameNode,
            Exclusion::NotReady => ConditionReason::TargetNotReady,
            Exclusion::Unschedulable | Exclusion::NodeCordoned | Exclusion::BeingEvacuated => {
                ConditionReason::TargetUnschedulable
            }
            Exclusion::AgentUnavailable => ConditionReason::AgentUnavailable,
            Exclusion::InsufficientMemory { .. } => ConditionReason::InsufficientMemory,
            Exclusion::CpuIncompatible { .. } => ConditionReason::CPUIncompatible,
            Exclusion::OlderLibvirt { .. } => ConditionReason::LibvirtTooOld,
            Exclusion::SelectorMismatch => ConditionReason::NoTargetAvailable,
            Exclusion::AtInboundLimit { .. } => ConditionReason::WaitingForCapacity,
        }
    }

    /// A short phrase for messages.
    pub fn describe(&self) -> String {
        match self {
            Exclusion::SameNode => "it is the source".into(),
            Exclusion::NotReady => "its Hypervisor is not Ready".into(),
            Exclusion::Unschedulable => "it is unschedulable".into(),
            Exclusion::NodeCordoned => "its Node is cordoned".into(),
            Exclusion::BeingEvacuated => "it is being evacuated".into(),
            Exclusion::AgentUnavailable => "its agent's heartbeat is stale".into(),
            Exclusion::InsufficientMemory { free } => format!("only {} MiB free", free >> 20),
            Exclusion::CpuIncompatible { arch } => format!("its CPU architecture is {arch}"),
            Exclusion::OlderLibvirt { version } => {
                format!("its libvirt {version} is older than the source's")
            }
            Exclusion::SelectorMismatch => "it does not match targetSelector".into(),
            Exclusion::AtInboundLimit { inbound } => {
                format!("{inbound} migration(s) already head there (its inbound limit)")
            }
        }
    }
}

/// The chosen node and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// Node name.
    pub node: String,
    /// For the condition message.
    pub message: String,
}

/// Why `node` cannot take the VM, or `None` when it can.
pub fn exclusion(inp: &Inputs, hv: &Hypervisor) -> Option<Exclusion> {
    let name = hv.metadata.name.clone().unwrap_or_default();
    if Some(&name) == inp.source.metadata.name.as_ref() {
        return Some(Exclusion::SameNode);
    }
    let status = hv.status.as_ref();
    let ready = status
        .map(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
        .unwrap_or(false);
    if !ready {
        return Some(Exclusion::NotReady);
    }
    if hv.spec.unschedulable {
        return Some(Exclusion::Unschedulable);
    }
    if inp.cordoned.contains(&name) {
        return Some(Exclusion::NodeCordoned);
    }
    if inp.evacuating.contains(&name) {
        return Some(Exclusion::BeingEvacuated);
    }
    let fresh = inp
        .heartbeats
        .get(&name)
        .is_some_and(|t| inp.now.duration_since(*t).unsigned_abs() <= inp.heartbeat_max_age);
    if !fresh {
        return Some(Exclusion::AgentUnavailable);
    }
    let free = status
        .and_then(|s| s.memory.as_ref())
        .map(|m| m.free_bytes)
        .unwrap_or(0);
    if free < inp.vm_memory_bytes {
        return Some(Exclusion::InsufficientMemory { free });
    }
    let arch = |h: &Hypervisor| {
        h.status
            .as_ref()
            .and_then(|s| s.cpu.as_ref())
            .map(|c| c.arch.clone())
    };
    if let (Some(a), Some(b)) = (arch(hv), arch(inp.source))
        && a != b
    {
        return Some(Exclusion::CpuIncompatible { arch: a });
    }
    let version = |h: &Hypervisor| h.status.as_ref().and_then(|s| s.libvirt_version.clone());
    if let (Some(here), Some(there)) = (version(hv), version(inp.source))
        && parse_version(&here) < parse_version(&there)
    {
        return Some(Exclusion::OlderLibvirt { version: here });
    }
    if !matches_selector(inp, hv) {
        return Some(Exclusion::SelectorMismatch);
    }
    // Last: a node that is only busy is worth waiting for, so it must
    // not hide a reason that waiting would not cure.
    let inbound = inp.inbound.get(&name).copied().unwrap_or(0);
    if inbound >= inp.inbound_limit {
        return Some(Exclusion::AtInboundLimit { inbound });
    }
    None
}

fn matches_selector(inp: &Inputs, hv: &Hypervisor) -> bool {
    inp.selector.is_none_or(|sel| {
        let labels = hv.metadata.labels.clone().unwrap_or_default();
        selector::matches(sel, &labels)
    })
}

/// Why no target was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoChoice {
    /// Eligible nodes exist but are at their inbound limit: wait.
    Wait(String),
    /// No node can take the VM: fail with this reason.
    Refuse(ConditionReason, String),
}

/// Chooses a target: the eligible node with the most free memory, then the
/// fewest inbound migrations, then by name (stable).
pub fn choose(inp: &Inputs) -> Result<Choice, NoChoice> {
    let mut eligible = Vec::new();
    let mut excluded = Vec::new();
    let mut busy = 0;
    let mut selected_other = false;
    for hv in inp.hypervisors {
        let name = hv.metadata.name.clone().unwrap_or_default();
        match exclusion(inp, hv) {
            None => eligible.push((hv, name)),
            Some(Exclusion::SameNode) => {}
            Some(e) => {
                busy += usize::from(matches!(e, Exclusion::AtInboundLimit { .. }));
                selected_other |= e != Exclusion::SelectorMismatch;
                excluded.push(format!("{name}: {}", e.describe()))
            }
        }
    }
    let free = |h: &Hypervisor| {
        h.status
            .as_ref()
            .and_then(|s| s.memory.as_ref())
            .map(|m| m.free_bytes)
            .unwrap_or(0)
    };
    eligible.sort_by(|(a, an), (b, bn)| {
        free(b)
            .cmp(&free(a))
            .then_with(|| {
                inp.inbound
                    .get(an)
                    .copied()
                    .unwrap_or(0)
                    .cmp(&inp.inbound.get(bn).copied().unwrap_or(0))
            })
            .then_with(|| an.cmp(bn))
    });
    let Some((best, name)) = eligible.first() else {
        let why = if excluded.is_empty() {
            "there is no other Hypervisor".to_string()
        } else {
            excluded.join("; ")
        };
        if busy > 0 {
            return Err(NoChoice::Wait(format!(
                "every node that can take the VM is at its inbound limit: {why}"
            )));
        }
        if !selected_other && inp.selector.is_some() && matches_selector(inp, inp.source) {
            return Err(NoChoice::Refuse(
                ConditionReason::SameNode,
                format!(
                    "only the VM's own node matches spec.targetSelector ({why}); widen the selector"
                ),
            ));
        }
        return Err(NoChoice::Refuse(
            ConditionReason::NoTargetAvailable,
            format!("no node can take the VM: {why}"),
        ));
    };
    let mut message = format!(
        "chose {name}: most free memory ({} MiB) and {} inbound migration(s) among {} eligible node(s)",
        free(best) >> 20,
        inp.inbound.get(name).copied().unwrap_or(0),
        eligible.len()
    );
    if !excluded.is_empty() {
        message.push_str(&format!("; excluded {}", excluded.join("; ")));
    }
    Ok(Choice {
        node: name.clone(),
        message,
    })
}

/// "11.3.0" → (11, 3, 0); missing parts are 0, junk is 0.
fn parse_version(v: &str) -> (u32, u32, u32) {
    let mut parts = v.split('.').map(|p| p.trim().parse::<u32>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{GIB, healthy_hypervisor};

    /// A healthy hypervisor, changed by `f`.
    fn hv(name: &str, free_gib: u64, f: impl FnOnce(&mut Hypervisor)) -> Hypervisor {
        let mut h = healthy_hypervisor(name, free_gib);
        f(&mut h);
        h
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    static NOT_CORDONED: BTreeSet<String> = BTreeSet::new();

    /// Inputs for checking one node against `source` (4 GiB VM unless said).
    fn inputs<'a>(
        source: &'a Hypervisor,
        beats: &'a BTreeMap<String, Timestamp>,
        none: &'a BTreeMap<String, u32>,
    ) -> Inputs<'a> {
        Inputs {
            vm_memory_bytes: 4 * GIB,
            source,
            hypervisors: &[],
            heartbeats: beats,
            cordoned: &NOT_CORDONED,
            evacuating: &NOT_CORDONED,
            inbound: none,
            inbound_limit: 2,
            selector: None,
            now: now(),
            heartbeat_max_age: Duration::from_secs(40),
        }
    }

    fn choose_among(
        nodes: Vec<Hypervisor>,
        inbound: &[(&str, u32)],
        selector: Option<&LabelSelector>,
    ) -> Result<Choice, NoChoice> {
        let source = hv("src", 1, |h| {
            h.metadata.labels = Some([("rack".to_string(), "r1".to_string())].into())
        });
        let beats: BTreeMap<String, Timestamp> = nodes
            .iter()
            .map(|h| {
                (
                    h.metadata.name.clone().unwrap(),
                    now() - jiff::SignedDuration::from_secs(5),
                )
            })
            .collect();
        let inbound: BTreeMap<String, u32> =
            inbound.iter().map(|(n, c)| (n.to_string(), *c)).collect();
        let mut all: Vec<Arc<Hypervisor>> = nodes.into_iter().map(Arc::new).collect();
        all.push(Arc::new(source.clone()));
        choose(&Inputs {
            vm_memory_bytes: 4 * GIB,
            source: &source,
            hypervisors: &all,
            heartbeats: &beats,
            cordoned: &NOT_CORDONED,
            evacuating: &NOT_CORDONED,
            inbound: &inbound,
            inbound_limit: 2,
            selector,
            now: now(),
            heartbeat_max_age: Duration::from_secs(40),
        })
    }

    #[test]
    fn each_filter_excludes_with_its_reason() {
        let cases: Vec<(&str, Hypervisor, &str)> = vec![
            (
                "not ready",
                hv("n", 32, |h| {
                    h.status.as_mut().unwrap().conditions[0].status = "False".into()
                }),
                "TargetNotReady",
            ),
            (
                "no status",
                hv("n", 32, |h| h.status = None),
                "TargetNotReady",
            ),
            (
                "cordoned",
                hv("n", 32, |h| h.spec.unschedulable = true),
                "TargetUnschedulable",
            ),
            ("small", hv("n", 2, |_| {}), "InsufficientMemory"),
            (
                "other arch",
                hv("n", 32, |h| {
                    h.status.as_mut().unwrap().cpu.as_mut().unwrap().arch = "aarch64".into()
                }),
                "CPUIncompatible",
            ),
            (
                "old libvirt",
                hv("n", 32, |h| {
                    h.status.as_mut().unwrap().libvirt_version = Some("9.0.0".into())
                }),
                "LibvirtTooOld",
            ),
        ];
        let source = hv("src", 1, |_| {});
        for (name, node, want) in cases {
            let beats: BTreeMap<String, Timestamp> = [("n".to_string(), now())].into();
            let none = BTreeMap::new();
            let inp = inputs(&source, &beats, &none);
            assert_eq!(
                exclusion(&inp, &node).map(|e| e.reason().as_str()),
                Some(want),
                "{name}"
            );
        }
    }

    #[test]
    fn a_node_cordoned_in_kubernetes_takes_no_vm() {
        let source = hv("src", 1, |_| {});
        let node = hv("n", 32, |_| {});
        let beats: BTreeMap<String, Timestamp> = [("n".to_string(), now())].into();
        let none = BTreeMap::new();
        let cordoned: BTreeSet<String> = ["n".to_string()].into();
        let inp = Inputs {
            cordoned: &cordoned,
            ..inputs(&source, &beats, &none)
        };
        let got = exclusion(&inp, &node).unwrap();
        assert_eq!(got, Exclusion::NodeCordoned);
        assert_eq!(got.reason().as_str(), "TargetUnschedulable");
        assert_eq!(exclusion(&inputs(&source, &beats, &none), &node), None);
    }

    #[test]
    fn a_node_being_evacuated_takes_no_vm_so_nothing_moves_twice() {
        let source = hv("src", 1, |_| {});
        let node = hv("n", 32, |_| {});
        let beats: BTreeMap<String, Timestamp> = [("n".to_string(), now())].into();
        let none = BTreeMap::new();
        let evacuating: BTreeSet<String> = ["n".to_string()].into();
        let inp = Inputs {
            evacuating: &evacuating,
            ..inputs(&source, &beats, &none)
        };
        let got = exclusion(&inp, &node).unwrap();
        assert_eq!(got, Exclusion::BeingEvacuated);
        assert_eq!(got.reason().as_str(), "TargetUnschedulable");
        assert_eq!(got.describe(), "it is being evacuated");
    }

    #[test]
    fn a_stale_or_missing_heartbeat_excludes_the_node() {
        let source = hv("src", 1, |_| {});
        let node = hv("n", 32, |_| {});
        for beats in [
            BTreeMap::new(),
            [(
                "n".to_string(),
                now() - jiff::SignedDuration::from_secs(120),
            )]
            .into(),
        ] {
            let none = BTreeMap::new();
            let inp = inputs(&source, &beats, &none);
            assert_eq!(exclusion(&inp, &node), Some(Exclusion::AgentUnavailable));
        }
    }

    #[test]
    fn the_node_with_most_free_memory_wins_then_fewest_inbound() {
        let got = choose_among(vec![hv("a", 16, |_| {}), hv("b", 32, |_| {})], &[], None).unwrap();
        assert_eq!(got.node, "b");
        assert!(
            got.message
                .starts_with("chose b: most free memory (32768 MiB)"),
            "{}",
            got.message
        );
        let tie = choose_among(
            vec![hv("a", 32, |_| {}), hv("b", 32, |_| {})],
            &[("a", 2), ("b", 1)],
            None,
        )
        .unwrap();
        assert_eq!(tie.node, "b");
    }

    #[test]
    fn the_selector_limits_the_choice_and_exclusions_are_explained() {
        let labelled = hv("a", 8, |h| {
            h.metadata.labels = Some([("rack".to_string(), "r2".to_string())].into())
        });
        let sel = LabelSelector {
            match_labels: Some([("rack".into(), "r2".into())].into()),
            match_expressions: None,
        };
        let got = choose_among(vec![labelled, hv("b", 32, |_| {})], &[], Some(&sel)).unwrap();
        assert_eq!(got.node, "a");
        assert!(
            got.message
                .contains("excluded b: it does not match targetSelector"),
            "{}",
            got.message
        );
    }

    #[test]
    fn no_eligible_node_is_an_error_naming_each_reason() {
        let err = choose_among(
            vec![
                hv("a", 1, |_| {}),
                hv("b", 32, |h| h.spec.unschedulable = true),
            ],
            &[],
            None,
        )
        .unwrap_err();
        assert_eq!(
            err,
            NoChoice::Refuse(
                ConditionReason::NoTargetAvailable,
                "no node can take the VM: a: only 1024 MiB free; b: it is unschedulable".into()
            )
        );
        assert_eq!(
            choose_among(vec![], &[], None).unwrap_err(),
            NoChoice::Refuse(
                ConditionReason::NoTargetAvailable,
                "no node can take the VM: there is no other Hypervisor".into()
            )
        );
    }

    #[test]
    fn nodes_at_their_inbound_limit_make_the_migration_wait_not_fail() {
        let err = choose_among(
            vec![hv("a", 32, |_| {}), hv("b", 1, |_| {})],
            &[("a", 2)],
            None,
        )
        .unwrap_err();
        assert!(
            matches!(err, NoChoice::Wait(ref m) if m.contains("a: 2 migration(s) already head there")),
            "{err:?}"
        );
        let got = choose_among(vec![hv("a", 32, |_| {})], &[("a", 1)], None).unwrap();
        assert_eq!(got.node, "a");
    }

    #[test]
    fn a_selector_matching_only_the_source_is_same_node() {
        let r1 = LabelSelector {
            match_labels: Some([("rack".into(), "r1".into())].into()),
            match_expressions: None,
        };
        let err = choose_among(vec![hv("a", 32, |_| {})], &[], Some(&r1)).unwrap_err();
        assert!(
            matches!(err, NoChoice::Refuse(ConditionReason::SameNode, ref m) if m.contains("only the VM's own node matches")),
            "{err:?}"
        );
        let r9 = LabelSelector {
            match_labels: Some([("rack".into(), "r9".into())].into()),
            match_expressions: None,
        };
        let err = choose_among(vec![hv("a", 32, |_| {})], &[], Some(&r9)).unwrap_err();
        assert!(
            matches!(err, NoChoice::Refuse(ConditionReason::NoTargetAvailable, _)),
            "{err:?}"
        );
    }
}
