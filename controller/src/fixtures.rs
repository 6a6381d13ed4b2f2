//! Test fixtures shared by the controller's unit tests.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kvmotion_api::hypervisor::{HostCpu, HostMemory, Hypervisor, HypervisorSpec, HypervisorStatus};

/// One GiB.
pub const GIB: u64 = 1 << 30;

/// A Ready x86_64 hypervisor with libvirt 11.3.0, 64 GiB of memory and
/// `free_gib` of it free.
pub fn healthy_hypervisor(name: &str, free_gib: u64) -> Hypervisor {
    let mut h = Hypervisor::new(name, HypervisorSpec::default());
    h.status = Some(HypervisorStatus {
        libvirt_version: Some("11.3.0".into()),
        cpu: Some(HostCpu {
            arch: "x86_64".into(),
            ..Default::default()
        }),
        memory: Some(HostMemory {
            total_bytes: 64 * GIB,
            free_bytes: free_gib * GIB,
        }),
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "LibvirtReachable".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        }],
        ..Default::default()
    });
    h
}
