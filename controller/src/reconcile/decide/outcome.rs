//! What an agent call's outcome does to the status. Pure.

use jiff::Timestamp;
use kvmotion_api::hypervisor::DomainState;
use kvmotion_api::{ConditionReason as R, ConditionType as C, Phase};

use super::flight::{reachable_now, unreachable};
use super::{Decision, Effect, Next, Outcome, Placement, Settings, elapsed};
use crate::reconcile::conditions;
use crate::reconcile::observe::{AgentFailure, Observed};

/// Applies `outcome` of `effect` to the decision that asked for it.
pub fn apply(
    obs: &Observed,
    s: &Settings,
    mut d: Decision,
    effect: &Effect,
    outcome: Outcome,
    now: Timestamp,
) -> Decision {
    match (effect, outcome) {
        (Effect::Start { .. }, Outcome::Started(job)) => {
            reachable_now(obs, &mut d, now);
            d.status.start_time = Some(super::time(now));
            d.status.progress = Some(job.progress);
            d.enter(Phase::Migrating, now);
            d.next = Next::RequeueAfter(s.progress_interval);
        }
        (Effect::Start { .. }, Outcome::Refused(f)) => {
            let reason = f.reason.clone().unwrap_or_else(|| "AgentRefused".into());
            let m = format!("the agent on {} refused: {}", f.node, f.message);
            d.fail_settling(obs, None, &reason, m, now);
        }
        (Effect::Finish { source, .. }, Outcome::Refused(f))
            if f.reason.as_deref() == Some(R::VMDefinedTwice.as_str()) =>
        {
            // The VM runs on the target; its old definition would not go.
            d.condition(
                obs,
                C::Settled,
                false,
                R::VMDefinedTwice.as_str(),
                format!(
                    "the VM runs on the target, and a shut-off copy is still defined on {}: {}; remove it there (virsh undefine) so it is never started twice",
                    source.node, f.message
                ),
                now,
            );
            d.condition(
                obs,
                C::Completed,
                true,
                R::Succeeded.as_str(),
                "the VM runs on the target".into(),
                now,
            );
            d.enter(Phase::Succeeded, now);
        }
        (Effect::Finish { target, .. }, Outcome::Done | Outcome::Refused(_)) => {
            // Forgetting the job is bookkeeping; the arrival was verified.
            let m = match &d.status.result {
                Some(r) => format!(
                    "the VM runs on {}; the job took {} ms with {} ms downtime and sent {} MiB",
                    target.node,
                    r.duration_ms,
                    r.downtime_ms,
                    r.data_transferred_bytes >> 20
                ),
                None => format!("the VM runs on {}", target.node),
            };
            d.condition(obs, C::Completed, true, R::Succeeded.as_str(), m, now);
            d.enter(Phase::Succeeded, now);
        }
        (
            Effect::Start { .. } | Effect::Finish { .. } | Effect::ForceComplete { .. },
            Outcome::Unreachable(f),
        ) => {
            if obs.deleting_since.is_none() {
                unreachable(obs, s, &mut d, &f, now);
            }
        }
        (Effect::Settle { .. }, Outcome::Located(p)) => located(obs, &mut d, &p, now),
        (Effect::Settle { .. }, Outcome::Stopping(m)) => {
            d.condition(obs, C::Settled, false, R::SettlePending.as_str(), m, now);
            d.next = Next::RequeueAfter(std::time::Duration::from_secs(1));
        }
        (Effect::Settle { .. }, Outcome::Unreachable(f) | Outcome::Refused(f)) => {
            hold_for_agent(obs, s, &mut d, &f, now)
        }
        // Nothing else changes the status: a force-complete request is
        // fire-and-forget (the job reports what it did), and the other
        // pairs do not occur.
        (Effect::ForceComplete { .. }, Outcome::Done | Outcome::Refused(_))
        | (Effect::Start { .. }, Outcome::Done | Outcome::Located(_) | Outcome::Stopping(_))
        | (
            Effect::Finish { .. },
            Outcome::Started(_) | Outcome::Located(_) | Outcome::Stopping(_),
        )
        | (
            Effect::ForceComplete { .. },
            Outcome::Started(_) | Outcome::Located(_) | Outcome::Stopping(_),
        )
        | (Effect::Settle { .. }, Outcome::Started(_) | Outcome::Done) => {}
    }
    d
}

/// Settling waits for an agent that cannot be asked. It never gives up on
/// its own, because a job may still run there: after the agent timeout the
/// condition says so, and what a person can do.
pub fn hold_for_agent(
    obs: &Observed,
    s: &Settings,
    d: &mut Decision,
    f: &AgentFailure,
    now: Timestamp,
) {
    let m = format!("waiting for the agent on {}: {}", f.node, f.message);
    let since = obs.deleting_since.or_else(|| {
        conditions::get(&obs.status.conditions, C::Settled).map(|c| c.last_transition_time.0)
    });
    let long = since.is_some_and(|t| elapsed(t, now) >= s.agent_timeout);
    let (reason, m) = if long {
        (
            R::AgentUnreachable,
            format!(
                "{m}; a job may still run there, so the migration is kept: once you know where the VM runs, remove the finalizer {} by hand",
                crate::reconcile::FINALIZER
            ),
        )
    } else {
        (R::SettlePending, m)
    };
    d.condition(obs, C::Settled, false, reason.as_str(), m, now);
    d.next = Next::RequeueAfter(std::time::Duration::from_secs(2));
}

/// The node whose copy of the VM is stale: the VM (one UUID) runs on
/// exactly one node and is only defined, shut off, on another. `None` when
/// there is no such copy, or it cannot be told which one is stale.
pub fn stale_copy(places: &[(String, DomainState)]) -> Option<&str> {
    let runs = places.iter().filter(|(_, st)| st.has_guest()).count();
    if runs != 1 {
        return None;
    }
    places
        .iter()
        .find(|(_, st)| !st.has_guest())
        .map(|(n, _)| n.as_str())
}

/// The VM was located after a failure or cancellation.
fn located(obs: &Observed, d: &mut Decision, p: &Placement, now: Timestamp) {
    let runs: Vec<&str> = p
        .places
        .iter()
        .filter(|(_, st)| st.has_guest())
        .map(|(n, _)| n.as_str())
        .collect();
    let idle: Vec<&str> = p
        .places
        .iter()
        .filter(|(_, st)| !st.has_guest())
        .map(|(n, _)| n.as_str())
        .collect();
    let (ok, reason, m) = match (runs.as_slice(), idle.as_slice()) {
        ([one], []) => match &p.removed_stale {
            Some(stale) => (
                true,
                R::StaleDefinitionRemoved,
                format!(
                    "the VM runs on {one} only; its stale shut-off definition on {stale} was removed"
                ),
            ),
            None => (true, R::VMLocated, format!("the VM runs on {one} only")),
        },
        ([one], others) => (
            false,
            R::VMDefinedTwice,
            format!(
                "the VM runs on {one} and a shut-off copy is still defined on {}: remove it there (virsh undefine) so it is never started twice",
                others.join(" and ")
            ),
        ),
        ([], [only]) => {
            let st = p.places.first().map(|(_, st)| *st).unwrap_or_default();
            (
                true,
                R::VMLocated,
                format!("the VM is defined on {only} ({st:?}) and runs nowhere"),
            )
        }
        ([], []) => (
            false,
            R::VerificationFailed,
            "the VM is on no node".to_string(),
        ),
        ([], several) => (
            false,
            R::VMDefinedTwice,
            format!(
                "the VM runs nowhere and is defined on {}: it cannot be told which copy is current; keep one and undefine the other",
                several.join(" and ")
            ),
        ),
        (many, _) => (
            false,
            R::VerificationFailed,
            format!(
                "the VM runs on {}: stop one of them by hand",
                many.join(" and ")
            ),
        ),
    };
    d.condition(obs, C::Settled, ok, reason.as_str(), m.clone(), now);
    if obs.deleting_since.is_some() {
        cancelled(obs, d, m, now);
        d.finished = true;
    }
}

/// Records the cancellation of a migration being deleted.
pub fn cancelled(obs: &Observed, d: &mut Decision, how: String, now: Timestamp) {
    if d.status.phase.is_some_and(|p| p.is_terminal()) {
        return;
    }
    let from = d.status.phase.map_or("Pending", |p| p.as_str());
    d.condition(
        obs,
        C::Completed,
        false,
        R::Cancelled.as_str(),
        format!("deleted while {from}; {how}"),
        now,
    );
    d.enter(Phase::Cancelled, now);
}
