//! A libvirt without a hypervisor, for unit tests of the agent API's input
//! handling: a fixed host, the domains it is given, no jobs. Migration
//! behaviour is tested on the real lab, never here.

use std::sync::Mutex;
use std::time::Duration;

use kvmotion_api::agent::DomainRef;
use kvmotion_api::hypervisor::{DomainInfo, HostCpu, HostMemory};
use tokio::sync::broadcast;

use super::{
    CpuCompat, DomainStanding, FinalStats, GuestCpu, HostFacts, Libvirt, LibvirtError,
    LibvirtEvent, MigrateCall, PostCopy,
};
use crate::engine::convergence::JobSample;

/// An in-memory host.
pub struct FakeLibvirt {
    /// The domains "defined" here.
    pub domains: Mutex<Vec<DomainInfo>>,
    events: broadcast::Sender<LibvirtEvent>,
}

impl FakeLibvirt {
    /// A host with these domains.
    pub fn with(domains: Vec<DomainInfo>) -> FakeLibvirt {
        FakeLibvirt {
            domains: Mutex::new(domains),
            events: broadcast::channel(16).0,
        }
    }

    fn find(&self, vm: &DomainRef) -> Option<DomainInfo> {
        let domains = self.domains.lock().ok()?;
        domains
            .iter()
            .find(|d| {
                vm.uuid.as_deref() == Some(d.uuid.as_str())
                    || (vm.uuid.is_none() && vm.name.as_deref() == Some(d.name.as_str()))
            })
            .cloned()
    }
}

impl Libvirt for FakeLibvirt {
    fn host(&self) -> Result<HostFacts, LibvirtError> {
        Ok(HostFacts {
            libvirt_version: "11.3.0".into(),
            qemu_version: "10.0.2".into(),
            cpu: HostCpu {
                arch: "x86_64".into(),
                model: "qemu64".into(),
                vendor: None,
                features: Vec::new(),
                count: 2,
            },
            memory: HostMemory {
                total_bytes: 8 << 30,
                free_bytes: 4 << 30,
            },
        })
    }
    fn domains(&self) -> Result<Vec<DomainInfo>, LibvirtError> {
        Ok(self.domains.lock().map(|d| d.clone()).unwrap_or_default())
    }
    fn domain(&self, vm: &DomainRef) -> Result<Option<DomainInfo>, LibvirtError> {
        Ok(self.find(vm))
    }
    fn guest_cpu(&self, vm: &DomainRef) -> Result<GuestCpu, LibvirtError> {
        self.find(vm)
            .map(|_| GuestCpu {
                virt_type: "qemu".into(),
                xml: String::new(),
            })
            .ok_or_else(|| LibvirtError::DomainNotFound(vm.to_string()))
    }
    fn compare_cpu(&self, _: &str, _: &str) -> Result<CpuCompat, LibvirtError> {
        Ok(CpuCompat::Compatible)
    }
    fn migrate(&self, vm: &DomainRef, _: &MigrateCall) -> Result<(), LibvirtError> {
        Err(LibvirtError::Call {
            op: "virDomainMigrateToURI3",
            message: format!("the fake host cannot migrate {vm}"),
        })
    }
    fn job(&self, _: &DomainRef) -> Result<Option<JobSample>, LibvirtError> {
        Ok(None)
    }
    fn completed_stats_at(
        &self,
        _: &str,
        _: &DomainRef,
    ) -> Result<Option<FinalStats>, LibvirtError> {
        Ok(None)
    }
    fn daemon_version(&self, _: Option<&str>) -> Result<u32, LibvirtError> {
        Ok(11_003_000)
    }
    fn standing(
        &self,
        _: Option<&str>,
        vm: &DomainRef,
    ) -> Result<Option<DomainStanding>, LibvirtError> {
        Ok(self.find(vm).map(|d| DomainStanding {
            state: d.state,
            post_copy: PostCopy::None,
            job: false,
        }))
    }
    fn start_dirty_rate(&self, _: &DomainRef, _: u32) -> Result<(), LibvirtError> {
        Ok(())
    }
    // No measurement here: a dirty rate is asked of the real lab.
    fn dirty_rate(&self, _: &DomainRef) -> Result<Option<super::DirtyRateSample>, LibvirtError> {
        Ok(None)
    }
    fn job_throttle(&self, _: &DomainRef) -> Result<Option<u8>, LibvirtError> {
        Ok(None)
    }
    fn abort_job(&self, _: &DomainRef) -> Result<(), LibvirtError> {
        Ok(())
    }
    fn interrupt_post_copy(&self, _: &DomainRef) -> Result<(), LibvirtError> {
        Ok(())
    }
    fn set_max_downtime(&self, _: &DomainRef, _: Duration) -> Result<(), LibvirtError> {
        Ok(())
    }
    fn start_post_copy(&self, _: &DomainRef) -> Result<(), LibvirtError> {
        Ok(())
    }
    fn suspend(&self, _: &DomainRef) -> Result<(), LibvirtError> {
        Ok(())
    }
    fn resume(&self, _: &DomainRef) -> Result<(), LibvirtError> {
        Ok(())
    }
    fn undefine(&self, vm: &DomainRef) -> Result<(), LibvirtError> {
        let found = self.find(vm);
        if let (Ok(mut domains), Some(d)) = (self.domains.lock(), found) {
            domains.retain(|x| x.uuid != d.uuid);
        }
        Ok(())
    }
    fn subscribe(&self) -> broadcast::Receiver<LibvirtEvent> {
        self.events.subscribe()
    }
}
