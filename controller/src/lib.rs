//! kvmotion's controller: reconciles `VirtualMachineMigration` objects while
//! holding the leader Lease, and serves health and metrics.

pub mod cli;
pub mod error;
pub mod evacuation;
#[cfg(test)]
mod fixtures;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod policy;
pub mod precheck;
pub mod reconcile;
pub mod run;
pub mod schedule;

pub use error::Error;
