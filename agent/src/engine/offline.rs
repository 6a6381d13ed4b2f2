//! Offline moves. A shut-off VM: its local disks are synced to the target,
//! then its definition moves. A running VM: its local disks are synced while
//! it runs, it is paused, a second pass sends only what changed, its memory
//! moves in a paused (non-live) transfer, and it resumes on the target:
//! never a reboot, and stopped only for the delta and the memory.

use std::sync::Arc;
use std::time::Instant;

use kvmotion_api::agent::{JobPhase, StartRequest};
use kvmotion_api::migration::{MigrationResult, TransferMode};
use tracing::{info, warn};

use super::disksync::{self, PassStats};
use super::source::{Outcome, Transfer};
use super::{Engine, Job, millis};
use crate::error::{Error, blocking};
use crate::libvirt::MigrateCall;

impl Engine {
    /// Moves a shut-off, persistent VM: disks first, then its definition.
    pub(crate) async fn run_offline_defined(
        &self,
        job: &Arc<Job>,
        req: &StartRequest,
    ) -> Result<Outcome, Error> {
        let started = Instant::now();
        job.update(|s| s.phase = JobPhase::Running);
        let sent = self.sync_pass(job, req, "pass1").await?.sent_bytes;
        let call = MigrateCall {
            dest_libvirt_uri: req.target.libvirt_uri.clone(),
            offline: true,
            ..Default::default()
        };
        let lv = self.lv.clone();
        let vm = job.vm.clone();
        blocking(move || lv.migrate(&vm, &call)).await?;
        Ok(Outcome {
            phase: JobPhase::Completed,
            reason: None,
            message: None,
            result: Some(MigrationResult {
                duration_ms: millis(started.elapsed()),
                downtime_ms: 0,
                data_transferred_bytes: sent,
                post_copy_recoveries: 0,
            }),
        })
    }

    /// Moves a guest with memory without running it during the move; one
    /// that was `paused` before stays paused on the target.
    pub(crate) async fn run_offline_running(
        &self,
        job: &Arc<Job>,
        req: &StartRequest,
        paused: bool,
    ) -> Result<Outcome, Error> {
        let copies = req.disks.iter().any(|d| d.copy);
        let stopped = Transfer::Stopped {
            disks_synced: copies,
        };
        if !copies {
            // Shared storage: libvirt pauses, moves and resumes the guest
            // (a paused one stays paused).
            return self.run_libvirt_job(job, req, stopped).await;
        }
        let started = Instant::now();
        job.update(|s| s.phase = JobPhase::Running);
        let first = self.sync_pass(job, req, "pass1").await?;
        if !paused {
            let lv = self.lv.clone();
            let vm = job.vm.clone();
            blocking(move || lv.suspend(&vm)).await?;
        }
        let stopped_at = Instant::now();
        job.update(|s| {
            s.progress.mode = TransferMode::Paused;
            if !paused {
                s.actions.push("Pause(offline)".into());
            }
        });
        let moved = async {
            let second = self.sync_pass(job, req, "pass2").await?;
            let outcome = self.run_libvirt_job(job, req, stopped).await?;
            Ok::<_, Error>((second, outcome))
        }
        .await;
        let (second, mut outcome) = match moved {
            Ok(v) if v.1.phase == JobPhase::Completed => v,
            other => {
                // The VM did not move: it must not stay paused here, unless
                // it was paused before.
                if !paused {
                    let lv = self.lv.clone();
                    let vm = job.vm.clone();
                    if let Err(e) = blocking(move || lv.resume(&vm)).await {
                        warn!(migration = %job.id, error = %e, "could not resume the guest after a failed offline move");
                    }
                }
                return other.map(|(_, o)| o);
            }
        };
        if !paused {
            disksync::resume_on(&self.peer, &req.target.agent_endpoint, &job.id).await?;
        }
        let stopped_for = stopped_at.elapsed();
        info!(
            migration = %job.id,
            pass1_bytes = first.sent_bytes,
            pass2_bytes = second.sent_bytes,
            stopped_ms = millis(stopped_for),
            "offline move done"
        );
        if let Some(r) = outcome.result.as_mut() {
            r.duration_ms = millis(started.elapsed());
            r.downtime_ms = millis(stopped_for);
            r.data_transferred_bytes += first.sent_bytes + second.sent_bytes;
        }
        Ok(outcome)
    }

    /// Syncs every copied disk once; records what it moved.
    async fn sync_pass(
        &self,
        job: &Job,
        req: &StartRequest,
        label: &str,
    ) -> Result<PassStats, Error> {
        let mut total = PassStats::default();
        for d in req.disks.iter().filter(|d| d.copy) {
            let s = disksync::sync_disk(
                &self.peer,
                &req.target.agent_endpoint,
                &job.id,
                &d.target,
                &d.path,
            )
            .await?;
            info!(migration = %job.id, pass = label, disk = %d.target, sent_blocks = s.sent_blocks, blocks = s.blocks, ms = millis(s.elapsed), "disk synced");
            job.update(|st| {
                st.actions.push(format!(
                    "DiskSync({label} {}: {}/{} blocks, {} bytes, {} ms)",
                    d.target,
                    s.sent_blocks,
                    s.blocks,
                    s.sent_bytes,
                    millis(s.elapsed)
                ));
                st.progress.data_processed_bytes += s.sent_bytes;
            });
            total.blocks += s.blocks;
            total.sent_blocks += s.sent_blocks;
            total.sent_bytes += s.sent_bytes;
            total.elapsed += s.elapsed;
        }
        Ok(total)
    }
}
