//! Deleting a migration cancels it: before any agent acted it simply ends;
//! in flight the job is aborted, the target cleaned and the VM located
//! before the finalizer lets the object go.

use jiff::Timestamp;
use kvmotion_api::Phase;

use super::outcome::cancelled;
use super::{Decision, flight, settle_pending};
use crate::reconcile::observe::Observed;

/// What to do with a migration being deleted. `finished` is set once the
/// finalizer may be removed; otherwise the effect must run first.
pub fn cancel(obs: &Observed, now: Timestamp) -> Decision {
    let mut d = Decision::keep(obs);
    let in_flight = match obs.status.phase {
        None | Some(Phase::Pending) | Some(Phase::Scheduling) | Some(Phase::Prechecking) => false,
        Some(Phase::Preparing) | Some(Phase::Migrating) | Some(Phase::Finalizing) => true,
        Some(Phase::Failed) | Some(Phase::Cancelled) => settle_pending(&obs.status),
        Some(Phase::Succeeded) => false,
    };
    let settle = in_flight.then(|| flight::settle_effect(obs)).flatten();
    match settle {
        Some(effect) => d.effect = Some(effect),
        None => {
            cancelled(
                obs,
                &mut d,
                "no agent had acted; the VM was not touched".into(),
                now,
            );
            d.finished = true;
        }
    }
    d
}
