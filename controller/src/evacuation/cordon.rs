//! Evacuate on cordon: a hypervisor Node that opted in (by label) gets a
//! NodeEvacuation when it is cordoned, and loses it when uncordoned. The
//! decision is a pure function of the Node and the evacuations of it.

use std::collections::BTreeMap;

/// Node label that opts a node in (value `true`), with the controller's
/// `--evacuate-on-cordon`.
pub const OPT_IN_LABEL: &str = "kvmotion.io/evacuate-on-cordon";

/// Label on the evacuations this creates: the node's name.
pub const CORDON_LABEL: &str = "kvmotion.io/cordoned-node";

/// A Node, as the decision needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// `spec.unschedulable`.
    pub cordoned: bool,
    /// Carries `OPT_IN_LABEL=true`.
    pub opted_in: bool,
    /// Being deleted.
    pub deleting: bool,
}

/// An evacuation of that node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvacuationView {
    /// Its name.
    pub name: String,
    /// Created by a cordon (carries `CORDON_LABEL`).
    pub by_cordon: bool,
    /// Already being deleted.
    pub deleting: bool,
}

/// What to do about one Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CordonAction {
    /// Create the evacuation with this name.
    Create(String),
    /// Delete these evacuations (made by an earlier cordon): deletion
    /// cancels the moves that have not started.
    Delete(Vec<String>),
    /// Nothing.
    Nothing,
}

/// The evacuation a cordon of `node` creates.
pub fn evacuation_name(node: &str) -> String {
    let mut name = format!("cordon-{node}");
    name.truncate(253);
    name
}

/// Decides for one Node. A cordoned, opted-in node gets one evacuation
/// unless one exists (any origin, any phase: a finished one is not made
/// again while the node stays cordoned; deleting it asks for a new one).
/// Uncordoned, the cordon's evacuations go, opted in or not.
pub fn decide(node: &NodeView, evacuations: &[EvacuationView]) -> CordonAction {
    let ours: Vec<String> = evacuations
        .iter()
        .filter(|e| e.by_cordon && !e.deleting)
        .map(|e| e.name.clone())
        .collect();
    if node.deleting {
        // A Node leaving the cluster: whatever runs is left to run.
        return CordonAction::Nothing;
    }
    match (node.cordoned, node.opted_in) {
        (false, _) if !ours.is_empty() => CordonAction::Delete(ours),
        (false, _) => CordonAction::Nothing,
        (true, false) => CordonAction::Nothing,
        (true, true) if evacuations.iter().any(|e| !e.deleting) => CordonAction::Nothing,
        (true, true) => CordonAction::Create(evacuation_name(&node.name)),
    }
}

/// Labels for objects a controller restricted to `selector` creates, so
/// that it sees them: the selector's `key=value` terms (other terms give
/// none).
pub fn labels_for_selector(selector: Option<&str>) -> BTreeMap<String, String> {
    selector
        .into_iter()
        .flat_map(|s| s.split(','))
        .filter_map(|term| {
            if term.contains("!=") {
                return None;
            }
            let (k, v) = term.split_once('=')?;
            let (k, v) = (k.trim(), v.trim_start_matches('=').trim());
            (!k.is_empty()).then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cordoned: bool, opted_in: bool) -> NodeView {
        NodeView {
            name: "node-a".into(),
            cordoned,
            opted_in,
            deleting: false,
        }
    }

    fn evac(name: &str, by_cordon: bool) -> EvacuationView {
        EvacuationView {
            name: name.into(),
            by_cordon,
            deleting: false,
        }
    }

    #[test]
    fn a_cordon_makes_one_evacuation_and_an_uncordon_removes_it() {
        let created = CordonAction::Create("cordon-node-a".into());
        let cases = [
            (
                "cordoned, opted in, none yet",
                node(true, true),
                vec![],
                created.clone(),
            ),
            (
                "cordoned, not opted in",
                node(true, false),
                vec![],
                CordonAction::Nothing,
            ),
            (
                "cordoned, ours exists (any phase)",
                node(true, true),
                vec![evac("cordon-node-a", true)],
                CordonAction::Nothing,
            ),
            (
                "cordoned, a user's evacuation runs",
                node(true, true),
                vec![evac("maintenance", false)],
                CordonAction::Nothing,
            ),
            (
                "cordoned, ours is being deleted: made again once it is gone",
                node(true, true),
                vec![EvacuationView {
                    deleting: true,
                    ..evac("cordon-node-a", true)
                }],
                created.clone(),
            ),
            (
                "uncordoned: ours goes, a user's stays",
                node(false, true),
                vec![evac("cordon-node-a", true), evac("maintenance", false)],
                CordonAction::Delete(vec!["cordon-node-a".into()]),
            ),
            (
                "uncordoned, opted out meanwhile: ours still goes",
                node(false, false),
                vec![evac("cordon-node-a", true)],
                CordonAction::Delete(vec!["cordon-node-a".into()]),
            ),
            (
                "uncordoned, nothing of ours",
                node(false, true),
                vec![evac("maintenance", false)],
                CordonAction::Nothing,
            ),
            (
                "a Node being deleted starts nothing",
                NodeView {
                    deleting: true,
                    ..node(true, true)
                },
                vec![],
                CordonAction::Nothing,
            ),
        ];
        for (case, n, evacs, want) in cases {
            assert_eq!(decide(&n, &evacs), want, "{case}");
        }
    }

    #[test]
    fn equality_terms_of_the_controllers_selector_become_labels() {
        let got = labels_for_selector(Some("kvmotion.io/test-scope=abc, team==infra,x!=y,has"));
        let want: BTreeMap<String, String> = [
            ("kvmotion.io/test-scope".to_string(), "abc".to_string()),
            ("team".to_string(), "infra".to_string()),
        ]
        .into();
        assert_eq!(got, want);
        assert!(labels_for_selector(None).is_empty());
    }
}
