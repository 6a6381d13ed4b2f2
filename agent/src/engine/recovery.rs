//! Post-copy recovery: a live migration whose post-copy phase lost its link
//! is resumed with libvirt's `VIR_MIGRATE_POSTCOPY_RESUME`, with backoff,
//! until the move finishes (by the agent's resume, or by QEMU's own stream
//! once the link returns) or the policy's bound passes.
//!
//! The guest cannot run anywhere else meanwhile: its newest memory is split
//! between the nodes. The choice of the next step is a pure function of what
//! libvirt shows on both sides; the loop around it only observes and acts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvmotion_api::agent::{DomainRef, JobPhase, JobStatus, StartRequest};
use kvmotion_api::hypervisor::DomainState;
use kvmotion_api::migration::{MigrationResult, TransferMode};
use tracing::{debug, info, warn};

use super::source::{Outcome, POST_COPY_LINK_LOST, Transfer, completed};
use super::{Engine, Job, millis};
use crate::error::{Error, blocking};
use crate::libvirt::{DomainStanding, FinalStats, PostCopy};

/// The first libvirt release whose resume of a failed post-copy does not
/// crash the target's daemon (11.2 and 11.3 do; NEWS for 11.4.0).
pub const RESUME_SAFE_SINCE: u32 = 11_004_000;

/// The longest wait between two resume attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// How often the target's final statistics are read before they are taken
/// as they are.
const STATS_TRIES: u32 = 4;

/// How long after the split the first resume is asked for.
const FIRST_RESUME_AFTER: Duration = Duration::from_secs(2);

/// How long the target must have shown its half failed before it is
/// asked to resume: its libvirt marks the failure before its QEMU has
/// paused the incoming stream, and a resume asked in between hangs in
/// libvirt; a target busy draining what it was sent (a loaded host) takes
/// seconds more.
const TARGET_SETTLE: Duration = Duration::from_secs(10);

/// How often the split is looked at between attempts.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// How long a resume may move no data before it is interrupted: one asked
/// too early after the split hung inside libvirt on the lab.
const RESUME_STALL: Duration = Duration::from_secs(30);

/// Past the bound, how long a resume may move no data.
const STALL_PAST_BOUND: Duration = Duration::from_secs(3);

/// How long an interrupted resume has to return before it is left to
/// libvirt.
const ABANDON_AFTER: Duration = Duration::from_secs(10);

/// The source's half, as libvirt shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceHalf {
    /// The domain is gone or shut off here: its QEMU ended.
    Gone,
    /// Paused after a failed post-copy (libvirt may still hold the failed
    /// job, waiting to be resumed).
    Split,
    /// libvirt runs a job on it again (a resume under way elsewhere).
    Moving,
    /// Any other state (libvirt has not caught up yet).
    Other,
    /// libvirt here cannot be asked (restarting).
    Unknown,
}

/// The target's half, as libvirt shows it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetHalf {
    /// Runs the guest, no longer in post-copy: the move finished.
    Runs,
    /// Still in post-copy, not failed: the stream still runs, or the
    /// target's QEMU has not noticed it broke (a hung QEMU never does).
    PostCopyActive,
    /// Post-copy failed here too: the target waits to be resumed.
    PostCopyFailed,
    /// No such domain there.
    Absent,
    /// The target's libvirt cannot be reached (the link is still down).
    Unknown,
}

/// What the recovery does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The move finished.
    Finished,
    /// Ask libvirt to resume the migration now.
    Resume,
    /// Look again after this long.
    Wait(Duration),
    /// The bound passed with the guest still split.
    GiveUp,
    /// The source's QEMU ended before the target had all memory.
    Lost,
}

/// What the loop knows besides libvirt's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempts {
    /// Resume attempts so far.
    pub made: u32,
    /// Time since the last attempt ended; `None` before the first.
    pub since_last: Option<Duration>,
    /// How long the target has shown its half failed (zero while it does
    /// not).
    pub target_failed_for: Duration,
}

/// The wait before resume attempt `n + 1` after `n` failed ones: 1 s,
/// doubling, at most `MAX_BACKOFF`.
pub fn backoff(made: u32) -> Duration {
    Duration::from_secs(1u64 << made.min(4)).min(MAX_BACKOFF)
}

/// The next step of a recovery `elapsed` into it, with `bound` allowed.
pub fn next_step(
    source: SourceHalf,
    target: TargetHalf,
    attempts: Attempts,
    elapsed: Duration,
    bound: Duration,
) -> Step {
    use SourceHalf as S;
    use TargetHalf as T;
    let past = elapsed >= bound;
    match (source, target) {
        (S::Gone, T::Runs) => Step::Finished,
        (S::Gone, T::Absent) => Step::Lost,
        // The target may not have noticed the end of the stream yet.
        (S::Gone, T::PostCopyActive | T::PostCopyFailed | T::Unknown) if past => Step::Lost,
        (S::Gone, T::PostCopyActive | T::PostCopyFailed | T::Unknown) => Step::Wait(LOOK_EVERY),
        (S::Split, _) if past => Step::GiveUp,
        (S::Split, T::Absent) => Step::Lost,
        // A resume asked of a target that has not failed its half hangs in
        // libvirt past any abort (seen on the lab with the target's QEMU
        // stopped, and just after it woke): only a failed or unreachable
        // target is asked. One that runs has finished the move, and the
        // source's libvirt lags.
        (S::Split, T::Runs | T::PostCopyActive) => Step::Wait(LOOK_EVERY),
        (S::Split, T::PostCopyFailed | T::Unknown) => {
            // The first attempt, too, waits a moment: the target's side
            // reaches its failed state after the source's (a resume asked
            // before it did hung on the lab).
            let (since, due) = match attempts.since_last {
                Some(t) => (t, backoff(attempts.made)),
                None => (elapsed, FIRST_RESUME_AFTER),
            };
            // libvirt there may mark the failure (told by the source)
            // before its QEMU has paused the incoming stream; a resume
            // asked in between hung on the lab.
            let settle = match target {
                T::PostCopyFailed => TARGET_SETTLE.saturating_sub(attempts.target_failed_for),
                T::Unknown | T::Runs | T::PostCopyActive | T::Absent => Duration::ZERO,
            };
            let wait = due.saturating_sub(since).max(settle);
            if wait.is_zero() {
                Step::Resume
            } else {
                Step::Wait(wait)
            }
        }
        (S::Moving | S::Other | S::Unknown, _) if past => Step::GiveUp,
        (S::Moving | S::Other | S::Unknown, _) => Step::Wait(LOOK_EVERY),
    }
}

/// What to do with a resume attempt whose call has not returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Let it run.
    Keep,
    /// Interrupt it (`VIR_DOMAIN_ABORT_JOB_POSTCOPY`): it fails back into
    /// the split, to be resumed again.
    Interrupt,
    /// Interrupted, and still not returned: leave the call to libvirt and
    /// go on watching the halves.
    Abandon,
}

/// The watch over a resume attempt: `stalled` since it last moved data
/// (or began), `elapsed` into the recovery, `interrupted` since it was
/// interrupted.
pub fn watch_resume(
    stalled: Duration,
    elapsed: Duration,
    bound: Duration,
    interrupted: Option<Duration>,
) -> Watch {
    match interrupted {
        Some(t) if t >= ABANDON_AFTER => Watch::Abandon,
        Some(_) => Watch::Keep,
        None if stalled >= RESUME_STALL => Watch::Interrupt,
        // A resume that moves data is the recovery working: only a
        // still one is cut short by the bound.
        None if elapsed >= bound && stalled >= STALL_PAST_BOUND => Watch::Interrupt,
        None => Watch::Keep,
    }
}

/// Whether libvirt on both nodes can resume a failed post-copy safely;
/// `Err` names the daemon that cannot.
pub fn resume_safe(source: (&str, u32), target: (&str, u32)) -> Result<(), String> {
    for (node, v) in [source, target] {
        if v < RESUME_SAFE_SINCE {
            return Err(format!(
                "libvirt {} on {node} crashes resuming a failed post-copy (11.4 or later can)",
                crate::libvirt::xml::version_string(v)
            ));
        }
    }
    Ok(())
}

/// The source half from libvirt's standing of the domain here.
pub fn source_half(here: Result<Option<DomainStanding>, ()>) -> SourceHalf {
    match here {
        Err(()) => SourceHalf::Unknown,
        Ok(None) => SourceHalf::Gone,
        Ok(Some(d)) if d.state == DomainState::ShutOff => SourceHalf::Gone,
        Ok(Some(d)) if d.split() => SourceHalf::Split,
        Ok(Some(d)) if d.job => SourceHalf::Moving,
        Ok(Some(_)) => SourceHalf::Other,
    }
}

/// The target half from libvirt's standing of the domain there.
pub fn target_half(there: Result<Option<DomainStanding>, ()>) -> TargetHalf {
    match there {
        Err(()) => TargetHalf::Unknown,
        Ok(None) => TargetHalf::Absent,
        Ok(Some(d)) => match (d.state, d.post_copy) {
            (DomainState::Running | DomainState::Blocked | DomainState::Paused, PostCopy::None) => {
                TargetHalf::Runs
            }
            (_, PostCopy::Active) => TargetHalf::PostCopyActive,
            (_, PostCopy::Failed) => TargetHalf::PostCopyFailed,
            (
                DomainState::ShutOff
                | DomainState::ShuttingDown
                | DomainState::Crashed
                | DomainState::Suspended
                | DomainState::Unknown,
                PostCopy::None,
            ) => TargetHalf::Absent,
        },
    }
}

impl Engine {
    /// Carries a live job to its end: when it ended with post-copy split
    /// between the nodes, resumes it within the policy's bound.
    pub(crate) async fn recover_if_split(
        &self,
        job: &Arc<Job>,
        req: &StartRequest,
        started: Instant,
        outcome: Result<Outcome, Error>,
    ) -> Result<Outcome, Error> {
        match outcome {
            Ok(o) if o.reason == Some(POST_COPY_LINK_LOST) => {
                self.recover(job, req, started, o).await
            }
            other => other,
        }
    }

    async fn recover(
        &self,
        job: &Arc<Job>,
        req: &StartRequest,
        started: Instant,
        split: Outcome,
    ) -> Result<Outcome, Error> {
        let bound = Duration::from_secs(u64::from(req.tuning.post_copy_recovery_timeout_seconds));
        let since = Instant::now();
        let (mut attempts, mut episodes) = (
            Attempts {
                made: 0,
                since_last: None,
                target_failed_for: Duration::ZERO,
            },
            1u32,
        );
        let mut target_failed_at: Option<Instant> = None;
        let mut last_end: Option<Instant> = None;
        let mut seen = None;
        // Resume calls that hung in libvirt and were left to it.
        let mut hung = 0u32;
        // Known at the first attempt: the target may be unreachable before.
        let mut safe: Option<Result<(), String>> = None;
        warn!(migration = %job.id, bound_s = bound.as_secs(), "post-copy lost its link; recovering");
        job.update(|s| {
            split_again(s);
            s.message = Some(recovering_message(req, &self.config.node, 0, bound));
            s.actions.push(POST_COPY_LINK_LOST.into());
        });
        loop {
            attempts.since_last = last_end.map(|t| t.elapsed());
            let (source, target) = self.halves(job, req).await;
            target_failed_at = match target {
                TargetHalf::PostCopyFailed => target_failed_at.or(Some(Instant::now())),
                TargetHalf::Runs
                | TargetHalf::PostCopyActive
                | TargetHalf::Absent
                | TargetHalf::Unknown => None,
            };
            attempts.target_failed_for = target_failed_at.map_or(Duration::ZERO, |t| t.elapsed());
            let step = next_step(source, target, attempts, since.elapsed(), bound);
            if seen != Some((source, target)) {
                debug!(migration = %job.id, ?source, ?target, ?step, "the split's halves");
                seen = Some((source, target));
            }
            match step {
                Step::Finished => {
                    info!(migration = %job.id, episodes, "post-copy finished by QEMU's own stream");
                    job.update(|s| s.actions.push("PostCopyFinishedByQemu".into()));
                    self.drop_stale_source(job).await;
                    job.update(|s| s.progress.mode = TransferMode::PostCopy);
                    let (stats, note) = self
                        .final_stats_from_target(req, &job.vm, started.elapsed())
                        .await;
                    job.update(|s| s.actions.push(note.into()));
                    return Ok(completed(stats, started.elapsed(), episodes));
                }
                Step::Wait(d) => tokio::time::sleep(d.min(LOOK_EVERY)).await,
                Step::Resume => {
                    if safe.is_none() {
                        safe = self.resume_safety(req).await;
                        if let Some(Err(why)) = &safe {
                            warn!(migration = %job.id, why, "not resuming post-copy; waiting for QEMU's own stream");
                            let note = format!("PostCopyResumeUnsafe({why})");
                            job.update(|s| s.actions.push(note));
                        }
                    }
                    if !matches!(safe, Some(Ok(()))) {
                        // Unknown yet, or unsafe: only QEMU's own stream
                        // can finish the move.
                        last_end = Some(Instant::now());
                        tokio::time::sleep(LOOK_EVERY).await;
                        continue;
                    }
                    attempts.made += 1;
                    let n = attempts.made;
                    info!(migration = %job.id, attempt = n, "resuming post-copy");
                    job.update(|s| {
                        s.actions.push(format!("PostCopyResume(attempt {n})"));
                        s.message = Some(recovering_message(req, &self.config.node, n, bound));
                    });
                    let before = job.status().progress.data_processed_bytes;
                    let out = self.watched_resume(job, req, since, bound).await;
                    last_end = Some(Instant::now());
                    let Some(out) = out else {
                        // libvirt still holds the call: the next look
                        // shows what it left (a job, a split, a move done).
                        hung += 1;
                        job.update(|s| {
                            s.actions
                                .push(format!("PostCopyResumeAbandoned(attempt {n})"));
                            split_again(s);
                        });
                        continue;
                    };
                    match out {
                        Ok(o) if o.phase == JobPhase::Completed => {
                            return Ok(with_recoveries(o, started.elapsed(), episodes));
                        }
                        Ok(o) if o.reason == Some(POST_COPY_LINK_LOST) => {
                            warn!(migration = %job.id, attempt = n, message = o.message.as_deref().unwrap_or(""), "a post-copy resume ended split again");
                            // A resume that moved data and then broke is a
                            // new loss of the link, not a failed attempt.
                            if job.status().progress.data_processed_bytes > before {
                                episodes += 1;
                            }
                            job.update(split_again);
                        }
                        other => return other,
                    }
                }
                Step::GiveUp => {
                    let unsafe_note = match &safe {
                        Some(Err(why)) => format!(" ({why})"),
                        Some(Ok(())) | None => String::new(),
                    };
                    let hung_note = match hung {
                        0 => String::new(),
                        n => format!(", {n} of them hung in libvirt and were left to it"),
                    };
                    return Ok(Outcome {
                        message: Some(format!(
                            "{}; the agent tried to resume it {} time(s){hung_note}{unsafe_note} for {} s (postCopyRecoveryTimeoutSeconds) and gave up",
                            split.message.clone().unwrap_or_default(),
                            attempts.made,
                            bound.as_secs()
                        )),
                        ..split
                    });
                }
                Step::Lost => {
                    return Ok(Outcome {
                        phase: JobPhase::Failed,
                        reason: Some(POST_COPY_LINK_LOST),
                        message: Some(format!(
                            "post-copy lost its link and the source's QEMU on {} ended before {} received all of the guest's memory: the guest cannot be completed; restart it from its disks",
                            self.config.node, req.target_node
                        )),
                        result: None,
                    });
                }
            }
        }
    }

    /// One resume attempt under [`watch_resume`]; `None` when it hung and
    /// was abandoned.
    async fn watched_resume(
        &self,
        job: &Arc<Job>,
        req: &StartRequest,
        since: Instant,
        bound: Duration,
    ) -> Option<Result<Outcome, Error>> {
        let attempt = self.run_libvirt_job(job, req, Transfer::LiveResume);
        tokio::pin!(attempt);
        let mut seen = job.status().progress.data_processed_bytes;
        let mut moved_at = Instant::now();
        let mut interrupted: Option<Instant> = None;
        loop {
            tokio::select! {
                out = &mut attempt => return Some(out),
                () = tokio::time::sleep(LOOK_EVERY) => {}
            }
            let bytes = job.status().progress.data_processed_bytes;
            if bytes != seen {
                debug!(migration = %job.id, bytes, "a post-copy resume moves data");
                (seen, moved_at) = (bytes, Instant::now());
            }
            let watch = watch_resume(
                moved_at.elapsed(),
                since.elapsed(),
                bound,
                interrupted.map(|t| t.elapsed()),
            );
            match watch {
                Watch::Keep => {}
                Watch::Interrupt => {
                    let still = moved_at.elapsed().as_secs();
                    warn!(migration = %job.id, still_s = still, "a post-copy resume moves no data; interrupting it");
                    interrupted = Some(Instant::now());
                    let (lv, vm) = (self.lv.clone(), job.vm.clone());
                    let asked = tokio::time::timeout(
                        ABANDON_AFTER,
                        blocking(move || lv.interrupt_post_copy(&vm)),
                    )
                    .await;
                    let note = match asked {
                        Ok(Ok(())) => format!("PostCopyResumeInterrupted(no data for {still} s)"),
                        Ok(Err(e)) => format!("PostCopyResumeInterrupted(refused: {e})"),
                        Err(_) => "PostCopyResumeInterrupted(the call hung)".to_string(),
                    };
                    job.update(|s| s.actions.push(note));
                }
                Watch::Abandon => {
                    warn!(migration = %job.id, "an interrupted post-copy resume did not return; leaving it to libvirt");
                    return None;
                }
            }
        }
    }

    /// libvirt finishing a move it had lost track of leaves the source's
    /// definition behind, shut off: the guest runs on the target (just
    /// seen there), so the copy here is stale and starting it would put
    /// two guests on one disk.
    async fn drop_stale_source(&self, job: &Job) {
        let (lv, vm) = (self.lv.clone(), job.vm.clone());
        let dropped = blocking(move || match lv.domain(&vm)? {
            Some(d) if d.state == DomainState::ShutOff => lv.undefine(&vm).map(|()| true),
            Some(_) | None => Ok(false),
        })
        .await;
        match dropped {
            Ok(true) => job.update(|s| s.actions.push("UndefinedStaleSource".into())),
            Ok(false) => {}
            Err(e) => {
                warn!(migration = %job.id, error = %crate::error::chain(&e), "could not remove the stale definition on the source")
            }
        }
    }

    /// Whether both daemons can resume safely; `None` while one cannot be
    /// asked.
    async fn resume_safety(&self, req: &StartRequest) -> Option<Result<(), String>> {
        let lv = self.lv.clone();
        let here = blocking(move || lv.daemon_version(None)).await.ok()?;
        let (lv, uri) = (self.lv.clone(), req.target.libvirt_uri.clone());
        let there = blocking(move || lv.daemon_version(Some(&uri))).await.ok()?;
        Some(resume_safe(
            (&self.config.node, here),
            (&req.target_node, there),
        ))
    }

    /// Both halves as libvirt shows them now.
    async fn halves(&self, job: &Job, req: &StartRequest) -> (SourceHalf, TargetHalf) {
        let (lv, vm) = (self.lv.clone(), job.vm.clone());
        let here = blocking(move || lv.standing(None, &vm)).await;
        let (lv, vm, uri) = (
            self.lv.clone(),
            job.vm.clone(),
            req.target.libvirt_uri.clone(),
        );
        let there = blocking(move || lv.standing(Some(&uri), &vm)).await;
        if let Err(e) = &there {
            debug!(migration = %job.id, error = ?e, "the target's half cannot be read");
        }
        (
            source_half(here.map_err(drop)),
            target_half(there.map_err(drop)),
        )
    }

    /// The final figures of a job the target completed, from the target's
    /// libvirt; `wall` stands in for the duration when they are gone.
    pub(crate) async fn final_stats_from_target(
        &self,
        req: &StartRequest,
        vm: &DomainRef,
        wall: Duration,
    ) -> (FinalStats, &'static str) {
        // The target may run the guest a moment before it has stored the
        // move's statistics, or list them before their figures are in.
        let mut last = None;
        for _ in 0..STATS_TRIES {
            let lv = self.lv.clone();
            let (uri, vm) = (req.target.libvirt_uri.clone(), vm.clone());
            match blocking(move || lv.completed_stats_at(&uri, &vm)).await {
                Ok(Some(s)) if s.data_processed > 0 => {
                    return (s, "FinalStats(from the target)");
                }
                Ok(Some(s)) => last = Some(s),
                Ok(None) => {}
                Err(e) => {
                    warn!(error = %e, "cannot read the final statistics from the target");
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        match last {
            Some(s) => (
                FinalStats {
                    elapsed: s.elapsed_or(wall),
                    ..s
                },
                "FinalStatsPartial(the target kept no byte count)",
            ),
            None => (
                FinalStats {
                    elapsed: wall,
                    ..Default::default()
                },
                "FinalStatsLost(downtime and bytes unknown)",
            ),
        }
    }
}

/// The job as a recovery shows it between attempts: still running, its
/// memory split between the nodes.
fn split_again(s: &mut JobStatus) {
    s.phase = JobPhase::Running;
    s.progress.mode = TransferMode::PostCopyPaused;
}

fn recovering_message(req: &StartRequest, here: &str, attempts: u32, bound: Duration) -> String {
    format!(
        "post-copy lost its link to {}: the guest's memory is split between {here} and {}; resuming the move ({attempts} attempt(s) so far, for up to {} s)",
        req.target_node,
        req.target_node,
        bound.as_secs()
    )
}

/// The resumed job's outcome, as the whole move's: its duration from the
/// first start, and the recoveries it took.
fn with_recoveries(o: Outcome, wall: Duration, recoveries: u32) -> Outcome {
    Outcome {
        result: o.result.map(|r| MigrationResult {
            duration_ms: millis(wall),
            post_copy_recoveries: recoveries,
            ..r
        }),
        ..o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No attempt yet; the target long failed, when it shows so.
    fn never() -> Attempts {
        Attempts {
            made: 0,
            since_last: None,
            target_failed_for: Duration::from_secs(60),
        }
    }

    fn after(made: u32, secs: u64) -> Attempts {
        Attempts {
            made,
            since_last: Some(Duration::from_secs(secs)),
            target_failed_for: Duration::from_secs(60),
        }
    }

    fn target_failed_since(mut a: Attempts, secs: u64) -> Attempts {
        a.target_failed_for = Duration::from_secs(secs);
        a
    }

    #[test]
    fn each_view_of_the_split_leads_to_its_step() {
        use SourceHalf as S;
        use TargetHalf as T;
        let (early, late, bound) = (
            Duration::from_secs(5),
            Duration::from_secs(400),
            Duration::from_secs(300),
        );
        let cases = [
            (
                "QEMU finished by itself",
                S::Gone,
                T::Runs,
                never(),
                early,
                Step::Finished,
            ),
            (
                "finished, seen past the bound",
                S::Gone,
                T::Runs,
                never(),
                late,
                Step::Finished,
            ),
            (
                "source gone, target absent",
                S::Gone,
                T::Absent,
                never(),
                early,
                Step::Lost,
            ),
            (
                "source gone, target still in post-copy",
                S::Gone,
                T::PostCopyActive,
                never(),
                early,
                Step::Wait(LOOK_EVERY),
            ),
            (
                "source gone, target in post-copy past the bound",
                S::Gone,
                T::PostCopyFailed,
                never(),
                late,
                Step::Lost,
            ),
            (
                "source gone, target unreachable",
                S::Gone,
                T::Unknown,
                never(),
                early,
                Step::Wait(LOOK_EVERY),
            ),
            (
                "split, first attempt at once",
                S::Split,
                T::PostCopyFailed,
                never(),
                early,
                Step::Resume,
            ),
            (
                "split, target unreachable: try anyway",
                S::Split,
                T::Unknown,
                never(),
                early,
                Step::Resume,
            ),
            (
                "split, the target failed its half a moment ago",
                S::Split,
                T::PostCopyFailed,
                target_failed_since(never(), 1),
                early,
                Step::Wait(Duration::from_secs(9)),
            ),
            (
                "split, the target failed its half long enough ago",
                S::Split,
                T::PostCopyFailed,
                target_failed_since(after(1, 2), 10),
                early,
                Step::Resume,
            ),
            (
                "split, unreachable target: no settling to wait for",
                S::Split,
                T::Unknown,
                target_failed_since(never(), 0),
                early,
                Step::Resume,
            ),
            (
                "split, the target has not failed its half yet",
                S::Split,
                T::PostCopyActive,
                never(),
                early,
                Step::Wait(LOOK_EVERY),
            ),
            (
                "split, the target not failed, after attempts",
                S::Split,
                T::PostCopyActive,
                after(2, 30),
                early,
                Step::Wait(LOOK_EVERY),
            ),
            (
                "split, backoff not over",
                S::Split,
                T::PostCopyFailed,
                after(2, 1),
                early,
                Step::Wait(Duration::from_secs(3)),
            ),
            (
                "split, backoff over",
                S::Split,
                T::PostCopyFailed,
                after(2, 4),
                early,
                Step::Resume,
            ),
            (
                "split past the bound",
                S::Split,
                T::PostCopyActive,
                after(9, 30),
                late,
                Step::GiveUp,
            ),
            (
                "split, target lost its half",
                S::Split,
                T::Absent,
                never(),
                early,
                Step::Lost,
            ),
            (
                "split, target runs (libvirt here lags)",
                S::Split,
                T::Runs,
                never(),
                early,
                Step::Wait(LOOK_EVERY),
            ),
            (
                "a resume under way elsewhere",
                S::Moving,
                T::PostCopyActive,
                never(),
                early,
                Step::Wait(LOOK_EVERY),
            ),
            (
                "a resume under way past the bound",
                S::Moving,
                T::PostCopyActive,
                never(),
                late,
                Step::GiveUp,
            ),
            (
                "libvirt here restarting",
                S::Unknown,
                T::PostCopyFailed,
                never(),
                early,
                Step::Wait(LOOK_EVERY),
            ),
            (
                "libvirt here not caught up",
                S::Other,
                T::PostCopyActive,
                never(),
                early,
                Step::Wait(LOOK_EVERY),
            ),
            (
                "libvirt here gone past the bound",
                S::Unknown,
                T::Unknown,
                never(),
                late,
                Step::GiveUp,
            ),
        ];
        for (name, s, t, a, elapsed, want) in cases {
            assert_eq!(next_step(s, t, a, elapsed, bound), want, "{name}");
        }
    }

    #[test]
    fn a_resume_is_interrupted_only_when_it_moves_no_data() {
        let s = Duration::from_secs;
        let bound = s(300);
        let cases = [
            ("just begun", s(0), s(10), None, Watch::Keep),
            ("still, briefly", s(29), s(60), None, Watch::Keep),
            ("still too long", s(30), s(60), None, Watch::Interrupt),
            ("moving past the bound", s(1), s(400), None, Watch::Keep),
            ("still past the bound", s(3), s(400), None, Watch::Interrupt),
            (
                "interrupted, waiting",
                s(40),
                s(60),
                Some(s(9)),
                Watch::Keep,
            ),
            (
                "interrupted, never returned",
                s(40),
                s(60),
                Some(s(10)),
                Watch::Abandon,
            ),
        ];
        for (name, stalled, elapsed, interrupted, want) in cases {
            assert_eq!(
                watch_resume(stalled, elapsed, bound, interrupted),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn a_zero_bound_gives_up_at_once() {
        let step = next_step(
            SourceHalf::Split,
            TargetHalf::PostCopyFailed,
            never(),
            Duration::ZERO,
            Duration::ZERO,
        );
        assert_eq!(step, Step::GiveUp);
    }

    #[test]
    fn resuming_needs_libvirt_11_4_on_both_nodes() {
        assert_eq!(resume_safe(("a", 12_009_000), ("b", 11_004_000)), Ok(()));
        let old = resume_safe(("a", 12_009_000), ("b", 11_003_000)).unwrap_err();
        assert!(old.contains("libvirt 11.3.0 on b"), "{old}");
        let old = resume_safe(("a", 11_002_000), ("b", 12_009_000)).unwrap_err();
        assert!(old.contains("on a"), "{old}");
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let waits: Vec<u64> = (0..7).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 15, 15, 15]);
    }

    #[test]
    fn libvirt_states_map_to_halves() {
        let st = |state, post_copy, job| {
            Ok(Some(DomainStanding {
                state,
                post_copy,
                job,
            }))
        };
        use DomainState::*;
        assert_eq!(source_half(Ok(None)), SourceHalf::Gone);
        assert_eq!(
            source_half(st(ShutOff, PostCopy::None, false)),
            SourceHalf::Gone
        );
        assert_eq!(
            source_half(st(Paused, PostCopy::Failed, false)),
            SourceHalf::Split
        );
        assert_eq!(
            source_half(st(Paused, PostCopy::Failed, true)),
            SourceHalf::Split
        );
        assert_eq!(
            source_half(st(Paused, PostCopy::Active, true)),
            SourceHalf::Moving
        );
        assert_eq!(
            source_half(st(Paused, PostCopy::Active, false)),
            SourceHalf::Other
        );
        assert_eq!(source_half(Err(())), SourceHalf::Unknown);
        assert_eq!(
            target_half(st(Running, PostCopy::None, false)),
            TargetHalf::Runs
        );
        assert_eq!(
            target_half(st(Running, PostCopy::Failed, false)),
            TargetHalf::PostCopyFailed
        );
        assert_eq!(
            target_half(st(Running, PostCopy::Active, true)),
            TargetHalf::PostCopyActive
        );
        assert_eq!(
            target_half(st(ShutOff, PostCopy::None, false)),
            TargetHalf::Absent
        );
        assert_eq!(target_half(Ok(None)), TargetHalf::Absent);
        assert_eq!(target_half(Err(())), TargetHalf::Unknown);
    }
}
