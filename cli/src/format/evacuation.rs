//! What `kubectl migrate drain` prints: the plan, a line per VM whose move
//! changed, the counts, and how the evacuation ended.

use std::collections::BTreeMap;

use kvmotion_api::evacuation::{EvacuationPhase, NodeEvacuation};

use super::table::render;
use super::units::{bytes, seconds, secs_between};

/// Columns of the plan.
pub const PLAN_HEADER: [&str; 4] = ["VM", "MEMORY", "MODE", "TARGET"];

/// The phase the controller wrote for the evacuation's current spec, or
/// None while it has not caught up with it (just created or changed).
pub fn current_phase(e: &NodeEvacuation) -> Option<EvacuationPhase> {
    let s = e.status.as_ref()?;
    let fresh = s.observed_generation.unwrap_or(0) >= e.metadata.generation.unwrap_or(0);
    s.phase.filter(|_| fresh)
}

/// The plan as a table, then each VM that has no place and why.
pub fn plan(e: &NodeEvacuation) -> String {
    let Some(s) = e.status.as_ref() else {
        return "no plan yet".into();
    };
    let mut text = String::new();
    if !s.plan.is_empty() {
        let rows: Vec<Vec<String>> = s
            .plan
            .iter()
            .map(|m| {
                vec![
                    m.vm.clone(),
                    bytes(m.memory_bytes),
                    format!("{:?}", m.mode),
                    m.target_node.clone(),
                ]
            })
            .collect();
        text.push_str(&render(&PLAN_HEADER, &rows));
    }
    if !s.unplaceable.is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str("no place for:");
        for u in &s.unplaceable {
            text.push_str(&format!("\n  {}: {}: {}", u.vm, u.reason, u.message));
        }
    }
    if text.is_empty() {
        text = format!("{} runs no VM to move", e.spec.node_name);
    }
    text
}

/// Each planned VM's move as it stands: `migration phase` (or `pending`).
pub fn moves(e: &NodeEvacuation) -> BTreeMap<String, String> {
    e.status
        .iter()
        .flat_map(|s| s.plan.iter())
        .map(|m| {
            let state = match (&m.migration, m.migration_phase) {
                (Some(name), Some(p)) => format!("{} ({name})", p.as_str()),
                (Some(name), None) => format!("Submitted ({name})"),
                (None, _) => "pending".into(),
            };
            (m.vm.clone(), state)
        })
        .collect()
}

/// A line for every VM whose move changed since `before`.
pub fn changes(before: &BTreeMap<String, String>, now: &BTreeMap<String, String>) -> Vec<String> {
    now.iter()
        .filter(|(vm, state)| before.get(*vm) != Some(*state))
        .map(|(vm, state)| format!("{vm}: {state}"))
        .collect()
}

/// The counts, as the progress line.
pub fn progress(e: &NodeEvacuation) -> String {
    let phase = current_phase(e).map_or("Submitted", EvacuationPhase::as_str);
    match e.status.as_ref().and_then(|s| s.counts.as_ref()) {
        Some(c) => format!(
            "{phase}: {}/{} moved, {} moving, {} pending, {} failed",
            c.moved, c.total, c.moving, c.pending, c.failed
        ),
        None => phase.to_string(),
    }
}

/// How the evacuation ended, in a sentence: how many VMs moved and in
/// how long, or the condition that says what is left.
pub fn ended(e: &NodeEvacuation, now: jiff::Timestamp) -> String {
    let node = &e.spec.node_name;
    let name = e.metadata.name.as_deref().unwrap_or_default();
    let s = e.status.clone().unwrap_or_default();
    let condition = |t: &str| {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    let moved = s.counts.as_ref().map_or(0, |c| c.moved);
    let took = s.start_time.as_ref().map(|start| {
        let end = s.completion_time.as_ref().map_or(now, |t| t.0);
        seconds(secs_between(start.0, end).max(0).unsigned_abs())
    });
    match current_phase(e) {
        Some(EvacuationPhase::Completed) => format!(
            "{node} evacuated: {moved} VM{} moved{}",
            if moved == 1 { "" } else { "s" },
            took.map(|t| format!(" in {t}")).unwrap_or_default()
        ),
        Some(EvacuationPhase::Failed) => format!(
            "{node} not evacuated ({name} Failed): {}",
            non_empty(condition("Completed"), || condition("Planned"))
        ),
        Some(EvacuationPhase::Cancelled) => {
            format!("{name} was cancelled before {node} was empty; {moved} VMs had moved")
        }
        Some(EvacuationPhase::Blocked) => format!(
            "{node} cannot be evacuated as things are ({name} Blocked): nothing moves until every VM \
             has a place; it is planned again every 30 s (`kubectl delete nevac {name}` gives up)"
        ),
        Some(EvacuationPhase::Planned) => format!("dry run of {node}: nothing moved"),
        Some(EvacuationPhase::Planning | EvacuationPhase::Evacuating) | None => {
            format!("{name} deleted while {}", progress(e))
        }
    }
}

fn non_empty(s: String, or: impl FnOnce() -> String) -> String {
    if s.is_empty() { or() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kvmotion_api::MigrationMode;
    use kvmotion_api::Phase;
    use kvmotion_api::evacuation::{
        EvacuationCounts, NodeEvacuationSpec, NodeEvacuationStatus, PlannedMove, UnplaceableVm,
    };

    use crate::format::fixture::{cond, ts};

    fn planned(vm: &str, gib: u64, target: &str, phase: Option<Phase>) -> PlannedMove {
        PlannedMove {
            vm: vm.into(),
            uuid: format!("{vm}-uuid"),
            memory_bytes: gib << 30,
            mode: MigrationMode::Live,
            target_node: target.into(),
            migration: phase.map(|_| format!("drain-a-{vm}-1")),
            migration_phase: phase,
            attempts: u32::from(phase.is_some()),
            message: None,
        }
    }

    fn evac(phase: EvacuationPhase, plan: Vec<PlannedMove>) -> NodeEvacuation {
        let mut e = NodeEvacuation::new(
            "drain-a",
            NodeEvacuationSpec {
                node_name: "node-a".into(),
                dry_run: false,
                policy_ref: None,
                target_selector: None,
                live_impossible: Default::default(),
                max_parallel: None,
            },
        );
        e.metadata.generation = Some(1);
        e.status = Some(NodeEvacuationStatus {
            phase: Some(phase),
            plan,
            observed_generation: Some(1),
            ..Default::default()
        });
        e
    }

    #[test]
    fn the_plan_is_a_table_then_the_vms_without_a_place() {
        let mut e = evac(
            EvacuationPhase::Blocked,
            vec![
                planned("db", 4, "node-c", None),
                planned("web-1", 1, "node-b", None),
            ],
        );
        if let Some(s) = e.status.as_mut() {
            s.unplaceable = vec![UnplaceableVm {
                vm: "big".into(),
                uuid: "u".into(),
                reason: "InsufficientMemory".into(),
                message: "needs 64.0 GiB, node-b has 12.0 GiB free".into(),
            }];
        }
        assert_eq!(
            plan(&e),
            "VM      MEMORY    MODE   TARGET\n\
             db      4.0 GiB   Live   node-c\n\
             web-1   1.0 GiB   Live   node-b\n\
             no place for:\n  big: InsufficientMemory: needs 64.0 GiB, node-b has 12.0 GiB free"
        );
        assert_eq!(
            plan(&evac(EvacuationPhase::Planned, vec![])),
            "node-a runs no VM to move"
        );
    }

    #[test]
    fn a_line_is_printed_for_each_vm_whose_move_changed() {
        let before = moves(&evac(
            EvacuationPhase::Evacuating,
            vec![
                planned("db", 4, "node-c", Some(Phase::Migrating)),
                planned("web-1", 1, "node-b", None),
            ],
        ));
        let now = moves(&evac(
            EvacuationPhase::Evacuating,
            vec![
                planned("db", 4, "node-c", Some(Phase::Migrating)),
                planned("web-1", 1, "node-b", Some(Phase::Pending)),
            ],
        ));
        assert_eq!(changes(&before, &now), ["web-1: Pending (drain-a-web-1-1)"]);
        assert_eq!(
            changes(&BTreeMap::new(), &before),
            ["db: Migrating (drain-a-db-1)", "web-1: pending"]
        );
        assert!(changes(&now, &now).is_empty());
    }

    #[test]
    fn a_phase_written_for_an_older_spec_is_not_taken_as_current() {
        let mut e = evac(EvacuationPhase::Planned, vec![]);
        e.metadata.generation = Some(2);
        assert_eq!(current_phase(&e), None);
        assert_eq!(progress(&e), "Submitted");
    }

    #[test]
    fn each_end_reads_as_one_sentence() {
        let now = ts("2026-01-01T00:10:00Z");
        let mut done = evac(EvacuationPhase::Completed, vec![]);
        if let Some(s) = done.status.as_mut() {
            s.counts = Some(EvacuationCounts {
                total: 3,
                moved: 3,
                ..Default::default()
            });
            s.start_time = Some(Time(ts("2026-01-01T00:00:00Z")));
            s.completion_time = Some(Time(ts("2026-01-01T00:01:02Z")));
        }
        let mut failed = evac(EvacuationPhase::Failed, vec![]);
        if let Some(s) = failed.status.as_mut() {
            s.conditions = vec![cond(
                "Completed",
                "False",
                "VMsLeft",
                "db still runs on node-a: MigrationFailed",
            )];
        }
        let cases = [
            (done, "node-a evacuated: 3 VMs moved in 1m02s"),
            (
                failed,
                "node-a not evacuated (drain-a Failed): db still runs on node-a: MigrationFailed",
            ),
            (
                evac(EvacuationPhase::Planned, vec![]),
                "dry run of node-a: nothing moved",
            ),
            (
                evac(EvacuationPhase::Cancelled, vec![]),
                "drain-a was cancelled before node-a was empty; 0 VMs had moved",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(ended(&e, now), want);
        }
        assert!(
            ended(&evac(EvacuationPhase::Blocked, vec![]), now)
                .contains("`kubectl delete nevac drain-a` gives up")
        );
    }
}
