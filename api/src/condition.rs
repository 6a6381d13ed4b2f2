//! Condition types and reasons written to a migration's status.
//!
//! Reasons are a closed set so that alerts, docs and tests can rely on them.

/// The `type` of a condition on a `VirtualMachineMigration`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConditionType {
    /// The controller understood the spec and took the migration on.
    Accepted,
}

impl ConditionType {
    /// The type as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Accepted => "Accepted",
        }
    }
}

/// The `reason` of a condition: CamelCase, stable, documented in the README.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConditionReason {
    /// The spec is valid and the migration is queued.
    Accepted,
    /// The spec passed admission but the controller cannot act on it
    /// (the message says which field and why).
    InvalidSpec,
}

impl ConditionReason {
    /// The reason as written in status; also a static metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionReason::Accepted => "Accepted",
            ConditionReason::InvalidSpec => "InvalidSpec",
        }
    }
}
