//! The migration engine: source jobs (start, monitor, abort, force), target
//! preparation and cleanup, offline moves with disk sync. Calls are
//! idempotent per migration id: the id keys every job and preparation.

pub mod adopt;
pub mod convergence;
pub mod dirty;
pub mod disksync;
pub mod offline;
pub mod predict;
pub mod progress;
pub mod recovery;
pub mod source;
pub mod state;
pub mod target;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvmotion_api::agent::{AbortedJob, DomainPresence, DomainRef, JobPhase, JobStatus};
use kvmotion_api::migration::MigrationProgress;
use kvmotion_api::predict::Overheads;
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
                prediction: None,
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
    /// Serializes prepare calls (see `target`).
    prepare_lock: tokio::sync::Mutex<()>,
    /// Where jobs and preparations are recorded.
    pub state: state::StateDir,
    /// Client for peer agents (disk sync).
    pub peer: kvmotion_api::client::AgentClient,
    /// How long recent live moves took from the call to the first byte.
    startup: Recent,
    /// What recent predicted live moves took beyond their start-up and
    /// the time their prediction counted for their data.
    finish: Recent,
}

/// The median of the last [`RECENT`] measurements of a duration: one odd
/// move (a guest's first after boot sends far less than its QEMU holds)
/// does not throw the next predictions off.
#[derive(Default)]
struct Recent(Mutex<std::collections::VecDeque<Duration>>);

/// How many measurements [`Recent`] keeps.
const RECENT: usize = 5;

impl Recent {
    fn get(&self) -> Option<Duration> {
        let kept = self.0.lock().ok()?;
        median(kept.iter().copied().collect())
    }

    fn note(&self, took: Duration) {
        if let Ok(mut kept) = self.0.lock() {
            if kept.len() == RECENT {
                kept.pop_front();
            }
            kept.push_back(took);
        }
    }
}

/// The median (of an even count, the mean of the middle two).
fn median(mut v: Vec<Duration>) -> Option<Duration> {
    v.sort();
    let mid = v.len() / 2;
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[mid]),
        _ => Some((v[mid - 1] + v[mid]) / 2),
    }
}

impl Engine {
    /// An engine over `lv`, recording into `state`. Call [`Engine::adopt`]
    /// before serving, to take back what an earlier run left.
    pub fn new(
        lv: Arc<dyn Libvirt>,
        config: EngineConfig,
        peer: kvmotion_api::client::AgentClient,
        state: state::StateDir,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            lv,
            config,
            jobs: Mutex::new(HashMap::new()),
            prepared: Mutex::new(HashMap::new()),
            prepare_lock: tokio::sync::Mutex::new(()),
            state,
            peer,
            startup: Recent::default(),
            finish: Recent::default(),
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
        let busy = vm.uuid.as_deref().and_then(|u| moving(&jobs, u));
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

    /// What this node's live moves cost besides their data, the median
    /// of its last five moves as source: start-up (the migration call to
    /// the first byte on the wire) and finish (what a predicted move took
    /// beyond that and the time its prediction counted for its data).
    pub fn overheads(&self) -> Overheads {
        Overheads {
            startup: self.startup.get(),
            finish: self.finish.get(),
        }
    }

    /// Counts one live move's time to its first byte.
    pub(crate) fn note_startup(&self, took: Duration) {
        self.startup.note(took);
    }

    /// Counts one predicted live move's finish ([`kvmotion_api::predict::finish_of`]).
    pub(crate) fn note_finish(&self, took: Duration) {
        self.finish.note(took);
    }

    /// Whether an unfinished job of this agent moves the domain `uuid`.
    pub fn is_moving(&self, uuid: &str) -> bool {
        self.job_moving(uuid).is_some()
    }

    /// The unfinished job of this agent that moves the domain `uuid`.
    fn job_moving(&self, uuid: &str) -> Option<Arc<Job>> {
        let jobs = self.jobs.lock().ok()?;
        moving(&jobs, uuid).cloned()
    }

    /// Drops a job that could not be recorded.
    fn unregister(&self, id: &str) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.remove(id);
        }
    }

    /// Registers a job taken back after a restart, with its last status.
    fn restore(&self, id: &str, vm: DomainRef, status: JobStatus) -> Arc<Job> {
        let job = Arc::new(Job::new(id, vm, &self.config.node));
        job.update(|s| *s = status);
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.insert(id.to_string(), job.clone());
        }
        job
    }

    /// Forgets a finished job (`finish` on the source), on disk too.
    pub async fn forget(&self, id: &str) -> Result<JobStatus, Error> {
        let job = self.job(id)?;
        let status = job.status();
        if !status.phase.is_final() {
            return Err(Error::Conflict(format!(
                "migration {id} is still {:?}; abort it or wait for it to end",
                status.phase
            )));
        }
        let (st, id2) = (self.state.clone(), id.to_string());
        crate::error::blocking_io(format!("forgetting job {id}"), move || {
            st.remove(state::Kind::Job, &id2)
        })
        .await?;
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.remove(id);
        }
        Ok(status)
    }

    /// Whether this node has the domain, its state, and whether libvirt
    /// runs a job on it.
    pub async fn presence(&self, vm: DomainRef) -> Result<DomainPresence, Error> {
        let lv = self.lv.clone();
        let (domain, migrating) = blocking(move || {
            let Some(d) = lv.domain(&vm)? else {
                return Ok((None, false));
            };
            let migrating = lv.job(&by_uuid(&d.uuid))?.is_some();
            Ok((Some(d), migrating))
        })
        .await?;
        Ok(DomainPresence {
            node: self.config.node.clone(),
            domain,
            migrating,
        })
    }

    /// Removes this node's definition of `vm` (its disks stay): the
    /// controller asks once it confirmed the VM running on another node.
    /// Refused while a guest runs here, a job runs on it, or a job of this
    /// agent still moves it.
    pub async fn undefine_stale(&self, vm: DomainRef) -> Result<(), Error> {
        let lv = self.lv.clone();
        let Some(d) = blocking(move || lv.domain(&vm)).await? else {
            return Ok(());
        };
        if self.job_moving(&d.uuid).is_some() {
            return Err(Error::Conflict(format!(
                "a migration of {} still runs here; it is not stale",
                d.name
            )));
        }
        let vm = by_uuid(&d.uuid);
        let lv = self.lv.clone();
        let node = self.config.node.clone();
        blocking(move || {
            let Some(d) = lv.domain(&vm)? else {
                return Ok(Ok(()));
            };
            if d.state.has_guest() || lv.job(&vm)?.is_some() {
                return Ok(Err(Error::DomainState {
                    vm: d.name,
                    state: format!("{:?}", d.state),
                    needed: "only a shut-off definition without a job is removed as stale",
                }));
            }
            tracing::info!(vm = %d.name, uuid = %d.uuid, node = %node, "removing a stale definition");
            lv.undefine(&vm).map(Ok)
        })
        .await?
    }

    /// Aborts the migration job libvirt runs on `vm` here: through the
    /// agent's job when one runs it (so its monitor reports the abort),
    /// else on libvirt directly (a job no record names).
    pub async fn abort_domain_job(&self, vm: DomainRef) -> Result<AbortedJob, Error> {
        let lv = self.lv.clone();
        let found = blocking(move || lv.domain(&vm)).await?;
        let Some(d) = found else {
            return Ok(AbortedJob {
                aborted: false,
                migration: None,
            });
        };
        if let Some(job) = self.job_moving(&d.uuid) {
            let id = job.id.clone();
            self.abort(&id)?;
            return Ok(AbortedJob {
                aborted: true,
                migration: Some(id),
            });
        }
        let lv = self.lv.clone();
        let r = by_uuid(&d.uuid);
        let aborted = blocking(move || {
            if lv.job(&r)?.is_none() {
                return Ok(false);
            }
            lv.abort_job(&r).map(|()| true)
        })
        .await?;
        Ok(AbortedJob {
            aborted,
            migration: None,
        })
    }
}

/// The unfinished job among `jobs` that moves the domain `uuid`.
fn moving<'a>(jobs: &'a HashMap<String, Arc<Job>>, uuid: &str) -> Option<&'a Arc<Job>> {
    jobs.values()
        .find(|j| !j.status().phase.is_final() && j.vm.uuid.as_deref() == Some(uuid))
}

/// A domain addressed by its uuid only.
pub(crate) fn by_uuid(uuid: &str) -> DomainRef {
    DomainRef {
        name: None,
        uuid: Some(uuid.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_overheads_are_the_median_of_the_last_five() {
        let ms = Duration::from_millis;
        // (measurements in order) -> what the next prediction counts
        let cases: [(&[u64], Option<Duration>); 5] = [
            (&[], None),
            (&[900], Some(ms(900))),
            (&[900, 1100], Some(ms(1000))),
            // A first move after boot, far off, moves the median little.
            (&[900, 0, 1000], Some(ms(900))),
            // Only the last five count.
            (&[0, 0, 0, 700, 800, 900, 1000, 1100], Some(ms(900))),
        ];
        for (noted, want) in cases {
            let recent = Recent::default();
            for &m in noted {
                recent.note(ms(m));
            }
            assert_eq!(recent.get(), want, "{noted:?}");
        }
    }
}
