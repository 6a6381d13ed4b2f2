//! kvmotion's node agent: drives the local libvirtd for migrations, publishes
//! the node's `Hypervisor` inventory and serves the API the controller calls.

pub mod api;
pub mod cli;
pub mod engine;
pub mod error;
pub mod inventory;
pub mod libvirt;
pub mod metrics;
pub mod run;
pub mod sampler;
pub mod serve;

pub use error::Error;
