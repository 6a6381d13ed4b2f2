//! The convergence policy: given the latest job statistics, the time the
//! migration has run and the policy, decide what to do next. A pure
//! function (time is passed in), so every rule is table-tested here and
//! the monitor that applies the actions stays a thin loop.

use std::time::Duration;

use kvmotion_api::agent::ResolvedTuning;
use kvmotion_api::migration::Strategy;
use kvmotion_api::tuning::TimeoutAction;

/// One sample of libvirt's job statistics, in the units the policy needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobSample {
    /// Bytes to transfer in total (memory and copied disks).
    pub data_total: u64,
    /// Bytes transferred so far.
    pub data_processed: u64,
    /// Bytes still to transfer.
    pub data_remaining: u64,
    /// Pre-copy memory pass (1 = first full pass).
    pub memory_iteration: u64,
    /// Guest dirty rate, bytes/s (0 when unknown).
    pub dirty_rate: u64,
    /// Current transfer rate, bytes/s (0 when unknown).
    pub throughput: u64,
    /// Guest memory size in bytes (for per-GiB timeouts).
    pub memory_total: u64,
    /// True once the job switched to post-copy.
    pub post_copy: bool,
    /// True when the guest is paused (by us or by libvirt).
    pub paused: bool,
    /// True when post-copy lost its link (libvirt's "post-copy failed").
    pub post_copy_failed: bool,
    /// Memory the job has been over: pages sent plus pages found zero,
    /// in bytes (0 when libvirt does not say).
    pub scanned_bytes: u64,
}

/// The resolved policy of one migration.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The largest downtime the ramp may reach.
    pub max_downtime: Duration,
    /// Downtime allowed at the start; raised in steps up to `max_downtime`.
    pub initial_downtime: Duration,
    /// Number of steps from initial to max downtime.
    pub downtime_steps: u32,
    /// Time between downtime steps per GiB of data to move (at least 1 s).
    pub downtime_step_per_gib: Duration,
    /// Timeout per GiB of data; `None` disables it.
    pub completion_timeout_per_gib: Option<Duration>,
    /// Timeout without progress; `None` disables it.
    pub progress_timeout: Option<Duration>,
    /// What a timeout does.
    pub on_timeout: TimeoutAction,
    /// Post-copy may be used.
    pub post_copy: bool,
    /// Switch to post-copy as soon as pre-copy is seen not to converge
    /// (after the first full pass), instead of waiting for a timeout.
    pub post_copy_when_stalled: bool,
}

impl From<&ResolvedTuning> for Policy {
    /// The policy of a migration from its resolved tuning. The ramp's shape
    /// (start at 50 ms, five geometric steps, one step per 4 s per GiB) is
    /// fixed: operators set the ceiling, not the curve. With post-copy
    /// allowed, a guest that out-dirties the link switches to post-copy
    /// after its first full pass instead of waiting for a timeout.
    fn from(t: &ResolvedTuning) -> Self {
        let secs = |s: u32| (s > 0).then(|| Duration::from_secs(u64::from(s)));
        Policy {
            max_downtime: Duration::from_millis(u64::from(t.max_downtime_ms)),
            initial_downtime: Duration::from_millis(50),
            downtime_steps: 5,
            downtime_step_per_gib: Duration::from_secs(4),
            completion_timeout_per_gib: secs(t.completion_timeout_per_gib_seconds),
            progress_timeout: secs(t.progress_timeout_seconds),
            on_timeout: t.on_timeout,
            post_copy: t.post_copy,
            post_copy_when_stalled: t.post_copy,
        }
    }
}

/// What the monitor remembers between samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tracker {
    /// Smallest remaining byte count seen, and when (elapsed) it was seen.
    pub best_remaining: Option<(u64, Duration)>,
    /// Downtime step last applied (0 = initial).
    pub downtime_step: u32,
    /// A terminal action (post-copy, pause, abort) was already issued.
    pub escalated: bool,
    /// The strategy the prediction chose, once it is made.
    pub planned: Option<Strategy>,
}

impl JobSample {
    /// Whether the job has been over the whole memory once. Counted from
    /// the pages QEMU has sent or found zero, not from libvirt's memory
    /// iteration: with post-copy enabled QEMU syncs its dirty bitmap twice
    /// more before sending anything, and the lab's jobs start at iteration
    /// 3. Without the page counts, the iteration is all there is.
    pub fn first_pass_done(&self) -> bool {
        if self.scanned_bytes == 0 {
            return self.memory_iteration >= 2;
        }
        self.scanned_bytes >= self.memory_total.max(1)
    }
}

/// What to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing to change.
    Continue,
    /// Allow this much downtime at switch-over.
    SetMaxDowntime(Duration),
    /// Switch the job to post-copy.
    StartPostCopy,
    /// Pause the guest so pre-copy completes.
    Pause,
    /// Cancel the migration; the VM stays on the source.
    Abort(AbortReason),
}

/// Why the policy aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// No progress for the progress timeout.
    ProgressTimeout,
    /// The completion timeout passed.
    CompletionTimeout,
    /// Someone asked for it (abort, or deleting the migration).
    Requested,
    /// The prediction found that nothing the policy allows converges.
    PredictedNotToConverge,
}

impl AbortReason {
    /// Static label for status reasons and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AbortReason::ProgressTimeout => "ProgressTimeout",
            AbortReason::CompletionTimeout => "CompletionTimeout",
            AbortReason::Requested => "Aborted",
            AbortReason::PredictedNotToConverge => "PredictedNotToConverge",
        }
    }
}

/// The decision and the tracker to keep for the next sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// What to do now.
    pub action: Action,
    /// State for the next call.
    pub tracker: Tracker,
}

const GIB: f64 = (1u64 << 30) as f64;

/// Decides the next action for a running job.
pub fn decide(tracker: Tracker, s: &JobSample, elapsed: Duration, p: &Policy) -> Decision {
    let mut t = tracker;
    let progressed = match t.best_remaining {
        Some((best, _)) => s.data_remaining < best,
        None => true,
    };
    if progressed && s.data_remaining > 0 {
        t.best_remaining = Some((s.data_remaining, elapsed));
    }

    // Post-copy and pause finish on their own; nothing more to steer.
    if s.post_copy || t.escalated {
        return Decision {
            action: Action::Continue,
            tracker: t,
        };
    }
    // The prediction knows at once what the rules below learn only after
    // a full pass or a timeout.
    let planned = match t.planned {
        // libvirt refuses a switch before the job's first bytes.
        Some(Strategy::PostCopyAtOnce) if p.post_copy && s.data_processed > 0 => {
            Action::StartPostCopy
        }
        Some(Strategy::Refuse) => Action::Abort(AbortReason::PredictedNotToConverge),
        Some(Strategy::PauseAfterFirstPass) if s.first_pass_done() && !s.paused => Action::Pause,
        Some(
            Strategy::PreCopy
            | Strategy::AutoConverge
            | Strategy::PostCopyAtOnce
            | Strategy::PauseAfterFirstPass,
        )
        | None => Action::Continue,
    };
    if planned != Action::Continue {
        t.escalated = true;
        return Decision {
            action: planned,
            tracker: t,
        };
    }
    if let Some(reason) = timed_out(&t, s, elapsed, p) {
        t.escalated = true;
        let action = match p.on_timeout {
            TimeoutAction::PostCopy if p.post_copy => Action::StartPostCopy,
            TimeoutAction::Pause if !s.paused => Action::Pause,
            TimeoutAction::Pause => Action::Continue,
            // Post-copy asked for but not allowed: aborting is the only
            // choice that keeps the guest safe on the source.
            TimeoutAction::PostCopy | TimeoutAction::Abort => Action::Abort(reason),
        };
        return Decision { action, tracker: t };
    }
    if p.post_copy && p.post_copy_when_stalled && s.first_pass_done() && stalled(s, p) {
        t.escalated = true;
        return Decision {
            action: Action::StartPostCopy,
            tracker: t,
        };
    }
    let step = downtime_step(s, elapsed, p);
    if step > t.downtime_step {
        t.downtime_step = step;
        return Decision {
            action: Action::SetMaxDowntime(downtime_for_step(step, p)),
            tracker: t,
        };
    }
    Decision {
        action: Action::Continue,
        tracker: t,
    }
}

/// The downtime to set before the job starts.
pub fn initial_downtime(p: &Policy) -> Duration {
    p.initial_downtime.min(p.max_downtime)
}

/// Pre-copy is not converging: a full pass is done, and either the guest
/// dirties memory at least as fast as it is sent, or what remains could not
/// be sent within even the largest allowed downtime.
fn stalled(s: &JobSample, p: &Policy) -> bool {
    if s.throughput == 0 {
        return false;
    }
    let sendable_in_downtime = s.throughput as f64 * p.max_downtime.as_secs_f64();
    s.dirty_rate >= s.throughput || s.data_remaining as f64 > sendable_in_downtime
}

fn timed_out(t: &Tracker, s: &JobSample, elapsed: Duration, p: &Policy) -> Option<AbortReason> {
    if let (Some(limit), Some((_, since))) = (p.progress_timeout, t.best_remaining)
        && elapsed.saturating_sub(since) >= limit
    {
        return Some(AbortReason::ProgressTimeout);
    }
    let gib = (s.data_total.max(s.memory_total) as f64 / GIB).max(1.0);
    if let Some(per_gib) = p.completion_timeout_per_gib
        && elapsed.as_secs_f64() >= per_gib.as_secs_f64() * gib
    {
        return Some(AbortReason::CompletionTimeout);
    }
    None
}

/// Which downtime step applies at `elapsed`: one more every
/// `downtime_step_per_gib × GiB` (at least a second), capped at the last.
fn downtime_step(s: &JobSample, elapsed: Duration, p: &Policy) -> u32 {
    let gib = s.data_total.max(s.memory_total) as f64 / GIB;
    let interval = (p.downtime_step_per_gib.as_secs_f64() * gib).max(1.0);
    ((elapsed.as_secs_f64() / interval) as u32).min(p.downtime_steps)
}

/// Downtime at `step`: geometric from initial to max, so early steps stay
/// small (most guests converge there) and the last one reaches the max.
fn downtime_for_step(step: u32, p: &Policy) -> Duration {
    let lo = initial_downtime(p).as_secs_f64().max(0.001);
    let hi = p.max_downtime.as_secs_f64().max(lo);
    if p.downtime_steps == 0 || step >= p.downtime_steps {
        return Duration::from_secs_f64(hi);
    }
    let ratio = (hi / lo).powf(f64::from(step) / f64::from(p.downtime_steps));
    Duration::from_millis((lo * ratio * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// kvmotion's built-in defaults.
    fn defaults() -> Policy {
        Policy::from(&ResolvedTuning::default())
    }

    fn sample(iteration: u64, remaining_mib: u64, dirty_mib: u64, rate_mib: u64) -> JobSample {
        JobSample {
            data_total: 256 * MIB,
            data_processed: 256 * MIB - remaining_mib.min(256) * MIB,
            data_remaining: remaining_mib * MIB,
            memory_iteration: iteration,
            dirty_rate: dirty_mib * MIB,
            throughput: rate_mib * MIB,
            memory_total: 256 * MIB,
            post_copy: false,
            paused: false,
            post_copy_failed: false,
            scanned_bytes: 0,
        }
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn no_post_copy() -> Policy {
        Policy {
            post_copy: false,
            on_timeout: TimeoutAction::Abort,
            ..defaults()
        }
    }

    #[test]
    fn decisions_follow_the_policy() {
        // (name, tracker, sample, elapsed, policy, expected action)
        let fresh = Tracker::default();
        let seen_at_1s = Tracker {
            best_remaining: Some((100 * MIB, secs(1.0))),
            ..fresh
        };
        let cases: Vec<(&str, Tracker, JobSample, Duration, Policy, Action)> = vec![
            (
                "first pass of a hot guest: keep going",
                fresh,
                sample(1, 200, 300, 100),
                secs(0.5),
                defaults(),
                Action::Continue,
            ),
            (
                "hot guest after a full pass: post-copy",
                fresh,
                sample(2, 150, 300, 100),
                secs(2.7),
                defaults(),
                Action::StartPostCopy,
            ),
            (
                "converging guest after a full pass: no post-copy",
                fresh,
                sample(2, 20, 20, 100),
                secs(0.9),
                defaults(),
                Action::Continue,
            ),
            (
                "stall detection can be turned off",
                fresh,
                sample(2, 150, 300, 100),
                secs(0.9),
                Policy {
                    post_copy_when_stalled: false,
                    ..defaults()
                },
                Action::Continue,
            ),
            (
                "no post-copy allowed: stalled guest only ramps downtime",
                fresh,
                sample(2, 150, 300, 100),
                secs(1.0),
                no_post_copy(),
                Action::SetMaxDowntime(Duration::from_millis(79)),
            ),
            (
                "progress timeout with Abort",
                seen_at_1s,
                sample(9, 120, 300, 100),
                secs(31.0),
                no_post_copy(),
                Action::Abort(AbortReason::ProgressTimeout),
            ),
            (
                "progress timeout with PostCopy",
                seen_at_1s,
                sample(9, 120, 300, 100),
                secs(31.0),
                Policy {
                    post_copy_when_stalled: false,
                    ..defaults()
                },
                Action::StartPostCopy,
            ),
            (
                "progress timeout with Pause",
                seen_at_1s,
                sample(9, 120, 300, 100),
                secs(31.0),
                Policy {
                    on_timeout: TimeoutAction::Pause,
                    post_copy: false,
                    ..defaults()
                },
                Action::Pause,
            ),
            (
                "PostCopy on timeout but post-copy forbidden: abort",
                seen_at_1s,
                sample(9, 120, 300, 100),
                secs(31.0),
                Policy {
                    post_copy: false,
                    ..defaults()
                },
                Action::Abort(AbortReason::ProgressTimeout),
            ),
            (
                "progress resets the progress timeout",
                seen_at_1s,
                sample(9, 90, 300, 100),
                secs(31.0),
                no_post_copy(),
                Action::SetMaxDowntime(Duration::from_millis(500)),
            ),
            (
                "completion timeout scales per GiB (1 GiB minimum)",
                fresh,
                sample(3, 10, 5, 100),
                secs(151.0),
                Policy {
                    progress_timeout: None,
                    ..no_post_copy()
                },
                Action::Abort(AbortReason::CompletionTimeout),
            ),
            (
                "timeouts disabled: never abort",
                seen_at_1s,
                sample(9, 120, 300, 100),
                secs(900.0),
                Policy {
                    progress_timeout: None,
                    completion_timeout_per_gib: None,
                    ..no_post_copy()
                },
                Action::SetMaxDowntime(Duration::from_millis(500)),
            ),
        ];
        for (name, tracker, s, elapsed, policy, want) in cases {
            assert_eq!(decide(tracker, &s, elapsed, &policy).action, want, "{name}");
        }
    }

    #[test]
    fn downtime_ramps_geometrically_once_per_step_and_stops_at_the_max() {
        let p = no_post_copy();
        let mut t = Tracker::default();
        let mut applied = Vec::new();
        for tenth in 0..80 {
            // a guest that keeps making a little progress
            let s = sample(3, 200 - tenth, 10, 100);
            let d = decide(t, &s, secs(f64::from(tenth as u32) / 10.0), &p);
            if let Action::SetMaxDowntime(ms) = d.action {
                applied.push(ms.as_millis());
            }
            t = d.tracker;
        }
        assert_eq!(applied, vec![79, 126, 199, 315, 500]);
    }

    #[test]
    fn a_predicted_strategy_acts_before_the_rules_would() {
        // (case, plan, sample, policy, expected action)
        let pause_at_timeout = Policy {
            on_timeout: TimeoutAction::Pause,
            ..no_post_copy()
        };
        let paused = JobSample {
            paused: true,
            ..sample(2, 120, 300, 100)
        };
        let cases: Vec<(&str, Strategy, JobSample, Policy, Action)> = vec![
            (
                "post-copy at once, a second into the first pass",
                Strategy::PostCopyAtOnce,
                sample(1, 200, 0, 100),
                defaults(),
                Action::StartPostCopy,
            ),
            (
                "post-copy at once, planned before the job sent its first bytes",
                Strategy::PostCopyAtOnce,
                JobSample {
                    data_processed: 0,
                    ..sample(1, 256, 0, 0)
                },
                defaults(),
                Action::Continue,
            ),
            (
                "post-copy at once, but the policy forbids it",
                Strategy::PostCopyAtOnce,
                sample(1, 200, 0, 100),
                no_post_copy(),
                Action::Continue,
            ),
            (
                "refused: aborted at once",
                Strategy::Refuse,
                sample(1, 200, 0, 100),
                no_post_copy(),
                Action::Abort(AbortReason::PredictedNotToConverge),
            ),
            (
                "pause after the first pass, still in it",
                Strategy::PauseAfterFirstPass,
                sample(1, 200, 0, 100),
                pause_at_timeout.clone(),
                Action::Continue,
            ),
            (
                "pause after the first pass, once it is sent",
                Strategy::PauseAfterFirstPass,
                sample(2, 120, 0, 100),
                pause_at_timeout.clone(),
                Action::Pause,
            ),
            (
                "pause after the first pass, already paused",
                Strategy::PauseAfterFirstPass,
                paused,
                pause_at_timeout,
                Action::Continue,
            ),
            (
                "pre-copy: the ramp goes on as without a plan",
                Strategy::PreCopy,
                sample(1, 200, 0, 100),
                defaults(),
                Action::Continue,
            ),
            (
                "auto-converge: libvirt throttles, nothing to add",
                Strategy::AutoConverge,
                sample(1, 200, 0, 100),
                no_post_copy(),
                Action::Continue,
            ),
        ];
        for (case, plan, s, p, want) in cases {
            let t = Tracker {
                planned: Some(plan),
                ..Tracker::default()
            };
            // Half a second in: before the ramp's first step.
            let d = decide(t, &s, secs(0.5), &p);
            assert_eq!(d.action, want, "{case}");
            assert_eq!(d.tracker.escalated, want != Action::Continue, "{case}");
        }
    }

    #[test]
    fn the_first_pass_is_done_once_every_page_was_sent_or_found_zero() {
        // With post-copy enabled, the lab's QEMU reports iteration 3
        // before it has sent anything.
        let hot_in_first_pass = JobSample {
            scanned_bytes: 20 * MIB,
            ..sample(3, 240, 300, 100)
        };
        assert!(!hot_in_first_pass.first_pass_done());
        let d = decide(
            Tracker::default(),
            &hot_in_first_pass,
            secs(0.2),
            &defaults(),
        );
        assert_eq!(d.action, Action::Continue, "the first pass is not done");
        let hot_after_it = JobSample {
            scanned_bytes: 300 * MIB,
            ..sample(4, 120, 300, 100)
        };
        assert!(hot_after_it.first_pass_done());
        let d = decide(Tracker::default(), &hot_after_it, secs(0.2), &defaults());
        assert_eq!(d.action, Action::StartPostCopy);
        // Without page counts, libvirt's iteration decides.
        assert!(sample(2, 120, 300, 100).first_pass_done());
        assert!(!sample(1, 120, 300, 100).first_pass_done());
    }

    #[test]
    fn once_escalated_the_policy_stays_quiet() {
        let p = defaults();
        let d = decide(Tracker::default(), &sample(2, 150, 300, 100), secs(3.0), &p);
        assert_eq!(d.action, Action::StartPostCopy);
        let again = decide(d.tracker, &sample(3, 150, 300, 100), secs(40.0), &p);
        assert_eq!(again.action, Action::Continue);
        let in_post_copy = JobSample {
            post_copy: true,
            ..sample(3, 150, 300, 100)
        };
        assert_eq!(
            decide(Tracker::default(), &in_post_copy, secs(400.0), &p).action,
            Action::Continue
        );
    }

    #[test]
    fn initial_downtime_never_exceeds_the_max() {
        let p = Policy {
            max_downtime: Duration::from_millis(20),
            ..defaults()
        };
        assert_eq!(initial_downtime(&p), Duration::from_millis(20));
    }
}
