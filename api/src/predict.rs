//! Predict, then move: from the guest's measured dirty rate, the link's
//! rate and where the first pass stands, how plain pre-copy would go
//! (passes, duration, downtime) and which strategy the policy allows that
//! converges soonest. Pure: the rates are measured at the edges and passed
//! in. The controller predicts with it before a move (from the dirty rate
//! the source agent samples in the background), the source agent during
//! one (from the job's own first second).

use std::time::Duration;

use crate::agent::ResolvedTuning;
use crate::migration::{MigrationPrediction, Strategy};
use crate::tuning::TimeoutAction;

/// What the prediction is made from.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    /// The guest's memory: the most any pass can send.
    pub memory_bytes: u64,
    /// Data the first pass has still to send (zero pages cost nearly
    /// nothing, so this is less than the memory it has still to scan).
    pub first_pass_remaining_bytes: u64,
    /// Data sent so far: the most the guest can have dirtied again.
    pub sent_bytes: u64,
    /// How long data has flowed so far.
    pub flowing: Duration,
    /// How fast the guest dirties memory (distinct pages per second).
    pub dirty_bytes_per_second: u64,
    /// How fast the link moves data (what the job achieves, within the
    /// bandwidth cap).
    pub link_bytes_per_second: u64,
    /// The downtime the policy allows for the final pass.
    pub max_downtime: Duration,
    /// Time outside the transfer: the job's start before data flowed, and
    /// finishing on the target.
    pub setup: Duration,
    /// The policy allows post-copy.
    pub post_copy: bool,
    /// The policy allows auto-converge.
    pub auto_converge: bool,
    /// The policy pauses the guest when pre-copy times out.
    pub pause: bool,
    /// The policy has a timeout at all; without one a move that does not
    /// converge goes on until it is force-completed or aborted.
    pub timeouts: bool,
}

/// How plain pre-copy would go.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PreCopy {
    /// It converges after `passes` passes.
    Converges {
        /// Memory passes, the last one sent with the guest paused.
        passes: u32,
        /// From the job's start to the guest running on the target.
        duration: Duration,
        /// The final pass, guest paused.
        downtime: Duration,
    },
    /// The dirty memory left after each pass does not shrink enough.
    Diverges,
}

/// The prediction and the choice.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Plain pre-copy, whatever the choice.
    pub pre_copy: PreCopy,
    /// What to do.
    pub strategy: Strategy,
    /// The chosen strategy's duration (none when refused, or when nothing
    /// ends the move but a request).
    pub duration: Option<Duration>,
    /// The chosen strategy's downtime (none when refused).
    pub downtime: Option<Duration>,
    /// Why, for a person.
    pub reason: String,
}

impl Prediction {
    /// As status reports it: with the rates it came from, made `after`
    /// the job started.
    pub fn report(&self, inp: &Inputs, after: Duration) -> MigrationPrediction {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        MigrationPrediction {
            strategy: self.strategy,
            reason: self.reason.clone(),
            dirty_rate_bytes_per_second: inp.dirty_bytes_per_second,
            link_bytes_per_second: inp.link_bytes_per_second,
            pre_copy_passes: match self.pre_copy {
                PreCopy::Converges { passes, .. } => Some(passes),
                PreCopy::Diverges => None,
            },
            duration_ms: self.duration.map(ms),
            downtime_ms: self.downtime.map(ms),
            setup_ms: self.duration.map(|_| ms(inp.setup)),
            made_after_ms: ms(after),
            before_move: false,
        }
    }
}

/// Time a move takes beyond its start-up and its data (the target taking
/// the guest over, libvirt ending the job) taken when the source node has
/// not yet measured its own (`migrationFinishMs`, [`finish_of`]).
pub const FINISH: Duration = Duration::from_millis(200);

/// Passes after which pre-copy is taken not to converge (libvirt keeps
/// going; the convergence policy would act long before).
const MAX_PASSES: u32 = 30;

/// A pass that leaves more than this share of what it sent dirty again
/// makes too little headway to count on.
const MIN_SHRINK: f64 = 0.9;

/// The guest's CPU state and devices, sent while it is paused whatever the
/// strategy.
const SWITCHOVER: Duration = Duration::from_millis(20);

/// auto-converge's first throttle and its step per pass (QEMU's defaults).
const THROTTLE_INITIAL: f64 = 0.2;
const THROTTLE_STEP: f64 = 0.1;
const THROTTLE_MAX: f64 = 0.99;

/// Simulates pre-copy from where the first pass stands, the guest's dirty
/// rate scaled by `throttle(pass)`.
fn simulate(inp: &Inputs, throttle: impl Fn(u32) -> f64) -> PreCopy {
    let link = inp.link_bytes_per_second.max(1) as f64;
    let dirty = inp.dirty_bytes_per_second as f64;
    let budget = inp.max_downtime.as_secs_f64() * link;
    let cap = inp.memory_bytes as f64;
    let mut send = inp.first_pass_remaining_bytes.min(inp.memory_bytes) as f64;
    // The first pass has run for a while already: what the guest dirtied
    // meanwhile is due in the second.
    let mut took = inp.flowing.as_secs_f64();
    let mut elapsed = inp.setup.as_secs_f64() + took;
    for pass in 1..=MAX_PASSES {
        let this = send / link;
        took += this;
        elapsed += this;
        let dirtied = (dirty * (1.0 - throttle(pass)) * took).min(cap);
        if dirtied <= budget {
            let downtime = Duration::from_secs_f64(dirtied / link) + SWITCHOVER;
            return PreCopy::Converges {
                passes: pass + 1,
                duration: Duration::from_secs_f64(elapsed) + downtime,
                downtime,
            };
        }
        // Not shrinking, and no more throttle to come: it never will.
        if pass > 1 && dirtied > send * MIN_SHRINK && throttle(pass + 1) <= throttle(pass) {
            return PreCopy::Diverges;
        }
        // A second pass that would resend more than a whole memory is
        // no headway either.
        if pass == 1 && dirtied >= cap * MIN_SHRINK && throttle(2) <= throttle(1) {
            return PreCopy::Diverges;
        }
        send = dirtied;
        took = 0.0;
    }
    PreCopy::Diverges
}

/// The throttle auto-converge applies in `pass` (from the second pass on).
fn auto_converge_throttle(pass: u32) -> f64 {
    if pass < 2 {
        return 0.0;
    }
    (THROTTLE_INITIAL + THROTTLE_STEP * f64::from(pass - 2)).min(THROTTLE_MAX)
}

/// Predicts plain pre-copy and chooses the strategy within the policy.
pub fn predict(inp: &Inputs) -> Prediction {
    let pre_copy = simulate(inp, |_| 0.0);
    let link = inp.link_bytes_per_second.max(1) as f64;
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let rates = format!(
        "the guest dirties {:.0} MiB/s and the link moves {:.0} MiB/s",
        mib(inp.dirty_bytes_per_second),
        mib(inp.link_bytes_per_second)
    );
    if let PreCopy::Converges {
        passes,
        duration,
        downtime,
    } = pre_copy
    {
        return Prediction {
            pre_copy,
            strategy: Strategy::PreCopy,
            duration: Some(duration),
            downtime: Some(downtime),
            reason: format!("{rates}: pre-copy converges in {passes} passes"),
        };
    }
    // What is left once the switch comes now: the rest of the first pass
    // and what the guest dirtied again of what was sent.
    let redirtied =
        (inp.dirty_bytes_per_second as f64 * inp.flowing.as_secs_f64()).min(inp.sent_bytes as f64);
    let left = inp.first_pass_remaining_bytes.min(inp.memory_bytes) as f64 + redirtied;
    let flowed = inp.setup + inp.flowing;
    if inp.post_copy {
        // Pages the guest touches meanwhile are fetched on demand, so it
        // pauses only to switch over.
        return Prediction {
            pre_copy,
            strategy: Strategy::PostCopyAtOnce,
            duration: Some(flowed + Duration::from_secs_f64(left / link) + SWITCHOVER),
            downtime: Some(SWITCHOVER),
            reason: format!("{rates}: pre-copy cannot converge, so post-copy starts at once"),
        };
    }
    if inp.auto_converge
        && let PreCopy::Converges {
            passes,
            duration,
            downtime,
        } = simulate(inp, auto_converge_throttle)
    {
        return Prediction {
            pre_copy,
            strategy: Strategy::AutoConverge,
            duration: Some(duration),
            downtime: Some(downtime),
            reason: format!(
                "{rates}: pre-copy cannot converge and post-copy is not allowed; throttling the guest converges in {passes} passes"
            ),
        };
    }
    if !inp.timeouts {
        return Prediction {
            pre_copy,
            strategy: Strategy::PreCopy,
            duration: None,
            downtime: None,
            reason: format!(
                "{rates}: pre-copy cannot converge, and the policy has no timeout: the move goes on until it is force-completed or aborted"
            ),
        };
    }
    if inp.pause {
        // Paused once the first pass is sent: the second goes with the
        // guest stopped, and is the downtime.
        let rest = inp.first_pass_remaining_bytes.min(inp.memory_bytes) as f64 / link;
        let second = (inp.dirty_bytes_per_second as f64 * (inp.flowing.as_secs_f64() + rest))
            .min(inp.memory_bytes as f64)
            / link;
        let downtime = Duration::from_secs_f64(second) + SWITCHOVER;
        return Prediction {
            pre_copy,
            strategy: Strategy::PauseAfterFirstPass,
            duration: Some(flowed + Duration::from_secs_f64(rest) + downtime),
            downtime: Some(downtime),
            reason: format!(
                "{rates}: pre-copy cannot converge and the policy pauses at its timeout, so the guest pauses once the first pass is sent"
            ),
        };
    }
    Prediction {
        pre_copy,
        strategy: Strategy::Refuse,
        duration: None,
        downtime: None,
        reason: format!(
            "{rates}: pre-copy cannot converge and the policy allows {}; allow post-copy, raise the bandwidth or maxDowntimeMs, or move the VM offline",
            if inp.auto_converge {
                "no post-copy or pause, and throttling the guest does not make it converge either"
            } else {
                "neither post-copy, auto-converge nor a pause"
            }
        ),
    }
}

/// Time from asking libvirt for a move to the first byte on the wire
/// (connecting the daemons, starting the target's QEMU) taken when the
/// source node has not yet measured its own (`migrationStartupMs` in its
/// Hypervisor status): KVM hosts take a few tenths of a second.
pub const START: Duration = Duration::from_millis(300);

/// What a node's moves cost besides sending data, as its agent measured
/// them on its recent moves as source; [`START`] and [`FINISH`] stand in
/// for what it has not measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overheads {
    /// From the migration call to the first byte on the wire.
    pub startup: Option<Duration>,
    /// What a predicted move took beyond its start-up and the time its
    /// prediction counted for its data ([`finish_of`]).
    pub finish: Option<Duration>,
}

impl Overheads {
    /// The time of a move outside its transfer.
    pub fn setup(&self) -> Duration {
        self.startup.unwrap_or(START) + self.finish.unwrap_or(FINISH)
    }
}

/// What a finished move took beyond its start-up (`before_flow`) and the
/// time its prediction counted for its data (`transfer`, the predicted
/// duration less the setup it counted): the target taking the guest over,
/// libvirt ending the job, and whatever else the model does not count
/// (scanning a mostly empty memory is slower than its data on the link,
/// a post-copy fetches pages slower than the link's rate). Each predicted
/// move thus makes the next prediction's setup its node's own.
pub fn finish_of(wall: Duration, before_flow: Duration, transfer: Duration) -> Duration {
    wall.saturating_sub(before_flow).saturating_sub(transfer)
}

impl Inputs {
    /// The inputs of a prediction made before the move: the guest as the
    /// source agent last sampled it (`resident_bytes` hold data, the rest
    /// are zero pages that cost nearly nothing on the wire), the link's
    /// rate, what the source node's moves cost besides their data
    /// (`overheads`) and the migration's tuning.
    pub fn before_move(
        memory_bytes: u64,
        resident_bytes: u64,
        dirty_bytes_per_second: u64,
        link_bytes_per_second: u64,
        overheads: Overheads,
        t: &ResolvedTuning,
    ) -> Inputs {
        Inputs {
            memory_bytes,
            first_pass_remaining_bytes: resident_bytes.min(memory_bytes),
            sent_bytes: 0,
            flowing: Duration::ZERO,
            dirty_bytes_per_second,
            link_bytes_per_second,
            max_downtime: Duration::from_millis(u64::from(t.max_downtime_ms)),
            setup: overheads.setup(),
            post_copy: t.post_copy,
            auto_converge: t.auto_converge,
            pause: t.on_timeout == TimeoutAction::Pause,
            timeouts: t.progress_timeout_seconds > 0 || t.completion_timeout_per_gib_seconds > 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// An idle guest a third of a second into its move on a 100 MiB/s link.
    fn inputs() -> Inputs {
        Inputs {
            memory_bytes: 256 * MIB,
            first_pass_remaining_bytes: 32 * MIB,
            sent_bytes: 30 * MIB,
            flowing: Duration::from_millis(300),
            dirty_bytes_per_second: 4 * MIB,
            link_bytes_per_second: 100 * MIB,
            max_downtime: Duration::from_millis(300),
            setup: Duration::from_millis(500),
            post_copy: true,
            auto_converge: false,
            pause: false,
            timeouts: true,
        }
    }

    /// A guest dirtying 400 MiB/s, a second into its move.
    fn hot() -> Inputs {
        Inputs {
            first_pass_remaining_bytes: 160 * MIB,
            sent_bytes: 100 * MIB,
            flowing: Duration::from_secs(1),
            dirty_bytes_per_second: 400 * MIB,
            ..inputs()
        }
    }

    fn secs(d: Option<Duration>) -> f64 {
        d.map_or(f64::NAN, |d| d.as_secs_f64())
    }

    #[test]
    fn the_strategy_follows_the_rates_and_the_policy() {
        // (case, inputs, strategy, duration range in s)
        let cases: Vec<(&str, Inputs, Strategy, (f64, f64))> = vec![
            (
                "an idle guest: pre-copy",
                inputs(),
                Strategy::PreCopy,
                (1.1, 1.2),
            ),
            (
                "a hot guest with post-copy allowed: post-copy at once",
                hot(),
                Strategy::PostCopyAtOnce,
                (4.0, 4.2),
            ),
            (
                "hot, no post-copy, auto-converge allowed: throttled",
                Inputs {
                    dirty_bytes_per_second: 150 * MIB,
                    post_copy: false,
                    auto_converge: true,
                    ..hot()
                },
                Strategy::AutoConverge,
                (12.0, 24.0),
            ),
            (
                "hot, no post-copy, the policy pauses at its timeout: paused after the first pass",
                Inputs {
                    post_copy: false,
                    pause: true,
                    ..hot()
                },
                Strategy::PauseAfterFirstPass,
                (5.6, 5.8),
            ),
            (
                "hot, no post-copy and no timeout: pre-copy goes on, with no end in sight",
                Inputs {
                    post_copy: false,
                    timeouts: false,
                    ..hot()
                },
                Strategy::PreCopy,
                (f64::NAN, f64::NAN),
            ),
            (
                "hot, nothing allowed: refused",
                Inputs {
                    post_copy: false,
                    ..hot()
                },
                Strategy::Refuse,
                (f64::NAN, f64::NAN),
            ),
            (
                "a guest dirtying nearly the link's rate: pre-copy converges, slowly",
                Inputs {
                    first_pass_remaining_bytes: 128 * MIB,
                    dirty_bytes_per_second: 60 * MIB,
                    ..inputs()
                },
                Strategy::PreCopy,
                (3.5, 6.0),
            ),
        ];
        for (case, inp, strategy, (lo, hi)) in cases {
            let p = predict(&inp);
            assert_eq!(p.strategy, strategy, "{case}: {p:?}");
            let d = secs(p.duration);
            if lo.is_nan() {
                assert!(d.is_nan() && p.downtime.is_none(), "{case}: {p:?}");
            } else {
                assert!(
                    (lo..=hi).contains(&d),
                    "{case}: {d} s not in {lo}..{hi}: {p:?}"
                );
            }
        }
    }

    #[test]
    fn converging_pre_copy_counts_its_passes_and_keeps_downtime_within_the_policy() {
        let p = predict(&inputs());
        let PreCopy::Converges {
            passes, downtime, ..
        } = p.pre_copy
        else {
            panic!("{p:?}")
        };
        // 32 MiB in 0.32 s after 0.3 s; 2.5 MiB dirtied fits the 300 ms budget.
        assert_eq!(passes, 2);
        assert!(downtime <= Duration::from_millis(300) + SWITCHOVER, "{p:?}");
        assert!(p.reason.contains("converges in 2 passes"), "{}", p.reason);
    }

    #[test]
    fn a_guest_dirtying_faster_than_the_link_never_converges_by_pre_copy() {
        for dirty in [100, 101, 200, 10_000] {
            let inp = Inputs {
                first_pass_remaining_bytes: 128 * MIB,
                dirty_bytes_per_second: dirty * MIB,
                ..inputs()
            };
            assert_eq!(simulate(&inp, |_| 0.0), PreCopy::Diverges, "{dirty} MiB/s");
        }
    }

    #[test]
    fn switching_at_once_resends_only_what_was_sent_and_dirtied_again() {
        // 160 MiB left and 100 MiB sent, all of it dirtied again in the
        // second it took: 260 MiB at 100 MiB/s after 1.5 s.
        let p = predict(&hot());
        assert_eq!(p.strategy, Strategy::PostCopyAtOnce);
        let d = secs(p.duration);
        assert!((4.1..4.15).contains(&d), "{d}: {p:?}");
        assert_eq!(p.downtime, Some(SWITCHOVER));
        // A guest that dirties little resends little.
        let calm = predict(&Inputs {
            dirty_bytes_per_second: 110 * MIB,
            sent_bytes: 20 * MIB,
            ..hot()
        });
        assert_eq!(calm.strategy, Strategy::PostCopyAtOnce);
        assert!(secs(calm.duration) < d - 0.7, "{calm:?}");
    }

    #[test]
    fn a_refusal_says_what_to_change() {
        let p = predict(&Inputs {
            post_copy: false,
            ..hot()
        });
        assert_eq!(p.strategy, Strategy::Refuse);
        assert!(
            p.reason.contains("400 MiB/s") && p.reason.contains("100 MiB/s"),
            "{}",
            p.reason
        );
        assert!(p.reason.contains("allow post-copy"), "{}", p.reason);
    }

    #[test]
    fn the_report_carries_the_rates_and_the_figures_in_milliseconds() {
        let inp = hot();
        let r = predict(&inp).report(&inp, Duration::from_millis(1250));
        assert_eq!(r.strategy, Strategy::PostCopyAtOnce);
        assert_eq!(r.dirty_rate_bytes_per_second, 400 * MIB);
        assert_eq!(r.link_bytes_per_second, 100 * MIB);
        assert_eq!(r.pre_copy_passes, None);
        assert_eq!(r.downtime_ms, Some(20));
        assert!(
            r.duration_ms.is_some_and(|d| (4100..4150).contains(&d)),
            "{r:?}"
        );
        assert_eq!(r.made_after_ms, 1250);
        let idle = inputs();
        let r = predict(&idle).report(&idle, Duration::ZERO);
        assert_eq!(
            (r.strategy, r.pre_copy_passes),
            (Strategy::PreCopy, Some(2))
        );
    }

    #[test]
    fn a_prediction_before_the_move_starts_from_the_whole_first_pass() {
        let t = ResolvedTuning {
            max_downtime_ms: 300,
            post_copy: true,
            ..ResolvedTuning::default()
        };
        let none = Overheads::default();
        let inp = Inputs::before_move(256 * MIB, 300 * MIB, 8 * MIB, 100 * MIB, none, &t);
        assert_eq!(
            inp.first_pass_remaining_bytes,
            256 * MIB,
            "no more than the memory"
        );
        assert_eq!((inp.sent_bytes, inp.flowing), (0, Duration::ZERO));
        assert_eq!(inp.setup, START + FINISH, "without measured overheads");
        let started = Overheads {
            startup: Some(Duration::from_secs(1)),
            finish: None,
        };
        let slow = Inputs::before_move(256 * MIB, 40 * MIB, 2 * MIB, 100 * MIB, started, &t);
        assert_eq!(
            slow.setup,
            Duration::from_secs(1) + FINISH,
            "with the node's own start-up"
        );
        let measured = Overheads {
            startup: Some(Duration::from_secs(1)),
            finish: Some(Duration::from_millis(700)),
        };
        let slower = Inputs::before_move(256 * MIB, 40 * MIB, 2 * MIB, 100 * MIB, measured, &t);
        assert_eq!(
            slower.setup,
            Duration::from_millis(1700),
            "with the node's own start-up and finish"
        );
        assert_eq!(inp.max_downtime, Duration::from_millis(300));
        assert_eq!(
            (inp.post_copy, inp.pause, inp.timeouts),
            (true, false, true)
        );
        // Idle: pre-copy converges, the first pass at the link's rate.
        let idle = predict(&Inputs::before_move(
            256 * MIB,
            40 * MIB,
            2 * MIB,
            100 * MIB,
            none,
            &t,
        ));
        assert_eq!(idle.strategy, Strategy::PreCopy);
        let d = secs(idle.duration);
        assert!((0.9..1.2).contains(&d), "{d}");
        // Hot: post-copy at once, with no first pass already sent.
        let hot = predict(&Inputs::before_move(
            256 * MIB,
            200 * MIB,
            150 * MIB,
            100 * MIB,
            none,
            &t,
        ));
        assert_eq!(hot.strategy, Strategy::PostCopyAtOnce);
        let d = secs(hot.duration);
        assert!((2.4..2.6).contains(&d), "{d}");
    }

    #[test]
    fn a_moves_finish_is_what_it_took_beyond_its_start_up_and_its_predicted_transfer() {
        let ms = Duration::from_millis;
        // (wall, before the first byte, the transfer predicted) -> finish
        let cases = [
            // An idle guest whose data was predicted to take 0.6 s.
            (ms(2350), ms(1000), ms(600), ms(750)),
            // Exactly as predicted: nothing beyond.
            (ms(1600), ms(1000), ms(600), ms(0)),
            // Faster than predicted: never below zero.
            (ms(1200), ms(1000), ms(600), ms(0)),
            // A start-up longer than the whole move (clock skew): zero.
            (ms(500), ms(1000), ms(0), ms(0)),
        ];
        for (wall, before, transfer, want) in cases {
            assert_eq!(
                finish_of(wall, before, transfer),
                want,
                "{wall:?} {before:?} {transfer:?}"
            );
        }
    }

    #[test]
    fn nothing_panics_on_extreme_rates() {
        for link in [0, 1, u64::MAX / 2] {
            for dirty in [0, 1, u64::MAX / 2] {
                let inp = Inputs {
                    link_bytes_per_second: link,
                    dirty_bytes_per_second: dirty,
                    ..inputs()
                };
                let _ = predict(&inp);
            }
        }
    }
}
