//! Deleting a migration cancels it: before any agent acted it simply ends;
//! in flight the job is aborted, the target cleaned and the VM located
//! before the finalizer lets the object go.

use jiff::Timestamp;
use kvmotion_api::Phase;

use super::outcome::{cancelled, hold_for_agent};
use super::{Decision, Settings, flight, settle_pending};
use crate::reconcile::observe::Observed;

/// What to do with a migration being deleted. `finished` is set once the
/// finalizer may be removed; otherwise the effect must run first. The
/// finalizer is never released while a job may run: an agent that cannot
/// be asked holds the deletion (the Settled condition says what to do).
pub fn cancel(obs: &Observed, s: &Settings, now: Timestamp) -> Decision {
    let mut d = Decision::keep(obs);
    let in_flight = match obs.status.phase {
        None | Some(Phase::Pending) | Some(Phase::Scheduling) | Some(Phase::Prechecking) => false,
        Some(Phase::Preparing) | Some(Phase::Migrating) | Some(Phase::Finalizing) => true,
        Some(Phase::Failed) | Some(Phase::Cancelled) => settle_pending(&obs.status),
        Some(Phase::Succeeded) => false,
    };
    if !in_flight {
        cancelled(
            obs,
            &mut d,
            "no agent had acted; the VM was not touched".into(),
            now,
        );
        d.finished = true;
        return d;
    }
    match flight::settle_effect(obs) {
        Ok(effect) => d.effect = Some(effect),
        Err(f) => hold_for_agent(obs, s, &mut d, &f, now),
    }
    d
}
