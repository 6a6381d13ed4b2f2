//! After a restart the agent takes back what an earlier run recorded:
//! preparations (so cleanup still removes their images) and jobs. A job
//! libvirt still runs is monitored again, with policy, progress, abort and
//! force-complete; a job that ended while the agent was away is concluded
//! from what libvirt shows now (where the domain is, the final statistics
//! where libvirt still has them).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvmotion_api::agent::{DomainRef, JobPhase};
use kvmotion_api::movable::Move;
use tracing::{info, warn};

use super::source::{JobEnd, Outcome, Transfer, completed, unix_ms};
use super::state::{JobRecord, Kind};
use super::target::Prepared;
use super::{Engine, Job};
use crate::error::{Error, blocking, blocking_io};
use crate::libvirt::{Libvirt, LibvirtError};

/// What [`Engine::adopt`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Adopted {
    /// Preparations taken back.
    pub prepared: usize,
    /// Jobs libvirt still ran, monitored again.
    pub running: usize,
    /// Jobs that had ended meanwhile, concluded from libvirt.
    pub concluded: usize,
    /// Jobs that had ended and were reported before the restart.
    pub finished: usize,
}

impl Engine {
    /// Takes back the records of an earlier run. Call once, before serving.
    pub async fn adopt(self: &Arc<Self>) -> Result<Adopted, Error> {
        let mut found = Adopted::default();
        let st = self.state.clone();
        let prepared: Vec<(String, Prepared)> =
            blocking_io("reading preparations", move || st.load(Kind::Prepared)).await?;
        found.prepared = prepared.len();
        if let Ok(mut map) = self.prepared.lock() {
            map.extend(prepared);
        }
        let st = self.state.clone();
        let jobs: Vec<(String, JobRecord)> =
            blocking_io("reading jobs", move || st.load(Kind::Job)).await?;
        for (id, record) in jobs {
            if record.status.phase.is_final() {
                self.restore(&id, record.vm.clone(), record.status.clone());
                found.finished += 1;
                continue;
            }
            let (lv, vm) = (self.lv.clone(), record.vm.clone());
            let here = blocking(move || lv.standing(None, &vm)).await?;
            // A split is recovered, not watched until its job ends: it
            // never does by itself.
            let split = record.how == Move::LiveRunning && here.is_some_and(|d| d.split());
            let running = here.is_some_and(|d| d.job);
            let mut status = record.status.clone();
            status.actions.push("Adopted(agent restart)".into());
            let job = self.restore(&id, record.vm.clone(), status);
            let engine = self.clone();
            if split {
                found.running += 1;
                info!(migration = %id, vm = %record.vm, "recovering a post-copy that lost its link while the agent was away");
                tokio::spawn(async move { engine.resume_recovery(job, record).await });
            } else if running {
                found.running += 1;
                info!(migration = %id, vm = %record.vm, "monitoring a job libvirt still runs");
                tokio::spawn(async move { engine.resume_monitoring(job, record).await });
            } else {
                found.concluded += 1;
                info!(migration = %id, vm = %record.vm, "concluding a job that ended while the agent was away");
                tokio::spawn(async move {
                    let outcome = engine.ended_meanwhile(&job, &record).await;
                    engine.conclude(&job, record, outcome).await;
                });
            }
        }
        Ok(found)
    }

    /// Monitors an adopted job until libvirt's job goes away.
    async fn resume_monitoring(self: Arc<Self>, job: Arc<Job>, record: JobRecord) {
        let transfer = match record.how {
            Move::LiveRunning => Transfer::Live,
            Move::LivePaused => Transfer::LivePaused,
            Move::OfflineWithMemory { .. } | Move::OfflineDefinition => Transfer::Stopped {
                disks_synced: record.request.disks.iter().any(|d| d.copy),
            },
        };
        job.update(|s| s.phase = JobPhase::Running);
        let events = self.lv.subscribe();
        let end = job_gone(self.lv.clone(), job.vm.clone(), self.config.poll);
        let started = started_at(&record);
        let begun = super::source::Begun {
            at: started,
            fresh: false,
            measuring: None,
        };
        let mut outcome = self
            .monitor(&job, &record.request, transfer, end, events, begun)
            .await;
        if record.how == Move::LiveRunning {
            outcome = self
                .recover_if_split(&job, &record.request, started, outcome)
                .await;
        }
        if let Ok(o) = &outcome
            && o.phase == JobPhase::Completed
            && record.how == (Move::OfflineWithMemory { paused: false })
            && record.request.disks.iter().any(|d| d.copy)
        {
            // The agents paused the guest for the move; the target
            // resumes it, as the run this agent lost would have.
            if let Err(e) = super::disksync::resume_on(
                &self.peer,
                &record.request.target.agent_endpoint,
                &job.id,
            )
            .await
            {
                outcome = Err(e);
            }
        }
        self.restore_guest(&job, &record).await;
        self.conclude(&job, record, outcome).await;
    }

    /// Takes up the recovery of a post-copy found split at start.
    async fn resume_recovery(self: Arc<Self>, job: Arc<Job>, record: JobRecord) {
        let started = started_at(&record);
        let node = self.config.node.clone();
        let split = super::source::split(&record.request, &node, "found at agent start");
        let outcome = self
            .recover_if_split(&job, &record.request, started, Ok(split))
            .await;
        self.conclude(&job, record, outcome).await;
    }

    /// How a job that ended while the agent was away came out, from where
    /// the domain is now.
    async fn ended_meanwhile(&self, job: &Job, record: &JobRecord) -> Result<Outcome, Error> {
        self.restore_guest(job, record).await;
        let lv = self.lv.clone();
        let vm = job.vm.clone();
        let here = blocking(move || lv.domain(&vm)).await?;
        let moved = match (record.how, &here) {
            (_, None) => true,
            (Move::OfflineDefinition, Some(_)) => false,
            (Move::LiveRunning | Move::LivePaused | Move::OfflineWithMemory { .. }, Some(d)) => {
                !d.state.has_guest()
            }
        };
        if !moved {
            return Ok(Outcome {
                phase: JobPhase::Failed,
                reason: Some("JobInterrupted"),
                message: Some(format!(
                    "the agent on {} restarted while the job ran, and the job ended without moving the VM; it stays on the source",
                    self.config.node
                )),
                result: None,
            });
        }
        // The source's copy is gone with its statistics; the target keeps
        // those of the job it completed.
        let wall = ran_for(record);
        let (stats, note) = self
            .final_stats_from_target(&record.request, &job.vm, wall)
            .await;
        job.update(|s| s.actions.push(note.into()));
        Ok(completed(stats, stats.elapsed, 0))
    }

    /// Never leaves a guest stopped: one the agents paused for an offline
    /// move (it was running before) runs again when it is still here.
    async fn restore_guest(&self, job: &Job, record: &JobRecord) {
        if record.how != (Move::OfflineWithMemory { paused: false }) {
            return;
        }
        let lv = self.lv.clone();
        let vm = job.vm.clone();
        let resumed = blocking(move || {
            let idle_paused = lv.standing(None, &vm)?.is_some_and(|d| {
                d.state == kvmotion_api::hypervisor::DomainState::Paused && !d.job
            });
            if idle_paused {
                lv.resume(&vm)?;
                return Ok(true);
            }
            Ok(false)
        })
        .await;
        match resumed {
            Ok(true) => {
                job.update(|s| s.actions.push("Resume(left paused by the lost run)".into()))
            }
            Ok(false) => {}
            Err(e) => {
                warn!(migration = %job.id, error = %crate::error::chain(&e), "could not resume a guest left paused")
            }
        }
    }
}

/// When the recorded job started, as an `Instant` of this process.
fn started_at(record: &JobRecord) -> Instant {
    Instant::now()
        .checked_sub(ran_for(record))
        .unwrap_or_else(Instant::now)
}

/// How long ago the recorded job started.
fn ran_for(record: &JobRecord) -> Duration {
    Duration::from_millis(unix_ms().saturating_sub(record.started_unix_ms))
}

/// Resolves once libvirt runs no job on `vm`: Ok when the VM left (no
/// guest here any more), an error when it still runs here or post-copy
/// lost its link.
fn job_gone(lv: Arc<dyn Libvirt>, vm: DomainRef, poll: Duration) -> JobEnd {
    Box::pin(async move {
        loop {
            tokio::time::sleep(poll).await;
            let (lv2, vm2) = (lv.clone(), vm.clone());
            let here = tokio::task::spawn_blocking(move || lv2.standing(None, &vm2))
                .await
                .map_err(|e| LibvirtError::Call {
                    op: "the job watch",
                    message: e.to_string(),
                })?;
            match here {
                // The failed job stays until resumed: the split is the end.
                Ok(Some(d)) if d.split() => {
                    return Err(LibvirtError::Call {
                        op: "virDomainMigrateToURI3",
                        message: "post-copy lost its link while the agent watched an adopted job"
                            .into(),
                    });
                }
                Ok(Some(d)) if d.job => continue,
                Ok(None) => return Ok(()),
                Ok(Some(d)) if !d.state.has_guest() => return Ok(()),
                Ok(Some(_)) => {
                    return Err(LibvirtError::Call {
                        op: "virDomainMigrateToURI3",
                        message: "libvirt's job ended and the VM still runs on the source (its error went to the agent run that started it)".into(),
                    });
                }
                // libvirtd restarting: look again.
                Err(e) => warn!(vm = %vm, error = %e, "watching an adopted job"),
            }
        }
    })
}
