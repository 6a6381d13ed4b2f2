//! The drain guard: a pod on each hypervisor node, with a PodDisruptionBudget
//! that refuses its eviction, so that `kubectl drain` (and kured, Cluster
//! API, node-maintenance operators, which all evict through the same API)
//! waits until the node's VMs have left. The controller deletes the guard
//! itself once the cordoned node runs no VM, and places it again after the
//! uncordon. The decision is a pure function of the Node, its inventory and
//! the guard's objects.

/// Label on a guard pod and its budget: the node it guards.
pub const GUARDED_NODE_LABEL: &str = "kvmotion.io/guarded-node";

/// `app.kubernetes.io/component` of guard pods (distinct from the
/// controller's, so the controller's own budget never selects them).
pub const COMPONENT: &str = "drain-guard";

/// A Node, as the guard needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardedNode {
    /// `spec.unschedulable` (cordoned, as `kubectl drain` does first).
    pub cordoned: bool,
    /// Being deleted.
    pub deleting: bool,
    /// It has a Hypervisor (an agent publishes its inventory).
    pub hypervisor: bool,
    /// The VMs its inventory lists that run or are paused, while the
    /// agent's heartbeat is fresh; `None` when it is not (the node's
    /// content is unknown).
    pub running: Option<Vec<String>>,
}

/// The guard's objects as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GuardObjects {
    /// The guard pod exists; `Some(true)` while it is being deleted.
    pub pod: Option<bool>,
    /// The budget exists.
    pub budget: bool,
}

/// What to do about one node's guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardAction {
    /// Create what is missing: the budget first, then the pod, so the pod
    /// is never evictable.
    Place,
    /// Delete the pod (not an eviction: the budget does not apply), then
    /// the budget: the node may be drained.
    Release,
    /// Leave things as they are.
    Nothing,
}

/// Decides for one node. A schedulable hypervisor node is guarded. A
/// cordoned one keeps its guard while any VM runs there or its inventory
/// is unknown, and loses it once its fresh inventory lists none; it gets
/// no new guard while cordoned (a drain that already passed would not see
/// it). A node that is not a hypervisor, or leaves the cluster, is not
/// guarded.
pub fn decide(node: &GuardedNode, guard: GuardObjects) -> GuardAction {
    let present = guard.pod.is_some() || guard.budget;
    let complete = guard.pod.is_some() && guard.budget;
    if node.deleting || !node.hypervisor {
        return if present {
            GuardAction::Release
        } else {
            GuardAction::Nothing
        };
    }
    match (node.cordoned, node.running.as_deref()) {
        // A pod still going away is waited for: its name is taken.
        (false, _) if guard.pod == Some(true) => GuardAction::Nothing,
        (false, _) if complete => GuardAction::Nothing,
        (false, _) => GuardAction::Place,
        (true, Some([])) if present => GuardAction::Release,
        (true, Some([])) => GuardAction::Nothing,
        (true, Some([_, ..])) => GuardAction::Nothing,
        (true, None) => GuardAction::Nothing,
    }
}

/// The name of the guard pod (and its budget) of `node`. `kubectl drain`
/// names the pod in every retry ("error when evicting pods/…"), so the
/// name says what holds the drain and where to look.
pub fn guard_name(node: &str) -> String {
    const SUFFIX: &str = "-has-vms-see-kubectl-get-nevac";
    let mut node = node.to_string();
    node.truncate(253 - SUFFIX.len());
    format!("{node}{SUFFIX}")
}

/// The value of `GUARDED_NODE_LABEL` for `node`: its name, or where that
/// is longer than a label value may be (63), its start and a stable hash
/// of the whole (FNV-1a), so that each node's budget selects only its pod.
pub fn node_label_value(node: &str) -> String {
    if node.len() <= 63 {
        return node.to_string();
    }
    let hash = node.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let start: String = node.chars().take(46).collect();
    format!("{}-{hash:016x}", start.trim_end_matches(['-', '.']))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cordoned: bool, running: Option<&[&str]>) -> GuardedNode {
        GuardedNode {
            cordoned,
            deleting: false,
            hypervisor: true,
            running: running.map(|r| r.iter().map(|s| s.to_string()).collect()),
        }
    }

    const NONE: GuardObjects = GuardObjects {
        pod: None,
        budget: false,
    };
    const BOTH: GuardObjects = GuardObjects {
        pod: Some(false),
        budget: true,
    };
    const POD_GOING: GuardObjects = GuardObjects {
        pod: Some(true),
        budget: true,
    };
    const BUDGET_ONLY: GuardObjects = GuardObjects {
        pod: None,
        budget: true,
    };
    const POD_ONLY: GuardObjects = GuardObjects {
        pod: Some(false),
        budget: false,
    };

    #[test]
    fn each_node_state_and_guard_state_gets_its_action() {
        use GuardAction::*;
        let vm: &[&str] = &["db"];
        let empty: &[&str] = &[];
        let cases: &[(&str, GuardedNode, GuardObjects, GuardAction)] = &[
            ("schedulable, unguarded", node(false, Some(vm)), NONE, Place),
            ("schedulable, guarded", node(false, Some(vm)), BOTH, Nothing),
            (
                "schedulable and empty is guarded all the same",
                node(false, Some(empty)),
                NONE,
                Place,
            ),
            (
                "schedulable, inventory unknown",
                node(false, None),
                NONE,
                Place,
            ),
            (
                "a lost budget is made again",
                node(false, Some(vm)),
                POD_ONLY,
                Place,
            ),
            (
                "a lost pod is made again",
                node(false, Some(vm)),
                BUDGET_ONLY,
                Place,
            ),
            (
                "uncordoned while the old pod goes: wait for its name",
                node(false, Some(vm)),
                POD_GOING,
                Nothing,
            ),
            (
                "cordoned with VMs: held",
                node(true, Some(vm)),
                BOTH,
                Nothing,
            ),
            (
                "cordoned, inventory unknown: held",
                node(true, None),
                BOTH,
                Nothing,
            ),
            (
                "cordoned and empty: released",
                node(true, Some(empty)),
                BOTH,
                Release,
            ),
            (
                "cordoned and empty, pod gone, budget left: released",
                node(true, Some(empty)),
                BUDGET_ONLY,
                Release,
            ),
            (
                "cordoned and released",
                node(true, Some(empty)),
                NONE,
                Nothing,
            ),
            (
                "cordoned with VMs, unguarded: no new guard",
                node(true, Some(vm)),
                NONE,
                Nothing,
            ),
        ];
        for (what, n, g, want) in cases {
            assert_eq!(decide(n, *g), *want, "{what}");
        }
    }

    #[test]
    fn a_node_that_is_no_hypervisor_or_leaves_loses_its_guard() {
        let mut n = node(false, Some(&["db"]));
        n.hypervisor = false;
        assert_eq!(decide(&n, BOTH), GuardAction::Release);
        assert_eq!(decide(&n, NONE), GuardAction::Nothing);
        let mut n = node(true, Some(&["db"]));
        n.deleting = true;
        assert_eq!(decide(&n, BUDGET_ONLY), GuardAction::Release);
        assert_eq!(decide(&n, NONE), GuardAction::Nothing);
    }

    #[test]
    fn the_guards_name_points_at_the_evacuations_and_fits_an_object_name() {
        assert_eq!(guard_name("node-a"), "node-a-has-vms-see-kubectl-get-nevac");
        assert_eq!(guard_name(&"n".repeat(300)).len(), 253);
    }

    #[test]
    fn long_node_names_get_distinct_label_values_that_fit() {
        assert_eq!(node_label_value("node-a"), "node-a");
        let a = node_label_value(&format!("{}a", "n".repeat(70)));
        let b = node_label_value(&format!("{}b", "n".repeat(70)));
        assert_ne!(a, b);
        assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
    }
}
