//! What an agent call's outcome does to the status. Pure.

use jiff::Timestamp;
use kvmotion_api::hypervisor::DomainState;
use kvmotion_api::{ConditionReason as R, ConditionType as C, Phase};

use super::flight::{reachable_now, running, unreachable};
use super::{Decision, Effect, Next, Outcome, Settings, elapsed};
use crate::reconcile::observe::Observed;

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
        (Effect::Settle { .. }, Outcome::Located(places)) => located(obs, &mut d, &places, now),
        (Effect::Settle { .. }, Outcome::Stopping(m)) => {
            d.condition(obs, C::Settled, false, R::SettlePending.as_str(), m, now);
            d.next = Next::RequeueAfter(std::time::Duration::from_secs(1));
        }
        (Effect::Settle { .. }, Outcome::Unreachable(f) | Outcome::Refused(f)) => {
            let m = format!("waiting for the agent on {}: {}", f.node, f.message);
            if obs
                .deleting_since
                .is_some_and(|t| elapsed(t, now) >= s.agent_timeout)
            {
                // Deletion must not hang forever on a dead node.
                let m = format!(
                    "gave up after {} s: {m}; check where the VM runs by hand",
                    s.agent_timeout.as_secs()
                );
                d.condition(obs, C::Settled, false, R::AgentUnreachable.as_str(), m, now);
                cancelled(obs, &mut d, "the agents did not answer".into(), now);
                d.finished = true;
            } else {
                d.condition(obs, C::Settled, false, R::SettlePending.as_str(), m, now);
                d.next = Next::RequeueAfter(std::time::Duration::from_secs(2));
            }
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

/// The VM was located after a failure or cancellation.
fn located(obs: &Observed, d: &mut Decision, places: &[(String, DomainState)], now: Timestamp) {
    let runs: Vec<&str> = places
        .iter()
        .filter(|(_, st)| running(*st))
        .map(|(n, _)| n.as_str())
        .collect();
    let (ok, reason, m) = match runs.as_slice() {
        [one] => (true, R::VMLocated, format!("the VM runs on {one} only")),
        [] => match places.first() {
            Some((n, st)) => (
                true,
                R::VMLocated,
                format!("the VM is defined on {n} ({st:?}) and runs nowhere"),
            ),
            None => (
                false,
                R::VerificationFailed,
                "the VM is on no node".to_string(),
            ),
        },
        many => (
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
