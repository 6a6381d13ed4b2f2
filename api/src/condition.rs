//! Condition types and reasons written to a migration's status.
//!
//! Types are a closed set. Reasons the controller decides on are listed
//! here too, so alerts, docs and tests can rely on them; a failure the
//! source agent reports carries the agent's own reason (e.g.
//! `ProgressTimeout`), also listed in docs/api.md.

/// The `type` of a condition on a `VirtualMachineMigration`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConditionType {
    /// The controller understood the spec and took the migration on.
    Accepted,
    /// Concurrency capacity was granted (False while waiting for it).
    Admitted,
    /// The source was found and the target given or chosen.
    Scheduled,
    /// Every precheck passed (False names the one that failed).
    Prechecked,
    /// The agents answer (False while one does not).
    AgentsReachable,
    /// The migration ended: True when the VM runs on the target.
    Completed,
    /// After a failure or cancellation: the agents' state is cleaned and the
    /// VM was verified to run on exactly one node (named in the message).
    Settled,
    /// Set once post-copy lost its link: False (PostCopyLinkLost) while the
    /// source agent resumes the move, True (PostCopyRecovered) once the
    /// memory flows again.
    LinkHealthy,
}

impl ConditionType {
    /// The type as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Accepted => "Accepted",
            ConditionType::Admitted => "Admitted",
            ConditionType::Scheduled => "Scheduled",
            ConditionType::Prechecked => "Prechecked",
            ConditionType::AgentsReachable => "AgentsReachable",
            ConditionType::Completed => "Completed",
            ConditionType::Settled => "Settled",
            ConditionType::LinkHealthy => "LinkHealthy",
        }
    }
}

/// The `reason` of a condition the controller decides on: CamelCase,
/// stable, documented in docs/api.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConditionReason {
    /// The spec is valid and the migration is queued.
    Accepted,
    /// The spec passed admission but the controller cannot act on it
    /// (the message says which field and why).
    InvalidSpec,
    /// A concurrency limit is full; the migration waits its turn.
    WaitingForCapacity,
    /// Capacity was granted.
    CapacityGranted,
    /// spec.policyRef names no MigrationPolicy.
    PolicyNotFound,
    /// The policy and the migration's overrides together ask for what
    /// libvirt refuses (tls with transport Tunnelled).
    TuningConflict,
    /// The VM is in no inventory (or not on spec.sourceNode).
    VMNotFound,
    /// The VM's name matches domains on several nodes.
    VMAmbiguous,
    /// The same VM (one UUID) is listed on several nodes: it is moving, or
    /// an inventory has not caught up yet. Scheduling waits, then fails.
    VMMoving,
    /// A live migration of a VM that does not run.
    VMNotRunning,
    /// The VM is in a passing state (shutting down): Prechecking waits for
    /// it to settle, then fails.
    VMStateSettling,
    /// The dirty rate the source agent sampled and the link's rate say
    /// that nothing the policy allows converges; the VM was not touched.
    PredictedNotToConverge,
    /// The only possible target is the VM's own node.
    SameNode,
    /// spec.targetNode has no Hypervisor object.
    TargetNotFound,
    /// The target's Hypervisor is not Ready.
    TargetNotReady,
    /// The target is cordoned for migrations.
    TargetUnschedulable,
    /// Not enough free memory on the target.
    InsufficientMemory,
    /// The target's CPU cannot run the guest.
    CPUIncompatible,
    /// The target's libvirt is older than the source's.
    LibvirtTooOld,
    /// No node matches spec.targetSelector and can take the VM.
    NoTargetAvailable,
    /// A disk is not on shared storage and copying is forbidden.
    StorageNotShared,
    /// Another migration is moving this VM.
    AlreadyMigrating,
    /// An agent's heartbeat is stale or it does not answer.
    AgentUnavailable,
    /// The target was given or chosen.
    TargetSelected,
    /// Every precheck passed.
    PrechecksPassed,
    /// Both agents answer.
    AgentsAnswer,
    /// The VM runs on the target.
    Succeeded,
    /// The VM already ran on the target when the migration was created.
    AlreadyOnTarget,
    /// An agent stopped answering mid-migration for longer than allowed.
    AgentUnreachable,
    /// After the job ended, the VM was not where it should be.
    VerificationFailed,
    /// The migration was deleted while in flight.
    Cancelled,
    /// The VM was verified on exactly one node and agent state cleaned.
    VMLocated,
    /// Cleaning up and locating the VM is still going on.
    SettlePending,
    /// The stored status cannot be read; nothing is done until it is fixed.
    StatusUnreadable,
    /// libvirt runs a migration job on the VM that the source agent has no
    /// record of (its state directory was lost): waiting for it to end.
    JobNotAdopted,
    /// The source agent had no record of the job and libvirt runs none:
    /// the migration is judged by where the VM is.
    JobLost,
    /// The VM runs on one node and a stale shut-off definition of it was
    /// left on the other: removed.
    StaleDefinitionRemoved,
    /// The VM is defined on both nodes and it cannot be told which copy is
    /// stale: a person must remove one.
    VMDefinedTwice,
    /// Post-copy lost its link: the guest is paused with its memory split
    /// between the nodes; only resuming the move (or a person) can end it.
    PostCopyLinkLost,
    /// A post-copy that lost its link flows again (the agent resumed it, or
    /// QEMU's own stream did once the link returned).
    PostCopyRecovered,
}

impl ConditionReason {
    /// The reason as written in status; also a static metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConditionReason::Accepted => "Accepted",
            ConditionReason::InvalidSpec => "InvalidSpec",
            ConditionReason::WaitingForCapacity => "WaitingForCapacity",
            ConditionReason::CapacityGranted => "CapacityGranted",
            ConditionReason::PolicyNotFound => "PolicyNotFound",
            ConditionReason::TuningConflict => "TuningConflict",
            ConditionReason::VMNotFound => "VMNotFound",
            ConditionReason::VMAmbiguous => "VMAmbiguous",
            ConditionReason::VMMoving => "VMMoving",
            ConditionReason::VMNotRunning => "VMNotRunning",
            ConditionReason::VMStateSettling => "VMStateSettling",
            ConditionReason::PredictedNotToConverge => "PredictedNotToConverge",
            ConditionReason::SameNode => "SameNode",
            ConditionReason::TargetNotFound => "TargetNotFound",
            ConditionReason::TargetNotReady => "TargetNotReady",
            ConditionReason::TargetUnschedulable => "TargetUnschedulable",
            ConditionReason::InsufficientMemory => "InsufficientMemory",
            ConditionReason::CPUIncompatible => "CPUIncompatible",
            ConditionReason::LibvirtTooOld => "LibvirtTooOld",
            ConditionReason::NoTargetAvailable => "NoTargetAvailable",
            ConditionReason::StorageNotShared => "StorageNotShared",
            ConditionReason::AlreadyMigrating => "AlreadyMigrating",
            ConditionReason::AgentUnavailable => "AgentUnavailable",
            ConditionReason::TargetSelected => "TargetSelected",
            ConditionReason::PrechecksPassed => "PrechecksPassed",
            ConditionReason::AgentsAnswer => "AgentsAnswer",
            ConditionReason::Succeeded => "Succeeded",
            ConditionReason::AlreadyOnTarget => "AlreadyOnTarget",
            ConditionReason::AgentUnreachable => "AgentUnreachable",
            ConditionReason::VerificationFailed => "VerificationFailed",
            ConditionReason::Cancelled => "Cancelled",
            ConditionReason::VMLocated => "VMLocated",
            ConditionReason::SettlePending => "SettlePending",
            ConditionReason::StatusUnreadable => "StatusUnreadable",
            ConditionReason::JobNotAdopted => "JobNotAdopted",
            ConditionReason::JobLost => "JobLost",
            ConditionReason::StaleDefinitionRemoved => "StaleDefinitionRemoved",
            ConditionReason::VMDefinedTwice => "VMDefinedTwice",
            ConditionReason::PostCopyLinkLost => "PostCopyLinkLost",
            ConditionReason::PostCopyRecovered => "PostCopyRecovered",
        }
    }
}

impl AsRef<str> for ConditionReason {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}
