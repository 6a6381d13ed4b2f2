//! kvmotion's API: the custom resources, their phases and conditions, shared by
//! the controller, the agent and the tests. Pure types, no I/O, except the
//! agent-API client behind the `client` feature.

pub mod agent;
#[cfg(feature = "client")]
pub mod client;
pub mod condition;
pub mod crds;
pub mod evacuation;
pub mod hypervisor;
pub mod migration;
pub mod movable;
pub mod phase;
pub mod policy;
pub mod predict;
mod schema;
pub mod tuning;

pub use condition::{ConditionReason, ConditionType};
pub use evacuation::{EvacuationPhase, NodeEvacuation, NodeEvacuationSpec, NodeEvacuationStatus};
pub use hypervisor::{Hypervisor, HypervisorSpec, HypervisorStatus};
pub use migration::{
    MigrationMode, VirtualMachineMigration, VirtualMachineMigrationSpec,
    VirtualMachineMigrationStatus, VmRef,
};
pub use phase::Phase;
pub use policy::{MigrationPolicy, MigrationPolicySpec};
pub use tuning::MigrationTuning;

/// API group of every kvmotion resource.
pub const GROUP: &str = "kvmotion.io";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";
/// An error and its causes on one line ("a: b: c"), for logs and messages.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Field manager the controller uses for server-side apply.
pub const CONTROLLER_MANAGER: &str = "kvmotion-controller";
