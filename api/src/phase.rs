//! The phases a migration moves through.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a migration stands. Terminal phases never change again.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    /// Accepted, waiting to be scheduled (or for concurrency capacity).
    Pending,
    /// Resolving the source node and choosing a target.
    Scheduling,
    /// Checking that the move can work before touching anything.
    Prechecking,
    /// The target agent prepares disks and checks resources.
    Preparing,
    /// libvirt is moving the VM; progress is reported.
    Migrating,
    /// Confirming the VM runs on the target and is gone from the source.
    Finalizing,
    /// The VM runs on the target.
    Succeeded,
    /// The move failed; the VM runs on exactly one node, named in status.
    Failed,
    /// Deleted or cancelled while in flight; the VM stayed on the source.
    Cancelled,
}

impl Phase {
    /// Every phase, in the order a successful migration passes them.
    pub const ALL: [Phase; 9] = [
        Phase::Pending,
        Phase::Scheduling,
        Phase::Prechecking,
        Phase::Preparing,
        Phase::Migrating,
        Phase::Finalizing,
        Phase::Succeeded,
        Phase::Failed,
        Phase::Cancelled,
    ];

    /// True once the migration can no longer change.
    pub fn is_terminal(self) -> bool {
        match self {
            Phase::Succeeded | Phase::Failed | Phase::Cancelled => true,
            Phase::Pending
            | Phase::Scheduling
            | Phase::Prechecking
            | Phase::Preparing
            | Phase::Migrating
            | Phase::Finalizing => false,
        }
    }

    /// The phase as written in status and used as a static metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Scheduling => "Scheduling",
            Phase::Prechecking => "Prechecking",
            Phase::Preparing => "Preparing",
            Phase::Migrating => "Migrating",
            Phase::Finalizing => "Finalizing",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Cancelled => "Cancelled",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_succeeded_failed_and_cancelled_are_terminal() {
        let terminal: Vec<Phase> = Phase::ALL.into_iter().filter(|p| p.is_terminal()).collect();
        assert_eq!(
            terminal,
            vec![Phase::Succeeded, Phase::Failed, Phase::Cancelled]
        );
    }

    #[test]
    fn status_spelling_matches_serde() {
        for phase in Phase::ALL {
            assert_eq!(serde_json::to_value(phase).unwrap(), phase.as_str());
        }
    }
}
