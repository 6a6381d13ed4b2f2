//! The phases before any agent is touched: accept, wait for capacity,
//! schedule (find the source, choose the target, resolve the policy) and
//! precheck. A failure here leaves nothing to clean up.

use std::time::Duration;

use jiff::Timestamp;
use kvmotion_api::migration::{AppliedPolicy, ScheduledVm, Strategy};
use kvmotion_api::{
    ConditionReason as R, ConditionType as C, Phase, VirtualMachineMigrationSpec,
    VirtualMachineMigrationStatus, VmRef,
};

use super::{Decision, Next, Settings, elapsed, foresee};
use crate::policy::{self, PolicyProblem, Resolved};
use crate::precheck::{self, Located};
use crate::reconcile::capacity;
use crate::reconcile::observe::Observed;
use crate::reconcile::world::Flight;
use crate::schedule::{self, Inputs, NoChoice};

/// A new migration: accept it into Pending, or fail it at once when the
/// controller cannot act on its spec (the spec is immutable, so waiting
/// would not help: the user must create a corrected migration).
pub fn accept(obs: &Observed, d: &mut Decision, now: Timestamp) {
    d.status.observed_generation = Some(obs.generation);
    match &obs.spec {
        Ok(_) => {
            d.condition(
                obs,
                C::Accepted,
                true,
                R::Accepted.as_str(),
                "the migration is valid and queued".into(),
                now,
            );
            d.enter(Phase::Pending, now);
        }
        Err(problem) => {
            let message = format!("{}; create a corrected migration", problem.message);
            d.fail(
                obs,
                Some(C::Accepted),
                R::InvalidSpec.as_str(),
                message,
                now,
            );
        }
    }
}

/// The spec and its resolved policy, or a failure: InvalidSpec (only
/// reachable if a status was hand-edited) or PolicyNotFound.
fn spec_and_policy<'a>(
    obs: &'a Observed,
    d: &mut Decision,
    now: Timestamp,
) -> Option<(&'a VirtualMachineMigrationSpec, Resolved)> {
    let spec = match &obs.spec {
        Ok(s) => s,
        Err(p) => {
            let m = p.message.clone();
            d.fail(obs, Some(C::Accepted), R::InvalidSpec.as_str(), m, now);
            return None;
        }
    };
    match resolve(obs, spec) {
        Ok(r) => Some((spec, r)),
        Err(p) => {
            d.fail(
                obs,
                Some(C::Scheduled),
                p.reason().as_str(),
                p.message(),
                now,
            );
            None
        }
    }
}

fn resolve(obs: &Observed, spec: &VirtualMachineMigrationSpec) -> Result<Resolved, PolicyProblem> {
    policy::resolve(
        &obs.world.policies,
        spec.policy_ref.as_ref(),
        spec.overrides.as_ref(),
    )
}

/// Ends at once, successfully: the VM already runs where it should.
fn already_on_target(obs: &Observed, d: &mut Decision, located: &Located, now: Timestamp) {
    d.status.source_node = Some(located.node.clone());
    d.status.target_node = Some(located.node.clone());
    d.condition(
        obs,
        C::Completed,
        true,
        R::AlreadyOnTarget.as_str(),
        format!(
            "{} already runs on {}; nothing to move",
            located.domain.name, located.node
        ),
        now,
    );
    d.enter(Phase::Succeeded, now);
}

/// Pending: admit when capacity allows, in creation order.
pub fn pending(obs: &Observed, s: &Settings, d: &mut Decision, now: Timestamp) {
    // Only forceComplete can change the spec; its generation is acknowledged.
    d.status.observed_generation = Some(obs.generation);
    let Some((spec, resolved)) = spec_and_policy(obs, d, now) else {
        return;
    };
    let located = precheck::locate(&spec.vm, None, &obs.world.hypervisors).ok();
    if let Some(l) = &located
        && spec.target_node.as_deref() == Some(l.node.as_str())
    {
        return already_on_target(obs, d, l, now);
    }
    let me = Flight {
        vm_name: located
            .as_ref()
            .map(|l| l.domain.name.clone())
            .or(spec.vm.name.clone()),
        vm_uuid: located
            .as_ref()
            .map(|l| l.domain.uuid.clone())
            .or(spec.vm.uuid.clone()),
        source: located
            .as_ref()
            .map(|l| l.node.clone())
            .or(spec.source_node.clone()),
        target: spec.target_node.clone(),
        ..Flight::of_observed(obs, Some(Phase::Pending))
    };
    if let Some(other) = active_twin(obs, &me) {
        let m =
            format!("migration {other} is already moving this VM; wait for it to end or delete it");
        return d.fail(
            obs,
            Some(C::Prechecked),
            R::AlreadyMigrating.as_str(),
            m,
            now,
        );
    }
    match capacity::admit(&me, &obs.world.flights, &resolved.limits) {
        Ok(()) => {
            d.condition(
                obs,
                C::Admitted,
                true,
                R::CapacityGranted.as_str(),
                "within the concurrency limits".into(),
                now,
            );
            d.enter(Phase::Scheduling, now);
            d.admitted = Some(me);
        }
        Err(why) => {
            d.condition(
                obs,
                C::Admitted,
                false,
                R::WaitingForCapacity.as_str(),
                why,
                now,
            );
            d.next = Next::RequeueAfter(s.capacity_recheck);
        }
    }
}

/// Another active migration of the same VM, by name.
fn active_twin<'a>(obs: &'a Observed, me: &Flight) -> Option<&'a str> {
    obs.world
        .flights
        .iter()
        .find(|f| f.uid != me.uid && f.is_active() && f.same_vm(me))
        .map(|f| f.name.as_str())
}

fn inputs<'a>(
    obs: &'a Observed,
    s: &Settings,
    located: &Located,
    source: &'a kvmotion_api::Hypervisor,
    inbound: &'a std::collections::BTreeMap<String, u32>,
    limit: u32,
    now: Timestamp,
) -> Inputs<'a> {
    Inputs {
        vm_memory_bytes: located.domain.memory_bytes,
        source,
        hypervisors: &obs.world.hypervisors,
        heartbeats: &obs.world.heartbeats,
        cordoned: &obs.world.cordoned,
        evacuating: &obs.world.evacuating,
        inbound,
        inbound_limit: limit,
        selector: obs
            .spec
            .as_ref()
            .ok()
            .and_then(|s| s.target_selector.as_ref()),
        now,
        heartbeat_max_age: s.heartbeat_max_age,
    }
}

/// Scheduling: find the source, take or choose the target, resolve the
/// policy; all recorded in status.
/// How soon a migration whose VM is listed twice looks again.
const INVENTORY_RECHECK: Duration = Duration::from_secs(1);

/// How long the migration has been in `phase`.
fn in_phase_for(
    status: &VirtualMachineMigrationStatus,
    phase: Phase,
    now: Timestamp,
) -> Option<Duration> {
    status
        .phase_transition_times
        .iter()
        .rev()
        .find(|t| t.phase == phase)
        .map(|t| elapsed(t.time.0, now))
}

pub fn scheduling(obs: &Observed, s: &Settings, d: &mut Decision, now: Timestamp) {
    let Some((spec, resolved)) = spec_and_policy(obs, d, now) else {
        return;
    };
    let located = match precheck::locate(
        &spec.vm,
        spec.source_node.as_deref(),
        &obs.world.hypervisors,
    ) {
        Ok(l) => l,
        // Inventories settle within seconds of a move; a VM still listed
        // twice after the agent timeout is a real conflict.
        Err(r)
            if r.reason == R::VMMoving
                && in_phase_for(&d.status, Phase::Scheduling, now)
                    .is_none_or(|t| t < s.agent_timeout) =>
        {
            d.condition(obs, C::Scheduled, false, r.reason.as_str(), r.message, now);
            d.next = Next::RequeueAfter(INVENTORY_RECHECK);
            return;
        }
        Err(r) => {
            return d.fail(obs, Some(C::Scheduled), r.reason.as_str(), r.message, now);
        }
    };
    if spec.target_node.as_deref() == Some(located.node.as_str()) {
        return already_on_target(obs, d, &located, now);
    }
    let Some(source) = obs.world.hypervisor(&located.node) else {
        let m = format!("{} has no Hypervisor object", located.node);
        return d.fail(obs, Some(C::Scheduled), R::VMNotFound.as_str(), m, now);
    };
    // This migration is active already and must not count against itself,
    // whether its target is still only in the spec or already in status.
    let inbound = obs.world.inbound(&obs.uid);
    let inp = inputs(
        obs,
        s,
        &located,
        source,
        &inbound,
        resolved.limits.inbound_per_node,
        now,
    );
    let (target, message) = match &spec.target_node {
        Some(t) => {
            let Some(hv) = obs.world.hypervisor(t) else {
                let m = format!(
                    "spec.targetNode {t} has no Hypervisor object; is kvmotion's agent running there?"
                );
                return d.fail(obs, Some(C::Scheduled), R::TargetNotFound.as_str(), m, now);
            };
            match schedule::exclusion(&inp, hv) {
                None => (t.clone(), format!("spec.targetNode {t} can take the VM")),
                Some(e @ schedule::Exclusion::AtInboundLimit { .. }) => {
                    return wait(obs, s, d, format!("{t}: {}", e.describe()), now);
                }
                Some(e) => {
                    let m = format!("spec.targetNode {t} cannot take the VM: {}", e.describe());
                    return d.fail(obs, Some(C::Scheduled), e.reason().as_str(), m, now);
                }
            }
        }
        None => match schedule::choose(&inp) {
            Ok(c) => (c.node, c.message),
            Err(NoChoice::Wait(m)) => return wait(obs, s, d, m, now),
            Err(NoChoice::Refuse(r, m)) => {
                return d.fail(obs, Some(C::Scheduled), r.as_str(), m, now);
            }
        },
    };
    d.status.source_node = Some(located.node.clone());
    d.status.target_node = Some(target);
    d.status.vm = Some(ScheduledVm {
        name: located.domain.name.clone(),
        uuid: located.domain.uuid.clone(),
        memory_bytes: located.domain.memory_bytes,
    });
    let mut message = message;
    if let Some(note) = &resolved.note {
        message.push_str("; ");
        message.push_str(note);
    }
    d.status.policy = Some(AppliedPolicy {
        name: resolved.policy.clone(),
        tuning: resolved.tuning.clone(),
        concurrency: resolved.limits.clone(),
    });
    d.condition(
        obs,
        C::Scheduled,
        true,
        R::TargetSelected.as_str(),
        message,
        now,
    );
    d.enter(Phase::Prechecking, now);
}

fn wait(obs: &Observed, s: &Settings, d: &mut Decision, why: String, now: Timestamp) {
    d.condition(
        obs,
        C::Scheduled,
        false,
        R::WaitingForCapacity.as_str(),
        why,
        now,
    );
    d.next = Next::RequeueAfter(s.target_recheck);
}

/// The located VM and its disk plan, as prechecks and preparation need.
pub struct Checked {
    /// Where the VM is.
    pub located: Located,
    /// Disks, and whether each is copied.
    pub disks: Vec<kvmotion_api::agent::DiskPlan>,
    /// Source node.
    pub source: String,
    /// Target node.
    pub target: String,
}

/// Every precheck: the inventory checks, then both agents' heartbeats.
/// `Err` is the reason and message of the first that fails.
pub fn check(obs: &Observed, s: &Settings, now: Timestamp) -> Result<Checked, (R, String)> {
    let checked = locate_and_plan(obs)?;
    for node in [&checked.source, &checked.target] {
        agent_available(obs, s, node, now)?;
    }
    Ok(checked)
}

/// The checks that need only the inventories: the VM is where scheduling
/// found it, in a state the mode allows, with a disk plan.
pub fn locate_and_plan(obs: &Observed) -> Result<Checked, (R, String)> {
    let spec = obs
        .spec
        .as_ref()
        .map_err(|p| (R::InvalidSpec, p.message.clone()))?;
    let st = &obs.status;
    let (Some(source), Some(target), Some(vm), Some(policy)) =
        (&st.source_node, &st.target_node, &st.vm, &st.policy)
    else {
        return Err((
            R::InvalidSpec,
            "status lost its scheduling; create the migration again".into(),
        ));
    };
    let by_uuid = VmRef {
        name: None,
        uuid: Some(vm.uuid.clone()),
    };
    let located = precheck::locate(&by_uuid, Some(source), &obs.world.hypervisors)
        .map_err(|r| (r.reason, r.message))?;
    let me = Flight {
        vm_name: Some(vm.name.clone()),
        vm_uuid: Some(vm.uuid.clone()),
        source: Some(source.clone()),
        target: Some(target.clone()),
        ..Flight::of_observed(obs, st.phase)
    };
    let disks = precheck::check(
        spec,
        &located,
        target,
        policy.tuning.storage,
        active_twin(obs, &me),
    )
    .map_err(|r| (r.reason, r.message))?;
    Ok(Checked {
        located,
        disks,
        source: source.clone(),
        target: target.clone(),
    })
}

/// The agent on `node` renews its heartbeat and publishes an endpoint.
fn agent_available(
    obs: &Observed,
    s: &Settings,
    node: &str,
    now: Timestamp,
) -> Result<(), (R, String)> {
    let fresh = obs
        .world
        .heartbeats
        .get(node)
        .is_some_and(|t| elapsed(*t, now) <= s.heartbeat_max_age);
    if !fresh {
        return Err((
            R::AgentUnavailable,
            format!(
                "the agent on {node} has not renewed its heartbeat Lease within {} s; check its pod",
                s.heartbeat_max_age.as_secs()
            ),
        ));
    }
    if obs.world.endpoint(node).is_none() {
        return Err((
            R::AgentUnavailable,
            format!("the agent on {node} publishes no endpoint in its Hypervisor status"),
        ));
    }
    Ok(())
}

/// The prediction of a checked move made before it starts, when there is
/// what to make it from (`foresee::before_move`), counting what the source
/// node's moves cost besides their data.
fn predict_before_move(
    obs: &Observed,
    c: &Checked,
    now: Timestamp,
) -> Option<kvmotion_api::migration::MigrationPrediction> {
    let (Ok(spec), Some(policy)) = (&obs.spec, &obs.status.policy) else {
        return None;
    };
    let overheads = obs
        .world
        .hypervisor(&c.source)
        .and_then(|h| h.status.as_ref())
        .map(|s| s.move_overheads())
        .unwrap_or_default();
    foresee::before_move(spec.mode, &c.located.domain, overheads, &policy.tuning, now)
}

/// Prechecking: everything that can be known before touching an agent.
pub fn prechecking(obs: &Observed, s: &Settings, d: &mut Decision, now: Timestamp) {
    match check(obs, s, now) {
        Ok(c) => {
            let copied: Vec<&str> = c
                .disks
                .iter()
                .filter(|p| p.copy)
                .map(|p| p.target.as_str())
                .collect();
            let mut message = if copied.is_empty() {
                "every precheck passed; no disk is copied".to_string()
            } else {
                format!("every precheck passed; disks copied: {}", copied.join(", "))
            };
            if let Some(p) = predict_before_move(obs, &c, now) {
                let refused = p.strategy == Strategy::Refuse;
                let why = format!("{}; the VM was not touched", p.reason);
                message.push_str(&format!(
                    "; predicted before the move: {}",
                    p.strategy.as_str()
                ));
                d.status.prediction = Some(p);
                if refused {
                    return d.fail(
                        obs,
                        Some(C::Prechecked),
                        R::PredictedNotToConverge.as_str(),
                        why,
                        now,
                    );
                }
            }
            d.condition(
                obs,
                C::Prechecked,
                true,
                R::PrechecksPassed.as_str(),
                message,
                now,
            );
            d.enter(Phase::Preparing, now);
        }
        // A shutdown (or the instant of a destroy) ends within seconds; an
        // inventory may also show it a moment after the state changed. Wait
        // for it as long as an agent may be silent, then refuse.
        Err((R::VMStateSettling, message))
            if in_phase_for(&d.status, Phase::Prechecking, now)
                .is_none_or(|t| t < s.agent_timeout) =>
        {
            d.condition(
                obs,
                C::Prechecked,
                false,
                R::VMStateSettling.as_str(),
                format!("{message} (waiting)"),
                now,
            );
            d.next = Next::RequeueAfter(INVENTORY_RECHECK);
        }
        Err((reason, message)) => d.fail(obs, Some(C::Prechecked), reason.as_str(), message, now),
    }
}
