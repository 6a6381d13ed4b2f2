//! kvmotion's API: the custom resources, their phases and conditions, shared by
//! the controller, the agent and the tests. Pure types, no I/O.

pub mod agent;
pub mod condition;
pub mod crds;
pub mod hypervisor;
pub mod migration;
pub mod phase;
pub mod policy;
mod schema;
pub mod tuning;

pub use condition::{ConditionReason, ConditionType};
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
/// Field manager the controller uses for server-side apply.
pub const CONTROLLER_MANAGER: &str = "kvmotion-controller";
