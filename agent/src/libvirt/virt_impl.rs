//! The real `Libvirt` on the `virt` crate. One connection, shared by all
//! threads (libvirt connections are thread-safe), reopened when the daemon
//! went away.

use std::ffi::c_int;
use std::sync::Mutex;
use std::time::Duration;

use kvmotion_api::agent::DomainRef;
use kvmotion_api::hypervisor::{DiskInfo, DomainInfo, DomainState, HostCpu, HostMemory};
use tokio::sync::broadcast;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

use super::{
    CpuCompat, DirtyRateSample, DomainStanding, FinalStats, GuestCpu, HostFacts, Libvirt,
    LibvirtError, LibvirtEvent, MigrateCall, PostCopy, events, xml,
};
use crate::engine::convergence::JobSample;

/// libvirt through the `virt` crate.
pub struct VirtLibvirt {
    uri: String,
    shared_paths: Vec<String>,
    conn: Mutex<Option<Connect>>,
    /// The host CPU from the capabilities document: fixed while a
    /// connection lives, so read once per connection, not every poll.
    host_cpu: Mutex<Option<HostCpu>>,
    events: broadcast::Sender<LibvirtEvent>,
}

fn call(op: &'static str) -> impl Fn(virt::error::Error) -> LibvirtError {
    move |e| LibvirtError::Call {
        op,
        message: e.message().to_string(),
    }
}

impl VirtLibvirt {
    /// Connects to `uri` (e.g. "qemu:///system"). Disks under one of
    /// `shared_paths` are reported as shared storage.
    pub fn connect(uri: &str, shared_paths: Vec<String>) -> Result<Self, LibvirtError> {
        virt::error::clear_error_callback();
        events::start_event_loop();
        let (events, _) = broadcast::channel(1024);
        let me = VirtLibvirt {
            uri: uri.to_string(),
            shared_paths,
            conn: Mutex::new(None),
            host_cpu: Mutex::new(None),
            events,
        };
        me.with_conn(|_| Ok(()))?;
        Ok(me)
    }

    /// Runs `f` on a live connection, opening one when needed.
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&Connect) -> Result<T, LibvirtError>,
    ) -> Result<T, LibvirtError> {
        let mut guard = self.conn.lock().map_err(|_| LibvirtError::Connect {
            uri: self.uri.clone(),
            message: "connection lock poisoned".into(),
        })?;
        let alive = guard
            .as_ref()
            .is_some_and(|c| c.is_alive().unwrap_or(false));
        if !alive {
            // Dropping the old handle closes it.
            drop(guard.take());
            if let Ok(mut cpu) = self.host_cpu.lock() {
                *cpu = None;
            }
            let conn = Connect::open(Some(&self.uri)).map_err(|e| LibvirtError::Connect {
                uri: self.uri.clone(),
                message: e.message().to_string(),
            })?;
            // Keepalive makes a dead daemon fail calls in seconds, not hang them.
            let _ = conn.set_keep_alive(5, 3);
            events::register(&conn, &self.events);
            *guard = Some(conn);
        }
        let conn = guard.as_ref().ok_or_else(|| LibvirtError::Connect {
            uri: self.uri.clone(),
            message: "no connection".into(),
        })?;
        // Clone the handle (a reference count) so the lock is not held
        // during long calls such as a migration.
        let conn = conn.clone();
        drop(guard);
        f(&conn)
    }

    /// Runs `f` on the daemon at `uri` (another node's, over a connection
    /// of its own, closed afterwards), or on this node's when `None`.
    fn at<T>(
        &self,
        uri: Option<&str>,
        f: impl FnOnce(&Connect) -> Result<T, LibvirtError>,
    ) -> Result<T, LibvirtError> {
        let Some(uri) = uri else {
            return self.with_conn(f);
        };
        let conn = Connect::open(Some(uri)).map_err(|e| LibvirtError::Connect {
            uri: uri.to_string(),
            message: e.message().to_string(),
        })?;
        let r = f(&conn);
        // Dropping the handle closes the connection.
        drop(conn);
        r
    }

    fn lookup(&self, conn: &Connect, vm: &DomainRef) -> Result<Option<Domain>, LibvirtError> {
        let found = match (&vm.uuid, &vm.name) {
            (Some(uuid), _) => conn.lookup_domain_by_uuid_string(uuid),
            (None, Some(name)) => conn.lookup_domain_by_name(name),
            (None, None) => return Ok(None),
        };
        match found {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.code().is(virt::error::ErrorNumber::NoDomain) => Ok(None),
            Err(e) => Err(call("virDomainLookup")(e)),
        }
    }

    fn require(&self, conn: &Connect, vm: &DomainRef) -> Result<Domain, LibvirtError> {
        self.lookup(conn, vm)?
            .ok_or_else(|| LibvirtError::DomainNotFound(vm.to_string()))
    }

    fn describe(&self, dom: &Domain) -> Result<DomainInfo, LibvirtError> {
        let info = dom.info().map_err(call("virDomainGetInfo"))?;
        let active = dom.is_active().unwrap_or(false);
        let domain_xml = dom.xml_desc(0).map_err(call("virDomainGetXMLDesc"))?;
        let disks: Vec<DiskInfo> = xml::domain_disks(&domain_xml)?
            .iter()
            .map(|d| {
                let capacity = if active {
                    dom.block_info(&d.target, 0).ok().map(|b| b.capacity)
                } else {
                    d.source
                        .as_deref()
                        .and_then(|p| image_capacity(p, d.format.as_deref()))
                };
                xml::disk_info(d, &self.shared_paths, capacity)
            })
            .collect();
        Ok(DomainInfo {
            name: dom.name().map_err(call("virDomainGetName"))?,
            uuid: dom.uuid_string().map_err(call("virDomainGetUUIDString"))?,
            state: state_of(info.state.to_raw()),
            memory_bytes: info.max_mem.saturating_mul(1024),
            vcpus: info.nr_virt_cpu,
            persistent: dom.is_persistent().unwrap_or(false),
            disks,
            dirty_rate: None,
        })
    }
}

fn state_of(s: sys::virDomainState) -> DomainState {
    match s {
        sys::VIR_DOMAIN_RUNNING => DomainState::Running,
        sys::VIR_DOMAIN_BLOCKED => DomainState::Blocked,
        sys::VIR_DOMAIN_PAUSED => DomainState::Paused,
        sys::VIR_DOMAIN_SHUTDOWN => DomainState::ShuttingDown,
        sys::VIR_DOMAIN_SHUTOFF => DomainState::ShutOff,
        sys::VIR_DOMAIN_CRASHED => DomainState::Crashed,
        sys::VIR_DOMAIN_PMSUSPENDED => DomainState::Suspended,
        _ => DomainState::Unknown,
    }
}

/// Virtual size of an image file: a qcow2 header says it (bytes 24..32,
/// big-endian); a raw image is as large as its file.
pub fn image_capacity(path: &str, format: Option<&str>) -> Option<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    if format == Some("qcow2") {
        let mut header = [0u8; 32];
        f.read_exact(&mut header).ok()?;
        if &header[..4] != b"QFI\xfb" {
            return None;
        }
        return Some(u64::from_be_bytes(header[24..32].try_into().ok()?));
    }
    f.metadata().ok().map(|m| m.len())
}

/// The typed parameters of a migration call.
fn migrate_params(c: &MigrateCall) -> virt::domain::MigrateParameters {
    let cap = (c.bandwidth_mibps > 0).then_some(c.bandwidth_mibps);
    virt::domain::MigrateParameters {
        // A tunnel goes where the daemon connection goes: libvirt
        // refuses a migration URI with it.
        uri: (!c.offline && !c.tunnelled).then(|| c.dest_migration_uri.clone()),
        bandwidth: cap,
        // QEMU lifts the cap once post-copy starts unless told otherwise
        // (its post-copy bandwidth defaults to unlimited): a cap that
        // protects the network must hold in both phases.
        bandwidth_postcopy: cap.filter(|_| c.post_copy || c.post_copy_resume),
        parallel_connections: (c.parallel_connections > 1)
            .then_some(i32::from(c.parallel_connections)),
        compression: c.compression.clone(),
        migrate_disks: c.copy_disks.clone(),
        ..Default::default()
    }
}

fn migrate_flags(call: &MigrateCall, persistent: bool) -> u32 {
    let mut flags = sys::VIR_MIGRATE_PEER2PEER;
    if call.offline {
        flags |= sys::VIR_MIGRATE_OFFLINE
            | sys::VIR_MIGRATE_PERSIST_DEST
            | sys::VIR_MIGRATE_UNDEFINE_SOURCE;
        return flags;
    }
    if call.live {
        flags |= sys::VIR_MIGRATE_LIVE;
    }
    if persistent {
        flags |= sys::VIR_MIGRATE_PERSIST_DEST | sys::VIR_MIGRATE_UNDEFINE_SOURCE;
    }
    if call.post_copy {
        flags |= sys::VIR_MIGRATE_POSTCOPY;
    }
    if call.auto_converge {
        flags |= sys::VIR_MIGRATE_AUTO_CONVERGE;
    }
    if call.keep_paused {
        flags |= sys::VIR_MIGRATE_PAUSED;
    }
    if call.parallel_connections > 1 {
        flags |= sys::VIR_MIGRATE_PARALLEL;
    }
    if call.compression.is_some() {
        flags |= sys::VIR_MIGRATE_COMPRESSED;
    }
    if call.tls {
        flags |= sys::VIR_MIGRATE_TLS;
    }
    if call.tunnelled {
        flags |= sys::VIR_MIGRATE_TUNNELLED;
    }
    if !call.copy_disks.is_empty() {
        flags |= sys::VIR_MIGRATE_NON_SHARED_DISK;
    }
    if call.disks_synced {
        flags |= sys::VIR_MIGRATE_UNSAFE;
    }
    if call.post_copy_resume {
        flags |= sys::VIR_MIGRATE_POSTCOPY | sys::VIR_MIGRATE_POSTCOPY_RESUME;
    }
    flags | sys::VIR_MIGRATE_ABORT_ON_ERROR
}

impl Libvirt for VirtLibvirt {
    fn host(&self) -> Result<HostFacts, LibvirtError> {
        self.with_conn(|conn| {
            let node = conn.node_info().map_err(call("virNodeGetInfo"))?;
            let cached = self.host_cpu.lock().ok().and_then(|c| c.clone());
            let cpu = match cached {
                Some(cpu) => cpu,
                None => {
                    let caps = conn
                        .capabilities()
                        .map_err(call("virConnectGetCapabilities"))?;
                    let cpu = xml::host_cpu(&caps, node.cpus)?;
                    if let Ok(mut slot) = self.host_cpu.lock() {
                        *slot = Some(cpu.clone());
                    }
                    cpu
                }
            };
            Ok(HostFacts {
                libvirt_version: xml::version_string(
                    conn.lib_version()
                        .map_err(call("virConnectGetLibVersion"))?,
                ),
                qemu_version: xml::version_string(
                    conn.hyp_version().map_err(call("virConnectGetVersion"))?,
                ),
                cpu,
                memory: HostMemory {
                    total_bytes: node.memory.saturating_mul(1024),
                    free_bytes: conn.free_memory().map_err(call("virNodeGetFreeMemory"))?,
                },
            })
        })
    }

    fn domains(&self) -> Result<Vec<DomainInfo>, LibvirtError> {
        self.with_conn(|conn| {
            let flags =
                sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE | sys::VIR_CONNECT_LIST_DOMAINS_INACTIVE;
            let doms = conn
                .list_all_domains(flags)
                .map_err(call("virConnectListAllDomains"))?;
            let mut out = Vec::with_capacity(doms.len());
            for d in &doms {
                // A domain can vanish between listing and describing.
                match self.describe(d) {
                    Ok(info) => out.push(info),
                    Err(e) => {
                        tracing::debug!(error = %e, "skipping a domain that changed while listed")
                    }
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    fn domain(&self, vm: &DomainRef) -> Result<Option<DomainInfo>, LibvirtError> {
        self.with_conn(|conn| match self.lookup(conn, vm)? {
            Some(d) => self.describe(&d).map(Some),
            None => Ok(None),
        })
    }

    fn guest_cpu(&self, vm: &DomainRef) -> Result<GuestCpu, LibvirtError> {
        self.with_conn(|conn| {
            let dom = self.require(conn, vm)?;
            let domain_xml = dom.xml_desc(0).map_err(call("virDomainGetXMLDesc"))?;
            Ok(GuestCpu {
                virt_type: xml::virt_type(&domain_xml)?,
                xml: xml::guest_cpu(&domain_xml)?,
            })
        })
    }

    fn compare_cpu(&self, virt_type: &str, cpu_xml: &str) -> Result<CpuCompat, LibvirtError> {
        // Compared with what the hypervisor can provide, not with the host
        // CPU: an emulated (TCG) guest may use features the host lacks.
        let virt_type = std::ffi::CString::new(virt_type).map_err(|_| bad_arg("virt type"))?;
        let cpu_xml = std::ffi::CString::new(cpu_xml).map_err(|_| bad_arg("CPU XML"))?;
        self.with_conn(|conn| {
            // SAFETY: live connection; NUL-terminated strings outlive the call.
            let r = unsafe {
                sys::virConnectCompareHypervisorCPU(
                    conn.as_ptr(),
                    std::ptr::null(),
                    std::ptr::null(),
                    std::ptr::null(),
                    virt_type.as_ptr(),
                    cpu_xml.as_ptr(),
                    0,
                )
            };
            check(r, "virConnectCompareHypervisorCPU")?;
            Ok(if r == sys::VIR_CPU_COMPARE_INCOMPATIBLE as c_int {
                CpuCompat::Incompatible
            } else {
                CpuCompat::Compatible
            })
        })
    }

    fn migrate(&self, vm: &DomainRef, c: &MigrateCall) -> Result<(), LibvirtError> {
        self.with_conn(|conn| {
            let dom = self.require(conn, vm)?;
            let persistent = dom.is_persistent().unwrap_or(false);
            dom.migrate_to_uri3(
                Some(&c.dest_libvirt_uri),
                migrate_params(c),
                migrate_flags(c, persistent),
            )
            .map_err(call("virDomainMigrateToURI3"))
        })
    }

    fn job(&self, vm: &DomainRef) -> Result<Option<JobSample>, LibvirtError> {
        self.with_conn(|conn| {
            let Some(dom) = self.lookup(conn, vm)? else {
                return Ok(None);
            };
            let Some(s) = current_job(&dom)? else {
                return Ok(None);
            };
            let (state, reason) = raw_state(&dom)?;
            let pc = post_copy_of(state, reason);
            let page = s.mem_page_size.unwrap_or(4096);
            Ok(Some(JobSample {
                data_total: s.data_total.unwrap_or(0),
                data_processed: s.data_processed.unwrap_or(0),
                data_remaining: s.data_remaining.unwrap_or(0),
                memory_iteration: s.mem_iteration.unwrap_or(0),
                dirty_rate: s.mem_dirty_rate.unwrap_or(0).saturating_mul(page),
                throughput: s
                    .mem_bps
                    .unwrap_or(0)
                    .saturating_add(s.disk_bps.unwrap_or(0)),
                memory_total: s.mem_total.unwrap_or(0),
                post_copy: state == sys::VIR_DOMAIN_PAUSED && pc == PostCopy::Active,
                paused: state == sys::VIR_DOMAIN_PAUSED,
                post_copy_failed: pc == PostCopy::Failed,
                scanned_bytes: s
                    .mem_constant
                    .unwrap_or(0)
                    .saturating_add(s.mem_normal.unwrap_or(0))
                    .saturating_mul(page),
            }))
        })
    }

    fn completed_stats_at(
        &self,
        uri: &str,
        vm: &DomainRef,
    ) -> Result<Option<FinalStats>, LibvirtError> {
        let stats = self.at(Some(uri), |conn| match self.lookup(conn, vm)? {
            Some(dom) => Ok(raw_job_stats(&dom, sys::VIR_DOMAIN_JOB_STATS_COMPLETED)?),
            None => Ok(None),
        })?;
        Ok(stats.map(|s| events::final_stats(&s)))
    }

    fn daemon_version(&self, uri: Option<&str>) -> Result<u32, LibvirtError> {
        self.at(uri, |conn| {
            conn.lib_version().map_err(call("virConnectGetLibVersion"))
        })
    }

    fn standing(
        &self,
        uri: Option<&str>,
        vm: &DomainRef,
    ) -> Result<Option<DomainStanding>, LibvirtError> {
        let read = |conn: &Connect| -> Result<Option<DomainStanding>, LibvirtError> {
            let Some(dom) = self.lookup(conn, vm)? else {
                return Ok(None);
            };
            let (state, reason) = raw_state(&dom)?;
            Ok(Some(DomainStanding {
                state: state_of(state),
                post_copy: post_copy_of(state, reason),
                job: job_runs(&dom)?,
            }))
        };
        self.at(uri, read)
    }

    fn job_throttle(&self, vm: &DomainRef) -> Result<Option<u8>, LibvirtError> {
        self.with_conn(|conn| {
            let Some(dom) = self.lookup(conn, vm)? else {
                return Ok(None);
            };
            Ok(current_job(&dom)?
                .and_then(|s| s.auto_converge_throttle)
                .map(|t| t.clamp(0, 100) as u8))
        })
    }

    fn start_dirty_rate(&self, vm: &DomainRef, seconds: u32) -> Result<(), LibvirtError> {
        self.with_conn(|conn| {
            let dom = self.require(conn, vm)?;
            let secs = c_int::try_from(seconds).unwrap_or(c_int::MAX).max(1);
            // SAFETY: `dom` is a live domain handle.
            let r = unsafe {
                sys::virDomainStartDirtyRateCalc(
                    dom.as_ptr(),
                    secs,
                    sys::VIR_DOMAIN_DIRTYRATE_MODE_PAGE_SAMPLING,
                )
            };
            check(r, "virDomainStartDirtyRateCalc")
        })
    }

    fn dirty_rate(&self, vm: &DomainRef) -> Result<Option<DirtyRateSample>, LibvirtError> {
        self.with_conn(|conn| {
            let Some(dom) = self.lookup(conn, vm)? else {
                return Ok(None);
            };
            raw_dirty_rate(&dom).map(Some)
        })
    }

    fn abort_job(&self, vm: &DomainRef) -> Result<(), LibvirtError> {
        self.with_conn(|conn| {
            let dom = self.require(conn, vm)?;
            // SAFETY: `dom` is a live domain handle.
            let r = unsafe { sys::virDomainAbortJob(dom.as_ptr()) };
            check(r, "virDomainAbortJob")
        })
    }

    fn interrupt_post_copy(&self, vm: &DomainRef) -> Result<(), LibvirtError> {
        self.with_conn(|conn| {
            let dom = self.require(conn, vm)?;
            // SAFETY: `dom` is a live domain handle.
            let r = unsafe {
                sys::virDomainAbortJobFlags(dom.as_ptr(), sys::VIR_DOMAIN_ABORT_JOB_POSTCOPY)
            };
            check(r, "virDomainAbortJobFlags")
        })
    }

    fn set_max_downtime(&self, vm: &DomainRef, downtime: Duration) -> Result<(), LibvirtError> {
        self.with_conn(|conn| {
            let dom = self.require(conn, vm)?;
            let ms = u64::try_from(downtime.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            dom.migrate_set_max_downtime(ms, 0)
                .map_err(call("virDomainMigrateSetMaxDowntime"))
        })
    }

    fn start_post_copy(&self, vm: &DomainRef) -> Result<(), LibvirtError> {
        self.with_conn(|conn| {
            let dom = self.require(conn, vm)?;
            // SAFETY: `dom` is a live domain handle.
            let r = unsafe { sys::virDomainMigrateStartPostCopy(dom.as_ptr(), 0) };
            check(r, "virDomainMigrateStartPostCopy")
        })
    }

    fn suspend(&self, vm: &DomainRef) -> Result<(), LibvirtError> {
        self.with_conn(|conn| {
            self.require(conn, vm)?
                .suspend()
                .map_err(call("virDomainSuspend"))
        })
    }

    fn resume(&self, vm: &DomainRef) -> Result<(), LibvirtError> {
        self.with_conn(|conn| {
            self.require(conn, vm)?
                .resume()
                .map_err(call("virDomainResume"))
        })
    }

    fn undefine(&self, vm: &DomainRef) -> Result<(), LibvirtError> {
        self.with_conn(|conn| {
            self.require(conn, vm)?
                .undefine()
                .map_err(call("virDomainUndefine"))
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<LibvirtEvent> {
        self.events.subscribe()
    }
}

/// libvirt's states of a post-copy migration that lost its link: paused on
/// the source, running (vCPUs waiting for pages) on the target.
/// The post-copy standing a state reason gives: paused on the source,
/// running on the target.
fn post_copy_of(state: sys::virDomainState, reason: c_int) -> PostCopy {
    let is = |s: sys::virDomainState, r: u32| state == s && reason == r as c_int;
    if is(
        sys::VIR_DOMAIN_PAUSED,
        sys::VIR_DOMAIN_PAUSED_POSTCOPY_FAILED,
    ) || is(
        sys::VIR_DOMAIN_RUNNING,
        sys::VIR_DOMAIN_RUNNING_POSTCOPY_FAILED,
    ) {
        PostCopy::Failed
    } else if is(sys::VIR_DOMAIN_PAUSED, sys::VIR_DOMAIN_PAUSED_POSTCOPY)
        || is(sys::VIR_DOMAIN_RUNNING, sys::VIR_DOMAIN_RUNNING_POSTCOPY)
    {
        PostCopy::Active
    } else {
        PostCopy::None
    }
}

/// The statistics of the job libvirt runs on `dom`; `None` when it runs
/// none. libvirt refuses job statistics of an inactive domain: it has no
/// job to report.
fn current_job(dom: &Domain) -> Result<Option<virt::domain::JobStats>, LibvirtError> {
    if !dom.is_active().unwrap_or(false) {
        return Ok(None);
    }
    Ok(raw_job_stats(dom, 0)?)
}

/// Whether libvirt runs a job on `dom`. On the destination of a
/// migration libvirt refuses the job's statistics ("available only on the
/// source host"): that refusal says a job runs.
fn job_runs(dom: &Domain) -> Result<bool, LibvirtError> {
    if !dom.is_active().unwrap_or(false) {
        return Ok(false);
    }
    match raw_job_stats(dom, 0) {
        Ok(job) => Ok(job.is_some()),
        Err(JobStatsError::Incoming) => Ok(true),
        Err(JobStatsError::Libvirt(e)) => Err(e),
    }
}

/// Why job statistics could not be read.
enum JobStatsError {
    /// The domain is a migration's destination: its job's figures are kept
    /// on the source.
    Incoming,
    /// Any other failure.
    Libvirt(LibvirtError),
}

impl From<JobStatsError> for LibvirtError {
    fn from(e: JobStatsError) -> LibvirtError {
        match e {
            JobStatsError::Incoming => LibvirtError::Call {
                op: "virDomainGetJobStats",
                message: "migration statistics are available only on the source host".into(),
            },
            JobStatsError::Libvirt(e) => e,
        }
    }
}

/// The domain's state and reason as libvirt's raw numbers (the wrapper's
/// typed reasons are awkward to compare).
fn raw_state(dom: &Domain) -> Result<(sys::virDomainState, c_int), LibvirtError> {
    let (mut state, mut reason): (c_int, c_int) = (-1, -1);
    // SAFETY: `dom` is live; the out-pointers are valid.
    let r = unsafe { sys::virDomainGetState(dom.as_ptr(), &mut state, &mut reason, 0) };
    check(r, "virDomainGetState")?;
    Ok((state as sys::virDomainState, reason))
}

fn bad_arg(what: &str) -> LibvirtError {
    LibvirtError::Call {
        op: "argument check",
        message: format!("the {what} contains a NUL byte"),
    }
}

fn check(r: c_int, op: &'static str) -> Result<(), LibvirtError> {
    if r < 0 {
        Err(LibvirtError::Call {
            op,
            message: virt::error::Error::last_error().message().to_string(),
        })
    } else {
        Ok(())
    }
}

/// The dirty-rate and balloon stats of one domain
/// (`virDomainListGetStats`), read with libvirt's typed-parameter getters
/// and freed by libvirt.
fn raw_dirty_rate(dom: &Domain) -> Result<DirtyRateSample, LibvirtError> {
    let mut records: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    let stats = sys::VIR_DOMAIN_STATS_DIRTYRATE | sys::VIR_DOMAIN_STATS_BALLOON;
    // SAFETY: `doms` is a NULL-terminated array of one live handle (`dom`
    // outlives the call); libvirt allocates `records`.
    let n = unsafe {
        let mut doms = [dom.as_ptr(), std::ptr::null_mut()];
        sys::virDomainListGetStats(doms.as_mut_ptr(), stats, &mut records, 0)
    };
    check(n.min(0), "virDomainListGetStats")?;
    let mut sample = DirtyRateSample::default();
    if n > 0 && !records.is_null() {
        // SAFETY: libvirt returned `n` records; the first is this domain's.
        let rec = unsafe { &**records };
        let (params, nparams) = (rec.params, rec.nparams);
        let mut status: c_int = 0;
        let mut start_time: i64 = 0;
        let mut mib: i64 = 0;
        let mut rss_kib: u64 = 0;
        // SAFETY: `params`/`nparams` describe the record's parameters, and
        // each out-pointer matches its getter's type.
        unsafe {
            sys::virTypedParamsGetInt(
                params,
                nparams,
                sys::VIR_DOMAIN_STATS_DIRTYRATE_CALC_STATUS.as_ptr(),
                &mut status,
            );
            sys::virTypedParamsGetLLong(
                params,
                nparams,
                sys::VIR_DOMAIN_STATS_DIRTYRATE_CALC_START_TIME.as_ptr(),
                &mut start_time,
            );
            sys::virTypedParamsGetLLong(
                params,
                nparams,
                sys::VIR_DOMAIN_STATS_DIRTYRATE_MEGABYTES_PER_SECOND.as_ptr(),
                &mut mib,
            );
            sys::virTypedParamsGetULLong(
                params,
                nparams,
                sys::VIR_DOMAIN_STATS_BALLOON_RSS.as_ptr(),
                &mut rss_kib,
            );
        }
        sample = DirtyRateSample {
            measured: status == sys::VIR_DOMAIN_DIRTYRATE_MEASURED as c_int,
            measuring: status == sys::VIR_DOMAIN_DIRTYRATE_MEASURING as c_int,
            start_time,
            bytes_per_second: u64::try_from(mib).unwrap_or(0).saturating_mul(1 << 20),
            resident_bytes: rss_kib.saturating_mul(1024),
        };
    }
    if !records.is_null() {
        // SAFETY: frees exactly what virDomainListGetStats allocated.
        unsafe { sys::virDomainStatsRecordListFree(records) };
    }
    Ok(sample)
}

/// `virDomainGetJobStats`, called directly: the `virt` wrapper builds a Vec
/// from a NULL pointer when no job runs and frees libvirt's memory with
/// Rust's allocator. Here the parameters are copied, converted (strings are
/// copied, not freed) and then freed by libvirt.
fn raw_job_stats(
    dom: &Domain,
    flags: u32,
) -> Result<Option<virt::domain::JobStats>, JobStatsError> {
    let mut kind: c_int = 0;
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    let mut nparams: c_int = 0;
    // SAFETY: out-pointers are valid; libvirt allocates `params`.
    let r = unsafe {
        sys::virDomainGetJobStats(dom.as_ptr(), &mut kind, &mut params, &mut nparams, flags)
    };
    if r < 0 {
        let e = virt::error::Error::last_error();
        return Err(match e.code() {
            virt::enumutil::Enum::Known(virt::error::ErrorNumber::OperationUnsupported) => {
                JobStatsError::Incoming
            }
            _ => JobStatsError::Libvirt(LibvirtError::Call {
                op: "virDomainGetJobStats",
                message: e.message().to_string(),
            }),
        });
    }
    if params.is_null() || nparams <= 0 {
        return Ok(None);
    }
    // SAFETY: libvirt returned `nparams` parameters at `params`.
    let copied = unsafe { std::slice::from_raw_parts(params, nparams as usize) }.to_vec();
    let stats = virt::domain::JobStats::from((kind, copied));
    // SAFETY: frees exactly what virDomainGetJobStats allocated.
    unsafe { sys::virTypedParamsFree(params, nparams) };
    if kind == sys::VIR_DOMAIN_JOB_NONE as c_int {
        return Ok(None);
    }
    Ok(Some(stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrate_flags_follow_the_call() {
        let live = MigrateCall {
            live: true,
            post_copy: true,
            ..Default::default()
        };
        let f = migrate_flags(&live, true);
        for want in [
            sys::VIR_MIGRATE_LIVE,
            sys::VIR_MIGRATE_PEER2PEER,
            sys::VIR_MIGRATE_PERSIST_DEST,
            sys::VIR_MIGRATE_UNDEFINE_SOURCE,
            sys::VIR_MIGRATE_POSTCOPY,
        ] {
            assert_ne!(f & want, 0, "flag {want:#x} missing");
        }
        assert_eq!(f & sys::VIR_MIGRATE_NON_SHARED_DISK, 0);
        let transient = migrate_flags(&live, false);
        assert_eq!(transient & sys::VIR_MIGRATE_UNDEFINE_SOURCE, 0);
        let offline = migrate_flags(
            &MigrateCall {
                offline: true,
                ..Default::default()
            },
            true,
        );
        assert_ne!(offline & sys::VIR_MIGRATE_OFFLINE, 0);
        assert_eq!(offline & sys::VIR_MIGRATE_LIVE, 0);
        let copy = migrate_flags(
            &MigrateCall {
                live: true,
                copy_disks: vec!["vda".into()],
                ..Default::default()
            },
            true,
        );
        assert_ne!(copy & sys::VIR_MIGRATE_NON_SHARED_DISK, 0);
        let tunnel = MigrateCall {
            live: true,
            tunnelled: true,
            ..Default::default()
        };
        assert_ne!(migrate_flags(&tunnel, true) & sys::VIR_MIGRATE_TUNNELLED, 0);
        assert_eq!(migrate_flags(&live, true) & sys::VIR_MIGRATE_TUNNELLED, 0);
    }

    #[test]
    fn a_bandwidth_cap_holds_in_post_copy_too() {
        let capped = MigrateCall {
            live: true,
            post_copy: true,
            bandwidth_mibps: 100,
            ..Default::default()
        };
        let p = migrate_params(&capped);
        assert_eq!((p.bandwidth, p.bandwidth_postcopy), (Some(100), Some(100)));
        let no_post_copy = migrate_params(&MigrateCall {
            post_copy: false,
            ..capped.clone()
        });
        assert_eq!(
            (no_post_copy.bandwidth, no_post_copy.bandwidth_postcopy),
            (Some(100), None),
            "libvirt takes a post-copy bandwidth only with post-copy"
        );
        let uncapped = migrate_params(&MigrateCall {
            bandwidth_mibps: 0,
            ..capped
        });
        assert_eq!(
            (uncapped.bandwidth, uncapped.bandwidth_postcopy),
            (None, None)
        );
    }

    #[test]
    fn qcow2_capacity_is_read_from_the_header() {
        let dir = std::env::temp_dir().join(format!("kvmotion-cap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.qcow2");
        let mut header = vec![0u8; 512];
        header[..4].copy_from_slice(b"QFI\xfb");
        header[24..32].copy_from_slice(&(64u64 << 20).to_be_bytes());
        std::fs::write(&path, &header).unwrap();
        assert_eq!(
            image_capacity(path.to_str().unwrap(), Some("qcow2")),
            Some(64 << 20)
        );
        assert_eq!(
            image_capacity(path.to_str().unwrap(), Some("raw")),
            Some(512)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
