//! libvirt behind a small trait: what the agent needs from the hypervisor,
//! nothing more. `virt_impl` is the real implementation on the `virt`
//! crate; the two-node lab is its test bed. Every method blocks: callers run
//! them on `spawn_blocking`.

pub mod events;
#[cfg(test)]
pub mod fake;
pub mod virt_impl;
pub mod xml;

use std::time::Duration;

use kvmotion_api::agent::DomainRef;
use kvmotion_api::hypervisor::{DomainInfo, DomainState, HostCpu, HostMemory};

use crate::engine::convergence::JobSample;

pub use events::LibvirtEvent;

/// Facts about the host, for the inventory and for prepare checks.
#[derive(Debug, Clone, PartialEq)]
pub struct HostFacts {
    /// libvirt daemon version, "11.3.0".
    pub libvirt_version: String,
    /// QEMU version, "10.0.2".
    pub qemu_version: String,
    /// Host CPU.
    pub cpu: HostCpu,
    /// Host memory.
    pub memory: HostMemory,
}

/// A domain's CPU as the target must provide it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestCpu {
    /// "kvm", or "qemu" for emulation.
    pub virt_type: String,
    /// The `<cpu>` element; empty when the domain names no model.
    pub xml: String,
}

/// libvirt's verdict on running a guest CPU on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuCompat {
    /// The host offers everything the guest CPU needs.
    Compatible,
    /// Something the guest needs is missing here.
    Incompatible,
}

/// How to migrate, in libvirt's terms.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MigrateCall {
    /// Target daemon, e.g. "qemu+tcp://10.99.0.2/system".
    pub dest_libvirt_uri: String,
    /// Migration stream address, e.g. "tcp://10.99.0.2".
    pub dest_migration_uri: String,
    /// Keep the guest running while copying (else paused during the move).
    pub live: bool,
    /// Move only the definition of a shut-off domain.
    pub offline: bool,
    /// Bandwidth cap in MiB/s; 0 = unlimited.
    pub bandwidth_mibps: u64,
    /// Allow post-copy (switched to later by `start_post_copy`).
    pub post_copy: bool,
    /// Throttle a guest that dirties memory too fast.
    pub auto_converge: bool,
    /// Leave the guest paused on the target (it was paused on the source).
    pub keep_paused: bool,
    /// Parallel connections (> 1 enables multifd).
    pub parallel_connections: u8,
    /// Compression method names ("xbzrle", "zstd", "zlib"); empty = none.
    pub compression: Option<String>,
    /// Encrypt with libvirt's native TLS.
    pub tls: bool,
    /// Send the stream through the libvirt daemons' connection
    /// (`VIR_MIGRATE_TUNNELLED`) instead of QEMU's own.
    pub tunnelled: bool,
    /// Guest disks (targets) whose storage libvirt copies along.
    pub copy_disks: Vec<String>,
    /// Local disks were already synced to the target by the agents, so
    /// libvirt must accept them without shared storage.
    pub disks_synced: bool,
    /// Resume a post-copy migration that lost its link, with the flags of
    /// the original call (libvirt's post-copy recovery).
    pub post_copy_resume: bool,
}

/// Where a domain stands in a post-copy migration, as libvirt's state
/// reasons tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostCopy {
    /// Not in post-copy (or never was).
    None,
    /// Post-copy under way.
    Active,
    /// Post-copy lost its link: paused on the source, running on the
    /// target with vCPUs waiting for pages.
    Failed,
}

/// A domain as seen on a node, with its post-copy standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainStanding {
    /// libvirt's state.
    pub state: DomainState,
    /// Its post-copy standing.
    pub post_copy: PostCopy,
    /// libvirt runs a job on it.
    pub job: bool,
}

impl DomainStanding {
    /// Whether this is the source's half of a post-copy that lost its link:
    /// libvirt keeps the failed job (so `job` may be true) until a resume.
    pub fn split(&self) -> bool {
        self.state != DomainState::ShutOff && self.post_copy == PostCopy::Failed
    }
}

/// Final figures of a finished job, from libvirt's job-completed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FinalStats {
    /// Job wall time.
    pub elapsed: Duration,
    /// Guest downtime at switch-over.
    pub downtime: Duration,
    /// Bytes sent.
    pub data_processed: u64,
    /// Memory passes.
    pub memory_iteration: u64,
}

impl FinalStats {
    /// The job's duration, or `wall` when libvirt kept none.
    pub fn elapsed_or(&self, wall: Duration) -> Duration {
        if self.elapsed.is_zero() {
            wall
        } else {
            self.elapsed
        }
    }
}

/// Errors of talking to libvirt.
#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    /// The daemon could not be reached.
    #[error("connecting to libvirt at {uri}: {message}")]
    Connect {
        /// Connection URI.
        uri: String,
        /// libvirt's message.
        message: String,
    },
    /// The domain does not exist here.
    #[error("domain {0} not found")]
    DomainNotFound(String),
    /// A libvirt call failed.
    #[error("{op} failed: {message}")]
    Call {
        /// The operation, e.g. "virDomainMigrateToURI3".
        op: &'static str,
        /// libvirt's message.
        message: String,
    },
    /// libvirt returned XML the agent could not read.
    #[error("reading {what} XML: {message}")]
    Xml {
        /// What was parsed.
        what: &'static str,
        /// The parser's message.
        message: String,
    },
}

/// A dirty-rate measurement as libvirt reports it in domain stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirtyRateSample {
    /// The measurement started by [`Libvirt::start_dirty_rate`] is done.
    pub measured: bool,
    /// A measurement is running now (anyone's: libvirt runs one at a time
    /// per domain, and refuses to start another).
    pub measuring: bool,
    /// When the last measurement started (`dirtyrate.calc_start_time`):
    /// tells a new result from an earlier one.
    pub start_time: i64,
    /// Its result (`dirtyrate.megabytes_per_second`), in bytes per second.
    pub bytes_per_second: u64,
    /// Memory the guest's QEMU holds (`balloon.rss`): the pages with data
    /// a first migration pass must send.
    pub resident_bytes: u64,
}

/// What the agent needs from libvirt.
pub trait Libvirt: Send + Sync + 'static {
    /// Host versions, CPU and memory.
    fn host(&self) -> Result<HostFacts, LibvirtError>;
    /// All domains defined or running here.
    fn domains(&self) -> Result<Vec<DomainInfo>, LibvirtError>;
    /// One domain, when it exists here.
    fn domain(&self, vm: &DomainRef) -> Result<Option<DomainInfo>, LibvirtError>;
    /// The domain's virtualization type and guest CPU (`<cpu>` XML).
    fn guest_cpu(&self, vm: &DomainRef) -> Result<GuestCpu, LibvirtError>;
    /// Whether this node's hypervisor (of `virt_type`) can provide that CPU.
    fn compare_cpu(&self, virt_type: &str, cpu_xml: &str) -> Result<CpuCompat, LibvirtError>;
    /// Migrates peer to peer; blocks until libvirt's job ends.
    fn migrate(&self, vm: &DomainRef, call: &MigrateCall) -> Result<(), LibvirtError>;
    /// Statistics of the running job; `None` when no job runs.
    fn job(&self, vm: &DomainRef) -> Result<Option<JobSample>, LibvirtError>;
    /// Final figures of the last job libvirt completed for `vm` on the
    /// daemon at `uri` (another node's): a migration's target keeps them
    /// after the source's copy of the domain is gone. `None` when it has
    /// none.
    fn completed_stats_at(
        &self,
        uri: &str,
        vm: &DomainRef,
    ) -> Result<Option<FinalStats>, LibvirtError>;
    /// The version of the libvirt daemon at `uri` (`None`: this node's),
    /// as libvirt encodes it (major * 1,000,000 + minor * 1,000 + micro).
    fn daemon_version(&self, uri: Option<&str>) -> Result<u32, LibvirtError>;
    /// The domain's standing on the daemon at `uri` (`None`: this node's);
    /// `None` when it does not exist there.
    fn standing(
        &self,
        uri: Option<&str>,
        vm: &DomainRef,
    ) -> Result<Option<DomainStanding>, LibvirtError>;
    /// Starts measuring how fast `vm` dirties its memory over `seconds`
    /// (libvirt's page sampling, which needs no dirty-logging support and
    /// so works under TCG too).
    fn start_dirty_rate(&self, vm: &DomainRef, seconds: u32) -> Result<(), LibvirtError>;
    /// The last dirty-rate measurement of `vm` and the memory its QEMU
    /// holds; `None` when the domain does not exist here.
    fn dirty_rate(&self, vm: &DomainRef) -> Result<Option<DirtyRateSample>, LibvirtError>;
    /// Auto-converge throttle of the running job, percent.
    fn job_throttle(&self, vm: &DomainRef) -> Result<Option<u8>, LibvirtError>;
    /// Aborts the running job.
    fn abort_job(&self, vm: &DomainRef) -> Result<(), LibvirtError>;
    /// Interrupts a job in post-copy (`VIR_DOMAIN_ABORT_JOB_POSTCOPY`):
    /// the migration fails into the resumable split instead of hanging.
    fn interrupt_post_copy(&self, vm: &DomainRef) -> Result<(), LibvirtError>;
    /// Sets the largest downtime allowed at switch-over.
    fn set_max_downtime(&self, vm: &DomainRef, downtime: Duration) -> Result<(), LibvirtError>;
    /// Switches the running job to post-copy.
    fn start_post_copy(&self, vm: &DomainRef) -> Result<(), LibvirtError>;
    /// Pauses the guest.
    fn suspend(&self, vm: &DomainRef) -> Result<(), LibvirtError>;
    /// Resumes a paused guest.
    fn resume(&self, vm: &DomainRef) -> Result<(), LibvirtError>;
    /// Undefines a shut-off domain (its disks stay).
    fn undefine(&self, vm: &DomainRef) -> Result<(), LibvirtError>;
    /// Events of all domains.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<LibvirtEvent>;
}
