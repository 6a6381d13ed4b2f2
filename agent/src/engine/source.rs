//! The source side of a migration: checks, the libvirt job on a blocking
//! thread, and the monitor that samples it, applies the convergence policy,
//! honours abort and force-complete, and reports progress.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kvmotion_api::agent::{DomainRef, JobPhase, JobStatus, ResolvedTuning, StartRequest};
use kvmotion_api::hypervisor::{DomainInfo, DomainState};
use kvmotion_api::migration::{MigrationMode, MigrationResult, Strategy, TransferMode};
use kvmotion_api::movable::{self, Move};
use kvmotion_api::tuning::{Compression, Transport};
use tracing::{info, warn};

use super::convergence::{self, Action, Policy, Tracker};
use super::dirty::{Measured, Measuring};
use super::predict;
use super::state::{JobRecord, Kind};
use super::{Engine, Job, millis, progress};
use crate::error::{Error, blocking};
use crate::libvirt::{FinalStats, LibvirtError, LibvirtEvent, MigrateCall};

/// The reason of a job whose post-copy phase lost its link: the
/// controller's condition reason, so that the two cannot drift apart.
pub const POST_COPY_LINK_LOST: &str = kvmotion_api::ConditionReason::PostCopyLinkLost.as_str();

/// How long the end of a job waits for libvirt to say where the VM is.
const LOCATE_WITHIN: Duration = Duration::from_secs(90);

/// How long libvirt's call may go on once it shows post-copy failed
/// before the monitor takes the split as the job's end.
const SPLIT_CALL_GRACE: Duration = Duration::from_secs(10);

/// The end of a libvirt job, as the monitor waits for it.
pub(crate) type JobEnd =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), LibvirtError>> + Send>>;

/// Now, in Unix milliseconds.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, millis)
}

/// How a job ended, before it is written to the job's status.
pub(crate) struct Outcome {
    pub phase: JobPhase,
    pub reason: Option<&'static str>,
    pub message: Option<String>,
    pub result: Option<MigrationResult>,
}

impl Engine {
    /// Starts migration `id` of `req.vm` to the prepared target. Repeating
    /// the call returns the job's current status.
    pub async fn start(self: &Arc<Self>, id: &str, req: StartRequest) -> Result<JobStatus, Error> {
        if let Ok(job) = self.job(id) {
            return Ok(job.status());
        }
        if req.target_node == self.config.node {
            return Err(Error::SameNode {
                node: self.config.node.clone(),
            });
        }
        let lv = self.lv.clone();
        let vm = req.vm.clone();
        let info =
            blocking(move || lv.domain(&vm))
                .await?
                .ok_or_else(|| Error::DomainNotFound {
                    vm: req.vm.to_string(),
                    node: self.config.node.clone(),
                })?;
        let how = check_mode(&info, req.mode)?;
        let vm = DomainRef {
            name: Some(info.name.clone()),
            uuid: Some(info.uuid.clone()),
        };
        let (job, new) = self.register(id, vm)?;
        if new {
            let record = JobRecord {
                request: req.clone(),
                vm: job.vm.clone(),
                how,
                started_unix_ms: unix_ms(),
                status: job.status(),
            };
            // Recorded before libvirt is asked: a restarted agent must
            // know every job it may have started.
            if let Err(e) = self.record_job(&record).await {
                self.unregister(id);
                return Err(e);
            }
            info!(migration = id, vm = %info.name, target = %req.target_node, mode = ?req.mode, "starting migration");
            let engine = self.clone();
            let job2 = job.clone();
            tokio::spawn(async move { engine.run(job2, record).await });
        }
        Ok(job.status())
    }

    /// Requests an abort; the monitor carries it out. Not possible once the
    /// job switched to post-copy (the guest already runs on the target).
    pub fn abort(&self, id: &str) -> Result<JobStatus, Error> {
        let job = self.job(id)?;
        let status = job.status();
        if status.phase.is_final() {
            return Ok(status);
        }
        if matches!(
            status.progress.mode,
            TransferMode::PostCopy | TransferMode::PostCopyPaused
        ) {
            return Err(Error::Conflict(format!(
                "migration {id} is in post-copy: the guest already runs on the target and cannot be pulled back"
            )));
        }
        job.abort_requested.store(true, Ordering::SeqCst);
        job.wake.notify_one();
        Ok(job.status())
    }

    /// Requests completion now: post-copy when allowed, else pause.
    pub fn force_complete(&self, id: &str) -> Result<JobStatus, Error> {
        let job = self.job(id)?;
        if !job.status().phase.is_final() {
            job.force_requested.store(true, Ordering::SeqCst);
            job.wake.notify_one();
        }
        Ok(job.status())
    }

    async fn run(self: Arc<Self>, job: Arc<Job>, record: JobRecord) {
        let (mut req, how) = (record.request.clone(), record.how);
        let notes = reconcile_tuning(&mut req.tuning, how);
        if !notes.is_empty() {
            job.update(|s| s.actions.extend(notes.iter().map(|n| n.to_string())));
        }
        let started = Instant::now();
        let outcome = match how {
            Move::LiveRunning => {
                let o = self.run_libvirt_job(&job, &req, Transfer::Live).await;
                self.recover_if_split(&job, &req, started, o).await
            }
            Move::LivePaused => self.run_libvirt_job(&job, &req, Transfer::LivePaused).await,
            Move::OfflineDefinition => self.run_offline_defined(&job, &req).await,
            Move::OfflineWithMemory { paused } => {
                self.run_offline_running(&job, &req, paused).await
            }
        };
        self.conclude(&job, record, outcome).await;
    }

    /// Records how a job ended, in memory and on disk.
    pub(crate) async fn conclude(
        &self,
        job: &Job,
        mut record: JobRecord,
        outcome: Result<Outcome, Error>,
    ) {
        let outcome = outcome.unwrap_or_else(|e| Outcome {
            phase: JobPhase::Failed,
            reason: Some(e.reason()),
            message: Some(crate::error::chain(&e)),
            result: None,
        });
        // After a failed post-copy the VM is on neither node alone.
        let vm_node = if outcome.reason == Some(POST_COPY_LINK_LOST) {
            None
        } else {
            self.locate(&job.vm, &record.request.target_node, outcome.phase)
                .await
        };
        info!(migration = %job.id, phase = ?outcome.phase, reason = ?outcome.reason, vm_node = ?vm_node, "migration ended");
        job.update(|s| {
            s.phase = outcome.phase;
            s.reason = outcome.reason.map(String::from);
            s.message = outcome.message;
            s.vm_node = vm_node;
            if let Some(r) = outcome.result {
                s.result = Some(r);
                s.progress.percent = 100;
                s.progress.data_remaining_bytes = 0;
                s.progress.eta_seconds = Some(0);
            }
        });
        record.status = job.status();
        if let Err(e) = self.record_job(&record).await {
            // The job's end is still served from memory; after a restart
            // it would be concluded again from libvirt.
            warn!(migration = %job.id, error = %crate::error::chain(&e), "could not record the end of the job");
        }
    }

    /// Writes the job's record.
    pub(crate) async fn record_job(&self, record: &JobRecord) -> Result<(), Error> {
        let (st, r) = (self.state.clone(), record.clone());
        crate::error::blocking_io(format!("job {}", record.status.id), move || {
            st.save(Kind::Job, &r.status.id, &r)
        })
        .await
    }

    /// Where the VM is after the job: here when it still runs (or is
    /// defined) here, the target when the job completed.
    /// A libvirtd that restarts (the very fault that may have ended the
    /// job) is waited for, up to `LOCATE_WITHIN`.
    async fn locate(&self, vm: &DomainRef, target: &str, phase: JobPhase) -> Option<String> {
        let deadline = tokio::time::Instant::now() + LOCATE_WITHIN;
        let here = loop {
            let lv = self.lv.clone();
            let vm = vm.clone();
            match blocking(move || lv.domain(&vm)).await {
                Ok(d) => break d,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    warn!(error = %e, "cannot tell yet whether the VM is still here; asking libvirt again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    warn!(error = %e, "cannot tell whether the VM is still here");
                    return None;
                }
            }
        };
        match here {
            Some(d) if d.state != DomainState::ShutOff || phase != JobPhase::Completed => {
                Some(self.config.node.clone())
            }
            _ if phase == JobPhase::Completed => Some(target.to_string()),
            _ => None,
        }
    }

    /// Runs one libvirt migration job and monitors it until it ends.
    pub(crate) async fn run_libvirt_job(
        &self,
        job: &Arc<Job>,
        req: &StartRequest,
        transfer: Transfer,
    ) -> Result<Outcome, Error> {
        let policy = Policy::from(&req.tuning);
        let vm = job.vm.clone();
        let events = self.lv.subscribe();
        // Only a running guest's move has a strategy to choose, and one
        // predicted before the move needs no measurement of its own.
        let measuring = match transfer {
            Transfer::Live if req.planned.is_none() => self.start_measuring(&vm).await,
            Transfer::Live
            | Transfer::LivePaused
            | Transfer::LiveResume
            | Transfer::Stopped { .. } => None,
        };
        // A paused guest dirties nothing: the downtime is the whole copy
        // of what is left, so there is nothing for a ramp to trade.
        if transfer == Transfer::Live {
            let lv = self.lv.clone();
            let (vm2, first) = (vm.clone(), convergence::initial_downtime(&policy));
            if let Err(e) = blocking(move || lv.set_max_downtime(&vm2, first)).await {
                warn!(migration = %job.id, error = %e, "could not set the initial downtime");
            }
        }
        let call = migrate_call(req, transfer);
        job.update(|s| s.phase = JobPhase::Running);
        let lv = self.lv.clone();
        let handle = tokio::task::spawn_blocking(move || lv.migrate(&vm, &call));
        let end = Box::pin(async move {
            handle.await.unwrap_or_else(|e| {
                Err(LibvirtError::Call {
                    op: "the migration task",
                    message: e.to_string(),
                })
            })
        });
        let begun = Begun {
            at: Instant::now(),
            fresh: true,
            measuring,
        };
        self.monitor(job, req, transfer, end, events, begun).await
    }

    /// Monitors a libvirt job until `end` resolves: samples it, applies the
    /// convergence policy, carries out abort and force-complete, reports
    /// progress. `end` is the migration call, or for an adopted job a wait
    /// for libvirt's job to go away. With `begun.measuring`, the guest's
    /// dirty rate is read once measured and the prediction chooses the
    /// strategy; with a strategy planned before the move, it is followed.
    pub(crate) async fn monitor(
        &self,
        job: &Arc<Job>,
        req: &StartRequest,
        transfer: Transfer,
        mut migration: JobEnd,
        mut events: tokio::sync::broadcast::Receiver<LibvirtEvent>,
        begun: Begun,
    ) -> Result<Outcome, Error> {
        let Begun {
            at: started,
            fresh,
            mut measuring,
        } = begun;
        let policy = Policy::from(&req.tuning);
        let vm = job.vm.clone();
        let uuid = vm.uuid.clone().unwrap_or_default();
        let ramp = transfer == Transfer::Live;
        let mut ticker = tokio::time::interval(self.config.poll);
        let mut tracker = Tracker::default();
        // What the move's prediction counts for its data: what the move
        // took beyond it and its start-up is the node's finish.
        let mut predicted_transfer: Option<Duration> = None;
        if transfer == Transfer::Live
            && let Some(plan) = req.planned
        {
            tracker.planned = Some(plan);
            predicted_transfer = req.planned_transfer_ms.map(Duration::from_millis);
            job.update(|s| {
                if !s.actions.iter().any(|a| a.starts_with("Planned(")) {
                    s.actions.push(format!("Planned({})", plan.as_str()));
                }
            });
        }
        let mut final_stats: Option<FinalStats> = None;
        let mut policy_abort: Option<convergence::AbortReason> = None;
        let (mut abort_sent, mut force_sent, mut we_paused) = (false, false, false);
        // Once switched to post-copy, a failed call is a post-copy failure,
        // whatever state libvirt shows at the instant it is asked.
        let mut in_post_copy = false;
        // Since when libvirt shows post-copy failed while its call goes on.
        let mut failed_since: Option<Instant> = None;
        let mut flowing_since: Option<Instant> = None;
        let mut refusal: Option<String> = None;
        let result = loop {
            tokio::select! {
                r = &mut migration => break r,
                _ = ticker.tick() => {}
                _ = job.wake.notified() => {}
                ev = events.recv() => match ev {
                    Ok(LibvirtEvent::JobCompleted { uuid: u, stats }) if u == uuid => {
                        final_stats = Some(stats);
                        continue;
                    }
                    // A new memory pass: decide now, where the stall rule
                    // looks, not at the next tick.
                    Ok(LibvirtEvent::Iteration { uuid: u, .. }) if u == uuid => {}
                    _ => continue,
                },
            }
            // Requests and the policy act on libvirt's job only once QEMU
            // moves data: an abort that races the job's own start (libvirt
            // still negotiating with the target) left libvirt holding the
            // domain on the lab.
            let lv = self.lv.clone();
            let vm2 = vm.clone();
            let Ok(Some(sample)) = blocking(move || lv.job(&vm2)).await else {
                continue;
            };
            in_post_copy |= sample.post_copy || sample.post_copy_failed;
            if !sample.post_copy_failed {
                failed_since = None;
            } else if transfer != Transfer::LiveResume
                && failed_since.get_or_insert_with(Instant::now).elapsed() >= SPLIT_CALL_GRACE
            {
                // libvirt waits on a target that does not answer (its QEMU
                // hung): the split is what it is, and recovery needs no
                // answer from this call. A resume has its own watch.
                warn!(migration = %job.id, "post-copy failed and libvirt's call does not return; leaving it to libvirt");
                job.update(|s| {
                    s.actions
                        .push("MigrationCallAbandoned(post-copy failed)".into())
                });
                break Err(LibvirtError::Call {
                    op: "virDomainMigrateToURI3",
                    message: format!(
                        "post-copy failed and the call had not returned {} s later",
                        SPLIT_CALL_GRACE.as_secs()
                    ),
                });
            }
            if sample.data_total == 0 && sample.data_processed == 0 {
                continue;
            }
            let flowing = *flowing_since.get_or_insert_with(|| {
                // Only a move this run started knows when it was asked for.
                if fresh && ramp {
                    self.note_startup(started.elapsed());
                }
                Instant::now()
            });
            if job.abort_requested.load(Ordering::SeqCst) && !abort_sent {
                abort_sent = true;
                self.act(
                    job,
                    Action::Abort(convergence::AbortReason::Requested),
                    "Abort(requested)",
                )
                .await;
            }
            if abort_sent {
                continue;
            }
            if job.force_requested.load(Ordering::SeqCst) && !force_sent {
                force_sent = true;
                let action = match (transfer, req.tuning.post_copy) {
                    // Nothing changes in a stopped guest: the copy ends by itself.
                    (Transfer::LivePaused | Transfer::Stopped { .. }, _) => Action::Continue,
                    // Already in post-copy: it ends as fast as the link allows.
                    (Transfer::LiveResume, _) => Action::Continue,
                    (Transfer::Live, true) => Action::StartPostCopy,
                    (Transfer::Live, false) => Action::Pause,
                };
                we_paused |= action == Action::Pause;
                self.act(job, action, "").await;
                tracker.escalated = true;
            }
            if let Some(m) = &measuring {
                match self.measured(m).await {
                    Measured::Pending => {}
                    Measured::Rate(rate) => {
                        let inp = predict::from_job(
                            &sample,
                            rate,
                            &policy,
                            &req.tuning,
                            (
                                flowing.saturating_duration_since(started),
                                flowing.elapsed(),
                            ),
                            self.overheads().finish,
                        );
                        let p = predict::predict(&inp);
                        info!(migration = %job.id, strategy = p.strategy.as_str(), reason = %p.reason, "predicted");
                        if p.strategy == Strategy::Refuse {
                            refusal = Some(p.reason.clone());
                        }
                        tracker.planned = Some(p.strategy);
                        let report = p.report(&inp, started.elapsed());
                        predicted_transfer = report.transfer_ms().map(Duration::from_millis);
                        job.update(|s| {
                            s.actions
                                .push(format!("Predicted({})", p.strategy.as_str()));
                            s.prediction = Some(report);
                        });
                        measuring = None;
                    }
                    Measured::GaveUp(why) => {
                        warn!(migration = %job.id, %why, "no dirty rate to predict from; the policy's rules alone steer the move");
                        measuring = None;
                    }
                }
            }
            let d = convergence::decide(tracker, &sample, started.elapsed(), &policy);
            tracker = d.tracker;
            let action = match d.action {
                Action::SetMaxDowntime(_) | Action::Pause | Action::StartPostCopy if !ramp => {
                    Action::Continue
                }
                a => a,
            };
            if let Action::Abort(reason) = action {
                policy_abort = Some(reason);
            }
            we_paused |= action == Action::Pause;
            if action != Action::Continue {
                tracing::debug!(migration = %job.id, ?sample, elapsed = ?started.elapsed(), "the convergence policy acts");
                self.act(job, action, "").await;
            }
            let lv = self.lv.clone();
            let vm2 = vm.clone();
            let throttle = if req.tuning.auto_converge {
                blocking(move || lv.job_throttle(&vm2)).await.ok().flatten()
            } else {
                None
            };
            job.update(|s| s.progress = progress::report(s.progress.percent, &sample, throttle));
        };
        let wall = started.elapsed();
        match result {
            Ok(()) => {
                // The job-completed event may trail the call's return.
                if final_stats.is_none() {
                    final_stats =
                        wait_for_completion(&mut events, &uuid, Duration::from_secs(2)).await;
                }
                let stats = final_stats.unwrap_or_default();
                // Only a move this run started knows when it was asked for.
                if fresh
                    && ramp
                    && let (Some(flowing), Some(transfer)) = (flowing_since, predicted_transfer)
                {
                    self.note_finish(predict::finish_of(
                        started.elapsed(),
                        flowing.saturating_duration_since(started),
                        transfer,
                    ));
                }
                Ok(completed(stats, stats.elapsed_or(wall), 0))
            }
            Err(e) => {
                if we_paused {
                    // Never leave the guest stopped: it stays on the source, running.
                    let lv = self.lv.clone();
                    let vm2 = vm.clone();
                    if let Err(re) = blocking(move || lv.resume(&vm2)).await {
                        warn!(migration = %job.id, error = %re, "could not resume the guest after a failed migration");
                    }
                }
                let lv = self.lv.clone();
                let vm2 = vm.clone();
                if in_post_copy
                    || blocking(move || lv.standing(None, &vm2))
                        .await
                        .is_ok_and(|d| d.is_some_and(|d| d.split()))
                {
                    job.update(|s| s.progress.mode = TransferMode::PostCopyPaused);
                    return Ok(split(req, &self.config.node, &e.to_string()));
                }
                let (phase, reason, message) = if abort_sent {
                    (
                        JobPhase::Aborted,
                        "Aborted",
                        "aborted on request; the VM keeps running on the source".to_string(),
                    )
                } else if let (Some(r), Some(why)) = (policy_abort, &refusal) {
                    (
                        JobPhase::Failed,
                        r.as_str(),
                        format!("refused as it started: {why}; the VM keeps running on the source"),
                    )
                } else if let Some(r) = policy_abort {
                    (
                        JobPhase::Failed,
                        r.as_str(),
                        format!(
                            "the convergence policy aborted the migration ({}); the VM keeps running on the source",
                            r.as_str()
                        ),
                    )
                } else {
                    (JobPhase::Failed, "MigrationFailed", e.to_string())
                };
                Ok(Outcome {
                    phase,
                    reason: Some(reason),
                    message: Some(message),
                    result: None,
                })
            }
        }
    }

    /// Carries out one policy or request action and records it.
    async fn act(&self, job: &Job, action: Action, label: &str) {
        let lv = self.lv.clone();
        let vm = job.vm.clone();
        let r = match action {
            Action::Continue => return,
            Action::SetMaxDowntime(d) => blocking(move || lv.set_max_downtime(&vm, d)).await,
            Action::StartPostCopy => blocking(move || lv.start_post_copy(&vm)).await,
            Action::Pause => blocking(move || lv.suspend(&vm)).await,
            Action::Abort(_) => blocking(move || lv.abort_job(&vm)).await,
        };
        let name = if label.is_empty() {
            format!("{action:?}")
        } else {
            label.to_string()
        };
        match r {
            Ok(()) => info!(migration = %job.id, action = %name, "convergence action"),
            Err(e) => {
                warn!(migration = %job.id, action = %name, error = %e, "convergence action failed")
            }
        }
        job.update(|s| s.actions.push(name));
    }
}

async fn wait_for_completion(
    events: &mut tokio::sync::broadcast::Receiver<LibvirtEvent>,
    uuid: &str,
    within: Duration,
) -> Option<FinalStats> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(LibvirtEvent::JobCompleted { uuid: u, stats })) if u == uuid => {
                return Some(stats);
            }
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(_)) | Err(_) => return None,
        }
    }
}

/// Settles combinations QEMU refuses before anything reads the tuning:
/// post-copy does not work with parallel connections (multifd) in QEMU 10,
/// and libvirt refuses it for a paused domain; a tunnel carries one
/// pre-copy stream (no post-copy, no parallel connections, so no zstd or
/// zlib). Admission refuses these within one object; here they meet when
/// a policy and a migration's overrides each set one side. Returns a note
/// for the job's actions per change.
fn reconcile_tuning(t: &mut ResolvedTuning, how: Move) -> Vec<&'static str> {
    let mut notes = Vec::new();
    if t.transport == Transport::Tunnelled {
        if t.post_copy {
            t.post_copy = false;
            notes.push("PostCopyOff(tunnelled)");
        }
        if t.parallel_connections > 1 {
            t.parallel_connections = 1;
            notes.push("ParallelOff(tunnelled)");
        }
        if matches!(t.compression, Compression::Zstd | Compression::Zlib) {
            t.compression = Compression::None;
            notes.push("CompressionOff(tunnelled)");
        }
    }
    if how == Move::LivePaused && t.post_copy {
        t.post_copy = false;
        notes.push("PostCopyOff(paused guest)");
    }
    if t.parallel_connections > 1 && t.post_copy {
        t.post_copy = false;
        notes.push("PostCopyOff(parallel connections)");
    }
    notes
}

/// A completed job's outcome: its figures, `duration` long, after
/// `recoveries` post-copy recoveries.
pub(crate) fn completed(stats: FinalStats, duration: Duration, recoveries: u32) -> Outcome {
    Outcome {
        phase: JobPhase::Completed,
        reason: None,
        message: None,
        result: Some(MigrationResult {
            duration_ms: millis(duration),
            downtime_ms: millis(stats.downtime),
            data_transferred_bytes: stats.data_processed,
            post_copy_recoveries: recoveries,
        }),
    }
}

/// The outcome of a post-copy that lost its link, `detail` saying how:
/// where each half of the guest is and what a person can do.
pub(crate) fn split(req: &StartRequest, here: &str, detail: &str) -> Outcome {
    Outcome {
        phase: JobPhase::Failed,
        reason: Some(POST_COPY_LINK_LOST),
        message: Some(format!(
            "post-copy lost its link to {target}: the guest runs on {target} with part of its memory still on {here}, where it is paused ({detail}); libvirt keeps both halves: once the link is back, resume the move (virsh migrate --live --p2p --persistent --undefinesource --postcopy --postcopy-resume on {here}); never start or destroy one half alone",
            target = req.target_node,
        )),
        result: None,
    }
}

/// How the guest runs while libvirt moves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transfer {
    /// Running throughout (live).
    Live,
    /// Paused before the move and kept paused (live, arrives paused).
    LivePaused,
    /// Resuming a live move whose post-copy lost its link, with the flags
    /// of the original call.
    LiveResume,
    /// Stopped for the move (offline); `disks_synced` when the agents
    /// already copied the local disks.
    Stopped {
        /// Local disks were synced by the agents, so libvirt must accept
        /// them without shared storage.
        disks_synced: bool,
    },
}

/// How the domain moves in `mode`, from the one table in `kvmotion_api`.
fn check_mode(info: &DomainInfo, mode: MigrationMode) -> Result<Move, Error> {
    movable::how(mode, info.state, info.persistent).map_err(|no| Error::DomainState {
        vm: info.name.clone(),
        state: format!("{:?}", info.state),
        needed: no.needed,
    })
}

/// How a monitored job began.
pub(crate) struct Begun {
    /// When the job started.
    pub at: Instant,
    /// This run started it (an adopted job was started by an earlier one,
    /// and `at` is only reconstructed from its record).
    pub fresh: bool,
    /// The dirty-rate measurement a live move predicts from, if any.
    pub measuring: Option<Measuring>,
}

/// libvirt's view of the request.
fn migrate_call(req: &StartRequest, transfer: Transfer) -> MigrateCall {
    let t: &ResolvedTuning = &req.tuning;
    let (live, disks_synced) = match transfer {
        Transfer::Live | Transfer::LivePaused | Transfer::LiveResume => (true, false),
        Transfer::Stopped { disks_synced } => (false, disks_synced),
    };
    // libvirt wants a resume called with the original migration's flags.
    let live_running = matches!(transfer, Transfer::Live | Transfer::LiveResume);
    MigrateCall {
        dest_libvirt_uri: req.target.libvirt_uri.clone(),
        dest_migration_uri: req.target.migration_uri.clone(),
        live,
        offline: false,
        bandwidth_mibps: u64::from(t.bandwidth_mibps),
        post_copy: t.post_copy && live_running,
        auto_converge: t.auto_converge && live_running,
        keep_paused: transfer == Transfer::LivePaused,
        post_copy_resume: transfer == Transfer::LiveResume,
        parallel_connections: t.parallel_connections,
        compression: match t.compression {
            Compression::None => None,
            Compression::Xbzrle => Some("xbzrle".into()),
            Compression::Zstd => Some("zstd".into()),
            Compression::Zlib => Some("zlib".into()),
        },
        tls: t.tls,
        tunnelled: t.transport == Transport::Tunnelled,
        copy_disks: if disks_synced {
            Vec::new()
        } else {
            req.disks
                .iter()
                .filter(|d| d.copy)
                .map(|d| d.target.clone())
                .collect()
        },
        disks_synced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(state: DomainState, persistent: bool) -> DomainInfo {
        DomainInfo {
            name: "hb".into(),
            state,
            persistent,
            ..Default::default()
        }
    }

    /// A live move of a diskless VM to "b" with `tuning`.
    fn request_with(tuning: ResolvedTuning) -> StartRequest {
        StartRequest {
            vm: DomainRef::default(),
            target_node: "b".into(),
            target: kvmotion_api::agent::PrepareResponse {
                libvirt_uri: String::new(),
                migration_uri: String::new(),
                agent_endpoint: String::new(),
                created_disks: Vec::new(),
            },
            mode: MigrationMode::Live,
            tuning,
            disks: Vec::new(),
            planned: None,
            planned_transfer_ms: None,
        }
    }

    #[test]
    fn a_tunnel_turns_off_what_it_cannot_carry_and_says_so() {
        let tunnel = |post_copy, parallel, compression| ResolvedTuning {
            transport: Transport::Tunnelled,
            post_copy,
            parallel_connections: parallel,
            compression,
            ..ResolvedTuning::default()
        };
        // (tuning, notes)
        let cases = [
            (tunnel(false, 1, Compression::None), vec![]),
            (
                tunnel(true, 1, Compression::Xbzrle),
                vec!["PostCopyOff(tunnelled)"],
            ),
            (
                tunnel(true, 4, Compression::Zstd),
                vec![
                    "PostCopyOff(tunnelled)",
                    "ParallelOff(tunnelled)",
                    "CompressionOff(tunnelled)",
                ],
            ),
            (
                tunnel(false, 2, Compression::Zlib),
                vec!["ParallelOff(tunnelled)", "CompressionOff(tunnelled)"],
            ),
        ];
        for (mut t, want) in cases {
            let before = t.clone();
            assert_eq!(
                reconcile_tuning(&mut t, Move::LiveRunning),
                want,
                "{before:?}"
            );
            assert!(!t.post_copy && t.parallel_connections == 1, "{t:?}");
            assert!(
                matches!(t.compression, Compression::None | Compression::Xbzrle),
                "{t:?}"
            );
            let call = migrate_call(&request_with(t), Transfer::Live);
            assert!(call.tunnelled && !call.post_copy, "{call:?}");
        }
    }

    #[test]
    fn parallel_connections_turn_post_copy_off() {
        let mut t = ResolvedTuning {
            parallel_connections: 4,
            ..ResolvedTuning::default()
        };
        assert_eq!(
            reconcile_tuning(&mut t, Move::LiveRunning),
            ["PostCopyOff(parallel connections)"]
        );
        assert!(!t.post_copy);
        let mut single = ResolvedTuning::default();
        assert!(reconcile_tuning(&mut single, Move::LiveRunning).is_empty());
        assert!(single.post_copy);
    }

    #[test]
    fn a_paused_guest_moves_without_post_copy_and_arrives_paused() {
        let mut t = ResolvedTuning::default();
        assert_eq!(
            reconcile_tuning(&mut t, Move::LivePaused),
            ["PostCopyOff(paused guest)"]
        );
        let req = request_with(t);
        let call = migrate_call(&req, Transfer::LivePaused);
        assert!(call.live && call.keep_paused && !call.post_copy && !call.auto_converge);
        let running = migrate_call(&req, Transfer::Live);
        assert!(!running.keep_paused);
    }

    #[test]
    fn each_mode_accepts_only_the_states_it_can_move() {
        use DomainState::*;
        use MigrationMode::*;
        let cases = [
            (Live, Running, true, true),
            (Live, Paused, true, true),
            (Live, ShuttingDown, true, false),
            (Live, ShutOff, true, false),
            (Live, Crashed, true, false),
            (Offline, Running, true, true),
            (Offline, ShutOff, true, true),
            (Offline, ShutOff, false, false),
            (Offline, Crashed, true, false),
        ];
        for (mode, state, persistent, ok) in cases {
            assert_eq!(
                check_mode(&domain(state, persistent), mode).is_ok(),
                ok,
                "{mode:?} {state:?} persistent={persistent}"
            );
        }
    }
}
