//! The migration engine: source jobs (start, monitor, abort, force), target
//! preparation and cleanup, offline moves with disk sync. Calls are
//! idempotent per migration id: the id keys every job and preparation.

pub mod convergence;
pub mod disksync;
pub mod offline;
pub mod progress;
pub mod source;
pub mod target;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvmotion_api::agent::{DomainPresence, DomainRef, JobPhase, JobStatus};
use kvmotion_api::migration::MigrationProgress;
use tokio::sync::Notify;

use crate::error::{Error, blocking};
use crate::libvirt::Libvirt;

/// Milliseconds of `d`, saturating, as reported in job results.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Addresses and knobs of this node's engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This node's name.
    pub node: String,
    /// libvirt URI peers use to reach this node's daemon ("qemu+tcp://10.99.0.2/system").
    pub libvirt_uri: String,
    /// Address the migration stream comes in on ("tcp://10.99.0.2").
    pub migration_uri: String,
    /// This agent's own API endpoint, for peers.
    pub endpoint: String,
    /// How often a running job is sampled.
    pub poll: Duration,
}

/// A source-side migration job.
pub struct Job {
    /// Migration id.
    pub id: String,
    /// The VM (uuid filled in once resolved).
    pub vm: DomainRef,
    state: Mutex<JobStatus>,
    /// Set by abort; the monitor aborts the libvirt job.
    pub abort_requested: std::sync::atomic::AtomicBool,
    /// Set by force-complete; the monitor switches to post-copy or pauses.
    pub force_requested: std::sync::atomic::AtomicBool,
    /// Wakes the monitor early for abort or force.
    pub wake: Notify,
    /// Bumped on every status change; long-polling readers wait on it.
    version: tokio::sync::watch::Sender<u64>,
}

impl Job {
    fn new(id: &str, vm: DomainRef, node: &str) -> Job {
        Job {
            id: id.to_string(),
            vm,
            state: Mutex::new(JobStatus {
                id: id.to_string(),
                phase: JobPhase::Starting,
                progress: MigrationProgress::default(),
                result: None,
                message: None,
                reason: None,
                vm_node: Some(node.to_string()),
                actions: Vec::new(),
            }),
            abort_requested: false.into(),
            force_requested: false.into(),
            wake: Notify::new(),
            version: tokio::sync::watch::channel(0).0,
        }
    }

    /// A copy of the job's status.
    pub fn status(&self) -> JobStatus {
        match self.state.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Changes the status under the lock.
    pub fn update(&self, f: impl FnOnce(&mut JobStatus)) {
        let mut guard = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard);
        drop(guard);
        self.version.send_modify(|v| *v += 1);
    }

    /// The status once it changes, or after `within`, whichever is first.
    pub async fn next_status(&self, within: Duration) -> JobStatus {
        let mut rx = self.version.subscribe();
        rx.mark_unchanged();
        let _ = tokio::time::timeout(within, rx.changed()).await;
        self.status()
    }
}

/// The engine of one node.
pub struct Engine {
    /// libvirt.
    pub lv: Arc<dyn Libvirt>,
    /// Addresses and knobs.
    pub config: EngineConfig,
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    /// Target-side preparations by migration id.
    pub prepared: Mutex<HashMap<String, target::Prepared>>,
    /// Client for peer agents (disk sync).
    pub peer: kvmotion_api::client::AgentClient,
}

impl Engine {
    /// An engine over `lv`.
    pub fn new(
        lv: Arc<dyn Libvirt>,
        config: EngineConfig,
        peer: kvmotion_api::client::AgentClient,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            lv,
            config,
            jobs: Mutex::new(HashMap::new()),
            prepared: Mutex::new(HashMap::new()),
            peer,
        })
    }

    /// The job with this id.
    pub fn job(&self, id: &str) -> Result<Arc<Job>, Error> {
        self.jobs
            .lock()
            .map_err(|_| Error::Task("job registry lock poisoned".into()))?
            .get(id)
            .cloned()
            .ok_or_else(|| Error::UnknownMigration { id: id.to_string() })
    }

    /// Registers a new job for `vm`, or returns the existing job with this
    /// id. Refuses a second live job for the same domain.
    fn register(&self, id: &str, vm: DomainRef) -> Result<(Arc<Job>, bool), Error> {
        let mut jobs = self
            .jobs
            .lock()
            .map_err(|_| Error::Task("job registry lock poisoned".into()))?;
        if let Some(existing) = jobs.get(id) {
            return Ok((existing.clone(), false));
        }
        let busy = jobs
            .values()
            .find(|j| !j.status().phase.is_final() && j.vm.uuid.is_some() && j.vm.uuid == vm.uuid);
        if let Some(other) = busy {
            return Err(Error::AlreadyMigrating {
                vm: vm.to_string(),
                other: other.id.clone(),
            });
        }
        let job = Arc::new(Job::new(id, vm, &self.config.node));
        jobs.insert(id.to_string(), job.clone());
        Ok((job, true))
    }

    /// Forgets a finished job (`finish` on the source).
    pub fn forget(&self, id: &str) -> Result<JobStatus, Error> {
        let job = self.job(id)?;
        let status = job.status();
        if !status.phase.is_final() {
            return Err(Error::Conflict(format!(
                "migration {id} is still {:?}; abort it or wait for it to end",
                status.phase
            )));
        }
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.remove(id);
        }
        Ok(status)
    }

    /// Whether this node has the domain, and its state.
    pub async fn presence(&self, vm: DomainRef) -> Result<DomainPresence, Error> {
        let lv = self.lv.clone();
        let domain = blocking(move || lv.domain(&vm)).await?;
        Ok(DomainPresence {
            node: self.config.node.clone(),
            domain,
        })
    }
}
