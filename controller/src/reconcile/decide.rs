//! Decide: the next status of a migration, as a pure function of what was
//! observed and the time. No I/O here, so every branch is table-tested.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kvmotion_api::migration::PhaseTransition;
use kvmotion_api::{ConditionReason, ConditionType, Phase, VirtualMachineMigrationStatus};

use super::conditions;
use super::observe::Observed;

/// What reconcile should do.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The status to write, when it differs from the current one.
    pub status: Option<VirtualMachineMigrationStatus>,
    /// When to look at the object again.
    pub next: Next,
}

/// When to reconcile again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Only when the object (or something watched) changes.
    AwaitChange,
    /// After a delay, whatever happens.
    RequeueAfter(Duration),
}

impl From<Next> for Action {
    fn from(n: Next) -> Action {
        match n {
            Next::AwaitChange => Action::await_change(),
            Next::RequeueAfter(d) => Action::requeue(d),
        }
    }
}

/// Computes the next status of a migration.
pub fn decide(obs: &Observed, now: Timestamp) -> Decision {
    // Status times are whole seconds, as Kubernetes serializes them.
    let now = Time(Timestamp::from_second(now.as_second()).unwrap_or(now));
    let mut next = obs.status.clone();
    match obs.status.phase {
        None => accept(obs, &mut next, now),
        Some(Phase::Pending) => {
            // Accepted and queued. Only forceComplete can change the spec
            // now; the generation it bumps is acknowledged.
            next.observed_generation = Some(obs.generation);
        }
        // The phases after Pending are driven by the scheduling, precheck
        // and agent steps; this slice of the controller never enters them,
        // so an object found there keeps its status untouched.
        Some(Phase::Scheduling)
        | Some(Phase::Prechecking)
        | Some(Phase::Preparing)
        | Some(Phase::Migrating)
        | Some(Phase::Finalizing) => {}
        // Terminal: never changes again.
        Some(Phase::Succeeded) | Some(Phase::Failed) | Some(Phase::Cancelled) => {}
    }
    Decision {
        status: (next != obs.status).then_some(next),
        next: Next::AwaitChange,
    }
}

/// A new migration: accept it into Pending, or fail it at once when the
/// controller cannot act on its spec (the spec is immutable, so waiting
/// would not help: the user must create a corrected migration).
fn accept(obs: &Observed, next: &mut VirtualMachineMigrationStatus, now: Time) {
    let (phase, accepted, reason, message) = match &obs.spec {
        Ok(_) => (
            Phase::Pending,
            true,
            ConditionReason::Accepted,
            "the migration is valid and queued".to_string(),
        ),
        Err(problem) => (
            Phase::Failed,
            false,
            ConditionReason::InvalidSpec,
            format!("{}; create a corrected migration", problem.message),
        ),
    };
    enter(next, phase, now.clone());
    conditions::set(
        &mut next.conditions,
        ConditionType::Accepted,
        accepted,
        reason,
        message,
        obs.generation,
        now,
    );
    next.observed_generation = Some(obs.generation);
}

/// Moves the status into `phase`, recording when.
fn enter(status: &mut VirtualMachineMigrationStatus, phase: Phase, now: Time) {
    status.phase = Some(phase);
    status.phase_transition_times.push(PhaseTransition {
        phase,
        time: now.clone(),
    });
    if phase.is_terminal() {
        status.completion_time = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::observe::SpecProblem;
    use kvmotion_api::{VirtualMachineMigrationSpec, VmRef};

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn spec() -> VirtualMachineMigrationSpec {
        VirtualMachineMigrationSpec {
            vm: VmRef {
                name: Some("web-1".into()),
                uuid: None,
            },
            source_node: None,
            target_node: Some("node-b".into()),
            target_selector: None,
            mode: Default::default(),
            policy_ref: None,
            overrides: None,
            force_complete: false,
        }
    }

    fn observed(phase: Option<Phase>) -> Observed {
        Observed {
            name: "m".into(),
            generation: 1,
            spec: Ok(spec()),
            status: VirtualMachineMigrationStatus {
                phase,
                observed_generation: phase.map(|_| 1),
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_new_valid_migration_is_accepted_into_pending() {
        let d = decide(&observed(None), now());
        let s = d.status.expect("status written");
        assert_eq!(s.phase, Some(Phase::Pending));
        assert_eq!(s.observed_generation, Some(1));
        assert_eq!(s.phase_transition_times.len(), 1);
        let c = &s.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("Accepted", "True", "Accepted")
        );
        assert_eq!(s.completion_time, None);
    }

    #[test]
    fn a_new_migration_with_an_unusable_spec_fails_with_invalid_spec() {
        let mut o = observed(None);
        o.spec = Err(SpecProblem {
            message: "spec.targetSelector.matchExpressions[0].operator: \"Near\" is not one of"
                .into(),
        });
        let s = decide(&o, now()).status.expect("status written");
        assert_eq!(s.phase, Some(Phase::Failed));
        let c = &s.conditions[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert!(
            c.message
                .starts_with("spec.targetSelector.matchExpressions[0].operator")
        );
        assert!(s.completion_time.is_some());
    }

    #[test]
    fn every_phase_after_acceptance_is_stable_in_this_slice() {
        // (phase, generation bump) → whether a status write is expected
        for phase in Phase::ALL {
            let d = decide(&observed(Some(phase)), now());
            assert_eq!(d.status, None, "{phase}: no write expected");
            assert_eq!(d.next, Next::AwaitChange, "{phase}");
        }
    }

    #[test]
    fn pending_acknowledges_a_new_generation() {
        let mut o = observed(Some(Phase::Pending));
        o.generation = 2;
        let s = decide(&o, now()).status.expect("status written");
        assert_eq!(s.observed_generation, Some(2));
    }

    #[test]
    fn deciding_twice_is_idempotent() {
        let first = decide(&observed(None), now()).status.unwrap();
        let mut again = observed(None);
        again.status = first;
        assert_eq!(decide(&again, now()).status, None);
    }
}
