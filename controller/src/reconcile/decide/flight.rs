//! The phases where the agents act: prepare and start, mirror the job,
//! verify the arrival, and settle after a failure.

use jiff::Timestamp;
use kvmotion_api::agent::{
    DomainPresence, JobPhase, JobStatus, PrepareRequest, PrepareResponse, StartRequest,
};
use kvmotion_api::hypervisor::DomainInfo;
use kvmotion_api::migration::{MigrationMode, TransferMode, VirtualMachineMigrationStatus};
use kvmotion_api::{ConditionReason as R, ConditionType as C, Phase};

use super::plan::locate_and_plan;
use super::{Decision, Effect, Endpoint, Next, Settings, elapsed, settle_pending};
use crate::precheck;
use crate::reconcile::conditions;
use crate::reconcile::observe::{AgentFailure, Observed, Reading};

/// The agents of the source and target, from the inventories. A missing
/// endpoint is a transient failure of that node's agent: it counts toward
/// AgentUnreachable like an agent that does not answer.
pub fn endpoints(obs: &Observed) -> Result<(Endpoint, Endpoint), AgentFailure> {
    let get = |node: &Option<String>| -> Result<Endpoint, AgentFailure> {
        let missing = |node: &str, message: String| AgentFailure {
            node: node.to_string(),
            transient: true,
            reason: None,
            message,
        };
        let node = node
            .clone()
            .ok_or_else(|| missing("?", "status names no node".into()))?;
        let url = obs.world.endpoint(&node).ok_or_else(|| {
            missing(
                &node,
                format!(
                    "the agent on {node} publishes no endpoint (is its Hypervisor object there?)"
                ),
            )
        })?;
        Ok(Endpoint { node, url })
    };
    Ok((get(&obs.status.source_node)?, get(&obs.status.target_node)?))
}

/// Preparing: prepare the target and start the job on the source.
pub fn preparing(obs: &Observed, d: &mut Decision, now: Timestamp) {
    // Heartbeats were checked a moment ago; the agent calls themselves
    // tell whether the agents answer.
    let c = match locate_and_plan(obs) {
        Ok(c) => c,
        Err((r, m)) => return d.fail(obs, Some(C::Prechecked), r.as_str(), m, now),
    };
    let (source, target) = match endpoints(obs) {
        Ok(e) => e,
        Err(f) => return d.fail(obs, None, R::AgentUnavailable.as_str(), f.message, now),
    };
    let (Ok(spec), Some(policy)) = (&obs.spec, &obs.status.policy) else {
        return;
    };
    let vm = precheck::domain_ref(&c.located.domain);
    let before_move = obs.status.prediction.as_ref().filter(|p| p.before_move);
    d.effect = Some(Effect::Start {
        prepare: Box::new(PrepareRequest {
            vm: vm.clone(),
            source_node: source.node.clone(),
            mode: spec.mode,
            memory_bytes: c.located.domain.memory_bytes,
            cpu_xml: String::new(),
            virt_type: "kvm".into(),
            disks: c.disks.clone(),
        }),
        start: Box::new(StartRequest {
            vm,
            target_node: target.node.clone(),
            target: PrepareResponse {
                libvirt_uri: String::new(),
                migration_uri: String::new(),
                agent_endpoint: String::new(),
                created_disks: Vec::new(),
            },
            mode: spec.mode,
            tuning: policy.tuning.clone(),
            disks: c.disks,
            planned: before_move.map(|p| p.strategy),
            planned_transfer_ms: before_move.and_then(|p| p.transfer_ms()),
        }),
        source,
        target,
    });
}

/// Marks an agent silent (or fails once it stayed silent too long).
pub fn unreachable(
    obs: &Observed,
    s: &Settings,
    d: &mut Decision,
    f: &AgentFailure,
    now: Timestamp,
) {
    let since = conditions::get(&d.status.conditions, C::AgentsReachable)
        .filter(|c| c.status == "False")
        .map(|c| c.last_transition_time.0)
        .unwrap_or(now);
    if elapsed(since, now) >= s.agent_timeout {
        let m = format!(
            "the agent on {} has not answered for {} s ({}); the migration is given up and the VM will be located once the agents answer",
            f.node,
            elapsed(since, now).as_secs(),
            f.message
        );
        return d.fail_settling(
            obs,
            Some(C::AgentsReachable),
            R::AgentUnreachable.as_str(),
            m,
            now,
        );
    }
    d.condition(
        obs,
        C::AgentsReachable,
        false,
        R::AgentUnreachable.as_str(),
        format!("the agent on {} does not answer: {}", f.node, f.message),
        now,
    );
    d.next = Next::RequeueAfter(std::time::Duration::from_secs(2));
}

/// Records that the agents answer again.
pub fn reachable_now(obs: &Observed, d: &mut Decision, now: Timestamp) {
    let was = conditions::get(&d.status.conditions, C::AgentsReachable).map(|c| c.status.clone());
    if was.as_deref() != Some("True") {
        d.condition(
            obs,
            C::AgentsReachable,
            true,
            R::AgentsAnswer.as_str(),
            "both agents answer".into(),
            now,
        );
    }
}

/// Whether the job's post-copy link went down or came back since the
/// status last said: mirrored at once, not at the progress interval.
fn link_changed(status: &VirtualMachineMigrationStatus, job: &JobStatus) -> bool {
    let paused = |m: TransferMode| m == TransferMode::PostCopyPaused;
    status
        .progress
        .as_ref()
        .is_some_and(|p| paused(p.mode) != paused(job.progress.mode))
}

/// LinkHealthy: False while the agent recovers a post-copy that lost its
/// link, True once it flows again; absent when the link never failed.
fn link_health(obs: &Observed, d: &mut Decision, job: &JobStatus, now: Timestamp) {
    let was = conditions::get(&d.status.conditions, C::LinkHealthy).map(|c| c.status.clone());
    let recoveries = job.result.as_ref().map_or(0, |r| r.post_copy_recoveries);
    // A split the agent resumed within a second may never be read while it
    // lasts; the agent's action log keeps it.
    let lost_before = job
        .actions
        .iter()
        .any(|a| a == R::PostCopyLinkLost.as_str());
    let running = matches!(job.phase, JobPhase::Starting | JobPhase::Running);
    if running && job.progress.mode == TransferMode::PostCopyPaused {
        let m = job
            .message
            .clone()
            .unwrap_or_else(|| "post-copy lost its link; the source agent resumes the move".into());
        d.condition(
            obs,
            C::LinkHealthy,
            false,
            R::PostCopyLinkLost.as_str(),
            m,
            now,
        );
    } else if was.as_deref() == Some("False") || recoveries > 0 || lost_before {
        let m = if recoveries > 0 {
            format!("post-copy lost its link and the move recovered ({recoveries} time(s))")
        } else if running {
            "post-copy lost its link and flows again".to_string()
        } else {
            "post-copy lost its link and the move ended".to_string()
        };
        d.condition(
            obs,
            C::LinkHealthy,
            true,
            R::PostCopyRecovered.as_str(),
            m,
            now,
        );
    }
}

/// Migrating: mirror the job; move on when it ends.
pub fn migrating(obs: &Observed, s: &Settings, d: &mut Decision, now: Timestamp) {
    let job = match &obs.reading {
        Reading::Job(Ok(job)) => job,
        Reading::Job(Err(f)) if f.transient => return unreachable(obs, s, d, f, now),
        Reading::Job(Err(f)) => {
            return d.fail_settling(obs, None, R::JobLost.as_str(), f.message.clone(), now);
        }
        Reading::Unrecorded(presence) => return unrecorded(obs, s, d, presence, now),
        Reading::Nothing | Reading::Presence { .. } => return,
    };
    reachable_now(obs, d, now);
    // Made once, a second into the job: in status as soon as it exists,
    // for the running move and for whatever ended it.
    if job.prediction.is_some() {
        d.status.prediction = job.prediction.clone();
    }
    match job.phase {
        JobPhase::Starting | JobPhase::Running => {
            let due = obs
                .last_progress_write
                .is_none_or(|t| elapsed(t, now) >= s.progress_interval);
            if due || d.status.progress.is_none() || link_changed(&d.status, job) {
                d.status.progress = Some(job.progress.clone());
            }
            link_health(obs, d, job, now);
            let force = obs.spec.as_ref().is_ok_and(|sp| sp.force_complete);
            if force
                && job.progress.mode == TransferMode::PreCopy
                && let Ok((source, _)) = endpoints(obs)
            {
                d.effect = Some(Effect::ForceComplete { source });
            }
            d.next = Next::RequeueAfter(s.progress_interval);
        }
        JobPhase::Completed => {
            let mut p = job.progress.clone();
            p.percent = 100;
            p.data_remaining_bytes = 0;
            d.status.progress = Some(p);
            d.status.result = job.result.clone();
            link_health(obs, d, job, now);
            d.enter(Phase::Finalizing, now);
        }
        JobPhase::Failed if job.reason.as_deref() == Some(R::PostCopyLinkLost.as_str()) => {
            // Nothing is settled automatically: neither half may be
            // cleaned up, stopped or started alone.
            let m = job
                .message
                .clone()
                .unwrap_or_else(|| "post-copy lost its link".into());
            d.fail(obs, None, R::PostCopyLinkLost.as_str(), m.clone(), now);
            d.condition(obs, C::Settled, false, R::PostCopyLinkLost.as_str(), m, now);
        }
        JobPhase::Failed | JobPhase::Aborted => {
            let reason = job
                .reason
                .clone()
                .unwrap_or_else(|| "MigrationFailed".into());
            let mut m = job
                .message
                .clone()
                .unwrap_or_else(|| "the libvirt job failed".into());
            if let Some(n) = &job.vm_node {
                m.push_str(&format!("; the VM runs on {n}"));
            }
            d.fail_settling(obs, None, &reason, m, now);
        }
    }
}

/// The source agent has no record of the job (its state directory was
/// lost). While libvirt still runs a job on the VM there, wait for it; once
/// none runs, where the VM is decides: Finalizing verifies it.
fn unrecorded(
    obs: &Observed,
    s: &Settings,
    d: &mut Decision,
    presence: &Result<DomainPresence, AgentFailure>,
    now: Timestamp,
) {
    let p = match presence {
        Ok(p) => p,
        Err(f) => return unreachable(obs, s, d, f, now),
    };
    if p.migrating {
        let m = format!(
            "libvirt on {} runs a migration job on the VM that its agent has no record of; waiting for it to end",
            p.node
        );
        // The agent cannot report this job: timed like a silent agent.
        let since = conditions::get(&d.status.conditions, C::AgentsReachable)
            .filter(|c| c.status == "False")
            .map_or(now, |c| c.last_transition_time.0);
        if elapsed(since, now) >= s.agent_timeout {
            // Settling aborts the domain's job, record or not.
            return d.fail_settling(obs, None, R::JobNotAdopted.as_str(), m, now);
        }
        d.condition(
            obs,
            C::AgentsReachable,
            false,
            R::JobNotAdopted.as_str(),
            m,
            now,
        );
        d.next = Next::RequeueAfter(std::time::Duration::from_secs(2));
        return;
    }
    d.condition(
        obs,
        C::AgentsReachable,
        true,
        R::JobLost.as_str(),
        format!(
            "the agent on {} has no record of the job and libvirt runs none; verifying where the VM is",
            p.node
        ),
        now,
    );
    d.enter(Phase::Finalizing, now);
    d.next = Next::RequeueAfter(std::time::Duration::ZERO);
}

/// The state the VM must have on the target when the move worked.
fn arrived(obs: &Observed, dom: &DomainInfo) -> bool {
    let offline = obs
        .spec
        .as_ref()
        .is_ok_and(|s| s.mode == MigrationMode::Offline);
    dom.state.has_guest() || (offline && dom.persistent)
}

/// Finalizing: confirm the VM is on the target and gone from the source.
pub fn finalizing(obs: &Observed, s: &Settings, d: &mut Decision, now: Timestamp) {
    let (src, dst) = match &obs.reading {
        Reading::Presence { source, target } => (source, target),
        Reading::Nothing | Reading::Job(_) | Reading::Unrecorded(_) => return,
    };
    let (src, dst) = match (src, dst) {
        (Err(f), _) | (_, Err(f)) => return unreachable(obs, s, d, f, now),
        (Ok(a), Ok(b)) => (a, b),
    };
    reachable_now(obs, d, now);
    let target = obs.status.target_node.clone().unwrap_or_default();
    let source = obs.status.source_node.clone().unwrap_or_default();
    match (src, dst) {
        (None, Some(t)) | (Some(_), Some(t))
            if arrived(obs, t) && !src.as_ref().is_some_and(|x| x.state.has_guest()) =>
        {
            if let Ok((source, target)) = endpoints(obs) {
                // A copy left shut off on the source is stale: the VM (same
                // UUID) was just confirmed running on the target.
                let stale_source = src
                    .as_ref()
                    .filter(|x| x.uuid == t.uuid && t.state.has_guest())
                    .map(|x| x.uuid.clone());
                d.effect = Some(Effect::Finish {
                    source,
                    target,
                    stale_source,
                });
            }
        }
        (_, t) => {
            let lead = if obs.status.result.is_some() {
                "the job completed but"
            } else {
                "after the job's record was lost,"
            };
            let m = format!(
                "{lead} the VM is {} on {target} and {} on {source}",
                t.as_ref()
                    .map_or("absent".into(), |x| format!("{:?}", x.state)),
                src.as_ref()
                    .map_or("absent".into(), |x| format!("{:?}", x.state)),
            );
            d.fail_settling(obs, None, R::VerificationFailed.as_str(), m, now);
        }
    }
}

/// Failed or Cancelled with agent state left: settle it, or wait for the
/// agents to publish their endpoints.
pub fn settle(obs: &Observed, s: &Settings, d: &mut Decision, now: Timestamp) {
    if !settle_pending(&obs.status) {
        return;
    }
    match settle_effect(obs) {
        Ok(effect) => d.effect = Some(effect),
        Err(f) => super::outcome::hold_for_agent(obs, s, d, &f, now),
    }
}

/// Stop the job, clean the target and locate the VM: the effect both a
/// failure and a cancellation owe the agents. Fails while an agent to ask
/// publishes no endpoint.
pub fn settle_effect(obs: &Observed) -> Result<Effect, AgentFailure> {
    let vm = obs
        .status
        .vm
        .as_ref()
        .map(|v| v.uuid.clone())
        .or_else(|| {
            obs.spec
                .as_ref()
                .ok()
                .and_then(|s| s.vm.uuid.clone().or(s.vm.name.clone()))
        })
        .unwrap_or_default();
    let (source, target) = endpoints(obs)?;
    Ok(Effect::Settle { source, target, vm })
}
