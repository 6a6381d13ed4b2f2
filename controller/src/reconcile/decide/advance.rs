//! Carrying one observation through the phases that ask no agent:
//! accepting, admitting, scheduling and prechecking read only the watch
//! caches, so their decisions follow one another from the same snapshot
//! and only the last status is written. A move then reaches Preparing in
//! one status write instead of four, each of which cost a write and a
//! watch event's round trip before the agents were called.

use jiff::Timestamp;
use kvmotion_api::{Phase, VirtualMachineMigrationStatus};

use super::{Decision, Settings, decide};
use crate::reconcile::observe::Observed;

/// A decision carried as far as the caches allow.
#[derive(Debug, Clone, PartialEq)]
pub struct Advance {
    /// The decision whose status is written (with the capacity admission
    /// of any step along the way).
    pub decision: Decision,
    /// The statuses passed through before the decision's own, oldest
    /// first, none of them written: Events and metrics count each step.
    pub passed: Vec<VirtualMachineMigrationStatus>,
}

/// Whether a phase's own decision reads nothing but the caches, so that a
/// decision entering it may be followed at once by that one.
fn asks_no_agent(phase: Option<Phase>) -> bool {
    match phase {
        Some(Phase::Pending) | Some(Phase::Scheduling) | Some(Phase::Prechecking) => true,
        // Preparing is written before its agent calls: the status records
        // what the agents are about to be asked.
        None
        | Some(Phase::Preparing)
        | Some(Phase::Migrating)
        | Some(Phase::Finalizing)
        | Some(Phase::Succeeded)
        | Some(Phase::Failed)
        | Some(Phase::Cancelled) => false,
    }
}

/// `decide`, then, while the decision enters a phase that asks no agent,
/// that phase's decision on the decided status: what successive reconciles
/// would write, one watch event apart, from the same caches.
pub fn advance(obs: &Observed, s: &Settings, now: Timestamp) -> Advance {
    let mut decision = decide(obs, s, now);
    let mut passed = Vec::new();
    let mut at = obs.status.clone();
    let mut next_obs: Option<Observed> = None;
    while decision.effect.is_none()
        && obs.deleting_since.is_none()
        && decision.status.phase != at.phase
        && asks_no_agent(decision.status.phase)
    {
        let o = next_obs.get_or_insert_with(|| obs.clone());
        o.status = decision.status.clone();
        at = decision.status.clone();
        let next = decide(o, s, now);
        if next.status == at && next.effect.is_none() {
            // Nothing more to write: keep waiting as decided.
            decision.next = next.next;
            break;
        }
        let admitted = decision.admitted.take().or(next.admitted.clone());
        passed.push(std::mem::replace(&mut decision, Decision { admitted, ..next }).status);
    }
    Advance { decision, passed }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kvmotion_api::ConditionType as C;

    use super::*;
    use crate::reconcile::conditions;
    use crate::reconcile::decide::Next;
    use crate::reconcile::decide::tests::{Obs, hv, now, one_slot_taken};

    /// The phase of every step, the written one last.
    fn phases(a: &Advance) -> Vec<Option<Phase>> {
        a.passed
            .iter()
            .chain([&a.decision.status])
            .map(|s| s.phase)
            .collect()
    }

    #[test]
    fn a_new_migration_with_room_is_written_once_as_preparing() {
        let obs = Obs::new(None).0;
        let a = advance(&obs, &Settings::default(), now());
        assert_eq!(
            phases(&a),
            [
                Some(Phase::Pending),
                Some(Phase::Scheduling),
                Some(Phase::Prechecking),
                Some(Phase::Preparing)
            ]
        );
        let d = &a.decision;
        assert_eq!(d.status.phase, Some(Phase::Preparing));
        assert!(
            d.effect.is_none(),
            "agents are called once Preparing is written"
        );
        assert!(
            d.admitted.is_some(),
            "the capacity taken on the way is reserved"
        );
        assert_eq!(d.status.target_node.as_deref(), Some("b"));
        for c in [C::Accepted, C::Admitted, C::Scheduled, C::Prechecked] {
            let got = conditions::get(&d.status.conditions, c).map(|x| x.status.as_str());
            assert_eq!(got, Some("True"), "{c:?} in {:?}", d.status.conditions);
        }
        // Each phase is recorded as entered, in order.
        let entered: Vec<Phase> = d
            .status
            .phase_transition_times
            .iter()
            .map(|t| t.phase)
            .collect();
        assert_eq!(
            entered,
            [
                Phase::Pending,
                Phase::Scheduling,
                Phase::Prechecking,
                Phase::Preparing
            ]
        );
        // Deciding again on what is written changes nothing but asks the agents.
        let written = Obs::new(None).with(|o| o.status = d.status.clone()).0;
        let again = advance(&written, &Settings::default(), now());
        assert!(again.passed.is_empty());
        assert!(again.decision.effect.is_some());
    }

    #[test]
    fn a_migration_without_room_stops_in_pending_saying_why() {
        let obs = Obs::new(None).with(one_slot_taken).0;
        let a = advance(&obs, &Settings::default(), now());
        assert_eq!(phases(&a), [Some(Phase::Pending), Some(Phase::Pending)]);
        let c = conditions::get(&a.decision.status.conditions, C::Admitted).unwrap();
        assert_eq!(c.reason, "WaitingForCapacity");
        assert!(a.decision.admitted.is_none());
        assert!(matches!(a.decision.next, Next::RequeueAfter(_)));
    }

    #[test]
    fn a_failed_precheck_ends_in_the_same_write() {
        let obs = Obs::new(None)
            .with(|o| {
                o.world.hypervisors = vec![Arc::new(hv("a", vec![])), Arc::new(hv("b", vec![]))]
            })
            .0;
        let a = advance(&obs, &Settings::default(), now());
        assert_eq!(a.decision.status.phase, Some(Phase::Failed));
        assert_eq!(phases(&a).first(), Some(&Some(Phase::Pending)));
        assert!(a.decision.effect.is_none());
    }

    #[test]
    fn phases_that_ask_agents_and_deletions_are_decided_one_step_at_a_time() {
        // Preparing and every phase after it.
        for phase in Phase::ALL.into_iter().skip(3) {
            let obs = Obs::new(Some(phase)).0;
            let a = advance(&obs, &Settings::default(), now());
            assert_eq!(
                a.decision,
                decide(&obs, &Settings::default(), now()),
                "{phase:?}"
            );
            assert!(a.passed.is_empty(), "{phase:?}");
        }
    }
}
