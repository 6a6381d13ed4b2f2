//! Decide: an evacuation's next status and the migrations to create or
//! cancel, as a pure function of what was observed and the time. Every
//! phase is matched explicitly and table-tested.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kvmotion_api::Phase;
use kvmotion_api::evacuation::{
    EvacuationCounts, EvacuationPhase, NodeEvacuationSpec, NodeEvacuationStatus, PlannedMove,
};

use super::plan::Plan;
use crate::reconcile::conditions;
use crate::reconcile::decide::Next;

/// Moves tried per VM before its failure is final: a failed move is
/// re-planned (a new target, the world having changed) this many times
/// less one.
pub const MAX_ATTEMPTS: u32 = 3;

/// How often a plan that waits (Blocked, Planned) is made again.
pub const REPLAN_EVERY: Duration = Duration::from_secs(30);

/// How often a running evacuation looks again besides its migrations'
/// changes.
pub const LOOK_EVERY: Duration = Duration::from_secs(5);

/// How soon an evacuation whose moves all succeeded looks again while the
/// node's inventory still lists a moved VM: the agent publishes within
/// about a second, and the inventory change's own wake-up may reach the
/// reconcile before the cache it reads.
pub const CATCH_UP_EVERY: Duration = Duration::from_secs(1);

/// Condition: every VM has a place (False: status.unplaceable says why).
pub const PLANNED: &str = "Planned";
/// Condition: the node is empty (False once the evacuation ended otherwise).
pub const COMPLETED: &str = "Completed";

/// A migration the evacuation owns, as observed.
#[derive(Debug, Clone, PartialEq)]
pub struct Owned {
    /// Its phase (None: not accepted yet).
    pub phase: Option<Phase>,
    /// Its Completed condition's message, once it ended.
    pub message: Option<String>,
}

/// An evacuation and the world around it.
#[derive(Debug, Clone)]
pub struct Observed {
    /// Object name.
    pub name: String,
    /// `metadata.generation`.
    pub generation: i64,
    /// The spec.
    pub spec: NodeEvacuationSpec,
    /// Current status.
    pub status: NodeEvacuationStatus,
    /// Deletion was requested.
    pub deleting: bool,
    /// An older evacuation of the same node that has not ended.
    pub older_active: Option<String>,
    /// The migrations it owns, by name.
    pub migrations: BTreeMap<String, Owned>,
    /// The VMs the node's inventory lists that run (or are paused); `None`
    /// when the node has no Hypervisor.
    pub running_on_node: Option<Vec<String>>,
    /// A plan made now of the node's VMs that no migration of this
    /// evacuation holds (moving or moved).
    pub fresh: Plan,
}

/// A migration to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMigration {
    /// Its name.
    pub name: String,
    /// The move it carries out.
    pub planned: PlannedMove,
}

/// What reconcile should do.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The status to write (when it differs).
    pub status: NodeEvacuationStatus,
    /// Migrations to create.
    pub create: Vec<NewMigration>,
    /// Owned migrations to delete: they have not started moving.
    pub cancel: Vec<String>,
    /// Owned migrations to let go of (their owner reference removed) so
    /// that they finish on their own once the evacuation is gone.
    pub release: Vec<String>,
    /// Deletion may proceed once `cancel` and `release` are done.
    pub finished: bool,
    /// When to look again.
    pub next: Next,
}

/// Whether a migration has started moving the VM: past that point it is
/// left to finish (or be cancelled by its own finalizer), not deleted.
fn started(phase: Option<Phase>) -> bool {
    match phase {
        None | Some(Phase::Pending | Phase::Scheduling | Phase::Prechecking) => false,
        Some(
            Phase::Preparing
            | Phase::Migrating
            | Phase::Finalizing
            | Phase::Succeeded
            | Phase::Failed
            | Phase::Cancelled,
        ) => true,
    }
}

/// The name of the migration for `m`'s attempt `n`: DNS-1123, unique per
/// VM (its uuid) and attempt, at most 253 characters.
pub fn migration_name(evacuation: &str, m: &PlannedMove, n: u32) -> String {
    let vm: String =
        m.vm.to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
    let vm = vm.trim_matches('-');
    let uuid8: String = m.uuid.chars().filter(|c| *c != '-').take(8).collect();
    let tail = format!("-{}-{n}", uuid8.to_ascii_lowercase());
    let head = format!("{evacuation}-{vm}");
    let room = 253 - tail.len();
    let head = head[..head.len().min(room)].trim_end_matches('-');
    format!("{head}{tail}")
}

/// Decides the next step.
pub fn decide(obs: &Observed, now: Timestamp) -> Decision {
    let mut d = Decision {
        status: obs.status.clone(),
        create: Vec::new(),
        cancel: Vec::new(),
        release: Vec::new(),
        finished: false,
        next: Next::AwaitChange,
    };
    d.status.observed_generation = Some(obs.generation);
    if obs.deleting {
        for (name, m) in &obs.migrations {
            if !started(m.phase) {
                d.cancel.push(name.clone());
            } else if m.phase.is_some_and(|p| !p.is_terminal()) {
                d.release.push(name.clone());
            }
        }
        d.finished = true;
        if obs.status.phase.is_none_or(|p| !p.is_terminal()) {
            set_phase(&mut d, EvacuationPhase::Cancelled, now);
        }
        return d;
    }
    match obs.status.phase {
        None
        | Some(EvacuationPhase::Planning)
        | Some(EvacuationPhase::Planned)
        | Some(EvacuationPhase::Blocked) => planning(obs, &mut d, now),
        Some(EvacuationPhase::Evacuating) => evacuating(obs, &mut d, now),
        Some(EvacuationPhase::Completed | EvacuationPhase::Failed | EvacuationPhase::Cancelled) => {
        }
    }
    d
}

fn set_phase(d: &mut Decision, phase: EvacuationPhase, now: Timestamp) {
    if phase.is_terminal() && d.status.completion_time.is_none() {
        d.status.completion_time = Some(Time(now));
    }
    d.status.phase = Some(phase);
}

fn condition(
    d: &mut Decision,
    obs: &Observed,
    t: &str,
    ok: bool,
    reason: &str,
    m: String,
    now: Timestamp,
) {
    conditions::set_named(
        &mut d.status.conditions,
        t,
        ok,
        reason,
        m,
        obs.generation,
        Time(now),
    );
}

/// Before anything moves: place every VM, then stop (dry run, blocked) or
/// start.
fn planning(obs: &Observed, d: &mut Decision, now: Timestamp) {
    if let Some(other) = &obs.older_active {
        condition(
            d,
            obs,
            PLANNED,
            false,
            "AnotherEvacuation",
            format!(
                "NodeEvacuation {other} is already emptying {}; delete one of them",
                obs.spec.node_name
            ),
            now,
        );
        return set_phase(d, EvacuationPhase::Failed, now);
    }
    if obs.running_on_node.is_none() {
        condition(
            d,
            obs,
            PLANNED,
            false,
            "NodeNotFound",
            format!(
                "no Hypervisor named {} reports an inventory; check spec.nodeName and the node's agent",
                obs.spec.node_name
            ),
            now,
        );
        set_phase(d, EvacuationPhase::Blocked, now);
        d.next = Next::RequeueAfter(REPLAN_EVERY);
        return;
    }
    d.status.plan = obs.fresh.moves.clone();
    d.status.unplaceable = obs.fresh.unplaceable.clone();
    d.status.counts = Some(counts(&d.status.plan, d.status.unplaceable.len()));
    if !obs.fresh.unplaceable.is_empty() {
        let names: Vec<String> = obs
            .fresh
            .unplaceable
            .iter()
            .map(|u| format!("{} ({})", u.vm, u.reason))
            .collect();
        condition(
            d,
            obs,
            PLANNED,
            false,
            "Unplaceable",
            format!(
                "{} of {} VM(s) have no place, so nothing moves: {}; status.unplaceable says why, and the plan is made again as the cluster changes",
                names.len(),
                names.len() + d.status.plan.len(),
                names.join(", ")
            ),
            now,
        );
        set_phase(d, EvacuationPhase::Blocked, now);
        d.next = Next::RequeueAfter(REPLAN_EVERY);
        return;
    }
    let left = match obs.fresh.left.as_slice() {
        [] => String::new(),
        names => format!("; shut-off VM(s) stay defined there: {}", names.join(", ")),
    };
    condition(
        d,
        obs,
        PLANNED,
        true,
        "AllPlaced",
        format!(
            "every VM has a place: {} move(s){left}",
            d.status.plan.len()
        ),
        now,
    );
    if obs.spec.dry_run {
        set_phase(d, EvacuationPhase::Planned, now);
        d.next = Next::RequeueAfter(REPLAN_EVERY);
        return;
    }
    d.status.start_time = Some(Time(now));
    set_phase(d, EvacuationPhase::Evacuating, now);
    evacuating(obs, d, now);
}

/// The moves run: follow each migration, re-plan failed ones, start as
/// many as the cap allows, and end once every VM is settled.
fn evacuating(obs: &Observed, d: &mut Decision, now: Timestamp) {
    let fresh_for = |uuid: &str| obs.fresh.moves.iter().find(|m| m.uuid == uuid);
    let unplaceable_for = |uuid: &str| obs.fresh.unplaceable.iter().find(|u| u.uuid == uuid);
    // VMs that appeared on the node since the plan was made (started there
    // by hand) are planned too.
    for m in &obs.fresh.moves {
        if !d.status.plan.iter().any(|p| p.uuid == m.uuid) {
            d.status.plan.push(m.clone());
        }
    }
    for m in d.status.plan.iter_mut() {
        let Some(name) = m.migration.clone() else {
            continue;
        };
        let seen = obs.migrations.get(&name);
        if seen.is_none() && m.migration_phase.is_none() {
            // Recorded but never seen: its creation failed after the
            // status write, or the cache trails it. Created again; a
            // second create of an existing one changes nothing.
            d.create.push(NewMigration {
                name,
                planned: m.clone(),
            });
            continue;
        }
        // A migration that vanished (deleted by someone) counts as failed.
        m.migration_phase = match seen {
            Some(o) => o.phase,
            None => Some(Phase::Failed),
        };
        let failed = matches!(m.migration_phase, Some(Phase::Failed | Phase::Cancelled));
        if failed {
            m.message = Some(match seen.and_then(|o| o.message.clone()) {
                Some(msg) => format!("{name}: {msg}"),
                None => format!("{name} was deleted before it ended"),
            });
            if m.attempts < MAX_ATTEMPTS {
                // Re-planned: the next dispatch takes the fresh target.
                m.migration = None;
                m.migration_phase = None;
            }
        }
    }
    let cap = obs.spec.max_parallel.unwrap_or(u32::MAX) as usize;
    let mut in_flight = d
        .status
        .plan
        .iter()
        .filter(|m| m.migration.is_some() && m.migration_phase.is_none_or(|p| !p.is_terminal()))
        .count();
    let mut gone: Vec<String> = Vec::new();
    for m in d.status.plan.iter_mut() {
        if m.migration.is_some() || m.attempts >= MAX_ATTEMPTS || in_flight >= cap {
            continue;
        }
        // Checked again at dispatch: the world changed since the plan.
        match (fresh_for(&m.uuid), unplaceable_for(&m.uuid)) {
            (Some(now_planned), _) => {
                m.target_node = now_planned.target_node.clone();
                m.mode = now_planned.mode;
            }
            (None, Some(u)) => {
                m.message = Some(format!("no place at dispatch: {}", u.message));
                m.attempts = MAX_ATTEMPTS;
                continue;
            }
            // Gone from the node (moved, shut off or deleted by someone
            // else): nothing left to move.
            (None, None) => {
                gone.push(m.uuid.clone());
                continue;
            }
        }
        m.attempts += 1;
        let name = migration_name(&obs.name, m, m.attempts);
        m.migration = Some(name.clone());
        m.migration_phase = None;
        d.create.push(NewMigration {
            name,
            planned: m.clone(),
        });
        in_flight += 1;
    }
    d.status.plan.retain(|m| !gone.contains(&m.uuid));
    d.status.counts = Some(counts(&d.status.plan, 0));
    let unsettled = d.status.plan.iter().any(|m| {
        let running = m.migration.is_some() && m.migration_phase.is_none_or(|p| !p.is_terminal());
        let waiting = m.migration.is_none() && m.attempts < MAX_ATTEMPTS;
        running || waiting
    });
    if unsettled {
        d.next = Next::RequeueAfter(LOOK_EVERY);
        return;
    }
    let running = obs.running_on_node.clone().unwrap_or_default();
    let moved_all = d
        .status
        .plan
        .iter()
        .all(|m| m.migration_phase == Some(Phase::Succeeded));
    if running.is_empty() {
        condition(
            d,
            obs,
            COMPLETED,
            true,
            "NodeEmpty",
            format!(
                "{} runs no VM: {} moved",
                obs.spec.node_name,
                d.status.plan.len()
            ),
            now,
        );
        return set_phase(d, EvacuationPhase::Completed, now);
    }
    if moved_all {
        // Every move succeeded and the inventory has not caught up yet.
        d.next = Next::RequeueAfter(CATCH_UP_EVERY);
        return;
    }
    let why: Vec<String> = d
        .status
        .plan
        .iter()
        .filter(|m| m.migration_phase != Some(Phase::Succeeded))
        .map(|m| format!("{}: {}", m.vm, m.message.clone().unwrap_or_default()))
        .collect();
    condition(
        d,
        obs,
        COMPLETED,
        false,
        "MovesFailed",
        format!(
            "{} still runs {}; {}",
            obs.spec.node_name,
            running.join(", "),
            why.join("; ")
        ),
        now,
    );
    set_phase(d, EvacuationPhase::Failed, now);
}

fn counts(plan: &[PlannedMove], unplaceable: usize) -> EvacuationCounts {
    let mut c = EvacuationCounts {
        total: (plan.len() + unplaceable) as u32,
        failed: unplaceable as u32,
        ..EvacuationCounts::default()
    };
    for m in plan {
        match (m.migration.as_ref(), m.migration_phase) {
            (Some(_), Some(Phase::Succeeded)) => c.moved += 1,
            (Some(_), Some(Phase::Failed | Phase::Cancelled)) => c.failed += 1,
            (None, _) if m.attempts >= MAX_ATTEMPTS => c.failed += 1,
            (None, _) => c.pending += 1,
            (Some(_), p) if !started(p) => c.pending += 1,
            (Some(_), _) => c.moving += 1,
        }
    }
    c
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
