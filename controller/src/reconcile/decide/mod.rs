//! Decide: the next status of a migration and the one agent call to make,
//! as pure functions of what was observed, the controller's settings and
//! the time. Every phase is matched explicitly and table-tested.
//!
//! `decide` runs first (carried by `advance` through the phases that ask
//! no agent); when it asks for an [`Effect`], the caller performs it and
//! hands the [`Outcome`] to `outcome::apply`, also pure.

mod advance;
mod cancel;
mod flight;
mod foresee;
#[cfg(test)]
mod fuzz;
pub mod outcome;
mod plan;
#[cfg(test)]
mod tests;

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kvmotion_api::agent::{JobStatus, PrepareRequest, StartRequest};
use kvmotion_api::hypervisor::DomainState;
use kvmotion_api::migration::PhaseTransition;
use kvmotion_api::{ConditionType, Phase, VirtualMachineMigrationStatus};

use super::conditions;
use super::observe::{AgentFailure, Observed};

pub use advance::{Advance, advance};
pub use cancel::cancel;
pub use flight::endpoints as flight_endpoints;
pub use outcome::stale_copy;

/// The controller's own timing, from its flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// An agent heartbeat older than this makes its node unavailable.
    pub heartbeat_max_age: Duration,
    /// How long an agent may stay silent mid-migration before the
    /// migration fails with AgentUnreachable.
    pub agent_timeout: Duration,
    /// Progress is mirrored at most this often.
    pub progress_interval: Duration,
    /// How often a migration waiting in Pending looks for capacity again.
    /// A safety net: the end of a migration and a policy change wake the
    /// head of the queue at once.
    pub capacity_recheck: Duration,
    /// How often a migration waiting in Scheduling for a target with a
    /// free inbound slot looks again.
    pub target_recheck: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat_max_age: Duration::from_secs(40),
            agent_timeout: Duration::from_secs(60),
            progress_interval: Duration::from_secs(1),
            capacity_recheck: Duration::from_secs(30),
            target_recheck: Duration::from_secs(5),
        }
    }
}

/// What reconcile should do.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The status the migration should have (written when it differs).
    pub status: VirtualMachineMigrationStatus,
    /// The agent call to make, if any.
    pub effect: Option<Effect>,
    /// When to look again.
    pub next: Next,
    /// Capacity was granted to this flight: the caller records the
    /// reservation.
    pub admitted: Option<super::world::Flight>,
    /// Deletion may proceed (cancel only).
    pub finished: bool,
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

/// An agent, by node and endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Node name.
    pub node: String,
    /// Agent API URL.
    pub url: String,
}

/// One call sequence to the agents.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Prepare the target, then start the job on the source with the
    /// target's answer. Both calls are idempotent per migration id.
    Start {
        /// Source agent.
        source: Endpoint,
        /// Target agent.
        target: Endpoint,
        /// For the target.
        prepare: Box<PrepareRequest>,
        /// For the source; `target` is filled from the prepare answer.
        start: Box<StartRequest>,
    },
    /// Ask the source to finish now (post-copy or pause).
    ForceComplete {
        /// Source agent.
        source: Endpoint,
    },
    /// Forget the finished job on both agents; remove the source's
    /// shut-off copy of the VM when one was left (`stale_source`).
    Finish {
        /// Source agent.
        source: Endpoint,
        /// Target agent.
        target: Endpoint,
        /// The VM's UUID when the source keeps a stale definition of it.
        stale_source: Option<String>,
    },
    /// Stop the job if it still runs, clean the target, and find where the
    /// VM runs now.
    Settle {
        /// Source agent.
        source: Endpoint,
        /// Target agent.
        target: Endpoint,
        /// The VM's UUID (or name).
        vm: String,
    },
}

impl Effect {
    /// Whether the effect may only be decided from the stored object, not
    /// a cached copy of it. Start can begin a job again that already ran,
    /// and Settle cleans the target and stops jobs: from a cache lagging
    /// behind a write, either could act on a move that has moved on.
    /// Force-complete and Finish repeat harmlessly (the agents treat both
    /// as done once done), so they skip the extra read.
    pub fn needs_fresh_state(&self) -> bool {
        match self {
            Effect::Start { .. } | Effect::Settle { .. } => true,
            Effect::ForceComplete { .. } | Effect::Finish { .. } => false,
        }
    }
}

/// What an effect achieved.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The job runs.
    Started(Box<JobStatus>),
    /// An agent refused, with its reason.
    Refused(AgentFailure),
    /// An agent did not answer.
    Unreachable(AgentFailure),
    /// Done (force-complete sent, job forgotten).
    Done,
    /// Settled: where the VM is.
    Located(Placement),
    /// Not settled yet (the job is still stopping), with why.
    Stopping(String),
}

/// Where a settle found the VM.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Placement {
    /// The nodes that have the VM, and its state there.
    pub places: Vec<(String, DomainState)>,
    /// A node whose stale shut-off definition was removed because the VM
    /// (same UUID) was confirmed running elsewhere.
    pub removed_stale: Option<String>,
}

/// Computes what to do with a migration that is not being deleted.
pub fn decide(obs: &Observed, s: &Settings, now: Timestamp) -> Decision {
    let mut d = Decision::keep(obs);
    if obs.status.phase.is_some() {
        // Only forceComplete can change the spec; its generation is
        // acknowledged whatever the phase.
        d.status.observed_generation = Some(obs.generation);
    }
    match obs.status.phase {
        None => plan::accept(obs, &mut d, now),
        Some(Phase::Pending) => plan::pending(obs, s, &mut d, now),
        Some(Phase::Scheduling) => plan::scheduling(obs, s, &mut d, now),
        Some(Phase::Prechecking) => plan::prechecking(obs, s, &mut d, now),
        Some(Phase::Preparing) => flight::preparing(obs, &mut d, now),
        Some(Phase::Migrating) => flight::migrating(obs, s, &mut d, now),
        Some(Phase::Finalizing) => flight::finalizing(obs, s, &mut d, now),
        Some(Phase::Failed) | Some(Phase::Cancelled) => flight::settle(obs, s, &mut d, now),
        Some(Phase::Succeeded) => {}
    }
    d
}

impl Decision {
    /// No change yet: the current status, no effect, wait for a change.
    fn keep(obs: &Observed) -> Decision {
        Decision {
            status: obs.status.clone(),
            effect: None,
            next: Next::AwaitChange,
            admitted: None,
            finished: false,
        }
    }

    /// Moves into `phase`, recording when.
    fn enter(&mut self, phase: Phase, now: Timestamp) {
        let now = time(now);
        self.status.phase = Some(phase);
        self.status.phase_transition_times.push(PhaseTransition {
            phase,
            time: now.clone(),
        });
        if phase.is_terminal() {
            self.status.completion_time = Some(now);
            self.status.progress = None;
        }
    }

    /// Sets a condition.
    fn condition(
        &mut self,
        obs: &Observed,
        type_: ConditionType,
        ok: bool,
        reason: &str,
        message: String,
        now: Timestamp,
    ) {
        conditions::set(
            &mut self.status.conditions,
            type_,
            ok,
            reason,
            message,
            obs.generation,
            time(now),
        );
    }

    /// Fails the migration: the step's condition (if any) and Completed
    /// carry the reason.
    fn fail(
        &mut self,
        obs: &Observed,
        step: Option<ConditionType>,
        reason: &str,
        message: String,
        now: Timestamp,
    ) {
        if let Some(step) = step {
            self.condition(obs, step, false, reason, message.clone(), now);
        }
        self.condition(obs, ConditionType::Completed, false, reason, message, now);
        self.enter(Phase::Failed, now);
        self.effect = None;
        self.next = Next::AwaitChange;
    }

    /// Fails a migration whose agents hold state: the job must be stopped,
    /// the target cleaned and the VM located (the Settled condition).
    fn fail_settling(
        &mut self,
        obs: &Observed,
        step: Option<ConditionType>,
        reason: &str,
        message: String,
        now: Timestamp,
    ) {
        self.fail(obs, step, reason, message, now);
        self.condition(
            obs,
            ConditionType::Settled,
            false,
            kvmotion_api::ConditionReason::SettlePending.as_str(),
            "stopping the job, cleaning the target and locating the VM".into(),
            now,
        );
    }
}

/// Status times are whole seconds, as Kubernetes serializes them.
pub fn time(now: Timestamp) -> Time {
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// How long ago `since` was, never negative.
fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    now.duration_since(since).unsigned_abs()
}

/// Whether a settle is still owed: the agents were touched and the VM not
/// yet located.
pub fn settle_pending(status: &VirtualMachineMigrationStatus) -> bool {
    use kvmotion_api::ConditionReason as R;
    // AgentUnreachable: settling waited past the agent timeout and still
    // owes the agents their cleanup.
    conditions::get(&status.conditions, ConditionType::Settled).is_some_and(|c| {
        c.reason == R::SettlePending.as_str() || c.reason == R::AgentUnreachable.as_str()
    })
}
