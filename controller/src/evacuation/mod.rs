//! Node evacuations: emptying a hypervisor node of its VMs, planned as a
//! whole (`plan`), then carried out through migrations (`decide`).

pub mod decide;
pub mod plan;
